"""A newcomer's first hour, end to end, as the README tells it.

`fitdeck serve` in a subprocess with a home and runtime directory of its own;
the URL it prints opened in headless Chromium; a training script in another
subprocess that says only `LiveMonitor()`; the live chart; Set LR; Stop.
Nothing is configured: the script finds the server through its discovery file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import VIEWPORT
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]

URL_LINE = re.compile(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)")

# The training script: the README's snippet with every argument left out.
TRAIN = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import keras
    from client_callback import LiveMonitor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
                  loss="binary_crossentropy", metrics=["accuracy"])

    class Slow(keras.callbacks.Callback):  # a batch lasts long enough to watch
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.03)

    monitor = LiveMonitor()
    print("run", monitor.run_id, monitor.url, flush=True)
    history = model.fit(x, y, epochs=500, batch_size=16, verbose=0, callbacks=[monitor, Slow()])
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    print("epochs", len(history.history["loss"]), "lr", lr, flush=True)
    """
)


@dataclass
class Newcomer:
    """A machine of one's own: a home, a runtime directory, no FITDECK_* settings."""

    home: Path
    runtime: Path  # XDG_RUNTIME_DIR
    env: dict[str, str]

    def serve(self, port: int) -> tuple[subprocess.Popen[bytes], str]:
        """`fitdeck serve` as the README says, and the URL it printed."""
        script = Path(sys.executable).with_name("fitdeck")
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "server"]
        log = self.home / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cmd, "serve", "--port", str(port), "--db", str(self.home / "fitdeck.db")],
                cwd=self.home,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = URL_LINE.search(log.read_text(errors="replace"))
            if found:
                return proc, found.group(1)
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        stop(proc)
        raise AssertionError(f"fitdeck serve printed no URL:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def newcomer(tmp_path: Path) -> Newcomer:
    home = tmp_path / "home"
    runtime = tmp_path / "run-user"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("FITDECK_URL", "FITDECK_TOKEN")}
    env.pop("FITDECK_RUNTIME_DIR", None)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), PYTHONPATH=str(ROOT))
    env.pop("XDG_DATA_HOME", None)
    return Newcomer(home=home, runtime=runtime, env=env)


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser page that fails the test on any page or console error."""
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console error: {msg.text}")
            if msg.type == "error" and "'unsafe-eval'" not in msg.text
            else None
        ),
    )
    try:
        yield page
    finally:
        context.close()
    assert not errors, "the dashboard logged errors:\n" + "\n".join(errors)


def test_serve_open_the_printed_url_stream_with_no_arguments_set_lr_and_stop(
    newcomer: Newcomer, page: Any
) -> None:
    pytest.importorskip("keras")
    port = free_port()
    server, url = newcomer.serve(port)
    fit = None
    try:
        # The discovery file, in the runtime directory, readable by its owner only.
        (found,) = (newcomer.runtime / "fitdeck").glob("server-*.json")
        assert found.stat().st_mode & 0o077 == 0

        # The printed URL signs the browser in; the token leaves the address bar.
        page.goto(url)
        page.wait_for_selector("#live-status[data-state='open']")
        assert "token=" not in page.url

        fit_log = newcomer.home / "fit.log"  # a file: a full pipe nobody reads would stall it
        with fit_log.open("w") as log:
            fit = subprocess.Popen(
                [sys.executable, "-c", TRAIN],
                cwd=newcomer.home,
                env=newcomer.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert fit.stdout is not None
        first = fit.stdout.readline().split()
        assert first[:1] == ["run"], first
        run_id, found_url = first[1], first[2]
        assert found_url == f"http://127.0.0.1:{port}"  # found through the discovery file

        # The run appears in the list live; the newcomer clicks it.
        link = page.locator(f'tr[data-run-id="{run_id}"] .run-link')
        link.click(timeout=60_000)
        page.wait_for_function(
            "id => window.fitdeck && window.fitdeck.runView.run"
            " && window.fitdeck.runView.run.id === id",
            arg=run_id,
        )
        chart = '.chart[data-key="loss"]'
        page.wait_for_function(
            f"() => Number(document.querySelector('{chart}')?.dataset.points || 0) > 3",
            timeout=60_000,
        )
        seen = int(page.get_attribute(chart, "data-points") or 0)
        page.wait_for_function(
            f"n => Number(document.querySelector('{chart}').dataset.points) > n + 5", arg=seen
        )  # it grows while the fit runs
        page.locator("#run-status", has_text="running").wait_for()

        # Set LR: 0.005 is half the current 0.01, applied without a question.
        page.locator("#lr-current", has_text="0.01").wait_for()
        page.fill("#lr-input", "0.005")
        page.click("#lr-submit")
        row = page.locator('#commands-body tr[data-kind="set_lr"]')
        row.locator(".badge", has_text="applied").wait_for()
        assert not page.locator("#lr-dialog").is_visible()
        page.locator("#lr-current", has_text="0.005").wait_for()
        assert re.fullmatch(r"epoch \d+, batch \d+", row.locator(".detail").text_content() or "")

        # Stop, confirmed: the run ends `stopped` and the script returns normally.
        page.click("#stop-button")
        page.click("#confirm-stop")
        page.locator("#run-status", has_text="stopped").wait_for()
        out, _ = fit.communicate(timeout=60)
        err = fit_log.read_text(errors="replace")
        assert fit.returncode == 0, err
        last = out.split()
        assert last[0] == "epochs" and int(last[1]) < 500
        assert float(last[3]) == pytest.approx(0.005)
        assert "FitdeckWarning" not in err, err
        stop_row = page.locator('#commands-body tr[data-kind="stop"]')
        stop_row.locator(".badge", has_text="applied").wait_for()
    finally:
        if fit is not None and fit.poll() is None:
            fit.kill()
            fit.wait()
        stop(server)
