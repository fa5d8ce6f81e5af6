"""JSON routes under /api (see docs/http_api.md)."""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import commands, report, store
from server.deps import Authorized, StateDep
from server.models import (
    ERROR_RESPONSES,
    Command,
    RenameRun,
    RunId,
    Scope,
    SetLrCommand,
    command_body,
    rename_body,
)
from server.protocol import MAX_INT, Msg, dumps, encode_number

__all__ = ["health_router", "router"]

health_router = APIRouter()
router = APIRouter(prefix="/api", dependencies=[Authorized], responses=ERROR_RESPONSES)

MAX_POINTS_LIMIT = 20_000


@health_router.get("/api/health")
def health(state: StateDep) -> Response:
    """`ok`, or 503 `degraded` with the reason while writes fail (see server.store)."""
    reason = state.store.trouble
    if reason is not None:
        return JSONResponse({"status": "degraded", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/runs")
def list_runs(state: StateDep) -> dict[str, Any]:
    return {"runs": state.store.list_runs()}


@router.get("/runs/{run_id}")
def get_run(run_id: RunId, state: StateDep) -> dict[str, Any]:
    run = state.store.get_run(run_id)
    run["workers"] = state.workers.describe(run, state.trainers.connected(run_id, 0))
    return {"run": run, "keys": state.store.run_keys(run_id)}


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
    return {
        "run_id": run_id,
        "scope": scope,
        "series": {
            name: {
                "step": [p.step for p in points],
                "epoch": [p.epoch for p in points],
                "t": [p.t for p in points],
                "value": [encode_number(p.value) for p in points],
                "downsampled": downsampled,
            }
            for name, (points, downsampled) in series.items()
        },
    }


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
    command = await state.store.write(lambda c: commands.create_command(c, run_id, body.kind, lr))
    state.hub.to_run(run_id, Msg.command(command, run_id))
    await state.trainers.send_command(run_id, command)
    return JSONResponse({"command": command}, status_code=202)


@router.get("/runs/{run_id}/export.csv")
def export_csv(run_id: RunId, state: StateDep) -> StreamingResponse:
    run = state.store.get_run(run_id)
    filename = f"fitdeck-{run_id[:8]}.csv"

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["scope", "key", "step", "epoch", "t", "value"])
        for scope, key, points in store.iter_series_points(state.store.path, run["id"]):
            writer.writerows(
                (scope, key, p.step, p.epoch, p.t, "nan" if p.value is None else p.value)
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


REPORT_MAX_POINTS = 5000


@router.get("/runs/{run_id}/report.html")
def report_html(run_id: RunId, state: StateDep) -> Response:
    run = state.store.get_run(run_id)
    html = report.build(
        run,
        state.store.metrics(run_id, "epoch", None, REPORT_MAX_POINTS),
        state.store.metrics(run_id, "batch", None, REPORT_MAX_POINTS),
        state.store.events(run_id),
    )
    # A download, never shown in place: the app's CSP would block its inline scripts.
    return Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="fitdeck-{run_id[:8]}-report.html"'},
    )
