"""Schema versions: a file made by the release before migrations upgrades with nothing lost.

tests/fixtures/fitdeck-v1.db was written by that release's own server code
(tests/fixtures/make_v1_db.py says how). Fast: no server process, no browser, no Keras.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from server import ingest, schema
from server.commands import create_command
from server.records import validate_records
from server.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "fitdeck-v1.db"
TABLES = ("runs", "series", "points", "tiers", "events", "commands")
NEW_COLUMNS = {"commands": {"args": "{}"}}
"""Columns added since version 1, with the value every old row must get."""

FINISHED, FAILED, DISCONNECTED = ("0" * 31 + n for n in "123")


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def dump(path: Path, only: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the data tables, in primary-key order (`only`: these columns)."""
    out = {}
    with closing(connect(path)) as conn:
        for table in TABLES:
            cols = only[table] if only else columns(conn, table)
            order = ", ".join(columns(conn, table))
            sql = f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}"
            out[table] = conn.execute(sql).fetchall()
    return out


def schema_of(path: Path) -> list[tuple[str, str, str | None]]:
    """`sqlite_master` with its SQL normalised (whitespace, and where ALTER TABLE put a
    column), without the statistics tables `PRAGMA optimize` may add."""
    with closing(connect(path)) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'"
        ).fetchall()
    out = []
    for kind, name, sql in rows:
        if sql is not None:
            sql = re.sub(r"\s+", " ", sql)
            sql = re.sub(r"\s*([(),])\s*", r"\1", sql).strip()
        out.append((kind, name, sql))
    return sorted(out)


def columns_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(connect(path)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_stat%'"
            )
        ]
        return {t: conn.execute(f"PRAGMA table_xinfo({t})").fetchall() for t in sorted(tables)}


def version_of(path: Path) -> int:
    with closing(connect(path)) as conn:
        return schema.user_version(conn)


def open_close(path: Path) -> None:
    store = Store(path)
    store.open()
    store.close()


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    path = tmp_path / "fitdeck.db"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def store(v1: Path) -> Iterator[Store]:
    s = Store(v1)
    s.open()
    yield s
    s.close()


def store_records(store: Store, run_id: str, raw: list[dict[str, Any]]) -> ingest.Changes:
    records, errors, _top = validate_records(raw, 256)
    assert not errors
    return store.submit(lambda c: ingest.apply_records(c, store.memory, run_id, records)).result()


# -- the fixture itself ---------------------------------------------------------------


def test_the_fixture_is_a_self_contained_version_1_file() -> None:
    assert FIXTURE.stat().st_size < 300_000
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{FIXTURE}{suffix}").exists()
    assert version_of(FIXTURE) == 1
    with closing(connect(FIXTURE)) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        statuses = dict(conn.execute("SELECT id, status FROM runs").fetchall())
        commands = {r[0] for r in conn.execute("SELECT status FROM commands")}
        values = [r[0] for r in conn.execute("SELECT value FROM points")]
    assert counts["runs"] == 3 and counts["points"] > 1000 and counts["tiers"] > 100
    assert counts["events"] > 5
    # None `running`: opening marks running runs `disconnected`, which would change them.
    assert statuses == {FINISHED: "finished", FAILED: "failed", DISCONNECTED: "disconnected"}
    assert commands == {"applied", "rejected", "expired", "delivered", "pending"}
    assert None in values and math.inf in values and -math.inf in values  # NaN is NULL


