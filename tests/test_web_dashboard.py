"""The dashboard's TensorBoard-like features in headless Chromium, fed by a scripted trainer.

A `Trainer` speaks the `/ws/train` protocol directly (no Keras), so values,
times and events are known exactly and the tests stay fast; the real `fit`
is steered in tests/test_dashboard.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import ServerProcess

if TYPE_CHECKING:
    from tests.browser import Dashboard


pytestmark = pytest.mark.browser
ws_client = pytest.importorskip("websockets.sync.client")


class Trainer:
    """One scripted training process on `/ws/train`."""

    def __init__(self, server: ServerProcess, run_id: str | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex
        self.seq = 0
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        self.connection = ws_client.connect(
            f"ws://127.0.0.1:{server.port}/ws/train",
            additional_headers=headers,
            max_size=None,
        )
        self.ws = self.connection.__enter__()
        self.ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": self.run_id}))
        assert json.loads(self.ws.recv(10))["type"] == "welcome"

    def send(self, *records: dict[str, Any]) -> None:
        out = []
        for rec in records:
            self.seq += 1
            out.append({"seq": self.seq, **rec})
        self.ws.send(json.dumps({"type": "records", "records": out}))
        while True:  # commands may arrive before the ack
            reply = json.loads(self.ws.recv(30))
            if reply["type"] == "ack" and reply["seq"] == self.seq:
                return
            assert reply["type"] in ("ack", "command"), reply

    def start(self, name: str, project: str, t: float, **extra: Any) -> Trainer:
        meta = {"epochs": 4, "steps_per_epoch": 10, **extra.pop("meta", {})}
        self.send({"type": "run_start", "t": t, "name": name, "project": project,
                   "params": extra.pop("params", {}), "meta": meta})  # fmt: skip
        return self

    def batches(self, steps: range, t0: float, value: Any, spe: int = 10) -> None:
        records = [
            {"type": "batch", "t": t0 + 2.0 * s, "step": s, "epoch": s / spe,
             "logs": {"loss": value(s)}}
            for s in steps
        ]  # fmt: skip
        for i in range(0, len(records), 2000):
            self.send(*records[i : i + 2000])

    def end(self, t: float, status: str = "finished") -> None:
        self.send({"type": "run_end", "t": t, "status": status, "error": None})

    def close(self) -> None:
        self.connection.__exit__(None, None, None)


def loss_value(step: int) -> float | str:
    if step == 13:
        return "NaN"
    return 1.0 / step + (0.05 if step % 2 else 0.0)


def ema(values: list[float | None], w: float) -> list[float | None]:
    """TensorBoard's debiased EMA; non-finite values are gaps."""
    last, n, out = 0.0, 0, []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        last = last * w + (1 - w) * v
        n += 1
        out.append(last / (1 - w**n))
    return out


@pytest.fixture(scope="module")
def scripted_run(server: ServerProcess) -> Iterator[dict[str, Any]]:
    """A finished run: 40 batches 2 s apart (a NaN at step 13), an LR change, a stop command."""
    t0 = time.time() - 600
    trainer = Trainer(server).start("scripted", "web-tests", t0, params={"units": 8})
    trainer.batches(range(1, 21), t0, loss_value)
    trainer.send({"type": "lr", "t": t0 + 40, "step": 20, "epoch": 2.0, "lr": 0.005,
                  "previous": 0.01, "source": "callback"})  # fmt: skip
    trainer.batches(range(21, 31), t0, loss_value)
    command = server.client.post(f"/api/runs/{trainer.run_id}/commands", json={"kind": "stop"})
    command_id = command.json()["command"]["id"]
    trainer.send({"type": "command", "t": t0 + 61, "id": command_id, "status": "applied",
                  "reason": None, "epoch": 3, "batch": 0, "step": 30})  # fmt: skip
    trainer.batches(range(31, 41), t0, loss_value)
    trainer.send({"type": "event", "t": t0 + 81, "kind": "early_stop", "step": 40, "epoch": 3,
                  "data": {"by": "callback"}})  # fmt: skip
    trainer.end(t0 + 82, "stopped")
    trainer.close()
    yield {"run_id": trainer.run_id, "t0": t0, "command_id": command_id}


