"""`/ws/train`: the callback streams records in, commands go back out.

A record is acknowledged only once it is committed. When writes fail (see
`server.store`), every connection is told (`storage_error`) and closed with
1013; what it had sent is stored when storage recovers, and the trainer
resends the rest after the `welcome` of its next connection. A `hello` from
an uploader (`"role": "sync"`) never takes the run's command link, and is
refused while the run has a live trainer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from server import commands, ingest, lifecycle
from server.deps import AppState, StateDep
from server.errors import BadRequest
from server.lifecycle import Changes
from server.protocol import (
    HELLO_ROLES,
    PROTOCOL_VERSION,
    RUN_ID,
    Close,
    FrameError,
    Msg,
    dumps,
    loads,
)
from server.records import validate_records
from server.store import StorageUnavailable
from server.workers import parse_worker

__all__ = ["router"]

log = logging.getLogger("fitdeck.train")
router = APIRouter()

Send = Callable[[str], Awaitable[None]]

HELLO_TIMEOUT = 10.0
MAX_IN_FLIGHT = 4  # frames being stored while the next is read


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@router.websocket("/ws/train")
async def train_ws(ws: WebSocket, state: StateDep) -> None:
    await ws.accept()  # Host, Origin and token were checked by server.guard.Guard
    run_id: str | None = None
    index = 0  # the worker, in a multi-worker job
    trainer = accepted = False
    send_lock = asyncio.Lock()

    async def send(text: str) -> None:
        async with send_lock:
            await ws.send_text(text)

    try:
        run_id, role, index, count = await _hello(ws)
        trainer = role == "trainer"
        if state.store.trouble is not None:
            await _storage_close(ws, send, state.store.trouble)
            return
        if not trainer and state.trainers.connected(run_id):
            # Its records reach the server through the trainer; its spool may be in use.
            reason = f"run {run_id} has a live trainer; sync it after that fit ends"
            await ws.close(Close.TRY_AGAIN_LATER, reason)
            return
        trouble = state.hub.storage_trouble  # the event of this moment: set when writes fail
        accepted = True
        # Every write from here on may meet storage trouble: the connection then closes.
        session = _session(ws, state, run_id, trainer, send, index, count)
        if await _until_trouble(session, trouble):
            await _storage_close(ws, send, state.hub.storage_reason or "storage trouble")
    except WebSocketDisconnect:
        pass
    except ProtocolError as exc:
        log.warning("run %s: closing trainer connection: %s", run_id, exc.reason)
        if ws.client_state is WebSocketState.CONNECTED:
            await ws.close(exc.code, exc.reason.encode()[:123].decode(errors="ignore"))
    finally:
        if run_id is not None and accepted:
            if trainer:
                state.trainers.detach(run_id, send, index)
                if not state.trainers.connected(run_id, index):
                    state.workers.lost(run_id, index)
            # Only a `running` run is affected; a store closing amid trouble gives up.
            # A job's other workers never change the run's status.
            if index == 0 and not state.trainers.connected(run_id, 0):
                with contextlib.suppress(StorageUnavailable):
                    await _store(
                        state,
                        run_id,
                        lambda c: lifecycle.mark_disconnected(
                            c, state.store.memory, run_id, "stream lost"
                        ),
                    )


async def _session(
    ws: WebSocket,
    state: AppState,
    run_id: str,
    trainer: bool,
    send: Send,
    index: int = 0,
    count: int = 1,
) -> None:
    """Welcome the connection (a trainer also takes the command link and hears of
    unfinished commands), then take its records until it leaves.

    A multi-worker job's other workers (index > 0) are welcomed with what this
    server acknowledged to them: their records are read, not stored."""
    worker = state.workers.hello(run_id, index, count) if trainer else None
    if trainer and index > 0:
        last_seq = worker.last_seq if worker is not None else 0
    elif trainer:
        connected = await _store(
            state, run_id, lambda c: lifecycle.mark_connected(c, state.store.memory, run_id)
        )
        last_seq = connected.last_seq
    else:
        connected = await _store(
            state, run_id, lambda c: lifecycle.progress(c, state.store.memory, run_id)
        )
        last_seq = connected.last_seq
    if trainer and state.trainers.attach(run_id, send, index) is not None:
        log.info("run %s: a newer connection replaces worker %d's", run_id, index)
    await send(dumps(Msg.welcome(run_id, last_seq)))
    if trainer:
        for command in await state.store.write(lambda c: commands.unfinished_commands(c, run_id)):
            await send(dumps(Msg.command(command)))
            at_step = state.workers.commit(run_id, command["id"])
            if at_step is not None:
                await send(dumps(Msg.commit(command["id"], at_step)))
    await _receive_all(ws, state, run_id, send, index if trainer else 0)


async def _storage_close(ws: WebSocket, send: Send, why: str) -> None:
    """Tell the trainer its records cannot be stored now, and close: it resends later."""
    message = (
        f"The server cannot store records right now ({why}); nothing it did not store is "
        "acknowledged. Keep them and send them again after a backoff."
    )
    with contextlib.suppress(Exception):  # the trainer may be gone already
        await send(dumps(Msg.storage_error(message)))
        await ws.close(Close.TRY_AGAIN_LATER, "storage trouble; try again later")


async def _until_trouble(work: Awaitable[None], trouble: asyncio.Event) -> bool:
    """Run `work` until it ends (False; its exception propagates) or `trouble` is set
    (True: `work` is cancelled; writes it queued still happen)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(trouble.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, waiter):
            pending.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if task in done and not task.cancelled():
        task.result()  # raises what ended it
        return False
    return True


