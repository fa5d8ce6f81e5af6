"""server.ingest.apply_records on a real SQLite file: replays, unknown runs, NaN, tiers."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import downsample
from server.errors import BadRequest
from server.hub import live_points
from server.ingest import apply_records, tier_rows
from server.lifecycle import Changes
from server.protocol import LR_KEY, Rec, encode_number
from server.records import validate_records
from server.store import Store

RUN = "0123456789abcdef0123456789abcdef"
T = TypeVar("T")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "fitdeck.db")
    s.open()
    yield s
    s.close()


def write(store: Store, fn: Callable[[sqlite3.Connection], T]) -> T:
    return store.submit(fn).result(timeout=10)


def clean(*records: dict[str, Any]) -> list[dict[str, Any]]:
    """Records as the server has them after validation (numbered in the order given)."""
    good, errors, _ = validate_records([dict(r) for r in records], 256)
    assert not errors
    return good


def ingest(store: Store, records: list[dict[str, Any]], run_id: str = RUN) -> Changes:
    return write(store, lambda c: apply_records(c, store.memory, run_id, records))


def start(seq: int = 1, name: str = "run") -> dict[str, Any]:
    return {**Rec.run_start(1.0, name, "proj", {"epochs": 2}, {"steps_per_epoch": 4}), "seq": seq}


def batch(seq: int, step: int, **logs: Any) -> dict[str, Any]:
    return {**Rec.metrics("batch", 10.0 + step, step, step / 4, logs or {"loss": 1.0}), "seq": seq}


def count(store: Store, sql: str, *args: Any) -> Any:
    with store.reader() as conn:
        return conn.execute(sql, args).fetchone()[0]


def points(store: Store, key: str, scope: str = "batch") -> list[tuple[int, float | None]]:
    with store.reader() as conn:
        rows = conn.execute(
            "SELECT p.step, p.value FROM points p JOIN series s ON s.id = p.series_id"
            " WHERE s.run_id = ? AND s.scope = ? AND s.key = ? ORDER BY p.step",
            (RUN, scope, key),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


# -- new runs and replays ----------------------------------------------------------------


def test_a_run_start_creates_the_run(store: Store) -> None:
    changes = ingest(store, clean(start(), batch(2, 1, loss=0.5)))
    assert changes.last_seq == 2
    assert changes.run is not None and changes.run["status"] == "running"
    assert [e["kind"] for e in changes.events] == ["train_begin"]
    assert changes.events[0]["data"] == {"fit": 1}
    run = store.get_run(RUN)
    assert (run["name"], run["project"], run["params"]) == ("run", "proj", {"epochs": 2})
    assert points(store, "loss") == [(1, 0.5)]


def test_a_replayed_record_is_stored_once(store: Store) -> None:
    records = clean(start(), batch(2, 1), batch(3, 2), {**Rec.event(5.0, "note", {}), "seq": 4})
    ingest(store, records)
    again = ingest(store, clean(*records))
    assert again.last_seq == 4
    assert again.records == [] and again.events == [] and again.run is None
    assert count(store, "SELECT count(*) FROM points") == 2
    assert count(store, "SELECT count(*) FROM events WHERE kind = 'note'") == 1
    assert count(store, "SELECT count(*) FROM events WHERE kind = 'train_begin'") == 1


def test_an_overlapping_frame_stores_only_the_new_records(store: Store) -> None:
    ingest(store, clean(start(), *(batch(s, s - 1) for s in range(2, 6))))
    changes = ingest(store, clean(*(batch(s, s - 1, loss=float(s)) for s in range(3, 9))))
    assert [r["seq"] for r in changes.records] == [6, 7, 8]
    assert points(store, "loss") == [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
        (4, 1.0),
        (5, 6.0),
        (6, 7.0),
        (7, 8.0),
    ]


def test_records_of_a_frame_are_applied_in_seq_order(store: Store) -> None:
    records = clean(start(), batch(2, 1))
    changes = ingest(store, list(reversed(records)))
    assert changes.last_seq == 2 and points(store, "loss") == [(1, 1.0)]


def test_an_unknown_run_without_run_start_is_refused_and_leaves_nothing(store: Store) -> None:
    with pytest.raises(
        BadRequest, match=f"Run '{RUN}' is unknown and record 2 is not its run_start"
    ):
        ingest(store, clean(batch(2, 1), start(3)))
    for table in ("runs", "series", "points", "tiers", "events"):
        assert count(store, f"SELECT count(*) FROM {table}") == 0, table
    assert RUN not in store.memory
    ingest(store, clean(start(), batch(2, 1)))  # and the run can still begin properly
    assert points(store, "loss") == [(1, 1.0)]


def test_an_empty_frame_changes_nothing(store: Store) -> None:
    assert ingest(store, []) == Changes(last_seq=0)
    ingest(store, clean(start()))
    assert ingest(store, []).last_seq == 1


# -- values ----------------------------------------------------------------------------------


def test_nan_is_stored_as_null_and_served_back_as_nan(store: Store) -> None:
    records = clean(
        start(), batch(2, 1, loss="NaN", acc=0.5), batch(3, 2, loss="Infinity", acc=0.75)
    )
    changes = ingest(store, records)
    assert points(store, "loss") == [(1, None), (2, math.inf)]
    assert count(store, "SELECT count(*) FROM points WHERE value IS NULL") == 1
    served = store.metrics(RUN, "batch", ["loss"], max_points=100)["loss"][0]
    assert [encode_number(p.value) for p in served] == ["NaN", "Infinity"]
    assert store.get_run(RUN)["last_metrics"] == {"loss": "Infinity", "acc": 0.75}
    pushed = live_points(changes.records)["batch"]
    assert [p["logs"]["loss"] for p in pushed] == ["NaN", "Infinity"]
    nan_step = count(store, "SELECT nan_step FROM tiers WHERE level = 1 AND nan_step IS NOT NULL")
    assert nan_step == 1


def test_the_run_summary_follows_batches_epochs_and_lr(store: Store) -> None:
    ingest(store, clean(start(), batch(2, 1, loss=0.5), batch(3, 2, loss=0.25)))
    run = store.get_run(RUN)
    assert (run["step"], run["epoch"], run["last_metrics"]) == (2, None, {"loss": 0.25})
    epoch = {**Rec.metrics("epoch", 20.0, 4, 0, {"val_loss": 0.5}), "seq": 4}
    lr = {**Rec.lr(21.0, 4, 1.0, 0.05, 0.1, "schedule"), "seq": 5}
    changes = ingest(store, clean(epoch, lr))
    run = store.get_run(RUN)
    assert (run["epoch"], run["lr"], run["step"]) == (0, 0.05, 2)
    assert changes.run is not None and changes.run["lr"] == 0.05
    assert points(store, "val_loss", "epoch") == [(4, 0.5)]


def test_an_lr_change_is_a_point_and_an_event_but_the_first_reading_only_a_point(
    store: Store,
) -> None:
    first = {**Rec.lr(1.0, 0, 0.0, 0.1, None, "initial"), "seq": 2}
    change = {**Rec.lr(2.0, 5, 1.25, 0.01, 0.1, "command", command_id=7), "seq": 3}
    changes = ingest(store, clean(start(), first, change))
    assert points(store, LR_KEY) == [(0, 0.1), (5, 0.01)]
    [event] = [e for e in changes.events if e["kind"] == "lr_change"]
    assert event["data"] == {"lr": 0.01, "previous": 0.1, "source": "command", "command_id": 7}
    assert (event["seq"], event["step"], event["epoch"]) == (3, 5, 1.25)


def test_a_second_fit_restarts_the_run_and_counts_fits(store: Store) -> None:
    end = {**Rec.run_end(5.0, "finished", None), "seq": 3}
    ingest(store, clean(start(), batch(2, 1), end))
    assert store.get_run(RUN)["status"] == "finished"
    changes = ingest(store, clean(start(4), batch(5, 2)))
    run = store.get_run(RUN)
    assert (run["status"], run["ended_at"], run["error"]) == ("running", None, None)
    assert [e["data"] for e in changes.events if e["kind"] == "train_begin"] == [{"fit": 2}]
    assert points(store, "loss") == [(1, 1.0), (2, 1.0)]


# -- failed writes -----------------------------------------------------------------------------


def test_a_failed_write_of_a_new_run_leaves_no_memory_behind(store: Store) -> None:
    """Series rows inserted before the failure are rolled back: their ids must not be reused."""
    poison = {
        "seq": 3,
        "type": "event",
        "t": 1.0,
        "kind": "x",
        "step": None,
        "epoch": None,
        "data": {"v": math.inf},
    }
    with pytest.raises(ValueError):
        ingest(store, [*clean(start(), batch(2, 1, loss=0.5, acc=0.5)), poison])
    assert RUN not in store.memory
    assert count(store, "SELECT count(*) FROM runs") == 0
    assert count(store, "SELECT count(*) FROM series") == 0
    ingest(store, clean(start(), batch(2, 1, loss=0.5, acc=0.5)))
    assert points(store, "loss") == [(1, 0.5)] and points(store, "acc") == [(1, 0.5)]


def test_a_failed_write_of_a_known_run_is_retried_in_full(store: Store) -> None:
    ingest(store, clean(start(), batch(2, 1, loss=0.5)))
    poison = {
        "seq": 5,
        "type": "event",
        "t": 1.0,
        "kind": "x",
        "step": None,
        "epoch": None,
        "data": {"v": -math.inf},
    }
    with pytest.raises(ValueError):
        ingest(store, [*clean(batch(3, 2, loss=0.25, new=1.0), batch(4, 3, new=2.0)), poison])
    assert count(store, "SELECT count(*) FROM series WHERE key = 'new'") == 0
    changes = ingest(store, clean(batch(3, 2, loss=0.25, new=1.0), batch(4, 3, new=2.0)))
    assert changes.last_seq == 4
    assert points(store, "new") == [(2, 1.0), (3, 2.0)]
    assert points(store, "loss") == [(1, 0.5), (2, 0.25)]
    with store.reader() as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM points WHERE series_id NOT IN (SELECT id FROM series)"
        ).fetchone()[0]
    assert orphans == 0


# -- tiers -------------------------------------------------------------------------------------

rows_strategy = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.integers(0, 70_000),
        st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1.0])),
    ),
    max_size=60,
)


@settings(deadline=None, database=None, max_examples=80)
@given(rows_strategy)
def test_tier_rows_keep_each_buckets_extremes_and_first_nan_at_every_level(
    raw: list[tuple[int, int, float | None]],
) -> None:
    rows = [(sid, step, step / 10, float(step), v) for sid, step, v in raw]
    tiers = {(r[0], r[1], r[2]): r for r in tier_rows(rows)}
    expected_keys = {
        (sid, level, step >> (downsample.SHIFT * level))
        for sid, step, _ in raw
        for level in range(1, downsample.LEVELS + 1)
    }
    assert set(tiers) == expected_keys
    for (sid, level, bucket), row in tiers.items():
        inside = [r for r in rows if r[0] == sid and r[1] >> (downsample.SHIFT * level) == bucket]
        values = [r[4] for r in inside if r[4] is not None]
        nan_steps = [r[1] for r in inside if r[4] is None]
        min_v, max_v, nan_step = row[6], row[10], row[11]
        assert min_v == (min(values) if values else None)
        assert max_v == (max(values) if values else None)
        assert nan_step == (min(nan_steps) if nan_steps else None)
        if values:  # the extreme points are real points of the bucket
            assert (row[3], row[6]) in {(r[1], r[4]) for r in inside}
            assert (row[7], row[10]) in {(r[1], r[4]) for r in inside}
