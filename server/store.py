"""SQLite storage: one writer thread that commits in batches, reads beside it.

Every write is a function run on the writer thread inside a transaction that
also holds whatever else was queued meanwhile (`BEGIN IMMEDIATE` … `COMMIT`),
each under its own savepoint so one bad task cannot spoil its neighbours.
Reads use per-thread connections; WAL mode lets them run during writes.

Storage trouble (the file locked by another process past `busy_timeout`, a full
disk, a read-only or failing file system) rolls the whole batch back and keeps
it: the writer retries it, with the tasks queued since, until it commits, so no
caller hears of success before COMMIT and writes land in the order they were
submitted. Meanwhile `Store.trouble` says why, and `on_health` hears each change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from server import downsample, schema
from server.downsample import Point
from server.errors import Conflict, NotFound
from server.memory import WriterMemory

__all__ = ["BUSY_TIMEOUT", "StorageUnavailable", "Store", "is_storage_failure"]

log = logging.getLogger("fitdeck.store")

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], T]

# The schema lives in server.schema; these names stay importable from here (bench/figures.py).
SCHEMA = schema.SCHEMA
SCHEMA_VERSION = schema.SCHEMA_VERSION

TIER_UPSERT = """
INSERT INTO tiers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (series_id, level, bucket) DO UPDATE SET
    min_step = CASE WHEN excluded.min_v < min_v OR min_v IS NULL AND excluded.min_v IS NOT NULL
                    THEN excluded.min_step ELSE min_step END,
    min_epoch = CASE WHEN excluded.min_v < min_v OR min_v IS NULL AND excluded.min_v IS NOT NULL
                    THEN excluded.min_epoch ELSE min_epoch END,
    min_t = CASE WHEN excluded.min_v < min_v OR min_v IS NULL AND excluded.min_v IS NOT NULL
                    THEN excluded.min_t ELSE min_t END,
    max_step = CASE WHEN excluded.max_v > max_v OR max_v IS NULL AND excluded.max_v IS NOT NULL
                    THEN excluded.max_step ELSE max_step END,
    max_epoch = CASE WHEN excluded.max_v > max_v OR max_v IS NULL AND excluded.max_v IS NOT NULL
                    THEN excluded.max_epoch ELSE max_epoch END,
    max_t = CASE WHEN excluded.max_v > max_v OR max_v IS NULL AND excluded.max_v IS NOT NULL
                    THEN excluded.max_t ELSE max_t END,
    nan_step = CASE WHEN excluded.nan_step < nan_step OR nan_step IS NULL
                    THEN excluded.nan_step ELSE nan_step END,
    nan_epoch = CASE WHEN excluded.nan_step < nan_step OR nan_step IS NULL
                    THEN excluded.nan_epoch ELSE nan_epoch END,
    nan_t = CASE WHEN excluded.nan_step < nan_step OR nan_step IS NULL
                    THEN excluded.nan_t ELSE nan_t END,
    min_v = CASE WHEN excluded.min_v < min_v OR min_v IS NULL THEN excluded.min_v ELSE min_v END,
    max_v = CASE WHEN excluded.max_v > max_v OR max_v IS NULL THEN excluded.max_v ELSE max_v END
"""
# min_v/max_v are assigned last: SQLite evaluates every SET expression against
# the old row, but keeping them last makes that reading obvious.


BUSY_TIMEOUT = 5.0
"""Seconds the writer waits for a database another process holds locked before it
reports storage trouble (it keeps retrying after that)."""
RETRY_START, RETRY_MAX = 0.05, 2.0
"""Seconds between retries of a batch that storage trouble rolled back (doubling)."""

# SQLite's primary result codes for trouble with the file rather than the statement
# (numbers, not sqlite3.SQLITE_*: those need Python 3.11).
_STORAGE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY: locked by another connection past the busy timeout
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR: a read or write the file system refused (EROFS, EIO, ...)
        11,  # SQLITE_CORRUPT
        13,  # SQLITE_FULL: the disk (or max_page_count) is full
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
        26,  # SQLITE_NOTADB
    }
)
_STORAGE_MESSAGES = ("locked", "disk", "full", "readonly", "read-only", "unable to open")


class StorageUnavailable(Exception):
    """The store closed while storage trouble kept a write from committing."""


def is_storage_failure(exc: BaseException) -> bool:
    """True for trouble with the database file (locked, full, read-only, I/O), which a
    retry may cure; False for a statement or value the database refuses."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _STORAGE_CODES
    text = str(exc).lower()  # Python 3.10: no error code on the exception
    return any(word in text for word in _STORAGE_MESSAGES)