def test_the_frozen_version_1_schema_is_what_that_release_wrote(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with closing(connect(path)) as conn:
        conn.executescript(schema.SCHEMA_V1)
    assert schema_of(path) == schema_of(FIXTURE)
    assert columns_of(path) == columns_of(FIXTURE)


# -- upgrading ------------------------------------------------------------------------


def test_upgrade_keeps_every_row(v1: Path, caplog: pytest.LogCaptureFixture) -> None:
    with closing(connect(v1)) as conn:
        old_columns = {t: columns(conn, t) for t in TABLES}
    before = dump(v1)
    with caplog.at_level(logging.INFO, logger="fitdeck.schema"):
        open_close(v1)
    assert version_of(v1) == schema.SCHEMA_VERSION
    assert dump(v1, only=old_columns) == before
    with closing(connect(v1)) as conn:
        for table, new in NEW_COLUMNS.items():
            assert columns(conn, table) == old_columns[table] + list(new)
            for column, default in new.items():
                values = {r[0] for r in conn.execute(f"SELECT {column} FROM {table}")}
                assert values == {default}
    steps = [r.getMessage() for r in caplog.records if r.name == "fitdeck.schema"]
    assert any("from schema version 1 to 2" in m and str(v1) in m for m in steps), steps


def test_the_upgraded_runs_are_served(store: Store) -> None:
    runs = {r["id"]: r for r in store.list_runs()}
    assert {i: r["status"] for i, r in runs.items()} == {
        FINISHED: "finished",
        FAILED: "failed",
        DISCONNECTED: "disconnected",
    }
    finished = store.get_run(FINISHED)
    assert finished["name"] == "finished run ✓ résumé"
    assert finished["params"]["optimizer"] == "adam" and finished["lr"] == 0.0005
    assert finished["step"] == 600 and finished["epoch"] == 2
    assert store.get_run(FAILED)["error"]["type"] == "FloatingPointError"

    batch = store.metrics(FINISHED, "batch", None, 10_000)
    loss, downsampled = batch["loss"]
    assert not downsampled and len(loss) == 600
    assert loss[76].value is None and loss[149].value == math.inf
    assert batch["accuracy"][0][150].value == -math.inf
    assert [p.value for p in batch["learning_rate"][0]] == [0.001, 0.0005]
    small, downsampled = store.metrics(FINISHED, "batch", ["loss"], 50)["loss"]
    assert downsampled and len(small) <= 50
    assert any(p.value is None for p in small) and any(p.value == math.inf for p in small)
    epoch = store.metrics(FINISHED, "epoch", ["val_loss", "val_accuracy"], 100)
    assert [p.value for p in epoch["val_loss"][0]] == [1.5, None, 0.5]
    assert epoch["val_accuracy"][0][2].value == math.inf

    kinds = [e["kind"] for e in store.events(FINISHED)]
    assert kinds[0] == "train_begin" and kinds[-1] == "train_end"
    assert {"lr_change", "command", "checkpoint"} <= set(kinds)
    assert store.events(DISCONNECTED)[-1]["data"] == {"reason": "connection lost"}
    cmds = store.commands(FINISHED)
    assert [c["status"] for c in cmds] == ["applied", "rejected", "expired"]
    assert cmds[1]["reason"] == "lr 5.0 is above the limit 1.0"
    assert [c["status"] for c in store.commands(DISCONNECTED)] == ["delivered", "pending"]


def test_writes_work_after_the_upgrade(store: Store) -> None:
    new = "f" * 32
    start = {"type": "run_start", "t": 1.0, "name": "after", "params": {}, "meta": {}}
    points = [
        {"seq": s, "type": "batch", "t": 1.0 + s, "step": s, "epoch": 0, "logs": {"loss": 1 / s}}
        for s in range(2, 40)
    ]
    changes = store_records(store, new, [{"seq": 1, **start}, *points])
    assert changes.last_seq == 39
    assert len(store.metrics(new, "batch", ["loss"], 100)["loss"][0]) == 38

    # The old disconnected run goes on where it stopped.
    last = store.get_run(DISCONNECTED)["step"]
    more = [
        {
            "seq": 100 + i,
            "type": "batch",
            "t": 9.0,
            "step": last + i,
            "epoch": 0,
            "logs": {"loss": "Infinity", "mae": 0.0},
        }
        for i in (1, 2)
    ]
    store_records(store, DISCONNECTED, more)
    loss = store.metrics(DISCONNECTED, "batch", ["loss"], 1000)["loss"][0]
    assert len(loss) == 42 and loss[-1].value == math.inf
    command = store.submit(lambda c: create_command(c, DISCONNECTED, "stop", None)).result()
    assert command["args"] == {} and command["result"] is None
    assert store.commands(DISCONNECTED)[-1]["id"] == command["id"]


def test_opening_again_changes_nothing(v1: Path, caplog: pytest.LogCaptureFixture) -> None:
    open_close(v1)
    shape, rows = schema_of(v1), dump(v1)
    with caplog.at_level(logging.INFO, logger="fitdeck.schema"):
        open_close(v1)
    assert version_of(v1) == schema.SCHEMA_VERSION
    assert schema_of(v1) == shape and dump(v1) == rows
    assert not [r for r in caplog.records if "upgrading" in r.getMessage()]


def test_a_fresh_file_gets_the_same_schema_as_an_upgraded_one(v1: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    open_close(fresh)
    open_close(v1)
    assert version_of(fresh) == version_of(v1) == schema.SCHEMA_VERSION
    assert schema_of(fresh) == schema_of(v1)
    assert columns_of(fresh) == columns_of(v1)


def test_a_file_from_before_versions_is_version_1(v1: Path) -> None:
    with closing(connect(v1)) as conn:
        conn.execute("PRAGMA user_version = 0")
        old_columns = {t: columns(conn, t) for t in TABLES}
    before = dump(v1)
    open_close(v1)
    assert version_of(v1) == schema.SCHEMA_VERSION
    assert dump(v1, only=old_columns) == before


# -- refusing and resuming --------------------------------------------------------------


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_newer_file_is_refused_and_left_untouched(v1: Path, journal: str) -> None:
    newer = schema.SCHEMA_VERSION + 1
    with closing(connect(v1)) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal}")  # switching to WAL writes the header
        conn.execute(f"PRAGMA user_version = {newer}")
    files = sorted(p.name for p in v1.parent.iterdir())
    content = v1.read_bytes()
    store = Store(v1)
    with pytest.raises(schema.SchemaTooNewError) as info:
        store.open()
    message = str(info.value)
    assert f"schema version {newer}" in message
    assert f"up to {schema.SCHEMA_VERSION}" in message and "Upgrade fitdeck" in message
    assert isinstance(info.value, RuntimeError) and info.value.version == newer
    store.close()
    assert v1.read_bytes() == content
    assert sorted(p.name for p in v1.parent.iterdir()) == files


def test_a_failed_step_leaves_the_last_version_and_the_next_open_resumes(
    v1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with closing(connect(v1)) as conn:
        old_columns = {t: columns(conn, t) for t in TABLES}
    before = dump(v1)
    calls: list[int] = []
    real_v2 = dict(schema.MIGRATIONS)[2]

    def to_v2(conn: sqlite3.Connection) -> None:
        calls.append(2)
        real_v2(conn)

    def to_v3(conn: sqlite3.Connection) -> None:
        calls.append(3)
        conn.execute("CREATE TABLE step3 (x)")

    def broken_v4(conn: sqlite3.Connection) -> None:
        calls.append(4)
        conn.execute("CREATE TABLE step4 (x)")
        conn.execute("UPDATE runs SET name = 'spoilt'")
        raise RuntimeError("boom in step 4")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 4)
    monkeypatch.setattr(schema, "MIGRATIONS", [(2, to_v2), (3, to_v3), (4, broken_v4)])
    store = Store(v1)
    with pytest.raises(RuntimeError, match="boom in step 4"):
        store.open()
    store.close()
    assert calls == [2, 3, 4]
    assert version_of(v1) == 3
    with closing(connect(v1)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "step3" in tables and "step4" not in tables  # step 4 was rolled back whole
    assert dump(v1, only=old_columns) == before

    def to_v4(conn: sqlite3.Connection) -> None:
        calls.append(4)
        conn.execute("CREATE TABLE step4 (x)")

    monkeypatch.setattr(schema, "MIGRATIONS", [(2, to_v2), (3, to_v3), (4, to_v4)])
    calls.clear()
    open_close(v1)
    assert calls == [4]  # resumed: the steps already done are not run again
    assert version_of(v1) == 4
    assert dump(v1, only=old_columns) == before


def test_migrations_must_be_consecutive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newer = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", newer)  # but no step to it
    with (
        closing(connect(tmp_path / "x.db")) as conn,
        pytest.raises(RuntimeError, match=f"2 to {newer}"),
    ):
        schema.migrate(conn)
