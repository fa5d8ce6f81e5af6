"""JSON routes under /api (see docs/http_api.md)."""

from __future__ import annotations

import csv
import io
import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from server import commands, report, store
from server.deps import AppState, Authorized, StateDep
from server.downsample import Point
from server.models import (
    ERROR_RESPONSES,
    MAX_POINTS_LIMIT,
    BulkDelete,
    Command,
    MetricsQuery,
    RenameRun,
    RunId,
    RunsQuery,
    Scope,
    SetLrCommand,
    bulk_delete_body,
    command_args,
    command_body,
    rename_body,
)
from server.protocol import MAX_INT, Msg, dumps, encode_number

__all__ = ["health_router", "router"]

health_router = APIRouter()
router = APIRouter(prefix="/api", dependencies=[Authorized], responses=ERROR_RESPONSES)

DELETE_CHUNK = 200
"""Runs deleted per writer task by `POST /api/runs/delete`: ingest runs between chunks."""


@health_router.get("/api/health")
def health(state: StateDep) -> Response:
    """`ok`, or 503 `degraded` with the reason while writes fail (see server.store)."""
    reason = state.store.trouble
    if reason is not None:
        return JSONResponse({"status": "degraded", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/runs")
def list_runs(query: Annotated[RunsQuery, Query()], state: StateDep) -> dict[str, Any]:
    runs, following, total = state.store.runs_page(
        query.run_filter(),
        sort=query.sort.removeprefix("-"),
        descending=query.sort.startswith("-"),
        limit=query.limit,
        cursor=query.cursor,
    )
    return {"runs": runs, "next": following, "total": total}


def _deleter(state: AppState, chunk: list[str]) -> Callable[[sqlite3.Connection], list[str]]:
    return lambda conn: store.delete_runs(conn, state.store.memory, chunk)


@router.post("/runs/delete", openapi_extra=bulk_delete_body.openapi)
async def delete_runs(
    body: Annotated[BulkDelete, Depends(bulk_delete_body)], state: StateDep
) -> dict[str, Any]:
    where = body.run_filter()
    ids, running = await run_in_threadpool(state.store.deletable_runs, where)
    deleted = 0
    if not body.dry_run:
        for i in range(0, len(ids), DELETE_CHUNK):
            gone = await state.store.write(_deleter(state, ids[i : i + DELETE_CHUNK]))
            for run_id in gone:
                state.hub.broadcast(Msg.run_deleted(run_id))
            deleted += len(gone)
    return {
        "matched": len(ids) + running,
        "deleted": deleted,
        "running": running,
        "dry_run": body.dry_run,
    }


@router.get("/stats")
def stats(state: StateDep) -> dict[str, Any]:
    return state.store.stats()


def _series_json(series: dict[str, tuple[list[Point], bool]]) -> dict[str, Any]:
    return {
        name: {
            "step": [p.step for p in points],
            "epoch": [p.epoch for p in points],
            "t": [p.t for p in points],
            "value": [encode_number(p.value) for p in points],
            "downsampled": downsampled,
        }
        for name, (points, downsampled) in series.items()
    }


@router.get("/metrics")
def many_metrics(query: Annotated[MetricsQuery, Query()], state: StateDep) -> dict[str, Any]:
    ids = list(dict.fromkeys(query.run_id))
    runs = state.store.runs_by_id(ids)
    out = {}
    for run_id in ids:
        if run_id in runs:
            series = state.store.metrics(
                run_id, query.scope, query.key or None, query.max_points, query.start, query.end
            )
            out[run_id] = {"run": runs[run_id], "series": _series_json(series)}
    return {"scope": query.scope, "runs": out, "missing": [i for i in ids if i not in runs]}


@router.get("/runs/{run_id}")
def get_run(run_id: RunId, state: StateDep) -> dict[str, Any]:
    run = state.store.get_run(run_id)
    run["workers"] = state.workers.describe(run, state.trainers.connected(run_id, 0))
    knobs, callbacks = state.store.run_state(run_id)
    return {"run": run, "keys": state.store.run_keys(run_id), "knobs": knobs,
            "callbacks": callbacks}  # fmt: skip


@router.get("/runs/{run_id}/metrics")
def metrics(
    run_id: RunId,
    state: StateDep,
    scope: Annotated[Scope, Query(description="`epoch` or `batch`.")] = "epoch",
    key: Annotated[
        list[str] | None, Query(description="A metric name; repeat for several. All if none.")
    ] = None,
    max_points: Annotated[
        int,
        Query(ge=2, le=MAX_POINTS_LIMIT, description="At most this many points per series."),
    ] = 2000,
    start: Annotated[
        int | None, Query(ge=0, le=MAX_INT, description="First `step` to read (inclusive).")
    ] = None,
    end: Annotated[
        int | None, Query(ge=0, le=MAX_INT, description="Last `step` to read (inclusive).")
    ] = None,
) -> dict[str, Any]:
    state.store.get_run(run_id)  # 404 for an unknown run
    series = state.store.metrics(run_id, scope, key, max_points, start, end)
    return {"run_id": run_id, "scope": scope, "series": _series_json(series)}


@router.get("/runs/{run_id}/events")
def events(run_id: RunId, state: StateDep) -> dict[str, Any]:
    state.store.get_run(run_id)
    return {"events": state.store.events(run_id)}


@router.get("/runs/{run_id}/commands")
def list_commands(run_id: RunId, state: StateDep) -> dict[str, Any]:
    state.store.get_run(run_id)
    return {"commands": state.store.commands(run_id)}


@router.post("/runs/{run_id}/commands", status_code=202, openapi_extra=command_body.openapi)
async def post_command(
    run_id: RunId, body: Annotated[Command, Depends(command_body)], state: StateDep
) -> Response:
    lr = body.lr if isinstance(body, SetLrCommand) else None
    args = command_args(body)
    command = await state.store.write(
        lambda c: commands.create_command(c, run_id, body.kind, lr, args)
    )
    state.hub.to_run(run_id, Msg.command(command, run_id))
    await state.trainers.send_command(run_id, command)
    return JSONResponse({"command": command}, status_code=202)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (OWASP CSV injection: a
    leading `'`). Only text cells (metric names) pass here: numbers such as -0.5
    are written as numbers."""
    return "'" + text if text.startswith(FORMULA_START) else text


@router.get("/runs/{run_id}/export.csv")
def export_csv(run_id: RunId, state: StateDep) -> StreamingResponse:
    run = state.store.get_run(run_id)
    filename = f"fitdeck-{run_id[:8]}.csv"

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)  # RFC 4180 lines (CRLF): a CR in a name is quoted too
        writer.writerow(["scope", "key", "step", "epoch", "t", "value"])
        for scope, key, points in store.iter_series_points(state.store.path, run["id"]):
            name = csv_text(key)
            writer.writerows(
                (scope, name, p.step, p.epoch, p.t, "nan" if p.value is None else p.value)
                for p in points
            )
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()

    return StreamingResponse(
        rows(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# -- run management ------------------------------------------------------------------


@router.patch("/runs/{run_id}", openapi_extra=rename_body.openapi)
async def rename_run(
    run_id: RunId, body: Annotated[RenameRun, Depends(rename_body)], state: StateDep
) -> dict[str, Any]:
    run = await state.store.write(lambda c: store.rename_run(c, run_id, body.name))
    state.hub.run(run)
    return {"run": run}


@router.delete("/runs/{run_id}", status_code=204)
async def delete_run(run_id: RunId, state: StateDep) -> Response:
    await state.store.write(lambda c: store.delete_run(c, state.store.memory, run_id))
    state.hub.broadcast(Msg.run_deleted(run_id))
    return Response(status_code=204)


# -- exports -------------------------------------------------------------------------


def _strict(obj: Any) -> Any:
    """`obj` with every non-finite float written as "NaN", "Infinity" or "-Infinity"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return encode_number(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    return obj


@router.get("/runs/{run_id}/export.json")
def export_json(run_id: RunId, state: StateDep) -> StreamingResponse:
    run = state.store.get_run(run_id)
    head = {
        "run": _strict(run),
        "events": _strict(state.store.events(run_id)),
        "commands": _strict(state.store.commands(run_id)),
    }

    def body() -> Iterator[str]:
        yield dumps(head)[:-1] + ',"series":{'
        chunks = store.iter_series_points(state.store.path, run_id)
        scope_now = None
        first_key = True
        for (scope, key), group in itertools.groupby(chunks, key=lambda c: (c[0], c[1])):
            if scope != scope_now:
                yield ("}," if scope_now is not None else "") + dumps(scope) + ":{"
                scope_now, first_key = scope, True
            # Column by column as JSON text: one series at a time, never the run's all.
            columns: dict[str, list[str]] = {"step": [], "epoch": [], "t": [], "value": []}
            for _scope, _key, points in group:
                if not points:
                    continue
                columns["step"].append(dumps([p.step for p in points])[1:-1])
                columns["epoch"].append(dumps([p.epoch for p in points])[1:-1])
                columns["t"].append(dumps([p.t for p in points])[1:-1])
                columns["value"].append(dumps([encode_number(p.value) for p in points])[1:-1])
            fields = ",".join(f'"{name}":[{",".join(parts)}]' for name, parts in columns.items())
            yield ("" if first_key else ",") + dumps(key) + ":{" + fields + "}"
            first_key = False
        yield ("}" if scope_now is not None else "") + "}}"

    return StreamingResponse(
        body(),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="fitdeck-{run_id[:8]}.json"'},
    )


@router.get("/runs/{run_id}/report.html")
async def report_html(run_id: RunId, state: StateDep, request: Request) -> Response:
    # Bounded and off the event loop: see server.report.
    return await report.respond(request, state.store, run_id)
