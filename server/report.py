"""A standalone HTML report of one run: its charts with plotly.js inlined, readable offline.

The figure is written as plain Plotly JSON (data and layout, one pair of axes per
chart), not through `plotly.graph_objects`, whose validation and subplot lookups
cost more than linearly in the number of charts (800 metrics took 26 s of CPU).
Here the cost is linear in what is drawn, and what is drawn is capped:

- at most `MAX_CHARTS` metric charts (the rest are named in the run's table;
  the JSON export has every series), plus the learning-rate chart;
- at most `SERIES_POINTS` points a series and `MAX_POINTS` in all, downsampled
  as in the metrics route (min/max kept);
- at most `MAX_EVENT_LINES` LR-change and early-stop lines.

A report is built off the event loop, in one of `CONCURRENCY` worker processes;
at most `QUEUE` more requests wait (up to `PATIENCE` s) for one, the rest are
refused at once with 503 and `Retry-After`. A build whose client has left is
abandoned at its next chart.

Names from the training script are written as text (Plotly reads a small HTML
subset in titles and legends, so markup characters become entities there; the
JSON has `<`, `>` and `&` escaped, so no string can end the script).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import importlib.util
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server.downsample import Point
from server.guard import error_response
from server.protocol import LR_KEY, SETTINGS_META
from server.store import Store

__all__ = [
    "CONCURRENCY",
    "MAX_CHARTS",
    "MAX_EVENT_LINES",
    "MAX_POINTS",
    "SERIES_POINTS",
    "Abandoned",
    "Figure",
    "Plan",
    "build",
    "chart_groups",
    "close_builders",
    "figure",
    "make",
    "page",
    "plan",
    "respond",
    "setting_keys",
]

log = logging.getLogger("fitdeck.report")

Series = dict[str, tuple[list[Point], bool]]
COLORS = ["#1f6feb", "#e8710a", "#1a7f37", "#8250df", "#d1242f"]

MAX_CHARTS = 50
"""Most metric charts one report draws (`val_x` shares the chart of `x`)."""
SERIES_POINTS = 5000
"""Most points one series is drawn with."""
MAX_POINTS = 200_000
"""Most points one report draws in all: with many series, each gets fewer."""
MIN_SERIES_POINTS = 200
MAX_EVENT_LINES = 100
"""Most LR-change and early-stop lines drawn (the first ones)."""
CONCURRENCY = 2
"""Reports built at once, per server."""
QUEUE = 4
"""Report requests that may wait for a free builder; more get 503 at once."""
PATIENCE = 15.0
"""Seconds a request waits for a builder before it gets 503."""
RETRY_AFTER = 5
"""Seconds a refused client is told to wait (`Retry-After`)."""
WATCH_SECONDS = 0.2
"""How often a build in progress checks that its client is still there."""
FETCH_CHUNK = 16  # series read between two looks at the client
WORKER_NICENESS = 10


class Abandoned(Exception):
    """The client left; the report is not finished."""


def _text(s: object) -> str:
    return html.escape(str(s), quote=False).replace("{", "&#123;")


def _go_on() -> None:
    """The default `check`: never abandon."""


def chart_groups(keys: Sequence[str]) -> dict[str, list[str]]:
    """Metric keys by chart: `val_x` beside `x`, loss first, learning rate left out."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        if key == LR_KEY:
            continue
        base = key[4:] if key.startswith("val_") and len(key) > 4 else key
        groups.setdefault(base, []).append(key)
    for keys_ in groups.values():
        keys_.sort(key=lambda k: (k.startswith("val_"), k))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] != "loss", kv[0])))


# -- what to draw ---------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The series one report reads: `keys[scope]`, each with at most `points` points."""

    keys: dict[str, list[str]]
    points: int
    left_out: list[str]
    """Charts not drawn (their base metric names)."""