def asked_range(urls: list[str], lo: int, hi: int, slack: int) -> bool:
    """Whether a metrics request asked for about [lo, hi] (start/end by step)."""
    for url in urls:
        query = parse_qs(urlparse(url).query)
        if "start" in query and "end" in query:
            start, end = int(query["start"][0]), int(query["end"][0])
            if lo - slack <= start <= lo and hi <= end <= hi + slack:
                return True
    raise AssertionError(f"no metrics request for steps [{lo}, {hi}] in {urls}")


def wait_chart(board: Dashboard, key: str, **state: str) -> None:
    """Until the chart has been redrawn with these data-* values (xMode, smoothing, logY)."""
    conditions = " && ".join(f"el.dataset.{k} === {json.dumps(v)}" for k, v in state.items())
    board.page.wait_for_function(
        f"() => {{ const el = document.querySelector('.chart[data-key=\"{key}\"]');"
        f" return el && el.data && {conditions or 'true'}; }}"
    )


def test_x_axis_smoothing_and_log_scale_change_what_is_drawn(
    dashboard: Dashboard, scripted_run: dict[str, Any]
) -> None:
    page = dashboard.page
    page.evaluate("() => localStorage.clear()")
    dashboard.open_run(scripted_run["run_id"])
    wait_chart(dashboard, "loss", xMode="step", smoothing="0.6")
    values = [None if s == 13 else 1.0 / s + (0.05 if s % 2 else 0.0) for s in range(1, 41)]

    (raw,) = dashboard.traces("loss", role="raw")
    (smoothed,) = dashboard.traces("loss", role="smoothed")
    assert raw["x"] == list(range(1, 41))
    assert raw["y"] == pytest.approx(values)
    assert raw["y"][12] is None  # NaN is a gap in the line, and a marker
    assert dashboard.traces("loss", role="nonfinite")[0]["x"] == [13]
    assert smoothed["y"] == pytest.approx(ema(values, 0.6), rel=1e-9)
    assert smoothed["y"][0] == pytest.approx(values[0])  # debiased: not pulled toward 0
    assert smoothed["customdata"][:3] == pytest.approx(values[:3])  # hover shows the raw value

    # Keyboard: the slider goes to 0 (off), then to 0.9.
    page.focus("#run-smoothing")
    page.keyboard.press("Home")
    wait_chart(dashboard, "loss", smoothing="0")
    assert dashboard.traces("loss", role="smoothed") == []
    page.locator("#run-smoothing").fill("0.9")
    wait_chart(dashboard, "loss", smoothing="0.9")
    (smoothed,) = dashboard.traces("loss", role="smoothed")
    assert smoothed["y"] == pytest.approx(ema(values, 0.9), rel=1e-9)

    page.click("#run-toolbar button[data-x='epoch']")
    wait_chart(dashboard, "loss", xMode="epoch")
    assert dashboard.traces("loss", role="raw")[0]["x"] == pytest.approx(
        [s / 10 for s in range(1, 41)]
    )
    assert dashboard.layout("loss")["xaxis"]["title"] == "epoch"

    page.click("#run-toolbar button[data-x='relative']")
    wait_chart(dashboard, "loss", xMode="relative")
    assert dashboard.traces("loss", role="raw")[0]["x"] == pytest.approx(
        [2.0 * s for s in range(1, 41)]  # seconds since the run began
    )

    page.click("#run-toolbar button[data-x='wall']")
    wait_chart(dashboard, "loss", xMode="wall")
    layout = dashboard.layout("loss")
    assert layout["xaxis"]["type"] == "date"
    wall = dashboard.traces("loss", role="raw")[0]["x"]
    assert [b - a for a, b in itertools.pairwise(wall)] == pytest.approx([2000.0] * 39)
    assert page.get_attribute("#run-toolbar button[data-x='wall']", "aria-pressed") == "true"

    # The choice outlives a reload, like TensorBoard's.
    page.reload()
    dashboard.open_run(scripted_run["run_id"])
    wait_chart(dashboard, "loss", xMode="wall", smoothing="0.9")

    page.click("#run-toolbar button[data-x='step']")
    log_button = page.locator('.chart-card[data-key="loss"] .log-toggle')
    log_button.click()
    wait_chart(dashboard, "loss", logY="true", xMode="step")
    assert dashboard.layout("loss")["yaxis"]["type"] == "log"
    assert log_button.get_attribute("aria-pressed") == "true"
    log_button.press("Enter")  # a button: the keyboard works too
    wait_chart(dashboard, "loss", logY="false")
    assert dashboard.layout("loss")["yaxis"]["type"] == "linear"


