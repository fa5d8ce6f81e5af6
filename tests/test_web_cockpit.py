"""The cockpit from the dashboard, in headless Chromium, steering a real `model.fit`:
Checkpoint, Pause/Resume, Stop with a checkpoint first, the knobs and callbacks panels."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ServerProcess, make_data, make_model
from tests.test_dashboard import FitThread, slow

if TYPE_CHECKING:
    from tests.browser import Dashboard

keras = pytest.importorskip("keras")
from client_callback import LiveMonitor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_knob_parsing_and_callback_rows_in_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is needed for the dashboard's JavaScript unit tests")
        pytest.skip("node is not installed")
    web_js = tmp_path / "js"  # a copy Node reads as ES modules (package.json "type")
    shutil.copytree(ROOT / "web" / "js", web_js)
    (web_js / "package.json").write_text('{"type": "module"}')
    result = subprocess.run(
        [node, "--test", str(ROOT / "tests" / "js" / "cockpit.test.mjs")],
        capture_output=True,
        text=True,
        env={**os.environ, "WEB_JS": web_js.as_uri()},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 5" in result.stdout


def start(server: ServerProcess, *callbacks: Any, epochs: int, delay: float, **kw: Any) -> Any:
    x, y = make_data(128)
    model = make_model()
    mon = LiveMonitor(url=server.url, token=server.token, run_name="cockpit", **kw)
    thread = FitThread(
        lambda: model.fit(
            x, y, epochs=epochs, batch_size=16, verbose=0,
            callbacks=[mon, *callbacks, slow(delay)],
        )
    )  # fmt: skip
    thread.start()
    server.wait_for(
        lambda: server.client.get(f"/api/runs/{mon.run_id}").status_code == 200,
        what="the run to exist",
    )
    return thread, mon


def command_row(dashboard: Dashboard, kind: str, status: str) -> Any:
    row = dashboard.page.locator(f'#commands-body tr[data-kind="{kind}"][data-status="{status}"]')
    row.first.wait_for()
    return row.first


@pytest.mark.browser
@pytest.mark.slow
def test_checkpoint_pause_resume_and_stop_with_a_checkpoint_from_the_dashboard(
    server: ServerProcess, dashboard: Dashboard, tmp_path: Path
) -> None:
    thread, mon = start(server, epochs=40, delay=0.05, checkpoint_dir=tmp_path)
    dashboard.open_run(mon.run_id)
    page = dashboard.page
    dashboard.wait_points("loss", 2)

    page.click("#checkpoint-button")
    command_row(dashboard, "checkpoint", "applied")
    item = page.locator("#checkpoints li").first
    item.wait_for()
    path = item.locator(".path").text_content()
    assert path and Path(path).parent == tmp_path and path.endswith(".keras")
    assert keras.models.load_model(path) is not None

    page.click("#pause-button")
    page.wait_for_selector("#pause-button[aria-pressed='true']")
    assert page.text_content("#pause-button") == "Resume"
    page.wait_for_selector("#progress[data-status='paused']")
    assert "paused" in (page.text_content("#progress-eta") or "")
    step = server.run(mon.run_id)["step"]
    time.sleep(1.0)
    assert server.run(mon.run_id)["step"] == step, "no step while paused"
    page.click("#pause-button")
    page.wait_for_selector("#pause-button[aria-pressed='false']")
    command_row(dashboard, "resume", "applied")
    server.wait_for(lambda: server.run(mon.run_id)["step"] > step, what="steps after resume")

    page.click("#stop-button")
    page.check("#stop-checkpoint")
    page.click("#confirm-stop")
    row = command_row(dashboard, "stop", "applied")
    assert row.locator(".what").text_content() == "checkpoint and stop"
    history = thread.result()
    assert len(history.history["loss"]) < 40
    page.wait_for_selector("#progress[data-status='stopped']")
    page.wait_for_function("() => document.querySelectorAll('#checkpoints li').length === 2")
    [stop] = [c for c in server.commands(mon.run_id) if c["kind"] == "stop"]
    assert Path(stop["result"]["path"]).exists()
    marks = " ".join(" ".join(t["text"]) for t in dashboard.traces("loss", "events"))
    assert "checkpoint saved" in marks and "paused" in marks and "resumed" in marks


@pytest.mark.browser
@pytest.mark.slow
def test_patience_raised_in_the_knobs_panel_keeps_early_stopping_from_stopping(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    """patience=0 with an impossible min_delta stops after epoch 2; set to 100, it runs on."""
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    thread, mon = start(server, stopper, epochs=5, delay=0.15)
    dashboard.open_run(mon.run_id)
    page = dashboard.page
    knob = page.locator('#knobs-body tr[data-knob="early_stopping.patience"]')
    knob.wait_for()
    assert knob.locator(".value").text_content() == "0"
    assert knob.locator(".type").text_content() == "int"
    page.locator('#callbacks [data-callback="early_stopping"]').wait_for()

    page.select_option("#knob-name", "early_stopping.patience")
    page.fill("#knob-value", "2.5")
    page.click("#knob-submit")
    assert "whole number" in (page.text_content("#knob-error") or "")
    page.fill("#knob-value", "100")
    page.click("#knob-submit")
    command_row(dashboard, "set", "applied")
    page.wait_for_function(
        '() => document.querySelector(\'#knobs-body tr[data-knob="early_stopping.patience"]'
        " .value').textContent === '100'"
    )
    history = thread.result()
    assert len(history.history["loss"]) == 5, "EarlyStopping would have stopped after 2"
    wait = page.locator('#callbacks [data-callback="early_stopping"] dd[data-field="wait"]')
    page.wait_for_function(
        "sel => document.querySelector(sel).textContent === '4 / 100'",
        arg='#callbacks [data-callback="early_stopping"] dd[data-field="wait"]',
    )
    assert wait.text_content() == "4 / 100"
    marks = " ".join(" ".join(t["text"]) for t in dashboard.traces("loss", "events"))
    assert "early_stopping.patience 0 → 100" in marks
