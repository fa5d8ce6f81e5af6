"""Clients that speak fitdeck's documented WebSocket protocol (docs/http_api.md).

`Trainer` is what a LiveMonitor does on `/ws/train`, minus Keras: hello,
welcome, `records` frames, acks. `Subscriber` is a dashboard on `/ws/live`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

METRICS = ("loss", "accuracy", "mae")


def run_start(seq: int, name: str, steps: int | None = None) -> dict[str, Any]:
    return {
        "seq": seq,
        "type": "run_start",
        "t": time.time(),
        "name": name,
        "project": "bench",
        "params": {},
        "meta": {"epochs": 1, "steps_per_epoch": steps},
    }


def batch_record(seq: int, step: int, keys: tuple[str, ...], t: float | None = None) -> dict:
    value = 1.0 / step
    return {
        "seq": seq,
        "type": "batch",
        "t": time.time() if t is None else t,
        "step": step,
        "epoch": 0.0,
        "logs": {k: value + i for i, k in enumerate(keys)},
    }


def records_frames(
    n_batches: int, per_frame: int, keys: tuple[str, ...] = METRICS, name: str = "bench"
) -> Iterator[str]:
    """JSON `records` frames: a run_start, then `n_batches` batch records."""
    records: list[dict[str, Any]] = [run_start(1, name, n_batches)]
    t = time.time()
    for step in range(1, n_batches + 1):
        records.append(batch_record(step + 1, step, keys, t))
        if len(records) >= per_frame:
            yield json.dumps({"type": "records", "records": records})
            records = []
    if records:
        yield json.dumps({"type": "records", "records": records})


class Trainer:
    """One `/ws/train` connection for one run."""

    def __init__(self, ws_base: str) -> None:
        self.url = f"{ws_base}/ws/train"
        self.run_id = uuid.uuid4().hex
        self.ws: ClientConnection | None = None
        self.acked = 0
        self.commands: list[dict[str, Any]] = []

    async def connect(self) -> int:
        self.ws = await websockets.connect(self.url, max_size=None, compression=None)
        await self.ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": self.run_id}))
        welcome = json.loads(await self.ws.recv())
        assert welcome["type"] == "welcome", welcome
        return int(welcome["last_seq"])

    async def send_all(self, frames: list[str], last_seq: int, window: int = 4) -> None:
        """Send frames with at most `window` unacknowledged; return once `last_seq` is acked."""
        assert self.ws is not None
        ws = self.ws
        sent = 0
        inflight = asyncio.Semaphore(window)

        async def reader() -> None:
            async for message in ws:
                msg = json.loads(message)
                if msg["type"] == "ack":
                    self.acked = max(self.acked, int(msg["seq"]))
                    inflight.release()
                    if self.acked >= last_seq:
                        return
                elif msg["type"] == "command":
                    self.commands.append(msg["command"])
                elif msg["type"] == "error":
                    raise RuntimeError(msg["message"])

        task = asyncio.create_task(reader())
        try:
            for frame in frames:
                await inflight.acquire()
                if task.done():
                    task.result()
                    break
                await ws.send(frame)
                sent += 1
            await task
        finally:
            task.cancel()

    async def send_records(self, records: list[dict[str, Any]]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": "records", "records": records}))

    async def drain_acks(self) -> None:
        """Read whatever the server sent (acks, commands) without waiting."""
        assert self.ws is not None
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), 0.001)
            except TimeoutError:
                return
            msg = json.loads(message)
            if msg["type"] == "ack":
                self.acked = max(self.acked, int(msg["seq"]))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class Subscriber:
    """One `/ws/live` connection following some runs; records receipt latency of points."""

    def __init__(self, ws_base: str) -> None:
        self.url = f"{ws_base}/ws/live"
        self.ws: ClientConnection | None = None
        self.latencies: list[float] = []  # seconds, point t → receipt
        self.points = 0
        self.messages = 0
        self.closed_code: int | None = None
        self.since = 0.0  # only points with t >= since count for latency

    async def connect(self, run_ids: list[str]) -> None:
        self.ws = await websockets.connect(self.url, max_size=None, compression=None)
        hello = json.loads(await self.ws.recv())
        assert hello["type"] == "hello", hello
        await self.ws.send(json.dumps({"type": "subscribe", "run_ids": run_ids}))

    async def listen(self, record_latency: bool = True) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                now = time.time()
                self.messages += 1
                msg = json.loads(message)
                if msg.get("type") != "metrics" or msg.get("scope") != "batch":
                    continue
                points = msg["points"]
                self.points += len(points)
                if record_latency:
                    for p in points:
                        if p["t"] >= self.since and "learning_rate" not in p["logs"]:
                            self.latencies.append(now - p["t"])
        except websockets.ConnectionClosed as exc:
            self.closed_code = exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
