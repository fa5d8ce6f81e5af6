"""The dashboard in headless Chromium, watching and steering a real `model.fit`."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ServerProcess, callback, make_data, make_model

if TYPE_CHECKING:
    from tests.browser import Dashboard


keras = pytest.importorskip("keras")
from client_callback import LiveMonitor  # noqa: E402

pytestmark = pytest.mark.browser

STEPS_PER_EPOCH = 8  # make_data(128) with batch_size=16


def slow(seconds: float) -> Any:
    """Makes each batch last a little, so the browser meets a running fit."""
    return callback(on_train_batch_end=lambda self, batch, logs=None: time.sleep(seconds))


class FitThread(threading.Thread):
    """`model.fit` in the background while the test drives the browser."""

    def __init__(self, fit: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fit = fit
        self.history: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.history = self.fit()
        except BaseException as exc:  # re-raised by result()
            self.error = exc

    def result(self, timeout: float = 60) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"fit still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.history


def start_fit(
    server: ServerProcess, name: str, epochs: int, delay: float, lr: float = 0.01
) -> tuple[FitThread, LiveMonitor, Any]:
    x, y = make_data(128)
    model = make_model(lr=lr)
    mon = LiveMonitor(url=server.url, token=server.token, run_name=name, project="browser")
    thread = FitThread(
        lambda: model.fit(
            x, y, epochs=epochs, batch_size=16, callbacks=[mon, slow(delay)], verbose=0
        )
    )
    thread.start()
    server.wait_for(
        lambda: server.client.get(f"/api/runs/{mon.run_id}").status_code == 200,
        what="the run to exist",
    )
    return thread, mon, model


def test_loss_chart_grows_live_while_fit_runs(server: ServerProcess, dashboard: Dashboard) -> None:
    epochs = 6
    thread, mon, _ = start_fit(server, "grows-live", epochs=epochs, delay=0.05)
    dashboard.open_run(mon.run_id)

    first = dashboard.wait_points("loss", 0)
    requests_before = len(dashboard.metric_requests())
    grown = dashboard.wait_points("loss", first + 3)
    still_running = thread.is_alive()
    history = thread.result()

    assert still_running, "the chart only grew after fit had returned"
    assert grown > first
    # Growth came over /ws/live, not by polling the metrics route.
    assert len(dashboard.metric_requests()) == requests_before
    # In the end every batch is drawn once: none lost, none doubled.
    total = epochs * STEPS_PER_EPOCH
    dashboard.page.wait_for_function(
        "n => Number(document.querySelector('.chart[data-key=\"loss\"]').dataset.points) === n",
        arg=total,
    )
    assert len(history.history["loss"]) == epochs
    loss = dashboard.traces("loss", role="raw")[0]
    assert loss["type"] in ("scattergl", "scatter")
    assert loss["x"] == list(range(1, total + 1))

    # The run list shows it, updated live to its end.
    dashboard.page.click("#back-link")
    row = dashboard.page.locator(f'tr[data-run-id="{mon.run_id}"]')
    row.locator(".badge", has_text="finished").wait_for()
    assert row.locator(".run-link").text_content() == "grows-live"
    assert row.locator(".epochs").text_content() == f"{epochs} / {epochs}"
    assert "loss" in (row.locator(".metrics").text_content() or "")


def test_stop_button_stops_the_real_fit(server: ServerProcess, dashboard: Dashboard) -> None:
    epochs = 40
    thread, mon, _ = start_fit(server, "stop-me", epochs=epochs, delay=0.03)
    dashboard.open_run(mon.run_id)
    page = dashboard.page
    dashboard.wait_points("loss", 2)

    # Cancelling the confirmation sends nothing.
    page.click("#stop-button")
    assert page.locator("#stop-dialog").is_visible()
    page.click("#cancel-stop")
    assert not page.locator("#stop-dialog").is_visible()
    assert server.commands(mon.run_id) == []

    page.click("#stop-button")
    page.click("#confirm-stop")
    history = thread.result(timeout=30)

    assert len(history.history["loss"]) < epochs
    server.wait_for(lambda: server.run(mon.run_id)["status"] == "stopped", what="status stopped")
    page.locator("#run-status", has_text="stopped").wait_for()
    row = page.locator('#commands-body tr[data-kind="stop"]')
    row.locator(".badge", has_text="applied").wait_for()
    assert re.fullmatch(r"epoch \d+, batch \d+", row.locator(".detail").text_content() or "")
    assert [c["status"] for c in server.commands(mon.run_id)] == ["applied"]
    assert page.locator("#stop-button").is_disabled()


def test_learning_rate_input_reaches_the_real_fit(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    thread, mon, model = start_fit(server, "set-lr", epochs=40, delay=0.03, lr=0.01)
    dashboard.open_run(mon.run_id)
    page = dashboard.page
    page.locator("#lr-current", has_text="0.01").wait_for()
    assert page.input_value("#lr-input") == "0.01"

    # Not a finite number > 0: refused in the page, nothing sent.
    for bad in ("abc", "-0.1", "0", "Infinity", "1e999"):
        page.fill("#lr-input", bad)
        page.click("#lr-submit")
        assert page.text_content("#lr-error"), bad
        assert page.get_attribute("#lr-input", "aria-invalid") == "true"
    assert server.commands(mon.run_id) == []

    page.fill("#lr-input", "0.0025")
    page.press("#lr-input", "Enter")
    row = page.locator('#commands-body tr[data-kind="set_lr"]')
    row.locator(".badge", has_text="applied").wait_for()
    page.locator("#lr-current", has_text="0.0025").wait_for()
    assert page.text_content("#lr-error") == ""
    assert re.fullmatch(r"epoch \d+, batch \d+", row.locator(".detail").text_content() or "")
    assert math.isclose(float(model.optimizer.learning_rate.numpy()), 0.0025, rel_tol=1e-6)

    # The LR chart steps down from 0.01 to 0.0025.
    page.wait_for_function(
        "() => { const t = document.querySelector('#lr-chart').data[0];"
        " return t && t.y.some(v => Math.abs(v - 0.0025) < 1e-9); }"
    )
    lr_values = {round(v, 8) for v in dashboard.traces("learning_rate", role="raw")[0]["y"]}
    assert lr_values == {0.01, 0.0025}

    server.client.post(f"/api/runs/{mon.run_id}/commands", json={"kind": "stop"})
    thread.result(timeout=30)
    assert math.isclose(float(model.optimizer.learning_rate.numpy()), 0.0025, rel_tol=1e-6)


def test_nan_values_are_drawn_as_visible_markers(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    x, y = make_data(128)
    y[96:] = float("nan")  # batches 7 and 8 of 8: the loss becomes NaN there
    model = make_model()
    name = '<img src=x onerror="window.pwned=1">goes-nan'
    mon = LiveMonitor(url=server.url, token=server.token, run_name=name, params={"<b>k</b>": 1})
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, callbacks=[mon], verbose=0)
    stored = server.series(mon.run_id, "batch", "loss")["value"]
    assert stored[:6] != ["NaN"] * 6 and stored[6:] == ["NaN", "NaN"]

    dashboard.open_run(mon.run_id)
    page = dashboard.page
    # Names from the training script are text, never markup.
    assert page.text_content("#run-name") == name
    assert page.locator("#run-params dt").first.text_content() == "<b>k</b>"
    assert page.locator("img").count() == 0
    assert page.evaluate("() => window.pwned") is None

    page.wait_for_selector('.chart[data-key="loss"][data-nonfinite="2"]')
    assert dashboard.points("loss") == 8  # NaN points are drawn, not dropped

    (line,) = dashboard.traces("loss", role="raw")
    (markers,) = dashboard.traces("loss", role="nonfinite")
    assert line["y"][6:] == [None, None]  # a gap in the line, never 0
    assert all(v is not None and v > 0 for v in line["y"][:6])
    assert markers["x"] == [7, 8] and markers["text"] == ["NaN", "NaN"]
    assert markers["yaxis"] == "y2" and markers["y"] == [0.97, 0.97]  # the top edge

    # Hovering a marker says NaN.
    point = page.evaluate(
        """() => { const gd = document.querySelector('.chart[data-key="loss"]');
            const L = gd._fullLayout, box = gd.getBoundingClientRect();
            return [box.left + L.xaxis._offset + L.xaxis.l2p(8),
                    box.top + L.yaxis2._offset + L.yaxis2.l2p(0.97)]; }"""
    )
    page.mouse.move(point[0], point[1])
    hover = page.locator('.chart[data-key="loss"] .hoverlayer')
    hover.get_by_text(re.compile("NaN")).first.wait_for()

    # The epoch view marks the epoch's NaN loss too.
    page.click("#scope-epoch")
    page.wait_for_selector('.chart[data-key="loss"][data-nonfinite="1"]')


def test_lost_live_connection_reconnects_and_fills_the_gap(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    epochs = 4
    thread, mon, _ = start_fit(server, "reconnects", epochs=epochs, delay=0.05)
    dashboard.open_run(mon.run_id)
    page = dashboard.page
    seen = dashboard.wait_points("loss", 1)
    fetched = len(dashboard.metric_requests())

    page.evaluate("() => window.fitdeck.live.drop()")
    page.wait_for_selector("#live-status[data-state='closed']")
    page.wait_for_selector("#live-status[data-state='open']")
    dashboard.wait_points("loss", seen)
    thread.result()

    total = epochs * STEPS_PER_EPOCH
    page.wait_for_function(
        "n => Number(document.querySelector('.chart[data-key=\"loss\"]').dataset.points) === n",
        arg=total,
    )
    assert dashboard.traces("loss", role="raw")[0]["x"] == list(range(1, total + 1))
    assert len(dashboard.metric_requests()) > fetched  # what was missed came over HTTP
    page.locator("#run-status", has_text="finished").wait_for()


@pytest.mark.browser
def test_a_browser_without_the_token_is_told_how_to_sign_in(
    chromium: Any, server: ServerProcess
) -> None:
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.url}/")
        banner = page.get_by_text("Not signed in: open the dashboard URL printed by")
        banner.wait_for(timeout=10_000)
        assert "?token=" in banner.inner_text()
        assert page.locator("#runs-body tr").count() == 0  # and it shows no data
    finally:
        context.close()