def plan(run_keys: dict[str, list[str]]) -> Plan:
    """The first `MAX_CHARTS` charts of a run whose series are `run_keys[scope]`."""
    present = {scope: set(keys) for scope, keys in run_keys.items()}
    every = sorted(set().union(*present.values())) if present else []
    groups = chart_groups(every)
    drawn = dict(itertools.islice(groups.items(), MAX_CHARTS))
    wanted = {key for keys in drawn.values() for key in keys} | {LR_KEY}
    keys = {scope: sorted(wanted & present.get(scope, set())) for scope in ("epoch", "batch")}
    n_series = max(1, sum(len(k) for k in keys.values()))
    points = max(MIN_SERIES_POINTS, min(SERIES_POINTS, MAX_POINTS // n_series))
    return Plan(keys=keys, points=points, left_out=[g for g in groups if g not in drawn])


# -- the figure ------------------------------------------------------------------


def setting_keys(run: dict[str, Any]) -> frozenset[str]:
    """The run's series that are settings (drawn as steps): LR_KEY and meta's SETTINGS_META."""
    listed = (run.get("meta") or {}).get(SETTINGS_META)
    extra = [k for k in listed if isinstance(k, str)] if isinstance(listed, list) else []
    return frozenset({LR_KEY, *extra})


def _run_end_x(epoch: Series, batch: Series) -> float | None:
    """How far the run got on the x axis (epochs done): its last batch or epoch point."""
    ends = [p[-1].epoch for p, _ in batch.values() if p and p[-1].epoch is not None]
    ends += [p[-1].epoch + 1 for p, _ in epoch.values() if p and p[-1].epoch is not None]
    return max(ends) if ends else None


def _hold_to(
    x: list[float], y: list[float | None], end: float | None
) -> tuple[list[float], list[float | None]]:
    """A setting's step line carried on to `end`: its last value holds until the run ended."""
    if end is None or not x or end <= x[-1]:
        return x, y
    return [*x, end], [*y, y[-1]]


def _xy(points: list[Point], epoch_plus_one: bool) -> tuple[list[float], list[float | None]]:
    xs: list[float] = []
    ys: list[float | None] = []
    for p in points:
        if p.epoch is None:
            continue
        xs.append(p.epoch + 1 if epoch_plus_one else p.epoch)
        v = p.value
        ys.append(v if v is not None and math.isfinite(v) else None)
    return xs, ys


def _nonfinite(points: list[Point], epoch_plus_one: bool) -> tuple[list[float], list[str]]:
    xs: list[float] = []
    names: list[str] = []
    for p in points:
        if p.epoch is None or (p.value is not None and math.isfinite(p.value)):
            continue
        xs.append(p.epoch + 1 if epoch_plus_one else p.epoch)
        v = p.value
        names.append(
            "NaN" if v is None or math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        )
    return xs, names


def _rows(n: int) -> list[tuple[float, float]]:
    """The vertical extent (bottom, top) of `n` stacked rows, top first; the first row
    (the run's table) 1.2 times as tall as the charts, as `make_subplots` lays them out."""
    gap = min(0.06, 0.5 / n)
    heights = [1.2] + [1.0] * (n - 1)
    unit = (1.0 - gap * (n - 1)) / sum(heights)
    out: list[tuple[float, float]] = []
    top = 1.0
    for h in heights:
        bottom = max(0.0, top - h * unit)
        out.append((bottom, top))
        top = bottom - gap
    return out


def _axis(i: int) -> str:
    """Plotly's name for the i-th pair of axes (1-based): `""`, `"2"`, …"""
    return "" if i == 1 else str(i)


def _series_traces(
    key: str,
    base: str,
    color: str,
    epoch: Series,
    batch: Series,
    axis: str,
    end_x: float | None = None,
) -> Iterator[dict[str, Any]]:
    """One metric on its chart: batch values faint, epoch values bold, non-finite
    values as red crosses at 0. A setting (`end_x` given) is a step line held to `end_x`."""
    where = {"xaxis": f"x{axis}", "yaxis": f"y{axis}"}
    shape = "linear" if end_x is None else "hv"
    if key in batch and batch[key][0]:
        x, y = _xy(batch[key][0], epoch_plus_one=False)
        if end_x is not None:
            x, y = _hold_to(x, y, end_x)
        yield {"type": "scatter", "x": x, "y": y, "mode": "lines", "name": _text(f"{key} (batch)"),
               "line": {"color": color, "width": 1, "shape": shape}, "opacity": 0.35,
               "legendgroup": base, **where}  # fmt: skip
    if key in epoch and epoch[key][0]:
        x, y = _xy(epoch[key][0], epoch_plus_one=True)
        yield {"type": "scatter", "x": x, "y": y, "mode": "lines+markers", "name": _text(key),
               "line": {"color": color, "width": 2, "shape": shape}, "legendgroup": base,
               **where}  # fmt: skip
    for scope_series, plus_one in ((batch, False), (epoch, True)):
        if key not in scope_series:
            continue
        nx, names = _nonfinite(scope_series[key][0], plus_one)
        if nx:
            yield {"type": "scatter", "x": nx, "y": [0] * len(nx), "mode": "markers",
                   "name": _text(f"{key}: {names[0]}"), "text": names,
                   "marker": {"symbol": "x", "color": "#d1242f", "size": 10},
                   "hovertemplate": "%{text} at epoch %{x}<extra></extra>", **where}  # fmt: skip


def _lr_traces(
    epoch: Series, batch: Series, axis: str, end_x: float | None
) -> list[dict[str, Any]]:
    """The learning rate as steps (`hv`), per batch when it was recorded per batch,
    its last value held to the end of the run."""
    lr_points = batch[LR_KEY][0] if LR_KEY in batch else epoch[LR_KEY][0]
    x, y = _hold_to(*_xy(lr_points, epoch_plus_one=LR_KEY not in batch), end_x)
    return [{"type": "scatter", "x": x, "y": y, "mode": "lines", "line": {"shape": "hv"},
             "name": "learning_rate", "xaxis": f"x{axis}", "yaxis": f"y{axis}"}]  # fmt: skip


class Figure(NamedTuple):
    """A drawn report, short of its page: plotly.js goes around it in `page`."""

    name: str
    height: int
    json: str
    """The Plotly figure (data and layout), safe inside a `<script>`."""


def build(
    run: dict[str, Any],
    epoch: Series,
    batch: Series,
    events: list[dict[str, Any]],
    *,
    left_out: Sequence[str] = (),
    check: Callable[[], None] = _go_on,
) -> str:
    """The report as one HTML document (plotly.js included); see `figure`."""
    return page(figure(run, epoch, batch, events, left_out=left_out, check=check)).decode()


def figure(
    run: dict[str, Any],
    epoch: Series,
    batch: Series,
    events: list[dict[str, Any]],
    *,
    left_out: Sequence[str] = (),
    check: Callable[[], None] = _go_on,
) -> Figure:
    """The report's figure: the first `MAX_CHARTS` charts of `epoch` and `batch`;
    `left_out` names charts the caller did not read. `check` is called before each
    chart and may raise (`Abandoned`) to stop.
    """
    settings = setting_keys(run)
    end_x = _run_end_x(epoch, batch)
    groups = chart_groups(list({*epoch, *batch}))
    skipped = [*left_out, *list(groups)[MAX_CHARTS:]]
    groups = dict(itertools.islice(groups.items(), MAX_CHARTS))
    has_lr = LR_KEY in batch or LR_KEY in epoch
    titles = [_text(g) for g in groups] + (["learning rate"] if has_lr else [])
    rows = _rows(1 + max(1, len(titles)))
    info = _info(run, skipped)
    bottom, top = rows[0]
    data: list[dict[str, Any]] = [
        {
            "type": "table",
            "domain": {"x": [0.0, 1.0], "y": [bottom, top]},
            "header": {"values": ["", ""], "height": 4, "line": {"width": 0}},
            "cells": {"values": [[_text(k) for k in info], [_text(v) for v in info.values()]]},
            "columnwidth": [1, 4],
        }
    ]
    layout: dict[str, Any] = {}
    annotations = [_title("run", top)]
    for i, title in enumerate(titles, start=1):
        bottom, top = rows[i]
        axis = _axis(i)
        layout[f"xaxis{axis}"] = {"domain": [0.0, 1.0], "anchor": f"y{axis}",
                                  "title": {"text": "epoch"}}  # fmt: skip
        layout[f"yaxis{axis}"] = {"domain": [bottom, top], "anchor": f"x{axis}"}
        annotations.append(_title(title, top))
    for i, (base, keys) in enumerate(groups.items(), start=1):
        check()
        for j, key in enumerate(keys):
            held = end_x if key in settings else None
            color = COLORS[j % len(COLORS)]
            data.extend(_series_traces(key, base, color, epoch, batch, _axis(i), held))
    if has_lr:
        lr_axis = _axis(len(titles))
        data.extend(_lr_traces(epoch, batch, lr_axis, end_x))
        layout[f"yaxis{lr_axis}"]["type"] = "log"
    name = run.get("name") or run["id"]
    height = 320 * len(rows)
    layout.update(
        title={"text": f"{_text(name)} — {_text(run.get('status'))}"},
        height=height,
        template=_template(),
        hovermode="x unified",
        legend={"orientation": "h"},
        annotations=annotations,
        shapes=_event_lines(run, events, len(titles)),
    )
    check()
    return Figure(str(name), height, _json({"data": data, "layout": layout}))


def _title(text: str, top: float) -> dict[str, Any]:
    return {"text": text, "x": 0.5, "xanchor": "center", "xref": "paper", "y": top,
            "yanchor": "bottom", "yref": "paper", "showarrow": False,
            "font": {"size": 16}}  # fmt: skip


def _event_lines(run: dict[str, Any], events: list[dict[str, Any]], charts: int) -> list[Any]:
    """Dotted lines at LR changes and early stops, on every chart."""
    spe = (run.get("meta") or {}).get("steps_per_epoch")

    def at(e: dict[str, Any]) -> Any:  # in epochs of progress, like the batch points
        return e["step"] / spe if spe and e.get("step") is not None else e.get("epoch")

    marks = [at(e) for e in events if e["kind"] in ("lr_change", "early_stop")]
    marks = [x for x in marks if x is not None][:MAX_EVENT_LINES]
    return [
        {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": f"x{_axis(i)}",
         "yref": f"y{_axis(i)} domain", "line": {"dash": "dot", "width": 1, "color": "#8250df"}}
        for x in marks
        for i in range(1, charts + 1)
    ]  # fmt: skip


def _info(run: dict[str, Any], skipped: Sequence[str]) -> dict[str, str]:
    meta = run.get("meta") or {}
    done = 0 if run.get("epoch") is None else run["epoch"] + 1
    info = {
        "name": str(run.get("name") or ""),
        "project": str(run.get("project") or "—"),
        "status": str(run.get("status")),
        "id": str(run["id"]),
        "epochs": f"{done} / {meta.get('epochs', '?')}",
        "steps": str(run.get("step")),
    }
    opt = meta.get("optimizer") or {}
    if opt.get("class_name"):
        info["optimizer"] = str(opt["class_name"])
    if meta.get("param_count") is not None:
        info["parameters"] = f"{meta['param_count']:,}"
    for k, v in (run.get("params") or {}).items():
        info[f"param {k}"] = v if isinstance(v, str) else json.dumps(v)
    if skipped:
        names = ", ".join(skipped[:20]) + (", …" if len(skipped) > 20 else "")
        info["not drawn"] = (
            f"{len(skipped)} more charts (a report draws at most {MAX_CHARTS}; "
            f"export.json has every series): {names}"
        )
    return info


# -- the page ---------------------------------------------------------------------


def _plotly_file(*parts: str) -> Path:
    """A file of the installed `plotly` package, found without importing it."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise RuntimeError("the plotly package is not installed")
    return Path(spec.origin).parent.joinpath("package_data", *parts)


@functools.cache
def _plotly_js() -> bytes:
    return _plotly_file("plotly.min.js").read_bytes()


@functools.cache
def _template() -> dict[str, Any]:
    template: dict[str, Any] = json.loads(
        _plotly_file("templates", "plotly_white.json").read_text()
    )
    return template


def _json(figure: dict[str, Any]) -> str:
    """Plotly JSON that is safe inside a `<script>`: no string can close it."""
    text = orjson.dumps(figure).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(fig: Figure) -> bytes:
    """The standalone HTML document around `fig`, plotly.js inlined."""
    head = (
        '<!doctype html>\n<html>\n<head>\n<meta charset="utf-8" />\n'
        f"<title>{html.escape(fig.name)} · fitdeck report</title>\n"
        "<style>html, body {margin: 0;}</style>\n</head>\n<body>\n"
        f'<div id="report" style="height:{fig.height}px; width:100%;"></div>\n'
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n<script>"
    )
    tail = (
        f"</script>\n<script>\nvar figure = {fig.json};\n"
        'Plotly.newPlot("report", figure.data, figure.layout, {"displaylogo": false});\n'
        "</script>\n</body>\n</html>\n"
    )
    return b"".join([head.encode(), _plotly_js(), tail.encode()])


# -- serving it: bounded, off the event loop, abandoned when the client leaves -----
# Reports are built in `CONCURRENCY` worker processes, not threads: a build is
# CPU-bound Python, and in a thread of the server its hold on the GIL would slow
# every other request (an event loop waits up to the switch interval, 5 ms, each
# time it wants the GIL back, several times a request). A worker reads the
# database itself (read-only) and sends back the drawn figure. Each running build
# has a slot; its flag in shared memory tells the worker its client has left.


class Busy(Exception):
    """Every builder is busy and the queue is full (or stayed so for `PATIENCE` s)."""


class Gate:
    """`running` slots for builds, `waiting` more requests may wait, the rest refused."""

    def __init__(self, running: int = CONCURRENCY, waiting: int = QUEUE) -> None:
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(running):
            self._free.put_nowait(slot)
        self._waiting = 0
        self._max_waiting = waiting

    def idle(self) -> int:
        """Slots free now."""
        return self._free.qsize()

    @asynccontextmanager
    async def slot(self, patience: float = PATIENCE) -> AsyncIterator[int]:
        if self._free.empty():
            if self._waiting >= self._max_waiting:
                raise Busy
            self._waiting += 1
            try:
                slot = await asyncio.wait_for(self._free.get(), patience)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                raise Busy from None
            finally:
                self._waiting -= 1
        else:
            slot = self._free.get_nowait()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)


class Builders:
    """The worker processes (started on first use) and their slots' "client left" flags."""

    def __init__(self, workers: int = CONCURRENCY) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        self.gone = context.Array("b", workers, lock=False)
        self._workers = workers
        self._context = context
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def build(self, db: Path, run_id: str, slot: int) -> asyncio.Future[Figure]:
        self.gone[slot] = 0
        pool = self._running_pool()
        try:
            future = pool.submit(_build_in_worker, str(db), run_id, slot)
        except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            future = self._running_pool().submit(_build_in_worker, str(db), run_id, slot)
        return asyncio.wrap_future(future)

    def _running_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self._workers, mp_context=self._context, initializer=_start_worker,
                    initargs=(self.gone,),
                )  # fmt: skip
            return self._pool

    def abandon(self, slot: int) -> None:
        self.gone[slot] = 1

    def close(self) -> None:
        """Stop the workers: builds under way stop at their next look (the server is
        going away, and with it their clients)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            for slot in range(self._workers):
                self.abandon(slot)
            pool.shutdown(wait=True, cancel_futures=True)


_builders_lock = threading.Lock()
_builders: Builders | None = None
ORPHAN_CHECK_SECONDS = 1.0
"""How often a worker looks whether the server that started it is still there."""


def builders() -> Builders:
    """This process's report builders (one set, whatever the number of apps)."""
    global _builders
    with _builders_lock:
        if _builders is None:
            _builders = Builders()
        return _builders


def close_builders() -> None:
    """Stop this process's report workers, if it started any (at server shutdown:
    uvicorn ends a signalled server by the signal itself, which runs no atexit)."""
    with _builders_lock:
        workers = _builders
    if workers is not None:
        workers.close()


_worker_gone: Any = None
_worker_stores: dict[str, Store] = {}


def _start_worker(gone: Any) -> None:
    global _worker_gone
    _worker_gone = gone
    # Ctrl-C reaches the whole process group: the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A server that died without stopping them (SIGKILL) leaves them orphaned: go too.
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch_parent, name="fitdeck-orphan-check", daemon=True).start()
    if hasattr(os, "nice"):  # background work: the server's own requests come first
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICENESS)


