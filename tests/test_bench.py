"""The benchmark harness runs end to end on a tiny size, so it cannot rot.

This is not a benchmark: budgets are not asserted here (they are proven by
`python -m bench`, see bench/RESULTS.md); only that every figure is produced
and its numbers are sane.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _finite_positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_bench_produces_every_figure(tmp_path: Path) -> None:
    results, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results", str(results), "--json", str(raw)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    # 0: every budget met, 1: some not met (a tiny size proves nothing); anything else is a crash.
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    data = json.loads(raw.read_text())
    rows = data["rows"]
    assert {r["figure"] for r in rows} == {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
    failed = [r for r in rows if r["value"].startswith("FAILED")]
    assert not failed, failed

    whats = " | ".join(r["what"] for r in rows)
    for peer in ("CSVLogger", "RemoteMonitor", "TensorBoard"):
        assert peer in whats
    for r in rows:
        ratio = r["numbers"].get("ratio")
        if ratio is not None:
            assert _finite_positive(ratio) and ratio < 100, r

    by_fig: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by_fig.setdefault(r["figure"], []).append(r)
    assert len(by_fig["1"]) == 4 and len(by_fig["2"]) == 2
    assert len([r for r in by_fig["4"] if r["met"] is not None]) == 3  # 1, 8, 32 trainers

    hook = data["raw"]["1"]["hook"]["us_per_call"]["fitdeck"]
    assert all(0 < us < 1000 for us in hook)
    latency, command = data["raw"]["5"]["live"], data["raw"]["5"]["command"]
    assert latency["samples"] > 0 and 0 < latency["p50_ms"] <= latency["p95_ms"] < 60_000
    assert command["applied"] == command["sent"] > 0 and command["stopped"]
    kinds = {"set_lr", "checkpoint", "set", "pause", "resume", "stop"}
    assert set(command["per_kind"]) == kinds and command["kinds_applied"] == command["kinds_sent"]
    assert data["raw"]["1"]["hook"]["us_per_call"]["fitdeck_cockpit"]
    assert _finite_positive(command["p50_ms"]) and _finite_positive(command["batch_ms"])
    query = data["raw"]["6"]
    assert query["returned"]["big"] <= 2000
    memory = data["raw"]["7"]
    assert 0 < memory["start_mib"] <= memory["peak_mib"] < 4096
    assert memory["batches_sent"] > 0 and memory["points_received"] > 0

    runs_page, compare = data["raw"]["8"], data["raw"]["9"]
    assert all(_finite_positive(ms) for ms in runs_page["first_rows_ms"])
    assert runs_page["hits"]["text"] > 0 and runs_page["hits"]["regex"] > 0
    assert all(_finite_positive(ms) for ms in runs_page["filter_ms"]["regex"])
    assert compare["drawn_points"] > 0 and all(_finite_positive(ms) for ms in compare["batch_ms"])

    text = results.read_text()
    for needed in ("nproc", "cpu", "ram", "python", "tensorflow", "keras", "| fig |"):
        assert needed in text
