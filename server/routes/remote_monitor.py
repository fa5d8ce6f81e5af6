"""`POST /publish/epoch/end/`: stock `keras.callbacks.RemoteMonitor` streams into a run.

RemoteMonitor posts once per epoch, to `root + "/publish/epoch/end/"`, the
epoch's logs as JSON: in the form field `data` by default, or as the body
with `send_as_json=True`. It names no run and never says that training
ended, so the server decides which posts belong together:

- Posts from one client address (and one `run` query parameter, when the
  path carries one: `path="/publish/epoch/end/?run=baseline"`) continue the
  same run while their epoch number grows and the last post came less than
  `IDLE_SECONDS` ago.
- A post whose epoch is not above the last one (a new `fit` starts at 0
  again), or one after a longer silence, starts a new run; the previous run
  of that source is `finished` then, as is any run idle for `IDLE_SECONDS`.

The records go through the same writer and ingest as `/ws/train`'s
(`server.ingest.apply_records`). A RemoteMonitor run's `step` counts epochs.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from server import ingest
from server.deps import Authorized, StateDep
from server.errors import BadRequest
from server.lifecycle import Changes
from server.memory import WriterMemory
from server.models import ERROR_RESPONSES
from server.protocol import MAX_NAME, Rec
from server.records import validate_records

__all__ = ["IDLE_SECONDS", "PATH", "RemoteRuns", "router"]

PATH = "/publish/epoch/end/"
"""Where `keras.callbacks.RemoteMonitor` posts by default."""
IDLE_SECONDS = 1800.0
"""A source silent this long has finished its run; its next post starts a new one."""
SOURCE = "RemoteMonitor"

router = APIRouter(dependencies=[Authorized], responses=ERROR_RESPONSES)


@dataclass
class _Session:
    run_id: str
    last_epoch: int
    last_post: float
    ended: bool = False


class RemoteRuns:
    """Which run each RemoteMonitor source posts into (held on the event loop only)."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._sessions: dict[tuple[str, str | None], _Session] = {}

    def route(
        self, source: tuple[str, str | None], epoch: int, now: float
    ) -> tuple[str, bool, str | None]:
        """The run this post belongs to, whether it is new, and the run it ends (if any)."""
        session = self._sessions.get(source)
        if (
            session is not None
            and not session.ended
            and epoch > session.last_epoch
            and now - session.last_post < self.idle_seconds
        ):
            session.last_epoch, session.last_post = epoch, now
            return session.run_id, False, None
        ended = session.run_id if session is not None and not session.ended else None
        self._sessions[source] = _Session(uuid.uuid4().hex, epoch, now)
        return self._sessions[source].run_id, True, ended

    def idle(self, now: float) -> list[str]:
        """Runs whose source has been silent for `idle_seconds`: they are over."""
        out = []
        for source, session in list(self._sessions.items()):
            if now - session.last_post >= self.idle_seconds:
                if not session.ended:
                    out.append(session.run_id)
                del self._sessions[source]
        return out


def remote_runs(request: Request) -> RemoteRuns:
    runs: RemoteRuns = request.app.state.remote_monitor
    return runs


@router.post(PATH, summary="Keras RemoteMonitor epoch post")
async def publish_epoch_end(
    request: Request,
    state: StateDep,
    run: Annotated[
        str | None,
        Query(max_length=MAX_NAME, description="Run name; posts with one name share a run."),
    ] = None,
    project: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
) -> JSONResponse:
    logs = _payload(request.headers.get("content-type", ""), await request.body())
    epoch = logs.pop("epoch", None)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise BadRequest(f"The epoch post needs a non-negative integer 'epoch', got {epoch!r}.")
    metrics = {str(k): v for k, v in logs.items() if _is_number(v)}
    client = request.client.host if request.client is not None else "unknown"
    now = time.time()
    run_id, new, ended = remote_runs(request).route((client, run), epoch, now)
    name = run or f"remote-monitor-{client}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = Rec.run_start(now, name, project, {}, {"source": SOURCE, "client": client})
    record = Rec.metrics("epoch", now, epoch + 1, epoch, metrics)
    max_keys = state.settings.max_keys_per_record
    checked, errors, _ = validate_records([{**start, "seq": 1}, {**record, "seq": 2}], max_keys)
    if errors:
        raise BadRequest(errors[0])
    start, record = (dict(r) for r in checked)
    memory = state.store.memory

    def write(conn: sqlite3.Connection) -> list[tuple[str, Changes]]:
        out = []
        if ended is not None:
            out.append((ended, _end(conn, memory, ended, now)))
        out.append((run_id, _post(conn, memory, run_id, new, start, record)))
        return out

    for changed_id, changes in await state.store.write(write):
        state.hub.changes(changed_id, changes)
    return JSONResponse({"run_id": run_id, "epoch": epoch, "new_run": new})


async def end_idle_runs(runs: RemoteRuns, state: Any) -> None:
    """Finish the runs of sources silent for `idle_seconds` (the server's reaper calls it)."""
    now = time.time()
    idle = runs.idle(now)
    if not idle:
        return
    memory = state.store.memory
    ended = await state.store.write(lambda c: [(r, _end(c, memory, r, now)) for r in idle])
    for run_id, changes in ended:
        state.hub.changes(run_id, changes)


def _post(
    conn: sqlite3.Connection,
    memory: WriterMemory,
    run_id: str,
    new: bool,
    start: dict[str, Any],
    record: dict[str, Any],
) -> Changes:
    memo = memory.get(conn, run_id)
    seq = memo.last_seq if memo is not None else 0
    records = [record]
    if new or memo is None:  # a new run, or one deleted meanwhile
        records.insert(0, start)
    for rec in records:
        seq += 1
        rec["seq"] = seq
    return ingest.apply_records(conn, memory, run_id, records)


def _end(conn: sqlite3.Connection, memory: WriterMemory, run_id: str, now: float) -> Changes:
    memo = memory.get(conn, run_id)
    if memo is None or memo.status != "running":
        return Changes(last_seq=memo.last_seq if memo else 0)
    rec = {**Rec.run_end(now, "finished", None), "seq": memo.last_seq + 1}
    return ingest.apply_records(conn, memory, run_id, [rec])


def _payload(content_type: str, body: bytes) -> dict[str, Any]:
    """The posted logs: a JSON body, or JSON in the form field `data` (or the only one)."""
    text: str | bytes = body
    if "application/json" not in content_type:
        form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        values = form.get("data") or (next(iter(form.values())) if len(form) == 1 else None)
        if not values:
            raise BadRequest(
                "An epoch post carries JSON in the form field 'data' or as an "
                f"application/json body; got fields {sorted(form)[:5]!r}."
            )
        text = values[0]
    try:
        # Not the strict codec: Keras writes NaN and Infinity as bare JSON words here.
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The epoch post is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"The epoch post must be a JSON object, got {type(payload).__name__}.")
    return payload


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