def _submit(
    state: AppState, run_id: str, fn: Callable[[sqlite3.Connection], Changes]
) -> asyncio.Future[Changes]:
    """Queue a write, and the push of what it changed to browsers, in commit order.

    The push hangs on the commit, not on whoever awaits the result, so it
    happens even when the connection's task is cancelled meanwhile.
    """
    loop = asyncio.get_running_loop()
    future = state.store.submit(fn)

    def publish(done: Future[Changes]) -> None:
        if done.exception() is None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(state.hub.changes, run_id, done.result())

    future.add_done_callback(publish)
    return asyncio.shield(asyncio.wrap_future(future))


async def _store(
    state: AppState, run_id: str, fn: Callable[[sqlite3.Connection], Changes]
) -> Changes:
    return await _submit(state, run_id, fn)


async def _frame(ws: WebSocket, timeout: float | None = None) -> Any:
    message = await asyncio.wait_for(ws.receive(), timeout)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise ProtocolError(Close.UNSUPPORTED, "Binary frames are not supported; send JSON text.")
    try:
        return loads(text)
    except FrameError as exc:
        raise ProtocolError(Close.POLICY, str(exc)) from None


async def _hello(ws: WebSocket) -> tuple[str, str, int, int]:
    try:
        hello = await _frame(ws, HELLO_TIMEOUT)
    except TimeoutError:
        raise ProtocolError(Close.POLICY, f"No hello within {HELLO_TIMEOUT:g} seconds.") from None
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise ProtocolError(Close.POLICY, "The first frame must be a hello.")
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            Close.POLICY,
            f"Unsupported protocol {hello.get('protocol')!r}; this is {PROTOCOL_VERSION}.",
        )
    run_id = hello.get("run_id")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ProtocolError(
            Close.POLICY, f"run_id must be 32 lowercase hex characters, got {run_id!r}."
        )
    role = hello.get("role", "trainer")
    if role not in HELLO_ROLES:
        raise ProtocolError(Close.POLICY, f"role must be one of {HELLO_ROLES}, got {role!r}.")
    try:
        index, count = parse_worker(hello.get("worker"))
    except ValueError as exc:
        raise ProtocolError(Close.POLICY, str(exc)) from None
    return run_id, str(role), index, count


async def _receive_all(
    ws: WebSocket, state: AppState, run_id: str, send: Any, index: int = 0
) -> None:
    """Read, validate and store `records` frames; ack each once it is committed.

    Up to MAX_IN_FLIGHT frames are stored while the next ones are read and parsed:
    SQLite releases the GIL, so parsing and storing overlap on two cores.
    """
    in_flight: deque[asyncio.Task[None]] = deque()
    try:
        while True:
            stored = await _receive(ws, state, run_id, send, index)
            if stored is not None:
                in_flight.append(asyncio.ensure_future(stored))
            while in_flight and (len(in_flight) >= MAX_IN_FLIGHT or in_flight[0].done()):
                await in_flight.popleft()
    finally:
        # Waiting for their acks could last as long as storage trouble: the writes
        # themselves are queued and happen anyway; a later welcome reports them.
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _receive(
    ws: WebSocket, state: AppState, run_id: str, send: Any, index: int = 0
) -> Awaitable[None] | None:
    """Take one frame; for a `records` frame, what acks it once it is stored."""
    frame = await _frame(ws)
    if not isinstance(frame, dict) or frame.get("type") != "records":
        kind = frame.get("type") if isinstance(frame, dict) else type(frame).__name__
        await send(dumps(Msg.error(f"Unknown frame type {kind!r}.")))
        return None
    try:
        records, errors, top_seq = validate_records(
            frame.get("records"), state.settings.max_keys_per_record
        )
    except BadRequest as exc:
        await send(dumps(Msg.error(exc.message)))
        return None
    for message in errors:
        await send(dumps(Msg.error(message)))
    if state.workers.count(run_id) > 1:
        for command_id in state.workers.records(run_id, index, records):
            at_step = state.workers.commit(run_id, command_id)
            if at_step is not None:
                await state.trainers.send(run_id, Msg.commit(command_id, at_step), "a commit")
    if index > 0:  # a job's other worker: read above, acknowledged, not stored
        worker = state.workers.get(run_id, index)
        if worker is not None:
            worker.last_seq = max(worker.last_seq, top_seq)
        await send(dumps(Msg.ack(top_seq)))
        return None
    stored = _submit(
        state, run_id, lambda c: ingest.apply_records(c, state.store.memory, run_id, records)
    )
    return _ack(stored, top_seq, send)


async def _ack(stored: Awaitable[Changes], top_seq: int, send: Any) -> None:
    try:
        changes = await stored
    except BadRequest as exc:  # records of a run not started here: refused, as invalid ones are
        await send(dumps(Msg.error(exc.message)))
        await send(dumps(Msg.ack(top_seq)))
        return
    except (ValueError, OverflowError, sqlite3.IntegrityError) as exc:  # nothing was stored
        raise ProtocolError(Close.POLICY, f"Records could not be stored: {exc}") from None
    await send(dumps(Msg.ack(max(changes.last_seq, top_seq))))