def _build_in_worker(db: str, run_id: str, slot: int) -> Figure:
    """In a worker process: read the run (read-only) and build its report."""
    store = _worker_stores.get(db)
    if store is None:
        store = _worker_stores[db] = Store(Path(db))  # never opened: reads only

    def check() -> None:
        if _worker_gone is not None and _worker_gone[slot]:
            raise Abandoned

    # The figure only (a few hundred KB): the server puts plotly.js (4.6 MB) around it.
    return make_figure(store, run_id, check)


def make(store: Store, run_id: str, check: Callable[[], None] = _go_on) -> str:
    """Read what the report draws (and only that) and build it."""
    return page(make_figure(store, run_id, check)).decode()


def make_figure(store: Store, run_id: str, check: Callable[[], None] = _go_on) -> Figure:
    """Read what the report draws (and only that) and draw it."""
    run = store.get_run(run_id)
    todo = plan(store.run_keys(run_id))
    series: dict[str, Series] = {"epoch": {}, "batch": {}}
    for scope, keys in todo.keys.items():
        for i in range(0, len(keys), FETCH_CHUNK):
            check()
            chunk = keys[i : i + FETCH_CHUNK]
            series[scope].update(store.metrics(run_id, scope, chunk, todo.points))
    events = store.events(run_id)
    return figure(run, series["epoch"], series["batch"], events, left_out=todo.left_out,
                  check=check)  # fmt: skip


