"""The database schema, its version, and the migrations that bring older files up to it.

A database file carries its schema version in `PRAGMA user_version`. `migrate` reads it
when the store opens the file:

- an empty file (version 0, no `runs` table) gets the latest schema, `SCHEMA`, at once;
- a file written before the version was kept (version 0 with tables) is version 1;
- an older file runs every later step of `MIGRATIONS` in order, each in a transaction
  of its own that also sets `user_version`, so a crash between steps resumes where it
  stopped;
- a file newer than this release is refused (`SchemaTooNewError`) and left untouched.

Adding version N: bump `SCHEMA_VERSION`, write `SCHEMA` as version N, and append
`(N, step)` to `MIGRATIONS`, where `step` takes a version N-1 file to N with plain
`conn.execute` calls (never `executescript`, which commits the step's transaction).
tests/test_schema.py checks that a fresh file and an upgraded one end up alike.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = [
    "MIGRATIONS",
    "RUNS_INDEXES",
    "SCHEMA",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "Migration",
    "SchemaTooNewError",
    "migrate",
    "user_version",
]

log = logging.getLogger("fitdeck.schema")

SCHEMA_VERSION = 3
"""The newest schema this release knows, and the one it writes."""

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    params TEXT NOT NULL DEFAULT '{}',
    meta TEXT NOT NULL DEFAULT '{}',
    last_seq INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER,
    step INTEGER NOT NULL DEFAULT 0,
    lr REAL,
    last_metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    UNIQUE (run_id, scope, key)
);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL,
    t REAL,
    value REAL,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tiers (
    series_id INTEGER NOT NULL,
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    min_step INTEGER, min_epoch REAL, min_t REAL, min_v REAL,
    max_step INTEGER, max_epoch REAL, max_t REAL, max_v REAL,
    nan_step INTEGER, nan_epoch REAL, nan_t REAL,
    PRIMARY KEY (series_id, level, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER,  -- NULL for events the server itself notes (disconnected, reconnected)
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER,
    epoch REAL,
    data TEXT NOT NULL DEFAULT '{}',
    UNIQUE (run_id, seq)
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    lr REAL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    epoch INTEGER,
    batch INTEGER,
    step INTEGER
);
CREATE INDEX IF NOT EXISTS commands_by_run ON commands (run_id, id);
"""
"""Version 1, the schema of the releases before migrations: frozen, never edit it."""

