"""server.hub: bounded subscriber queues, fan-out by run, the live push, trainer links."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import hub as hub_mod
from server.hub import Hub, Subscriber, TrainerLinks, live_points
from server.lifecycle import Changes
from server.protocol import LR_KEY, Msg, dumps, loads

A = "a" * 32
B = "b" * 32
T = TypeVar("T")


def run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(fn())


def queued(sub: Subscriber) -> list[Any]:
    out = []
    while not sub.queue.empty():
        out.append(loads(sub.queue.get_nowait()))
    return out


# -- subscribers ------------------------------------------------------------------------


def test_a_full_queue_sets_overflow_and_stops_queueing() -> None:
    async def go() -> None:
        sub = Subscriber(maxsize=2)
        sub.offer("1")
        sub.offer("2")
        assert not sub.overflow.is_set()
        sub.offer("3")
        assert sub.overflow.is_set()
        assert sub.queue.qsize() == 2
        sub.queue.get_nowait()
        sub.offer("4")  # room again, but this subscriber is already being dropped
        assert sub.queue.qsize() == 1
        assert sub.queue.get_nowait() == "2"

    run(go)


def test_broadcast_reaches_every_subscriber() -> None:
    async def go() -> None:
        hub = Hub(queue_size=8)
        subs = [hub.add() for _ in range(3)]
        subs[0].run_ids = frozenset({A})
        hub.broadcast(Msg.run_deleted(A))
        for sub in subs:
            assert queued(sub) == [Msg.run_deleted(A)]

    run(go)


def test_to_run_reaches_only_the_followers_of_that_run() -> None:
    async def go() -> None:
        hub = Hub(queue_size=8)
        a, b, both, none = hub.add(), hub.add(), hub.add(), hub.add()
        a.run_ids, b.run_ids, both.run_ids = frozenset({A}), frozenset({B}), frozenset({A, B})
        hub.to_run(A, Msg.event(A, {"kind": "x"}))
        assert [len(queued(s)) for s in (a, b, both, none)] == [1, 0, 1, 0]

    run(go)


def test_a_slow_subscriber_overflows_alone() -> None:
    async def go() -> None:
        hub = Hub(queue_size=2)
        slow, fast = hub.add(), hub.add()
        for i in range(5):
            hub.broadcast(Msg.run_deleted(f"{i:032x}"))
            queued(fast)
        assert slow.overflow.is_set() and not fast.overflow.is_set()

    run(go)


def test_a_removed_subscriber_hears_nothing_more() -> None:
    async def go() -> None:
        hub = Hub(queue_size=8)
        sub = hub.add()
        hub.remove(sub)
        hub.remove(sub)  # twice is harmless
        hub.broadcast(Msg.run_deleted(A))
        assert sub.queue.empty()

    run(go)


def test_broadcast_refuses_non_strict_json() -> None:
    async def go() -> None:
        hub = Hub(queue_size=8)
        sub = hub.add()
        with pytest.raises(ValueError):
            hub.broadcast({"type": "run", "run": {"lr": math.nan}})
        assert sub.queue.empty()

    run(go)


# -- the live push of one write's changes ------------------------------------------------------

BATCH = {"seq": 3, "type": "batch", "t": 1.0, "step": 3, "epoch": 0.5, "logs": {"loss": 0.5}}
EPOCH = {"seq": 4, "type": "epoch", "t": 2.0, "step": 4, "epoch": 0, "logs": {"val": None}}
LR = {"seq": 5, "type": "lr", "t": 3.0, "step": 4, "epoch": 1.0, "lr": 0.01}


def test_changes_push_run_metrics_events_and_commands_in_that_order() -> None:
    async def go() -> None:
        hub = Hub(queue_size=16)
        follower, other = hub.add(), hub.add()
        follower.run_ids = frozenset({A})
        changes = Changes(
            last_seq=5,
            run={"id": A, "status": "running"},
            records=[BATCH, EPOCH, LR],
            events=[{"id": 1, "kind": "lr_change"}],
            commands=[{"id": 2, "kind": "stop", "status": "delivered"}],
        )
        hub.changes(A, changes)
        got = queued(follower)
        assert [m["type"] for m in got] == ["run", "metrics", "metrics", "event", "command"]
        assert [m["scope"] for m in got if m["type"] == "metrics"] == ["batch", "epoch"]
        assert got[1]["points"][1]["logs"] == {LR_KEY: 0.01}
        assert got[2]["points"][0]["logs"] == {"val": "NaN"}
        assert got[3] == Msg.event(A, {"id": 1, "kind": "lr_change"})
        assert got[4]["command"]["status"] == "delivered" and got[4]["run_id"] == A
        assert queued(other) == [Msg.run({"id": A, "status": "running"})]

    run(go)


def test_changes_build_points_only_when_someone_follows_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def spy(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        calls.append(len(records))
        return live_points(records)

    monkeypatch.setattr(hub_mod, "live_points", spy)

    async def go() -> None:
        hub = Hub(queue_size=16)
        sub = hub.add()
        sub.run_ids = frozenset({B})
        hub.changes(A, Changes(last_seq=3, records=[BATCH]))
        assert calls == [] and sub.queue.empty()
        sub.run_ids = frozenset({A, B})
        hub.changes(A, Changes(last_seq=3, records=[BATCH]))
        assert calls == [1]
        assert [m["type"] for m in queued(sub)] == ["metrics"]

    run(go)


def test_changes_without_anything_push_nothing() -> None:
    async def go() -> None:
        hub = Hub(queue_size=16)
        sub = hub.add()
        sub.run_ids = frozenset({A})
        hub.changes(A, Changes(last_seq=0))
        assert sub.queue.empty()

    run(go)


def test_live_points_by_scope_with_lr_in_the_batch_scope() -> None:
    points = live_points([BATCH, LR, EPOCH])
    assert points == {
        "batch": [
            {"step": 3, "epoch": 0.5, "t": 1.0, "logs": {"loss": 0.5}},
            {"step": 4, "epoch": 1.0, "t": 3.0, "logs": {LR_KEY: 0.01}},
        ],
        "epoch": [{"step": 4, "epoch": 0, "t": 2.0, "logs": {"val": "NaN"}}],
    }


@settings(deadline=None, database=None, max_examples=60)
@given(st.lists(st.floats() | st.none(), max_size=6))
def test_live_points_are_always_strict_json(values: list[float | None]) -> None:
    """NaN (or NULL) and ±Infinity go out as strings, other numbers unchanged."""
    logs = {f"m{i}": v for i, v in enumerate(values)}
    rec = {"seq": 1, "type": "batch", "t": 1.0, "step": 1, "epoch": 0.0, "logs": logs}
    [point] = live_points([rec])["batch"]
    sent = loads(dumps(point))["logs"]
    for key, value in logs.items():
        if value is None or math.isnan(value):
            assert sent[key] == "NaN"
        elif math.isinf(value):
            assert sent[key] == ("Infinity" if value > 0 else "-Infinity")
        else:
            assert sent[key] == value


# -- trainer links ------------------------------------------------------------------------------


class Link:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    async def __call__(self, text: str) -> None:
        if self.fail:
            raise RuntimeError("socket closed")
        self.sent.append(text)


COMMAND = {"id": 9, "kind": "set_lr", "lr": 0.5, "status": "pending", "created_at": 1.0}


def test_attach_detach_and_replace() -> None:
    links = TrainerLinks()
    first, second = Link(), Link()
    assert links.attach(A, first) is None
    assert links.connected(A) and not links.connected(B)
    assert links.attach(A, second) is first
    links.detach(A, first)  # the replaced connection leaving must not unlink the new one
    assert links.connected(A)
    links.detach(A, second)
    assert not links.connected(A)
    links.detach(A, second)  # twice is harmless


def test_send_command_goes_to_the_current_link_with_wire_fields_only() -> None:
    links = TrainerLinks()
    old, new = Link(), Link()
    links.attach(A, old)
    links.attach(A, new)
    assert run(lambda: links.send_command(A, COMMAND)) is True
    assert old.sent == []
    assert [loads(t) for t in new.sent] == [
        {"type": "command", "command": {"id": 9, "kind": "set_lr", "lr": 0.5}}
    ]


def test_send_command_without_a_link_is_false() -> None:
    assert run(lambda: TrainerLinks().send_command(A, COMMAND)) is False


def test_send_command_over_a_failing_link_is_false_not_an_error() -> None:
    links = TrainerLinks()
    links.attach(A, Link(fail=True))
    assert run(lambda: links.send_command(A, COMMAND)) is False
    assert links.connected(A)  # the connection's own handler detaches it