def _gate(request: Request) -> Gate:
    gate: Gate | None = getattr(request.app.state, "report_gate", None)
    if gate is None:
        gate = request.app.state.report_gate = Gate()
    return gate


async def respond(request: Request, store: Store, run_id: str) -> Response:
    """The report route: 200 with the report, 503 with `Retry-After` when busy."""
    store.get_run(run_id)  # 404 before any waiting
    try:
        async with _gate(request).slot() as slot:
            drawn = await _build_watching(request, store.path, run_id, slot)
    except Busy:
        refusal = error_response(
            503,
            f"Reports are being built for others (at most {CONCURRENCY} at once); "
            f"retry in {RETRY_AFTER} s.",
        )
        refusal.headers["Retry-After"] = str(RETRY_AFTER)
        return refusal
    if drawn is None:  # the client left; nobody reads this
        return Response(status_code=499)
    return Response(
        page(drawn),
        media_type="text/html; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="fitdeck-{run_id[:8]}-report.html"'},
    )


async def _build_watching(request: Request, db: Path, run_id: str, slot: int) -> Figure | None:
    """Build in a worker; `None` (and the build stopped) if the client leaves first."""
    workers = builders()
    future = workers.build(db, run_id, slot)
    while True:
        done, _ = await asyncio.wait({future}, timeout=WATCH_SECONDS)
        if done:
            return future.result()
        if await request.is_disconnected():
            workers.abandon(slot)
            try:  # the slot stays taken until the worker has really stopped
                await future
            except Abandoned:
                log.info("report of run %s abandoned: its client left", run_id)
            return None