RUNS_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_by_started ON runs (created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_name ON runs (name COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS runs_by_project ON runs (coalesce(project, ''), id);
CREATE INDEX IF NOT EXISTS runs_by_status_rank ON runs (
    (CASE status WHEN 'running' THEN 0 WHEN 'paused' THEN 1 WHEN 'disconnected' THEN 2
     WHEN 'failed' THEN 3 WHEN 'stopped' THEN 4 WHEN 'finished' THEN 5 ELSE 6 END), id);
CREATE INDEX IF NOT EXISTS runs_by_duration ON runs (
    (coalesce(ended_at, updated_at) - created_at), id);
CREATE INDEX IF NOT EXISTS runs_by_epochs ON runs ((coalesce(epoch, -1)), id);
CREATE INDEX IF NOT EXISTS runs_by_status_started ON runs (status, created_at, id);
CREATE INDEX IF NOT EXISTS runs_by_project_started ON runs (project, created_at, id);
"""
"""The runs list's indexes (version 3): `server.runs_query` orders by these very
expressions, which is what lets SQLite walk an index for every sort. The last two
serve a `status` or `project` filter under the default sort."""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    params TEXT NOT NULL DEFAULT '{}',
    meta TEXT NOT NULL DEFAULT '{}',
    last_seq INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER,
    step INTEGER NOT NULL DEFAULT 0,
    lr REAL,
    last_metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
"""
    + RUNS_INDEXES
    + """CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    UNIQUE (run_id, scope, key)
);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL,
    t REAL,
    value REAL,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tiers (
    series_id INTEGER NOT NULL,
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    min_step INTEGER, min_epoch REAL, min_t REAL, min_v REAL,
    max_step INTEGER, max_epoch REAL, max_t REAL, max_v REAL,
    nan_step INTEGER, nan_epoch REAL, nan_t REAL,
    PRIMARY KEY (series_id, level, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER,  -- NULL for events the server itself notes (disconnected, reconnected)
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER,
    epoch REAL,
    data TEXT NOT NULL DEFAULT '{}',
    UNIQUE (run_id, seq)
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    lr REAL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    epoch INTEGER,
    batch INTEGER,
    step INTEGER,
    args TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS commands_by_run ON commands (run_id, id);
"""
)
"""The latest schema (`SCHEMA_VERSION`), what an empty file gets.

Since version 2: `commands.args` holds the JSON arguments of command kinds beyond
`set_lr` and `stop`. Since version 3: one index per sort of the paged runs list
(`RUNS_INDEXES`), each ending in `id` so a page is an index range, never an OFFSET.
"""

Migration = Callable[[sqlite3.Connection], None]
"""One step: takes a file of the version before it to its own, inside a transaction."""


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer fitdeck; this release must not touch it."""

    def __init__(self, path: str, version: int, known: int) -> None:
        super().__init__(
            f"The database {path} has schema version {version}, but this fitdeck release"
            f" knows versions up to {known}: it was written by a newer fitdeck. Upgrade"
            " fitdeck to open it (the file was left unchanged)."
        )
        self.path = path
        self.version = version
        self.known = known


def _to_v2(conn: sqlite3.Connection) -> None:
    """Arguments for the new command kinds; indexes for the paged runs list."""
    conn.execute("ALTER TABLE commands ADD COLUMN args TEXT NOT NULL DEFAULT '{}'")
    conn.execute("CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at DESC, id)")
    conn.execute("CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status)")


def _to_v3(conn: sqlite3.Connection) -> None:
    """The paged runs list's indexes, replacing version 2's two."""
    conn.execute("DROP INDEX IF EXISTS runs_by_created")
    conn.execute("DROP INDEX IF EXISTS runs_by_status")
    _execute_script(conn, RUNS_INDEXES)


MIGRATIONS: list[tuple[int, Migration]] = [
    (2, _to_v2),
    (3, _to_v3),
]
"""In order: `(N, step)` takes a version N-1 file to version N."""


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version the file says it has (0 when it never said)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _db_path(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return str(row[2]) or ":memory:"
    return "?"


def _has_runs(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'")
    return row.fetchone() is not None


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of `script`, inside the caller's transaction (`executescript`
    would commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement at the end of a script: {statement!r}")


def _checked_steps(latest: int) -> list[tuple[int, Migration]]:
    steps = list(MIGRATIONS)
    if [version for version, _step in steps] != list(range(2, latest + 1)):
        raise RuntimeError(
            f"MIGRATIONS must hold versions 2 to {latest} in order, got"
            f" {[version for version, _step in steps]}"
        )
    return steps


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` … `COMMIT`, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file behind `conn` to `SCHEMA_VERSION`; returns the version it is at.

    `conn` must be in autocommit mode (`isolation_level=None`) with no transaction open:
    every step commits on its own. Raises `SchemaTooNewError`, having written nothing,
    when the file is newer than this release. A step that fails is rolled back and its
    error raised; the file stays at the last version completed, and the next call
    resumes from there.
    """
    if conn.isolation_level is not None or conn.in_transaction:
        raise RuntimeError("migrate() needs an autocommit connection with no open transaction")
    latest = SCHEMA_VERSION
    steps = _checked_steps(latest)
    path = _db_path(conn)
    version = user_version(conn)
    if version > latest:
        raise SchemaTooNewError(path, version, latest)
    if version == latest:
        log.debug("database %s is at schema version %d", path, version)
        return version

    if version == 0:
        with _transaction(conn):
            version = user_version(conn)  # another process may have been first
            if version == 0 and not _has_runs(conn):
                log.info("creating schema version %d in %s", latest, path)
                _execute_script(conn, SCHEMA)
                conn.execute(f"PRAGMA user_version = {latest:d}")
                version = latest
            elif version == 0:
                log.info("database %s predates schema versions: it is version 1", path)
                _execute_script(conn, SCHEMA_V1)  # only what is missing, if anything
                conn.execute("PRAGMA user_version = 1")
                version = 1

    for target, step in steps:
        if target <= version:
            continue
        log.info("upgrading %s from schema version %d to %d", path, target - 1, target)
        try:
            with _transaction(conn):
                if user_version(conn) != target - 1:  # another process did this step
                    version = user_version(conn)
                    continue
                step(conn)
                conn.execute(f"PRAGMA user_version = {target:d}")
        except Exception:
            log.error(
                "upgrading %s to schema version %d failed; it stays at version %d",
                path,
                target,
                version,
            )
            raise
        version = target
    if version != latest:
        raise RuntimeError(f"database {path} is at schema version {version}, not {latest}")
    log.info("database %s is at schema version %d", path, version)
    return version
