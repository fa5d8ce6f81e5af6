"""server.memory: what the writer remembers of each run, and when it must forget."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from server import ingest as ingest_mod
from server import store as store_mod
from server.ingest import apply_records
from server.lifecycle import Changes
from server.memory import RunMemo, WriterMemory
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


def start(seq: int = 1) -> dict[str, Any]:
    return {**Rec.run_start(1.0, "run", None, {}, {}), "seq": seq}


def batch(seq: int, step: int, **logs: float) -> dict[str, Any]:
    return {**Rec.metrics("batch", 1.0, step, 0.0, logs or {"loss": 1.0}), "seq": seq}


def end(seq: int, status: str = "finished") -> dict[str, Any]:
    return {**Rec.run_end(2.0, status, None), "seq": seq}


def series_ids(store: Store, run_id: str = RUN) -> dict[tuple[str, str], int]:
    with store.reader() as conn:
        rows = conn.execute("SELECT scope, key, id FROM series WHERE run_id = ?", (run_id,))
        return {(r[0], r[1]): r[2] for r in rows}


# -- the memo itself ---------------------------------------------------------------------


def test_get_is_none_for_an_unknown_run_and_remembers_nothing(store: Store) -> None:
    memory = WriterMemory()
    assert write(store, lambda c: memory.get(c, RUN)) is None
    assert RUN not in memory


def test_get_loads_a_run_once_then_keeps_it(store: Store) -> None:
    ingest(store, [start(), batch(2, 1)])
    memory = WriterMemory()
    memo = write(store, lambda c: memory.get(c, RUN))
    assert memo == RunMemo(last_seq=2, status="running")
    assert RUN in memory
    assert write(store, lambda c: memory.get(c, RUN)) is memo


def test_forget_and_clear_make_it_read_the_database_again(store: Store) -> None:
    ingest(store, [start()])
    memory = WriterMemory()
    memory.put(RUN, RunMemo(last_seq=99, status="paused"))
    memory.put(OTHER, RunMemo(last_seq=1, status="running"))
    memory.forget(RUN)
    memory.forget(RUN)  # twice is harmless
    assert RUN not in memory and OTHER in memory
    assert write(store, lambda c: memory.get(c, RUN)) == RunMemo(1, "running")
    memory.clear()
    assert RUN not in memory and OTHER not in memory


def test_the_memo_holds_exactly_the_stored_series_ids(store: Store) -> None:
    ingest(store, [start(), batch(2, 1, loss=1.0, acc=0.5)])
    ingest(store, [batch(3, 2, loss=1.0, lr=0.1)])
    memo = store.memory._runs[RUN]
    assert memo.last_seq == 3
    assert memo.series == series_ids(store)
    assert set(memo.series) == {("batch", "loss"), ("batch", "acc"), ("batch", "lr")}


def test_the_memo_follows_the_run_status(store: Store) -> None:
    ingest(store, [start(), end(2, "stopped")])
    assert store.memory._runs[RUN].status == "stopped"
    ingest(store, [start(3)])
    assert store.memory._runs[RUN].status == "running"


# -- deletion ------------------------------------------------------------------------------


def test_a_deleted_run_is_forgotten_so_its_id_starts_afresh(store: Store) -> None:
    ingest(store, [start(), batch(2, 1, loss=0.5), batch(3, 2, loss=0.25), end(4)])
    old_ids = series_ids(store)
    write(store, lambda c: store_mod.delete_run(c, store.memory, RUN))
    assert RUN not in store.memory
    assert series_ids(store) == {}
    # the same run id streams again from seq 1: nothing may be skipped as a replay
    changes = ingest(store, [start(), batch(2, 1, loss=9.0)])
    assert changes.last_seq == 2
    new_ids = series_ids(store)
    assert set(new_ids) == {("batch", "loss")}
    assert store.memory._runs[RUN].series == new_ids
    served = store.metrics(RUN, "batch", ["loss"], max_points=10)["loss"][0]
    assert [(p.step, p.value) for p in served] == [(1, 9.0)]
    assert old_ids  # (the old ones existed)


def test_a_new_run_never_inherits_a_deleted_runs_series(store: Store) -> None:
    """SQLite may hand a new series the id a deleted one had; the memo must not be stale."""
    ingest(store, [start(), batch(2, 1, loss=0.5), end(3)])
    write(store, lambda c: store_mod.delete_run(c, store.memory, RUN))
    ingest(store, [start(), batch(2, 1, loss=0.5)], run_id=OTHER)
    ingest(store, [start(), batch(2, 1, loss=7.0)])
    with store.reader() as conn:
        per_run = conn.execute(
            "SELECT s.run_id, p.value FROM points p JOIN series s ON s.id = p.series_id"
            " ORDER BY s.run_id"
        ).fetchall()
    assert [tuple(r) for r in per_run] == [(RUN, 7.0), (OTHER, 0.5)]


# -- failures ------------------------------------------------------------------------------


def test_a_failed_write_forgets_the_run_and_the_next_write_is_right(store: Store) -> None:
    ingest(store, [start(), batch(2, 1, loss=0.5)])
    good, _, _ = validate_records([batch(3, 2, loss=0.25, fresh=1.0)], 256)
    bad = {
        "seq": 4,
        "type": "event",
        "t": 1.0,
        "kind": "x",
        "step": None,
        "epoch": None,
        "data": {"v": float("nan")},
    }
    with pytest.raises(ValueError):
        write(store, lambda c: apply_records(c, store.memory, RUN, [*good, bad]))
    assert RUN not in store.memory
    changes = ingest(store, [batch(3, 2, loss=0.25, fresh=1.0)])
    assert changes.last_seq == 3
    memo = store.memory._runs[RUN]
    assert memo.series == series_ids(store)
    assert ("batch", "fresh") in memo.series


def test_progress_alone_pushes_the_summary_at_most_once_a_second(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(ingest_mod, "time", SimpleNamespace(time=lambda: now[0]))
    assert ingest(store, [start()]).run is not None  # a new run: always pushed
    assert ingest(store, [batch(2, 1)]).run is None  # progress within the second
    now[0] += 0.5
    assert ingest(store, [batch(3, 2)]).run is None
    now[0] += 0.6
    pushed = ingest(store, [batch(4, 3)]).run
    assert pushed is not None and pushed["step"] == 3
    assert ingest(store, [end(5)]).run is not None  # a status change: always pushed