def test_events_are_marked_on_the_charts(
    dashboard: Dashboard, scripted_run: dict[str, Any]
) -> None:
    page = dashboard.page
    page.evaluate("() => localStorage.clear()")
    dashboard.open_run(scripted_run["run_id"])
    page.wait_for_selector('.chart[data-key="loss"][data-events="3"]')
    shapes = dashboard.layout("loss")["shapes"]
    assert [s["x0"] for s in shapes] == [20, 30, 40]
    (events,) = dashboard.traces("loss", role="events")
    assert events["x"] == [20, 30, 40]
    texts = events["text"]
    assert "LR 0.01 → 0.005" in texts[0] and "callback" in texts[0]
    assert f"command #{scripted_run['command_id']}" in texts[1] and "applied" in texts[1]
    assert "stopped early" in texts[2]
    # The LR chart carries them too, and they follow the x axis.
    page.wait_for_selector('#lr-chart[data-events="3"]')
    page.click("#run-toolbar button[data-x='epoch']")
    wait_chart(dashboard, "loss", xMode="epoch")
    assert [s["x0"] for s in dashboard.layout("loss")["shapes"]] == pytest.approx([2.0, 3.0, 4.0])
    page.click("#run-toolbar button[data-x='relative']")
    wait_chart(dashboard, "loss", xMode="relative")
    assert [s["x0"] for s in dashboard.layout("loss")["shapes"]] == pytest.approx([40, 61, 81])


def test_exports_have_the_stored_values(
    dashboard: Dashboard, scripted_run: dict[str, Any], server: ServerProcess
) -> None:
    run_id = scripted_run["run_id"]
    dashboard.open_run(run_id)
    page = dashboard.page
    stored = server.series(run_id, "batch", "loss")

    with page.expect_download() as download:
        page.click("#export-json")
    doc = json.loads(Path(download.value.path()).read_text())
    assert doc["run"]["id"] == run_id and doc["run"]["status"] == "stopped"
    loss = doc["series"]["batch"]["loss"]
    assert loss["step"] == stored["step"] and loss["value"] == stored["value"]
    assert loss["value"][12] == "NaN"
    assert [e["kind"] for e in doc["events"]].count("lr_change") == 1
    assert doc["commands"][0]["status"] == "applied"

    with page.expect_download() as download:
        page.click("#export-link")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    loss_rows = [r for r in rows if r["scope"] == "batch" and r["key"] == "loss"]
    assert [int(r["step"]) for r in loss_rows] == stored["step"]
    assert loss_rows[12]["value"] == "nan"
    assert float(loss_rows[0]["value"]) == stored["value"][0]

    # Chromium holds back .html downloads from a site first visited today (a "dangerous"
    # type): fetch the link's target with the page's cookie instead of clicking it.
    link = page.locator("#export-report")
    assert link.get_attribute("download") == f"fitdeck-{run_id[:8]}-report.html"
    response = page.request.get(f"{dashboard.url}{link.get_attribute('href')}")
    assert response.ok
    assert response.headers["content-disposition"].startswith("attachment")
    report = response.text()
    assert "scripted" in report and "plotly" in report.lower()
    assert "/static/vendor/plotly.min.js" not in report  # inlined: opens offline


