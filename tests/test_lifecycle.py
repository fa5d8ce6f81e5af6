"""server.lifecycle: start, end, lost and found again, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from server import commands, lifecycle
from server.ingest import apply_records
from server.lifecycle import LOST_CONTACT, Changes
from server.protocol import Rec
from server.records import validate_records
from server.store import Store

RUN = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
T = TypeVar("T")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "fitdeck.db")
    s.open()
    yield s
    s.close()


def write(store: Store, fn: Callable[[sqlite3.Connection], T]) -> T:
    return store.submit(fn).result(timeout=10)


def ingest(store: Store, records: list[dict[str, Any]], run_id: str = RUN) -> Changes:
    good, errors, _ = validate_records(records, 256)
    assert not errors
    return write(store, lambda c: apply_records(c, store.memory, run_id, good))


def begin(store: Store, run_id: str = RUN, seq: int = 1) -> Changes:
    return ingest(store, [{**Rec.run_start(1.0, "r", None, {}, {"a": 1}), "seq": seq}], run_id)


def end(store: Store, status: str, seq: int, error: dict[str, str] | None = None) -> Changes:
    return ingest(store, [{**Rec.run_end(50.0, status, error), "seq": seq}])


def disconnect(store: Store, run_id: str = RUN) -> Changes:
    return write(store, lambda c: lifecycle.mark_disconnected(c, store.memory, run_id, "lost"))


def connect(store: Store, run_id: str = RUN) -> Changes:
    return write(store, lambda c: lifecycle.mark_connected(c, store.memory, run_id))


def close_lost(store: Store, grace: float) -> list[tuple[str, Changes]]:
    return write(store, lambda c: lifecycle.close_lost_runs(c, store.memory, grace))


def age(store: Store, seconds: float, run_id: str = RUN) -> None:
    """Pretend the run's last change was `seconds` longer ago."""
    write(
        store,
        lambda c: c.execute(
            "UPDATE runs SET updated_at = updated_at - ? WHERE id = ?", (seconds, run_id)
        ),
    )


def kinds(store: Store) -> list[str]:
    return [e["kind"] for e in store.events(RUN)]


# -- start and end -----------------------------------------------------------------------------


def test_every_fit_is_counted_and_restarts_the_run(store: Store) -> None:
    assert [e["data"] for e in begin(store).events] == [{"fit": 1}]
    end(store, "failed", 2, {"type": "ValueError", "message": "boom"})
    run = store.get_run(RUN)
    assert (run["status"], run["ended_at"]) == ("failed", 50.0)
    assert run["error"] == {"type": "ValueError", "message": "boom"}
    again = begin(store, seq=3)
    assert [e["data"] for e in again.events] == [{"fit": 2}]
    run = store.get_run(RUN)
    assert (run["status"], run["ended_at"], run["error"]) == ("running", None, None)
    by_seq = sorted(store.events(RUN), key=lambda e: e["seq"])
    assert [e["kind"] for e in by_seq] == ["train_begin", "train_end", "train_begin"]


def test_run_end_records_a_train_end_event(store: Store) -> None:
    begin(store)
    changes = end(store, "finished", 2)
    [event] = changes.events
    assert (event["kind"], event["seq"], event["t"]) == ("train_end", 2, 50.0)
    assert event["data"] == {"status": "finished", "error": None}


def test_end_run_expires_waiting_commands(store: Store) -> None:
    begin(store)
    cid = write(store, lambda c: commands.create_command(c, RUN, "stop", None))["id"]
    changes = end(store, "finished", 2)
    assert [(c["id"], c["status"]) for c in changes.commands] == [(cid, "expired")]
    assert changes.commands[0]["reason"] == "the run finished before it could apply"


# -- lost and found ------------------------------------------------------------------------------


def test_a_dropped_stream_marks_a_running_run_disconnected(store: Store) -> None:
    begin(store)
    changes = disconnect(store)
    assert changes.run is not None and changes.run["status"] == "disconnected"
    [event] = changes.events
    assert (event["kind"], event["seq"], event["data"]) == (
        "disconnected",
        None,
        {"reason": "lost"},
    )
    assert store.memory._runs[RUN].status == "disconnected"
    assert disconnect(store).run is None  # already disconnected: nothing more


