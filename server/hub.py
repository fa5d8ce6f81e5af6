"""Live fan-out to browsers and the command link to connected trainers.

Publishing never waits on a browser: each subscriber has a bounded queue, and
one whose queue is full is dropped (it reconnects and refetches over HTTP).

The hub also holds the loop's view of the storage's health: browsers hear of
each change (`storage` messages), and trainer connections wait on
`storage_trouble` to close when writes begin to fail.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.lifecycle import Changes
from server.protocol import LR_KEY, Msg, dumps, encode_number

__all__ = ["Hub", "Subscriber", "TrainerLinks", "live_points"]

log = logging.getLogger("fitdeck.hub")


class Subscriber:
    """One `/ws/live` connection: what it follows and what waits to be sent."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self.run_ids: frozenset[str] = frozenset()
        self.overflow = asyncio.Event()

    def offer(self, text: str) -> None:
        if self.overflow.is_set():
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflow.set()


class Hub:
    """Every live browser connection of one server."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.storage_reason: str | None = None
        """Why writes fail (the store's `trouble` as the loop last heard it), or None."""
        self.storage_trouble = asyncio.Event()
        """Set when writes begin to fail; a fresh, unset one once they work again."""

    def storage(self, reason: str | None) -> None:
        """The store's health changed: tell every browser and wake the trainer links."""
        if reason == self.storage_reason:
            return
        self.storage_reason = reason
        if reason is None:
            self.storage_trouble = asyncio.Event()
        else:
            self.storage_trouble.set()
        self.broadcast(Msg.storage(reason))

    def add(self) -> Subscriber:
        sub = Subscriber(self.queue_size)
        self.subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def broadcast(self, message: dict[str, Any]) -> None:
        """A message for every browser."""
        text = dumps(message)
        for sub in self.subscribers:
            sub.offer(text)

    def run(self, run: dict[str, Any]) -> None:
        """A run's summary changed: every browser hears of it."""
        self.broadcast(Msg.run(run))

    def to_run(self, run_id: str, message: dict[str, Any]) -> None:
        """A message for the browsers following `run_id`."""
        text: str | None = None
        for sub in self.subscribers:
            if run_id in sub.run_ids:
                if text is None:
                    text = dumps(message)
                sub.offer(text)

    def changes(self, run_id: str, changes: Changes) -> None:
        """Push what one write changed."""
        if changes.run is not None:
            self.run(changes.run)
        if changes.records and any(run_id in sub.run_ids for sub in self.subscribers):
            for scope, points in live_points(changes.records).items():
                self.to_run(run_id, Msg.metrics(run_id, scope, points))
        for event in changes.events:
            self.to_run(run_id, Msg.event(run_id, event))
        for command in changes.commands:
            self.to_run(run_id, Msg.command(command, run_id))


class TrainerLinks:
    """The live trainers' `/ws/train` connections of each run that has one, to send
    them commands: one per worker (index 0 for a single-process `fit`), and
    commands go to every worker of the run. Only a trainer's connection is a
    link (a newer one of the same worker replaces the older: a reconnect whose
    old link has not timed out yet); an uploader (`fitdeck sync`) never is one.
    """

    def __init__(self) -> None:
        self._links: dict[str, dict[int, Any]] = {}

    def attach(self, run_id: str, send: Any, index: int = 0) -> Any:
        """Register worker `index`'s `send(text)`; returns the link it replaced, if any."""
        links = self._links.setdefault(run_id, {})
        old = links.get(index)
        links[index] = send
        return old

    def detach(self, run_id: str, send: Any, index: int = 0) -> None:
        links = self._links.get(run_id)
        if links is not None and links.get(index) is send:
            del links[index]
            if not links:
                del self._links[run_id]

    def connected(self, run_id: str, index: int | None = None) -> bool:
        """Any worker of the run (or worker `index`) is connected."""
        links = self._links.get(run_id)
        if not links:
            return False
        return index is None or index in links

    async def send_command(self, run_id: str, command: dict[str, Any]) -> bool:
        return await self.send(run_id, Msg.command(command), f"command {command['id']}")

    async def send(self, run_id: str, message: dict[str, Any], what: str = "a message") -> bool:
        """Send to every worker of the run; True if at least one link took it."""
        links = list(self._links.get(run_id, {}).items())
        text = dumps(message)
        sent = False
        for index, send in links:
            try:
                await send(text)
                sent = True
            except Exception as exc:  # the link is going away; it gets it on reconnect
                log.info("could not deliver %s to run %s worker %d: %s", what, run_id, index, exc)
        return sent


def live_points(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The `metrics` messages' points, by scope, for stored records."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["type"] == "lr":
            scope, logs = "batch", {LR_KEY: rec["lr"]}
        else:
            scope, logs = rec["type"], {k: encode_number(v) for k, v in rec["logs"].items()}
        point = {"step": rec["step"], "epoch": rec["epoch"], "t": rec["t"], "logs": logs}
        out.setdefault(scope, []).append(point)
    return out