def _connect(
    path: Path, *, readonly: bool = False, busy_timeout: float = 30.0
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


class Store:
    """The database behind one server: runs, metric points, events, commands."""

    def __init__(
        self, path: Path, *, batch_tasks: int = 512, busy_timeout: float | None = None
    ) -> None:
        self.path = Path(path)
        self._batch_tasks = batch_tasks
        self._busy_timeout = BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        self.trouble: str | None = None
        """Why writes fail right now (SQLite's message), or None while they commit."""
        self.on_health: Callable[[str | None], None] | None = None
        """Called on the writer thread whenever `trouble` changes."""
        self._closing = threading.Event()
        self._queue: queue.SimpleQueue[tuple[WriteFn[Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.memory = WriterMemory()
        """Writer-thread-only memo (series ids, run sequence numbers)."""

    # -- lifecycle -----------------------------------------------------------

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, busy_timeout=self._busy_timeout)
        try:
            # First, before anything writes: a file from a newer fitdeck is left untouched.
            schema.migrate(conn)
        except BaseException:
            conn.close()
            raise
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # No trainer is connected to a fresh server: whatever was running lost its stream.
        now = time.time()
        conn.execute(
            "INSERT INTO events (run_id, seq, t, kind, data) SELECT id, NULL, ?, 'disconnected',"
            " '{\"reason\": \"server restarted\"}' FROM runs WHERE status = 'running'",
            (now,),
        )
        conn.execute(
            "UPDATE runs SET status = 'disconnected', updated_at = ? WHERE status = 'running'",
            (now,),
        )
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="fitdeck-writer", daemon=True
        )
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._closing.set()  # a batch that cannot commit now is given up, not retried
            self._queue.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- writes --------------------------------------------------------------

    def submit(self, fn: WriteFn[T]) -> Future[T]:
        """Run `fn(conn)` on the writer thread inside a batched transaction."""
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    async def write(self, fn: WriteFn[T]) -> T:
        """`submit` and wait; the write happens even if the waiting task is cancelled."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(fn)))

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        tasks: list[tuple[WriteFn[Any], Future[Any]]] = []
        delay = RETRY_START
        stop = False
        while True:
            if not tasks:
                item = self._queue.get()
                if item is None:
                    break
                tasks.append(item)
            stop = self._take_queued(tasks) or stop
            try:
                failure = self._run_batch(conn, tasks)
            except Exception as exc:  # a bug: its callers hear of it, the writer goes on
                log.exception("write batch of %d tasks failed", len(tasks))
                self._fail(tasks, exc)
                failure = None
            if conn.in_transaction:  # a rollback that failed too: start afresh
                conn = self._reconnect(conn)
            self._set_trouble(failure)
            if failure is None:
                tasks, delay = [], RETRY_START
                if stop:
                    break
                continue
            # Nothing of the batch was stored and nobody was told otherwise: retry it all.
            if stop or self._closing.wait(delay):
                self._give_up(tasks, failure)
                break
            delay = min(delay * 2, RETRY_MAX)
        with suppress(sqlite3.Error):
            conn.execute("PRAGMA optimize")
        conn.close()

    def _take_queued(self, tasks: list[tuple[WriteFn[Any], Future[Any]]]) -> bool:
        """Add what is queued to `tasks`, up to the batch size; True when `close` was seen."""
        while len(tasks) < self._batch_tasks:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            tasks.append(nxt)
        return False

    def _give_up(self, tasks: list[tuple[WriteFn[Any], Future[Any]]], failure: str) -> None:
        """The store is closing while storage trouble lasts: every waiting write fails."""
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is not None:
                tasks.append(nxt)
        self._fail(tasks, StorageUnavailable(f"The database could not be written ({failure})."))

    @staticmethod
    def _fail(tasks: list[tuple[WriteFn[Any], Future[Any]]], error: BaseException) -> None:
        for _fn, future in tasks:
            with suppress(InvalidStateError):
                future.set_exception(error)

    def _reconnect(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """A fresh writer connection (the old one is stuck in a transaction), if one opens."""
        try:
            fresh = _connect(self.path, busy_timeout=self._busy_timeout)
            fresh.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            log.warning("cannot reopen the database yet: %s", exc)
            return conn
        self.memory.clear()
        with suppress(sqlite3.Error):
            conn.close()
        return fresh

    def _set_trouble(self, failure: str | None) -> None:
        if failure == self.trouble:
            return
        if failure is None:
            log.warning("storage works again: writes commit")
        else:
            log.warning("storage trouble: %s; writes wait and are retried", failure)
        self.trouble = failure
        if self.on_health is not None:
            try:
                self.on_health(failure)
            except Exception:  # a listener's bug must not stop the writer
                log.exception("storage health listener failed")

    def _run_batch(
        self, conn: sqlite3.Connection, tasks: list[tuple[WriteFn[Any], Future[Any]]]
    ) -> str | None:
        """Run and commit `tasks`; on storage trouble roll back, keep them, say why."""
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in tasks:
                conn.execute("SAVEPOINT task")
                try:
                    result = fn(conn)
                except Exception as exc:  # handed to the caller, not lost
                    if is_storage_failure(exc):
                        raise  # not this task's fault: the whole batch waits
                    conn.execute("ROLLBACK TO task")
                    conn.execute("RELEASE task")
                    results.append((future, None, exc))
                else:
                    conn.execute("RELEASE task")
                    results.append((future, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            self.memory.clear()  # the memo may describe rows that were rolled back
            if is_storage_failure(exc):
                return str(exc) or type(exc).__name__
            log.exception("write batch of %d tasks failed", len(tasks))
            results = [(future, None, exc) for _fn, future in tasks]
        for future, result, error in results:
            # A caller that stopped waiting (cancelled) still had its write done.
            with suppress(InvalidStateError):
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
        return None

    # -- reads ---------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        yield conn

    def list_runs(self) -> list[dict[str, Any]]:
        with self.reader() as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY created_at DESC").fetchall()
        return [run_dict(r) for r in rows]

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.reader() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"No run with id {run_id!r}.")
        return run_dict(row)

    def run_keys(self, run_id: str) -> dict[str, list[str]]:
        keys: dict[str, list[str]] = {"batch": [], "epoch": []}
        with self.reader() as conn:
            for row in conn.execute(
                "SELECT scope, key FROM series WHERE run_id = ? ORDER BY key", (run_id,)
            ):
                keys.setdefault(row["scope"], []).append(row["key"])
        return keys

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE run_id = ? ORDER BY t, id", (run_id,)
            ).fetchall()
        return [event_dict(r) for r in rows]

    def commands(self, run_id: str) -> list[dict[str, Any]]:
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT * FROM commands WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [command_dict(r) for r in rows]

    def metrics(
        self,
        run_id: str,
        scope: str,
        keys: Sequence[str] | None,
        max_points: int,
        start: int | None = None,
        end: int | None = None,
    ) -> dict[str, tuple[list[Point], bool]]:
        """Per key: the points in [start, end], downsampled to `max_points`."""
        out: dict[str, tuple[list[Point], bool]] = {}
        with self.reader() as conn:
            sql = "SELECT id, key FROM series WHERE run_id = ? AND scope = ?"
            args: list[Any] = [run_id, scope]
            if keys:
                sql += f" AND key IN ({','.join('?' * len(keys))})"
                args.extend(keys)
            for row in conn.execute(sql, args).fetchall():
                out[row["key"]] = self._series(conn, row["id"], max_points, start, end)
        return out

    def _series(
        self,
        conn: sqlite3.Connection,
        series_id: int,
        max_points: int,
        start: int | None,
        end: int | None,
    ) -> tuple[list[Point], bool]:
        # Two subqueries: SQLite reads only the ends of the index for a lone min()
        # or max(), but scans the whole series for both in one SELECT.
        first, last = conn.execute(
            "SELECT (SELECT min(step) FROM points WHERE series_id = ?),"
            " (SELECT max(step) FROM points WHERE series_id = ?)",
            (series_id, series_id),
        ).fetchone()
        if first is None:
            return [], False
        lo = first if start is None else max(start, first)
        hi = last if end is None else min(end, last)
        if lo > hi:
            return [], False

        def raw(a: int, b: int, limit: int = -1) -> list[Point]:
            return [
                Point(*r)
                for r in conn.execute(
                    "SELECT step, epoch, t, value FROM points"
                    " WHERE series_id = ? AND step BETWEEN ? AND ? ORDER BY step LIMIT ?",
                    (series_id, a, b, limit),
                )
            ]

        head = raw(lo, hi, max_points + 1)
        if len(head) <= max_points:
            return head, False

        def tiers(level: int, b0: int, b1: int) -> list[Point]:
            pts: list[Point] = []
            for r in conn.execute(
                "SELECT min_step, min_epoch, min_t, min_v, max_step, max_epoch, max_t, max_v,"
                " nan_step, nan_epoch, nan_t FROM tiers"
                " WHERE series_id = ? AND level = ? AND bucket BETWEEN ? AND ?",
                (series_id, level, b0, b1),
            ):
                if r[0] is not None:
                    pts.append(Point(r[0], r[1], r[2], r[3]))
                    pts.append(Point(r[4], r[5], r[6], r[7]))
                if r[8] is not None:
                    pts.append(Point(r[8], r[9], r[10], None))
            return pts

        level = downsample.choose_level(hi - lo + 1, max_points)
        candidates = downsample.collect(raw, tiers, lo, hi, level)
        align = 1 << (downsample.SHIFT * level)
        return downsample.bucket_min_max(candidates, lo, hi, max_points, align), True


# -- row shapes ---------------------------------------------------------------


def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "project": row["project"],
        "status": row["status"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "ended_at": row["ended_at"],
        "params": json.loads(row["params"]),
        "meta": json.loads(row["meta"]),
        "epoch": row["epoch"],
        "step": row["step"],
        "lr": row["lr"],
        "last_metrics": json.loads(row["last_metrics"]),
        "error": json.loads(row["error"]) if row["error"] else None,
    }


def event_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        "seq": row["seq"],
        "t": row["t"],
        "kind": row["kind"],
        "step": row["step"],
        "epoch": row["epoch"],
        "data": json.loads(row["data"]),
    }


def command_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row has no items())


# -- run management (write functions for `Store.write`) and full exports ------------


def rename_run(conn: sqlite3.Connection, run_id: str, name: str) -> dict[str, Any]:
    """Give a run a new name; returns the run."""
    cur = conn.execute(
        "UPDATE runs SET name = ?, updated_at = ? WHERE id = ? RETURNING *",
        (name, time.time(), run_id),
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"No run with id {run_id!r}.")
    return run_dict(row)


def delete_run(conn: sqlite3.Connection, memory: WriterMemory, run_id: str) -> None:
    """Delete a run with its series, points, tiers, events and commands.

    The writer's memo of the run goes too, so a later run cannot be handed a
    deleted series id.
    """
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"No run with id {run_id!r}.")
    if row[0] == "running":
        raise Conflict(
            f"Run {run_id!r} is running; stop it (or let it end) before deleting it,"
            " or its trainer would write into it again."
        )
    own_series = "series_id IN (SELECT id FROM series WHERE run_id = ?)"
    conn.execute(f"DELETE FROM tiers WHERE {own_series}", (run_id,))
    conn.execute(f"DELETE FROM points WHERE {own_series}", (run_id,))
    for table in ("series", "events", "commands"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    memory.forget(run_id)


def iter_series_points(
    path: Path, run_id: str, chunk: int = 5000
) -> Iterator[tuple[str, str, list[Point]]]:
    """Every stored point of a run at full resolution, as (scope, key, points) chunks.

    Its own connection: streamed response bodies are pulled from more than one thread.
    """
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        series = conn.execute(
            "SELECT id, scope, key FROM series WHERE run_id = ? ORDER BY scope, key", (run_id,)
        ).fetchall()
        for sid, scope, key in series:
            cursor = conn.execute(
                "SELECT step, epoch, t, value FROM points WHERE series_id = ? ORDER BY step",
                (sid,),
            )
            first = True
            while batch := cursor.fetchmany(chunk):
                yield scope, key, [Point(*r) for r in batch]
                first = False
            if first:
                yield scope, key, []
    finally:
        conn.close()
