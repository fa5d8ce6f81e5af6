"""server.commands: created pending, moved only forward, expired when the run ends."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import commands
from server.errors import Conflict, NotFound
from server.ingest import apply_records
from server.lifecycle import Changes
from server.protocol import COMMAND_STATUSES, FINAL_COMMAND, Rec
from server.records import validate_records
from server.store import SCHEMA, Store

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


def begin(store: Store, run_id: str = RUN) -> None:
    ingest(store, [{**Rec.run_start(1.0, "r", None, {}, {}), "seq": 1}], run_id)


def report(seq: int, command_id: int, status: str, reason: str | None = None) -> dict[str, Any]:
    record = Rec.command(10.0 + seq, command_id, status, reason, epoch=0, batch=seq, step=seq)
    return {**record, "seq": seq}


def create(store: Store, kind: str = "set_lr", lr: float | None = 0.01, run_id: str = RUN) -> Any:
    return write(store, lambda c: commands.create_command(c, run_id, kind, lr))


def status(store: Store, command_id: int) -> str:
    [command] = [c for c in store.commands(RUN) if c["id"] == command_id]
    return str(command["status"])


# -- creation -------------------------------------------------------------------------------


def test_a_new_command_is_pending(store: Store) -> None:
    begin(store)
    command = create(store)
    assert (command["run_id"], command["kind"], command["lr"]) == (RUN, "set_lr", 0.01)
    assert command["status"] == "pending" and command["reason"] is None
    assert command["created_at"] == command["updated_at"]


def test_a_command_for_an_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=f"No run with id '{RUN}'"):
        create(store)


@pytest.mark.parametrize("ended", ["finished", "stopped", "failed"])
def test_a_command_for_an_ended_run_is_a_conflict(store: Store, ended: str) -> None:
    begin(store)
    ingest(store, [{**Rec.run_end(2.0, ended, None), "seq": 2}])
    with pytest.raises(Conflict, match=f"has already {ended}"):
        create(store, "stop", None)
    assert store.commands(RUN) == []


def test_a_disconnected_run_still_takes_commands(store: Store) -> None:
    """They wait for the trainer to come back."""
    begin(store)
    write(store, lambda c: c.execute("UPDATE runs SET status = 'disconnected'"))
    assert create(store, "stop", None)["status"] == "pending"


# -- moving forward -------------------------------------------------------------------------


def test_statuses_move_forward_and_final_ones_emit_an_event(store: Store) -> None:
    begin(store)
    cid = create(store)["id"]
    delivered = ingest(store, [report(2, cid, "delivered")])
    assert [c["status"] for c in delivered.commands] == ["delivered"]
    assert not [e for e in delivered.events if e["kind"] == "command"]
    applied = ingest(store, [report(3, cid, "applied", "lr is now 0.01")])
    [command] = applied.commands
    assert (command["status"], command["reason"], command["batch"]) == (
        "applied",
        "lr is now 0.01",
        3,
    )
    [event] = [e for e in applied.events if e["kind"] == "command"]
    assert event["data"] == {
        "command_id": cid,
        "kind": "set_lr",
        "status": "applied",
        "reason": "lr is now 0.01",
    }


def test_a_late_report_never_moves_a_command_back(store: Store) -> None:
    begin(store)
    cid = create(store)["id"]
    ingest(store, [report(2, cid, "applied")])
    changes = ingest(store, [report(3, cid, "delivered"), report(4, cid, "rejected", "no")])
    assert changes.commands == [] and status(store, cid) == "applied"
    assert [e for e in changes.events if e["kind"] == "command"] == []


def test_a_report_may_skip_delivered(store: Store) -> None:
    begin(store)
    cid = create(store)["id"]
    ingest(store, [report(2, cid, "rejected", "schedule owns the lr")])
    assert status(store, cid) == "rejected"


def test_reports_on_unknown_commands_or_other_runs_commands_are_ignored(store: Store) -> None:
    begin(store)
    begin(store, OTHER)
    theirs = create(store, run_id=OTHER)["id"]
    changes = ingest(store, [report(2, theirs, "applied"), report(3, 999, "applied")])
    assert changes.commands == [] and changes.last_seq == 3
    assert [c["status"] for c in store.commands(OTHER)] == ["pending"]


def test_expire_and_unfinished(store: Store) -> None:
    begin(store)
    ids = [create(store)["id"] for _ in range(4)]
    ingest(store, [report(2, ids[1], "delivered"), report(3, ids[2], "applied")])
    unfinished = write(store, lambda c: commands.unfinished_commands(c, RUN))
    assert [c["id"] for c in unfinished] == [ids[0], ids[1], ids[3]]
    expired = write(store, lambda c: commands.expire_commands(c, RUN, "gone", 5.0))
    assert sorted(c["id"] for c in expired) == [ids[0], ids[1], ids[3]]
    assert {(c["status"], c["reason"], c["updated_at"]) for c in expired} == {
        ("expired", "gone", 5.0)
    }
    assert status(store, ids[2]) == "applied"
    assert write(store, lambda c: commands.unfinished_commands(c, RUN)) == []


def test_end_run_expires_the_commands_it_leaves_behind(store: Store) -> None:
    begin(store)
    pending, delivered, applied = (create(store)["id"] for _ in range(3))
    ingest(store, [report(2, delivered, "delivered"), report(3, applied, "applied")])
    changes = ingest(store, [{**Rec.run_end(9.0, "stopped", None), "seq": 4}])
    assert sorted(c["id"] for c in changes.commands) == [pending, delivered]
    assert {c["reason"] for c in changes.commands} == {"the run stopped before it could apply"}
    assert [status(store, i) for i in (pending, delivered, applied)] == [
        "expired",
        "expired",
        "applied",
    ]


# -- any order of reports -------------------------------------------------------------------------


def memory_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT INTO runs (id, name, status, created_at, updated_at)"
        " VALUES (?, 'r', 'running', 0, 0)",
        (RUN,),
    )
    return conn


@settings(deadline=None, database=None, max_examples=100)
@given(st.lists(st.sampled_from(COMMAND_STATUSES[1:]), max_size=8))
def test_any_sequence_of_reports_only_moves_a_command_forward(reports: list[str]) -> None:
    conn = memory_db()
    cid = commands.create_command(conn, RUN, "stop", None)["id"]
    current = "pending"
    for i, new in enumerate(reports):
        rec = {"id": cid, "status": new, "reason": f"r{i}", "epoch": None, "batch": i, "step": i}
        moved = commands.update_command(conn, RUN, rec, float(i))
        expected = current not in FINAL_COMMAND and (
            COMMAND_STATUSES.index(new) > COMMAND_STATUSES.index(current)
        )
        assert (moved is not None) == expected
        if moved is not None:
            current = new
        row = conn.execute("SELECT status FROM commands WHERE id = ?", (cid,)).fetchone()
        assert row[0] == current
    conn.close()


# -- the cockpit kinds: args, results, pause ------------------------------------------------


def create_with(store: Store, kind: str, args: dict[str, Any]) -> Any:
    return write(store, lambda c: commands.create_command(c, RUN, kind, None, args))


def run_status(store: Store) -> str:
    return str(store.get_run(RUN)["status"])


def test_args_are_stored_and_go_to_the_trainer_as_the_bodys_fields(store: Store) -> None:
    from server.protocol import Msg

    begin(store)
    command = create_with(store, "set", {"name": "early_stopping.patience", "value": 5})
    assert command["args"] == {"name": "early_stopping.patience", "value": 5}
    assert command["result"] is None
    assert Msg.command(command)["command"] == {
        "id": command["id"], "kind": "set", "lr": None,
        "name": "early_stopping.patience", "value": 5,
    }  # fmt: skip
    assert store.commands(RUN)[0]["args"] == command["args"]


def test_the_result_of_an_applied_command_is_kept_beside_its_args(store: Store) -> None:
    begin(store)
    command = create_with(store, "stop", {"checkpoint": True})
    result = {"epoch": 0, "batch": 2, "step": 2, "path": "/tmp/x.keras", "bytes": 10}
    record = {**report(2, command["id"], "applied"), "result": result}
    ingest(store, [record])
    [stored] = store.commands(RUN)
    assert stored["status"] == "applied" and stored["result"] == result
    assert stored["args"] == {"checkpoint": True}


def test_a_result_too_long_to_keep_is_replaced_by_a_note(store: Store) -> None:
    begin(store)
    command = create_with(store, "checkpoint", {})
    record = {**report(2, command["id"], "applied"), "result": {"path": "x" * 5000}}
    ingest(store, [record])
    assert "not kept" in store.commands(RUN)[0]["result"]["note"]


def test_an_applied_pause_pauses_the_run_and_resume_runs_it_again(store: Store) -> None:
    begin(store)
    pause = create_with(store, "pause", {})
    changes = ingest(store, [report(2, pause["id"], "delivered")])
    assert run_status(store) == "running" and changes.run is None
    changes = ingest(store, [report(3, pause["id"], "applied")])
    assert run_status(store) == "paused"
    assert changes.run is not None and changes.run["status"] == "paused"  # pushed to browsers
    resume = create_with(store, "resume", {})
    changes = ingest(store, [report(4, resume["id"], "applied")])
    assert run_status(store) == "running" and changes.run is not None


def test_a_rejected_pause_leaves_the_run_running(store: Store) -> None:
    begin(store)
    pause = create_with(store, "pause", {})
    ingest(store, [report(2, pause["id"], "rejected", "already paused")])
    assert run_status(store) == "running"


def test_a_paused_run_that_loses_its_stream_and_comes_back_is_paused_again(store: Store) -> None:
    from server.lifecycle import close_lost_runs, mark_connected, mark_disconnected

    begin(store)
    pause = create_with(store, "pause", {})
    ingest(store, [report(2, pause["id"], "applied")])
    write(store, lambda c: mark_disconnected(c, store.memory, RUN, "stream lost"))
    assert run_status(store) == "disconnected"
    write(store, lambda c: mark_connected(c, store.memory, RUN))
    assert run_status(store) == "paused"
    assert not write(store, lambda c: close_lost_runs(c, store.memory, 0.0)), (
        "a connected paused run is never lost"
    )
    assert run_status(store) == "paused"


def test_the_newest_state_event_is_the_runs_knobs_and_callbacks(store: Store) -> None:
    begin(store)
    old = Rec.state(2.0, {"optimizer.momentum": {"value": 0.9, "type": "float"}}, [], step=1)
    cb = [{"name": "early_stopping", "class": "EarlyStopping", "state": {"wait": 1}}]
    new = Rec.state(3.0, {"optimizer.momentum": {"value": 0.5, "type": "float"}}, cb, step=2)
    ingest(store, [{**old, "seq": 2}, {**new, "seq": 3}])
    knobs, callbacks = store.run_state(RUN)
    assert knobs == {"optimizer.momentum": {"value": 0.5, "type": "float"}}
    assert callbacks == cb


@pytest.mark.parametrize(
    "data",
    [
        {"knobs": [], "callbacks": []},
        {"knobs": {"a.b": {"value": 1, "type": "string"}}, "callbacks": []},
        {"knobs": {}, "callbacks": [{"class": "EarlyStopping"}]},
        {"knobs": {}, "callbacks": {}},
    ],
)
def test_a_malformed_state_event_is_refused(data: dict[str, Any]) -> None:
    record = {**Rec.event(1.0, "state", data), "seq": 1}
    good, errors, _ = validate_records([record], 256)
    assert not good and len(errors) == 1 and "Record 1" in errors[0]
