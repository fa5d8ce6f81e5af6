"""Fixtures for dashboard tests in headless Chromium (Debian's, never a downloaded one).

Import them into a test module: `from tests.browser import chromium, dashboard`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("FITDECK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 800}

__all__ = ["CHROMIUM", "Dashboard", "chromium", "dashboard", "open_dashboard"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium for one test module; skipped without one (a failure when CI=true).

    Module scope, not session: Playwright's sync API keeps an event loop running
    in the main thread while it is open, and `asyncio.run` in a later module's
    tests refuses to start beside it.
    """
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Dashboard:
    """One logged-in page on the dashboard of `server`."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open_run(self, run_id: str) -> None:
        self.page.goto(f"{self.url}/#/runs/{run_id}")
        self.page.wait_for_function(
            "id => window.fitdeck && window.fitdeck.runView.run"
            " && window.fitdeck.runView.run.id === id",
            arg=run_id,
        )

    def chart(self, key: str) -> Any:
        return self.page.locator(f'.chart[data-key="{key}"]')

    def points(self, key: str) -> int:
        """Points drawn in a chart (finite and not), as the chart reports after each redraw."""
        value = self.chart(key).get_attribute("data-points", timeout=10_000)
        return int(value or 0)

    def wait_points(self, key: str, more_than: int, timeout: float = 20) -> int:
        self.page.wait_for_function(
            '([key, n]) => { const el = document.querySelector(`.chart[data-key="${key}"]`);'
            " return el && Number(el.dataset.points || 0) > n; }",
            arg=[key, more_than],
            timeout=timeout * 1000,
        )
        return self.points(key)

    def traces(self, key: str, role: str | None = None) -> list[dict[str, Any]]:
        """The Plotly traces of a chart: type, name, x, y, text, yaxis, marker, role, customdata.

        `role` keeps only the traces of one kind: "raw" (the values as stored),
        "smoothed" (the EMA drawn over them), "nonfinite" (NaN/Inf markers), "events".
        """
        result: list[dict[str, Any]] = self.page.evaluate(
            """key => document.querySelector(`.chart[data-key="${key}"]`).data.map(t => ({
                type: t.type, name: t.name, x: Array.from(t.x), y: Array.from(t.y),
                text: t.text ? Array.from(t.text) : null, yaxis: t.yaxis || "y",
                marker: t.marker || null, role: t.meta ? t.meta.role : null,
                label: t.meta ? t.meta.label : null,
                customdata: t.customdata ? Array.from(t.customdata) : null }))""",
            key,
        )
        return [t for t in result if role is None or t["role"] == role]

    def layout(self, key: str) -> dict[str, Any]:
        """The chart's Plotly layout (axes, shapes) as drawn."""
        result: dict[str, Any] = self.page.evaluate(
            """key => { const L = document.querySelector(`.chart[data-key="${key}"]`).layout;
                return {xaxis: {type: L.xaxis.type, title: L.xaxis.title && L.xaxis.title.text},
                        yaxis: {type: L.yaxis.type}, shapes: L.shapes || []}; }""",
            key,
        )
        return result

    def metric_requests(self) -> list[str]:
        return [u for u in self.requests if re.search(r"/api/runs/[0-9a-f]+/metrics", u)]


@contextlib.contextmanager
def open_dashboard(chromium: Any, server: Any) -> Iterator[Dashboard]:
    """A fresh browser context logged in to `server` (cookie from /?token=…),
    closed on leaving; a dashboard that logged errors fails the test then."""
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(20_000)
    board = Dashboard(page=page, url=server.url)
    page.on("pageerror", lambda exc: board.errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            board.errors.append(f"console error: {msg.text}")
            # Under the server's CSP the charts' feature check for WebGL traces
            # (which need eval) is refused and logged; everything else is a failure.
            if msg.type == "error" and "'unsafe-eval'" not in msg.text
            else None
        ),
    )
    page.on("request", lambda request: board.requests.append(request.url))
    login = f"{server.url}/?token={server.token}" if server.token else f"{server.url}/"
    page.goto(login)
    page.wait_for_selector("#live-status[data-state='open']")
    try:
        yield board
    finally:
        context.close()
    assert not board.errors, "the dashboard logged errors:\n" + "\n".join(board.errors)


@pytest.fixture
def dashboard(chromium: Any, server: Any) -> Iterator[Dashboard]:
    """A fresh browser context logged in to `server` (see `open_dashboard`)."""
    with open_dashboard(chromium, server) as board:
        yield board