def test_runs_table_updates_live_filters_and_sorts(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    page = dashboard.page
    project = f"live-{secrets.token_hex(3)}"
    page.select_option("#runs-project", "")
    t0 = time.time()
    b = Trainer(server).start("b-run", project, t0 - 5, params={"units": 16})
    row_b = page.locator(f'tr[data-run-id="{b.run_id}"]')
    row_b.locator(".badge", has_text="running").wait_for()  # appeared live, no reload
    assert row_b.locator(".delete").is_disabled()  # a running run cannot be deleted
    b.batches(range(1, 4), t0, lambda s: 0.5)
    # The server announces a run's new state at epoch ends (and status changes).
    b.send({"type": "epoch", "t": t0 + 9, "step": 10, "epoch": 0, "logs": {"loss": 0.4}})
    row_b.locator(".epochs", has_text="1 / 4").wait_for()
    row_b.locator(".metrics", has_text="loss 0.5").wait_for()  # the latest batch values
    assert "units=16" in (row_b.locator(".params").text_content() or "")
    b.end(t0 + 10)
    row_b.locator(".badge", has_text="finished").wait_for()
    assert row_b.locator(".duration").text_content() == "15s"
    b.close()
    a = Trainer(server).start("a-run", project, t0, params={"units": 8})
    a.end(t0 + 1)
    a.close()
    row_a = page.locator(f'tr[data-run-id="{a.run_id}"]')
    row_a.wait_for()

    # Project filter, then sort by name both ways.
    page.locator("#runs-project").locator(f'option[value="{project}"]').wait_for(state="attached")
    page.select_option("#runs-project", project)
    names = page.locator("#runs-body .run-link")
    assert names.all_text_contents() == ["a-run", "b-run"]  # newest first
    page.click("th[data-sort='name'] button")
    assert page.get_attribute("th[data-sort='name']", "aria-sort") == "ascending"
    assert names.all_text_contents() == ["a-run", "b-run"]
    page.click("th[data-sort='name'] button")
    assert names.all_text_contents() == ["b-run", "a-run"]
    page.click("th[data-sort='duration'] button")
    assert names.all_text_contents() == ["b-run", "a-run"]  # longest first

    # Text filter: a regular expression over name, project and params; else plain text.
    page.fill("#runs-filter", "^a-")
    assert names.all_text_contents() == ["a-run"]
    page.fill("#runs-filter", '"units":16')
    assert names.all_text_contents() == ["b-run"]
    page.fill("#runs-filter", "b-run(")
    assert page.text_content("#runs-filter-error")
    assert names.all_text_contents() == []
    page.fill("#runs-filter", "")
    assert (page.text_content("#runs-count") or "").startswith("2 of ")


def test_rename_and_delete_a_run(dashboard: Dashboard, server: ServerProcess) -> None:
    page = dashboard.page
    t0 = time.time()
    trainer = Trainer(server).start("to-rename", f"rd-{secrets.token_hex(3)}", t0)
    trainer.batches(range(1, 6), t0, lambda s: 1.0)
    trainer.end(t0 + 12)
    trainer.close()
    run_id = trainer.run_id
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    row.wait_for()

    # A second tab watches the run page.
    other = page.context.new_page()
    other.goto(f"{dashboard.url}/#/runs/{run_id}")
    other.locator("#run-name", has_text="to-rename").wait_for()

    row.locator(".rename").click()
    assert page.locator("#rename-dialog").is_visible()
    page.fill("#rename-input", "   ")
    page.press("#rename-input", "Enter")
    assert page.text_content("#rename-error")
    assert page.get_attribute("#rename-input", "aria-invalid") == "true"
    page.fill("#rename-input", "<b>renamed</b>")
    page.press("#rename-input", "Enter")
    row.locator(".run-link", has_text="<b>renamed</b>").wait_for()
    assert not page.locator("#rename-dialog").is_visible()
    assert server.run(run_id)["name"] == "<b>renamed</b>"
    other.locator("#run-name", has_text="<b>renamed</b>").wait_for()  # pushed live

    row.locator(".delete").click()
    assert "<b>renamed</b>" in (page.text_content("#delete-dialog-run") or "")
    page.keyboard.press("Escape")  # cancel by keyboard: nothing deleted
    assert not page.locator("#delete-dialog").is_visible()
    assert server.client.get(f"/api/runs/{run_id}").status_code == 200

    row.locator(".delete").click()
    page.click("#confirm-delete")
    row.wait_for(state="detached")
    assert server.client.get(f"/api/runs/{run_id}").status_code == 404
    other.locator("#run-missing", has_text="was deleted").wait_for()
    other.close()


def test_compare_overlays_runs_and_lists_params_that_differ(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    page = dashboard.page
    project = f"cmp-{secrets.token_hex(3)}"
    t0 = time.time() - 100
    ids = []
    for name, lr, scale in (("small-lr", 0.01, 1.0), ("big-lr", 0.1, 2.0)):
        trainer = Trainer(server).start(name, project, t0, params={"lr": lr, "units": 8})
        for e in range(3):
            loss = scale / (e + 1)
            logs = {"loss": loss, "val_loss": loss + 0.1}
            trainer.send(
                {"type": "epoch", "t": t0 + e, "step": 10 * (e + 1), "epoch": e, "logs": logs}
            )
        trainer.end(t0 + 5)
        trainer.close()
        ids.append(trainer.run_id)

    page.select_option("#runs-project", "")
    page.locator(f'tr[data-run-id="{ids[1]}"]').wait_for()
    page.fill("#runs-filter", project)
    for run_id in ids:
        page.locator(f'tr[data-run-id="{run_id}"] input.pick').check()
    page.click("#compare-button")
    page.wait_for_url(f"**/#/compare/{ids[0]},{ids[1]}")
    page.wait_for_selector('#compare-charts .chart[data-key="loss"][data-points="12"]')
    raw = dashboard.traces("loss", role="raw")
    assert [t["label"] for t in raw] == [
        "small-lr · loss", "small-lr · val_loss", "big-lr · loss", "big-lr · val_loss"
    ]  # fmt: skip
    assert raw[0]["y"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert raw[2]["y"] == pytest.approx([2.0, 1.0, 2 / 3])
    rows = page.locator("#compare-params tbody tr")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-param") == "lr"
    assert rows.first.locator("td").all_text_contents() == ["0.01", "0.1"]

    page.select_option("#compare-metric", "loss")
    assert page.locator("#compare-charts .chart").count() == 1


def test_zoom_asks_the_server_for_the_visible_steps(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    n = 30_000
    t0 = time.time() - n
    trainer = Trainer(server).start("long", "web-tests", t0, meta={"steps_per_epoch": 3000})
    trainer.batches(range(1, n + 1), t0, lambda s: math.sin(s / 50) + s / n, spe=3000)
    trainer.end(t0 + 2 * n + 1)
    trainer.close()
    page = dashboard.page
    page.evaluate("() => localStorage.clear()")
    dashboard.open_run(trainer.run_id)
    wait_chart(dashboard, "loss")
    assert dashboard.points("loss") <= 5000  # downsampled by the server
    before = len(dashboard.metric_requests())

    page.evaluate(
        """() => Plotly.relayout(document.querySelector('.chart[data-key="loss"]'),
                                 {'xaxis.range': [12000, 12400]})"""
    )
    page.wait_for_function(
        """() => { const t = document.querySelector('.chart[data-key="loss"]').data[0];
                   const xs = Array.from(t.x).filter(x => x >= 12000 && x <= 12400);
                   return xs.length === 401; }"""
    )
    assert asked_range(dashboard.metric_requests()[before:], 12000, 12400, slack=100)
    (raw,) = dashboard.traces("loss", role="raw")
    inside = [(x, y) for x, y in zip(raw["x"], raw["y"], strict=True) if 12000 <= x <= 12400]
    assert [x for x, _ in inside] == list(range(12000, 12401))  # every step, full detail
    assert inside[0][1] == pytest.approx(math.sin(12000 / 50) + 12000 / n)


@pytest.fixture
def million_point_server(tmp_path: Path, make_server: Any) -> tuple[ServerProcess, str]:
    """A server whose database holds one run with 1,000,000 batch points of `loss`."""
    from server import ingest
    from server.store import Store

    db = tmp_path / "million.db"
    store = Store(db)
    store.open()
    run_id = uuid.uuid4().hex
    n = 1_000_000
    start = {"seq": 1, "type": "run_start", "t": 1e9, "name": "million", "project": "big",
             "params": {}, "meta": {"epochs": 10, "steps_per_epoch": n // 10}}  # fmt: skip
    futures = [store.submit(lambda c: ingest.apply_records(c, store.memory, run_id, [start]))]
    chunk = 25_000
    for a in range(1, n + 1, chunk):
        records = [
            {"seq": s + 1, "type": "batch", "t": 1e9 + s * 0.01, "step": s, "epoch": s / (n / 10),
             "logs": {"loss": 1.0 / (1 + s / 1000) + (1.0 if s == 777_777 else 0.0)}}
            for s in range(a, min(n + 1, a + chunk))
        ]  # fmt: skip
        futures.append(
            store.submit(lambda c, r=records: ingest.apply_records(c, store.memory, run_id, r))
        )
    end = {"seq": n + 2, "type": "run_end", "t": 1e9 + n * 0.01, "status": "finished",
           "error": None}  # fmt: skip
    futures.append(store.submit(lambda c: ingest.apply_records(c, store.memory, run_id, [end])))
    for f in futures:
        f.result()
    store.close()
    return make_server(db_path=db, token=secrets.token_hex(8)), run_id


@pytest.mark.slow
def test_a_million_point_run_loads_fast_and_redraws_smoothly(
    chromium: Any, million_point_server: tuple[ServerProcess, str]
) -> None:
    from tests.browser import VIEWPORT, Dashboard

    server, run_id = million_point_server
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    board = Dashboard(page=page, url=server.url)
    page.on("pageerror", lambda exc: board.errors.append(str(exc)))
    page.on("request", lambda request: board.requests.append(request.url))
    try:
        page.goto(f"{server.url}/?token={server.token}")
        started = time.monotonic()
        board.open_run(run_id)
        wait_chart(board, "loss")
        loaded = time.monotonic() - started
        assert loaded < 10, f"a 1,000,000-point run took {loaded:.1f} s to draw"
        drawn = board.points("loss")
        assert 100 < drawn <= 5000
        (raw,) = board.traces("loss", role="raw")
        assert len(raw["x"]) <= 3100  # drawn as min/max buckets
        assert max(y for y in raw["y"] if y is not None) > 1.0  # the one spike survived

        # A redraw (what each live update costs) stays well under a frame budget.
        slowest = page.evaluate(
            """() => { const c = window.fitdeck.runView.charts.get("loss").chart;
                       let worst = 0;
                       for (let i = 0; i < 5; i++) {
                         const t = performance.now();
                         c.draw();
                         worst = Math.max(worst, performance.now() - t);
                       }
                       return worst; }"""
        )
        assert slowest < 250, f"redrawing took {slowest:.0f} ms"

        before = len(board.metric_requests())
        page.evaluate(
            """() => Plotly.relayout(document.querySelector('.chart[data-key="loss"]'),
                                     {'xaxis.range': [500000, 501000]})"""
        )
        page.wait_for_function(
            """() => Array.from(document.querySelector('.chart[data-key="loss"]').data[0].x)
                       .filter(x => x >= 500000 && x <= 501000).length === 1001"""
        )
        assert asked_range(board.metric_requests()[before:], 500000, 501000, slack=1000)
        assert not board.errors, board.errors
    finally:
        context.close()


# -- control guards, settings drawn as steps, numbering ---------------------------


def drawn(board: Dashboard, selector: str) -> list[dict[str, Any]]:
    """The line traces of the chart at `selector`: role, label, line shape, x, y."""
    result: list[dict[str, Any]] = board.page.evaluate(
        """sel => document.querySelector(sel).data
            .filter(t => t.meta && (t.meta.role === "raw" || t.meta.role === "smoothed"))
            .map(t => ({role: t.meta.role, label: t.meta.label, shape: t.line.shape,
                        x: Array.from(t.x), y: Array.from(t.y)}))""",
        selector,
    )
    return result


def lr_record(
    t: float, step: int, lr: float, previous: float | None, spe: int = 10
) -> dict[str, Any]:
    source = "initial" if previous is None else "callback"
    return {"type": "lr", "t": t, "step": step, "epoch": step / spe, "lr": lr,
            "previous": previous, "source": source}  # fmt: skip


def test_a_learning_rate_more_than_ten_times_away_asks_first(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    t0 = time.time() - 60
    trainer = Trainer(server).start("lr-guard", "web-tests", t0)
    trainer.send(lr_record(t0, 0, 0.01, None))
    trainer.batches(range(1, 4), t0, lambda s: 0.5)
    run_id = trainer.run_id
    dashboard.open_run(run_id)
    page = dashboard.page
    page.locator("#lr-current", has_text="0.01").wait_for()
    dialog = page.locator("#lr-dialog")

    # 1e5 is 10,000,000x the current rate: asked, and cancelling sends nothing.
    page.fill("#lr-input", "1e5")
    page.click("#lr-submit")
    dialog.wait_for(state="visible")
    text = page.text_content("#lr-dialog-text") or ""
    assert "100000" in text and "larger" in text and "0.01" in text
    page.click("#cancel-lr")
    assert not dialog.is_visible()
    page.locator("#control-message", has_text="cancelled").wait_for()
    # Escape cancels too.
    page.click("#lr-submit")
    dialog.wait_for(state="visible")
    page.keyboard.press("Escape")
    assert not dialog.is_visible()
    assert server.commands(run_id) == []

    # Within 10x either way (0.05 is 5x): sent at once, no question.
    page.fill("#lr-input", "0.05")
    page.click("#lr-submit")
    server.wait_for(lambda: len(server.commands(run_id)) == 1, what="the first command")
    assert not dialog.is_visible()

    # 20x smaller: asked, and confirming sends it.
    page.fill("#lr-input", "0.0005")
    page.press("#lr-input", "Enter")
    dialog.wait_for(state="visible")
    assert "20\N{MULTIPLICATION SIGN} smaller" in (page.text_content("#lr-dialog-text") or "")
    page.click("#confirm-lr")
    server.wait_for(lambda: len(server.commands(run_id)) == 2, what="the confirmed command")
    assert [c["lr"] for c in server.commands(run_id)] == [0.05, 0.0005]
    trainer.end(t0 + 30)
    trainer.close()


def test_set_lr_is_off_with_the_reason_when_a_schedule_sets_the_rate(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    t0 = time.time() - 60
    meta = {"lr_schedule": "ExponentialDecay"}  # as the callback names it, mixed precision too
    trainer = Trainer(server).start("scheduled", "web-tests", t0, meta=meta)
    trainer.send(lr_record(t0, 0, 0.01, None))
    dashboard.open_run(trainer.run_id)
    page = dashboard.page
    page.locator("#lr-current", has_text="0.01").wait_for()
    assert page.locator("#lr-submit").is_disabled()
    assert page.locator("#lr-input").is_disabled()
    reason = page.locator("#lr-locked")
    assert reason.is_visible()
    assert "ExponentialDecay schedule" in (reason.text_content() or "")
    assert page.get_attribute("#lr-submit", "title") == reason.text_content()
    assert not page.locator("#stop-button").is_disabled()  # Stop still works
    trainer.end(t0 + 30)
    trainer.close()

    # A run without a schedule has Set LR on and no reason shown.
    plain = Trainer(server).start("plain", "web-tests", t0)
    plain.send(lr_record(t0, 0, 0.01, None))
    dashboard.open_run(plain.run_id)
    page.locator("#lr-current", has_text="0.01").wait_for()
    assert not page.locator("#lr-submit").is_disabled()
    assert not page.locator("#lr-locked").is_visible()
    plain.end(t0 + 30)
    plain.close()


def settings_run(server: ServerProcess, name: str, project: str, t0: float) -> str:
    """30 batches of loss and momentum (a setting: 0.9, then 0.8 from step 15), LR
    0.01 then 0.001 from step 12, three epochs with their LR; finished."""
    trainer = Trainer(server).start(
        name, project, t0, meta={"epochs": 3, "settings": ["learning_rate", "momentum"]}
    )
    trainer.send(lr_record(t0, 0, 0.01, None))
    records = []
    for s in range(1, 31):
        logs = {"loss": 1.0 / s + (0.2 if s % 2 else 0.0), "momentum": 0.9 if s < 15 else 0.8}
        records.append({"type": "batch", "t": t0 + s, "step": s, "epoch": s / 10, "logs": logs})
        if s == 12:
            records.append(lr_record(t0 + s, 12, 0.001, 0.01))
        if s % 10 == 0:
            lr = 0.01 if s == 10 else 0.001
            records.append({"type": "epoch", "t": t0 + s, "step": s, "epoch": s // 10 - 1,
                            "logs": {"loss": 1.0 / s, "learning_rate": lr}})  # fmt: skip
    trainer.send(*records)
    trainer.end(t0 + 31)
    trainer.close()
    return trainer.run_id


def test_settings_are_drawn_as_steps_and_never_smoothed(
    dashboard: Dashboard, server: ServerProcess
) -> None:
    page = dashboard.page
    page.evaluate("() => localStorage.clear()")  # smoothing at its default, on
    project = f"steps-{secrets.token_hex(3)}"
    t0 = time.time() - 100
    ids = [settings_run(server, name, project, t0) for name in ("steps-a", "steps-b")]

    # The run page: loss is smoothed; momentum (marked a setting) and the LR are steps.
    dashboard.open_run(ids[0])
    wait_chart(dashboard, "loss", smoothing="0.6")
    wait_chart(dashboard, "momentum", smoothing="0.6")
    assert {t["role"] for t in drawn(dashboard, '#charts .chart[data-key="loss"]')} == {
        "raw", "smoothed"
    }  # fmt: skip
    (momentum,) = drawn(dashboard, '#charts .chart[data-key="momentum"]')
    assert momentum["role"] == "raw" and momentum["shape"] == "hv"
    assert momentum["y"] == [0.9] * 14 + [0.8] * 16
    page.wait_for_function("() => document.querySelector('#lr-chart').data")
    (lr,) = drawn(dashboard, "#lr-chart")
    assert lr["shape"] == "hv" and lr["role"] == "raw"
    # The last rate holds to the last batch of the run.
    assert lr["x"] == [0, 12, 30] and lr["y"] == pytest.approx([0.01, 0.001, 0.001])

    # The compare page: the same, per run, in both scopes.
    page.goto(f"{dashboard.url}/#/compare/{ids[0]},{ids[1]}")
    lr_chart = '#compare-charts .chart[data-key="learning_rate"]'
    page.wait_for_selector(f'{lr_chart}[data-points="6"]')  # epoch scope: 3 epochs x 2 runs
    assert page.get_attribute(lr_chart, "data-smoothing") == "0.6"
    lines = drawn(dashboard, lr_chart)
    assert [t["role"] for t in lines] == ["raw", "raw"]
    assert {t["shape"] for t in lines} == {"hv"}
    assert lines[0]["x"] == [10, 20, 30] and lines[0]["y"] == pytest.approx([0.01, 0.001, 0.001])
    loss_roles = {t["role"] for t in drawn(dashboard, '#compare-charts .chart[data-key="loss"]')}
    assert loss_roles == {"raw", "smoothed"}

    page.click("#compare-scope button[data-scope='batch']")
    momentum_chart = '#compare-charts .chart[data-key="momentum"]'
    page.wait_for_selector(f'{momentum_chart}[data-points="60"]')
    page.wait_for_selector(f'{lr_chart}[data-points="4"]')
    for selector in (lr_chart, momentum_chart):
        lines = drawn(dashboard, selector)
        assert [t["role"] for t in lines] == ["raw", "raw"], selector
        assert {t["shape"] for t in lines} == {"hv"}, selector
    lr_lines = drawn(dashboard, lr_chart)
    assert [t["x"] for t in lr_lines] == [[0, 12, 30], [0, 12, 30]]


def test_epochs_and_batches_are_numbered_from_one_everywhere(
    dashboard: Dashboard, scripted_run: dict[str, Any]
) -> None:
    """Stored 0-based (epoch 3, batch 0 for the stop command), shown 1-based like Keras."""
    page = dashboard.page
    dashboard.open_run(scripted_run["run_id"])
    row = page.locator('#commands-body tr[data-kind="stop"]')
    row.locator(".badge", has_text="applied").wait_for()
    assert row.locator(".detail").text_content() == "epoch 4, batch 1"
    assert "after step 30" in (row.locator(".detail").get_attribute("title") or "")
    events = page.locator("#events li").all_text_contents()
    lr_event = next(e for e in events if "LR 0.01 → 0.005" in e)
    assert "in epoch 3 (after step 20)" in lr_event  # progress 2.0: the third epoch begins
    early = next(e for e in events if "stopped early" in e)
    assert "in epoch 4" in early
    # The progress card: the 4th of 4 epochs, all its 10 batches done.
    assert page.text_content("#progress-epoch") == "Epoch 4 / 4"
    assert page.text_content("#progress-step") == "batch 10 / 10"