@pytest.mark.parametrize("status", ["finished", "stopped", "failed"])
def test_a_dropped_stream_leaves_an_ended_run_alone(store: Store, status: str) -> None:
    begin(store)
    end(store, status, 2)
    changes = disconnect(store)
    assert changes.run is None and changes.events == []
    assert store.get_run(RUN)["status"] == status


def test_unknown_runs_are_neither_connected_nor_disconnected(store: Store) -> None:
    assert disconnect(store) == Changes(last_seq=0)
    assert connect(store) == Changes(last_seq=0)
    assert store.list_runs() == []


def test_reconnecting_revives_a_disconnected_run_and_says_where_it_was(store: Store) -> None:
    begin(store)
    ingest(store, [{**Rec.metrics("batch", 2.0, 1, 0.0, {"loss": 1.0}), "seq": 2}])
    disconnect(store)
    changes = connect(store)
    assert changes.last_seq == 2  # the welcome's last_seq
    assert changes.run is not None and changes.run["status"] == "running"
    assert [e["kind"] for e in changes.events] == ["reconnected"]
    assert connect(store).events == []  # running already: nothing to say


def test_runs_lost_beyond_the_grace_fail_with_lost_contact(store: Store) -> None:
    begin(store)
    begin(store, OTHER)
    cid = write(store, lambda c: commands.create_command(c, RUN, "set_lr", 0.1))["id"]
    disconnect(store)
    disconnect(store, OTHER)
    age(store, 100)
    assert close_lost(store, 1000) == []  # not yet
    [(run_id, changes)] = close_lost(store, 10)
    assert run_id == RUN
    assert changes.run is not None and changes.run["status"] == "failed"
    assert changes.run["error"]["type"] == LOST_CONTACT
    assert "10 seconds" in changes.run["error"]["message"]
    assert [(c["id"], c["status"]) for c in changes.commands] == [(cid, "expired")]
    assert changes.commands[0]["reason"] == "the training process was lost before it could apply"
    [event] = changes.events
    assert (event["kind"], event["data"]["status"]) == ("train_end", "failed")
    assert store.memory._runs[RUN].status == "failed"
    assert store.get_run(OTHER)["status"] == "disconnected"  # within its grace
    assert close_lost(store, 10) == []  # closed once


def test_a_running_run_is_never_closed_as_lost(store: Store) -> None:
    begin(store)
    age(store, 10_000)
    assert close_lost(store, 1) == []
    assert store.get_run(RUN)["status"] == "running"


def test_a_run_closed_as_lost_comes_back_when_its_trainer_does(store: Store) -> None:
    begin(store)
    disconnect(store)
    age(store, 100)
    close_lost(store, 10)
    changes = connect(store)
    assert changes.run is not None
    assert (changes.run["status"], changes.run["error"], changes.run["ended_at"]) == (
        "running",
        None,
        None,
    )
    assert kinds(store)[-2:] == ["train_end", "reconnected"]


def test_a_run_that_failed_by_itself_stays_failed_on_reconnect(store: Store) -> None:
    begin(store)
    end(store, "failed", 2, {"type": "ValueError", "message": "boom"})
    changes = connect(store)
    assert changes.run is None and changes.events == []
    assert store.get_run(RUN)["status"] == "failed"


def test_a_restarted_server_marks_running_runs_disconnected(tmp_path: Path) -> None:
    first = Store(tmp_path / "fitdeck.db")
    first.open()
    begin(first)
    begin(first, OTHER)
    first.submit(
        lambda c: apply_records(
            c,
            first.memory,
            OTHER,
            [{"seq": 2, "type": "run_end", "t": 3.0, "status": "finished", "error": None}],
        )
    ).result(timeout=10)
    first.close()
    second = Store(tmp_path / "fitdeck.db")
    second.open()
    try:
        assert second.get_run(RUN)["status"] == "disconnected"
        assert second.get_run(OTHER)["status"] == "finished"
        [event] = [e for e in second.events(RUN) if e["kind"] == "disconnected"]
        assert event["data"] == {"reason": "server restarted"}
    finally:
        second.close()
