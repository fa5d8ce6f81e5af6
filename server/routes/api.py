"""JSON routes under /api (see docs/http_api.md)."""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import commands, report, store
from server.deps import Authorized, StateDep
from server.errors import BadRequest
from server.protocol import MAX_NAME, FrameError, Msg, dumps, encode_number, loads

__all__ = ["health_router", "router"]

health_router = APIRouter()
router = APIRouter(prefix="/api", dependencies=[Authorized])

MAX_POINTS_LIMIT = 20_000


@health_router.get("/api/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/runs")
def list_runs(state: StateDep) -> dict[str, Any]:
    return {"runs": state.store.list_runs()}


@router.get("/runs/{run_id}")
def get_run(run_id: str, state: StateDep) -> dict[str, Any]:
    run = state.store.get_run(run_id)
    return {"run": run, "keys": state.store.run_keys(run_id)}


@router.get("/runs/{run_id}/metrics")
def metrics(
    run_id: str,
    state: StateDep,
    scope: str = "epoch",
    key: Annotated[list[str] | None, Query()] = None,
    max_points: int = 2000,
    start: int | None = None,
    end: int | None = None,
) -> dict[str, Any]:
    if scope not in ("epoch", "batch"):
        raise BadRequest(f"scope must be 'epoch' or 'batch', got {scope!r}.")
    if not 2 <= max_points <= MAX_POINTS_LIMIT:
        raise BadRequest(f"max_points must be between 2 and {MAX_POINTS_LIMIT}, got {max_points}.")
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
def events(run_id: str, state: StateDep) -> dict[str, Any]:
    state.store.get_run(run_id)
    return {"events": state.store.events(run_id)}


@router.get("/runs/{run_id}/commands")
def list_commands(run_id: str, state: StateDep) -> dict[str, Any]:
    state.store.get_run(run_id)
    return {"commands": state.store.commands(run_id)}


@router.post("/runs/{run_id}/commands", status_code=202)
async def post_command(run_id: str, request: Request, state: StateDep) -> Response:
    kind, lr = parse_command(await request.body())
    command = await state.store.write(lambda c: commands.create_command(c, run_id, kind, lr))
    state.hub.to_run(run_id, Msg.command(command, run_id))
    await state.trainers.send_command(run_id, command)
    return JSONResponse({"command": command}, status_code=202)


def _json_body(body: bytes) -> Any:
    try:
        return loads(body.decode("utf-8", errors="replace") or "null")
    except FrameError as exc:
        raise BadRequest(str(exc)) from None


def parse_command(body: bytes) -> tuple[str, float | None]:
    payload = _json_body(body)
    if not isinstance(payload, dict):
        raise BadRequest('The body must be a JSON object such as {"kind": "stop"}.')
    kind = payload.get("kind")
    if kind == "stop":
        return kind, None
    if kind == "set_lr":
        lr = payload.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise BadRequest(f"set_lr needs a number 'lr', got {lr!r}.")
        if not math.isfinite(lr) or lr <= 0:
            raise BadRequest(f"The learning rate must be a finite number > 0, got {lr!r}.")
        return kind, float(lr)
    raise BadRequest(f"Unknown command kind {kind!r}; expected 'stop' or 'set_lr'.")


@router.get("/runs/{run_id}/export.csv")
def export_csv(run_id: str, state: StateDep) -> StreamingResponse:
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


@router.patch("/runs/{run_id}")
async def rename_run(run_id: str, request: Request, state: StateDep) -> dict[str, Any]:
    name = parse_rename(await request.body())
    run = await state.store.write(lambda c: store.rename_run(c, run_id, name))
    state.hub.run(run)
    return {"run": run}


def parse_rename(body: bytes) -> str:
    payload = _json_body(body)
    if not isinstance(payload, dict) or "name" not in payload:
        raise BadRequest('The body must be a JSON object such as {"name": "baseline"}.')
    name = payload["name"]
    if not isinstance(name, str):
        raise BadRequest(f"'name' must be a string, got {name!r}.")
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise BadRequest(
            f"'name' must have 1 to {MAX_NAME} characters (spaces around it"
            f" trimmed), got {len(name)}."
        )
    return name


@router.delete("/runs/{run_id}", status_code=204)
async def delete_run(run_id: str, state: StateDep) -> Response:
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
def export_json(run_id: str, state: StateDep) -> StreamingResponse:
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
def report_html(run_id: str, state: StateDep) -> Response:
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
