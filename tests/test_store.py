"""The writer thread: batches commit whole, storage trouble is retried, never reported as done."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.store import StorageUnavailable, Store, is_storage_failure


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "s.db", busy_timeout=0.1)
    s.open()
    s.submit(lambda c: c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")).result(5)
    yield s
    s.close()


def rows(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]
    finally:
        conn.close()


def insert(x: int) -> Callable[[sqlite3.Connection], int]:
    return lambda c: c.execute("INSERT INTO t VALUES (?)", (x,)).rowcount


def test_writes_blocked_by_a_lock_wait_in_order_and_commit_once_it_is_released(
    store: Store,
) -> None:
    health: list[str | None] = []
    store.on_health = health.append
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    futures = [store.submit(insert(x)) for x in range(5)]
    deadline = time.monotonic() + 10
    while store.trouble is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.trouble == "database is locked"
    time.sleep(0.3)  # several retries
    assert not any(f.done() for f in futures)  # nobody hears "stored" before COMMIT
    holder.execute("ROLLBACK")
    holder.close()
    assert [f.result(5) for f in futures] == [1] * 5
    assert store.trouble is None
    assert health == ["database is locked", None]
    assert rows(store.path) == [0, 1, 2, 3, 4]


def test_a_task_that_fails_on_its_own_spoils_neither_the_batch_nor_the_health(
    store: Store,
) -> None:
    ok = store.submit(insert(1))
    dup = store.submit(insert(1))
    assert ok.result(5) == 1
    with pytest.raises(sqlite3.IntegrityError):
        dup.result(5)
    assert store.trouble is None
    assert rows(store.path) == [1]


def test_closing_amid_storage_trouble_fails_the_waiting_writes_instead_of_hanging(
    tmp_path: Path,
) -> None:
    s = Store(tmp_path / "c.db", busy_timeout=0.1)
    s.open()
    holder = sqlite3.connect(s.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        waiting = s.submit(lambda c: c.execute("UPDATE runs SET name = 'x'"))
        deadline = time.monotonic() + 10
        while s.trouble is None and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        s.close()
        assert time.monotonic() - started < 5
        with pytest.raises(StorageUnavailable, match="database is locked"):
            waiting.result(1)
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("attempt to write a readonly database"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.OperationalError("no such table: nope"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed: t.x"), False),
        (ValueError("database is locked"), False),
    ],
)
def test_storage_failures_are_told_from_refused_statements(
    exc: BaseException, expected: bool
) -> None:
    assert is_storage_failure(exc) is expected


def test_real_storage_errors_carry_a_storage_code(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as refused:
        conn.execute("INSERT INTO t VALUES (1)")
    assert is_storage_failure(refused.value)
    with pytest.raises(sqlite3.OperationalError) as bad:
        conn.execute("SELECT nope FROM t")
    assert not is_storage_failure(bad.value)
    conn.close()
