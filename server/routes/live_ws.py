"""`/ws/live`: runs, points, events and commands pushed to the dashboard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from server.deps import StateDep
from server.hub import Subscriber
from server.protocol import MAX_SUBSCRIPTIONS, RUN_ID, Close, FrameError, Msg, dumps, loads

__all__ = ["router"]

router = APIRouter()


@router.websocket("/ws/live")
async def live_ws(ws: WebSocket, state: StateDep) -> None:
    await ws.accept()  # Host, Origin and token were checked by server.guard.Guard
    sub = state.hub.add()
    sub.offer(dumps(Msg.live_hello(time.time(), state.hub.storage_reason)))
    try:
        async with anyio.create_task_group() as tg:

            async def until_first_done(fn: Callable[[], Awaitable[object]]) -> None:
                await fn()
                tg.cancel_scope.cancel()

            tg.start_soon(until_first_done, lambda: _pump(ws, sub))
            tg.start_soon(until_first_done, lambda: _listen(ws, sub))
            tg.start_soon(until_first_done, sub.overflow.wait)
        if sub.overflow.is_set():
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await ws.close(Close.TRY_AGAIN_LATER, "subscriber too slow")
    finally:
        state.hub.remove(sub)


async def _pump(ws: WebSocket, sub: Subscriber) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the browser left
        while True:
            await ws.send_text(await sub.queue.get())


async def _listen(ws: WebSocket, sub: Subscriber) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            text = frame.get("text")
            if text is None:
                await ws.close(
                    Close.UNSUPPORTED, "Binary frames are not supported; send JSON text."
                )
                return
            try:
                message = loads(text)
            except FrameError as exc:
                sub.offer(dumps(Msg.error(str(exc))))
                continue
            run_ids = message.get("run_ids") if isinstance(message, dict) else None
            if (
                not isinstance(message, dict)
                or message.get("type") != "subscribe"
                or not isinstance(run_ids, list)
                or len(run_ids) > MAX_SUBSCRIPTIONS
                or not all(isinstance(r, str) and RUN_ID.fullmatch(r) for r in run_ids)
            ):
                error = (
                    'Expected {"type": "subscribe", "run_ids": [...]} with at most '
                    f"{MAX_SUBSCRIPTIONS} run ids."
                )
                sub.offer(dumps(Msg.error(error)))
                continue
            sub.run_ids = frozenset(run_ids)
            # From here on every change of these runs is pushed: safe to fetch history.
            sub.offer(dumps(Msg.subscribed(sub.run_ids)))
