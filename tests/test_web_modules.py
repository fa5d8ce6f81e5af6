"""The dashboard's own code stays in small modules (no build step, one concept each)."""

from __future__ import annotations

from pathlib import Path

WEB_JS = Path(__file__).resolve().parent.parent / "web" / "js"
MAX_LINES = 400


def test_no_dashboard_module_is_over_400_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in WEB_JS.glob("*.js")}
    assert sizes, "no modules found"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
