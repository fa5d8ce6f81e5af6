"""`GET /api/runs` paged, filtered and sorted on the server; bulk delete; `/api/stats`.

In-process (`TestClient` on a real SQLite file). Runs are written straight into
the file beside the server where many are needed (as bench figure 8 does), and
streamed through `/ws/train` where what a trainer makes matters.
"""

from __future__ import annotations

import random
import re
import sqlite3
import string
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import runs_query
from server.protocol import RUN_STATUSES
from tests.test_web_api import batch, end, start, stream

STATUSES = ("finished", "failed", "stopped", "running", "disconnected")


def add_runs(
    db: Path, n: int, *, prefix: str = "run", t0: float | None = None, seed: int = 0
) -> list[str]:
    """`n` runs written into the server's file directly; their ids."""
    rng = random.Random(seed)
    now = time.time() if t0 is None else t0
    rows = []
    for i in range(n):
        status = STATUSES[i % len(STATUSES)]
        created = now + i * 0.5 + rng.random() * 0.1
        ended = None if status in ("running", "disconnected") else created + rng.randint(1, 500)
        rows.append((uuid.uuid4().hex, f"{prefix}-{i:04d}", f"p{i % 3}", status, created,
                     created + 1, ended, rng.choice([None, 0, 1, 2]), i))  # fmt: skip
    with closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT INTO runs (id, name, project, status, created_at, updated_at, ended_at,"
            " epoch, step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return [r[0] for r in rows]


def db_of(client: TestClient) -> Path:
    path: Path = client.app.state.fitdeck.store.path  # type: ignore[attr-defined]
    return path


def pages(client: TestClient, **params: Any) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = client.get("/api/runs", params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        yield body
        cursor = body["next"]
        if cursor is None:
            return


def all_runs(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    return [run for page in pages(client, **params) for run in page["runs"]]


def test_the_first_page_has_the_documented_shape(client: TestClient) -> None:
    add_runs(db_of(client), 3)
    body = client.get("/api/runs").json()
    assert set(body) == {"runs", "next", "total"}
    assert body["total"] == 3 and body["next"] is None
    assert [r["name"] for r in body["runs"]] == ["run-0002", "run-0001", "run-0000"]
    assert all(r["size_bytes"] == 0 for r in body["runs"])  # no series yet


def test_every_run_appears_exactly_once_across_pages_while_runs_are_added(
    client: TestClient,
) -> None:
    db = db_of(client)
    before = set(add_runs(db, 250))
    seen: list[str] = []
    totals = []
    for i, page in enumerate(pages(client, limit=40)):
        seen += [r["id"] for r in page["runs"]]
        totals.append(page["total"])
        assert len(page["runs"]) <= 40
        add_runs(db, 7, prefix=f"late{i}", seed=i)  # newer: they sort before the cursor
    assert len(seen) == len(set(seen)), "a run came twice"
    assert before <= set(seen)
    assert totals[0] == 250 and totals[-1] > 250  # the total follows the additions


@pytest.mark.parametrize("sort", sorted(runs_query.SORTS))
@pytest.mark.parametrize("descending", [False, True])
def test_every_sort_pages_through_every_run_in_order(
    client: TestClient, sort: str, descending: bool
) -> None:
    ids = add_runs(db_of(client), 123)
    runs = all_runs(client, limit=10, sort=("-" if descending else "") + sort)
    assert sorted(r["id"] for r in runs) == sorted(ids)
    rank = {s: i for i, s in enumerate(["running", "paused", "disconnected", "failed",
                                         "stopped", "finished"])}  # fmt: skip

    def key(r: dict[str, Any]) -> Any:
        return {
            "started": r["created_at"],
            "name": r["name"].lower(),
            "project": r["project"] or "",
            "status": rank[r["status"]],
            "duration": (r["ended_at"] or r["updated_at"]) - r["created_at"],
            "epochs": -1 if r["epoch"] is None else r["epoch"],
        }[sort]

    expected = sorted(runs, key=lambda r: (key(r), r["id"]), reverse=descending)
    assert [r["id"] for r in runs] == [r["id"] for r in expected]


def test_filters_by_name_text_regex_project_and_status(client: TestClient) -> None:
    db = db_of(client)
    add_runs(db, 60)
    add_runs(db, 5, prefix="Sweep_lr%0.1")

    def names(**params: Any) -> list[str]:
        return sorted(r["name"] for r in all_runs(client, limit=7, **params))

    # Plain text: a case-insensitive substring; % and _ are literal, not LIKE wildcards.
    assert names(q="sweep_LR%") == [f"Sweep_lr%0.1-{i:04d}" for i in range(5)]
    assert names(q="lr%0") == names(q="SWEEP")
    assert names(q="_lr") == names(q="sweep")
    assert names(q="run-001") == [f"run-001{i}" for i in range(10)]
    # A regular expression once it holds one of its characters.
    assert names(q="^run-00[0-2]5$") == ["run-0005", "run-0015", "run-0025"]
    assert names(q="^SWEEP.*-000[34]$") == ["Sweep_lr%0.1-0003", "Sweep_lr%0.1-0004"]
    # Project, status (repeatable), and all together.
    p1 = all_runs(client, project="p1")
    assert p1 and {r["project"] for r in p1} == {"p1"}
    both = all_runs(client, status=["failed", "running"])
    assert both and {r["status"] for r in both} == {"failed", "running"}
    mixed = all_runs(client, q="^run-", project="p2", status="finished", limit=3)
    assert mixed and all(
        r["name"].startswith("run-") and r["project"] == "p2" and r["status"] == "finished"
        for r in mixed
    )
    body = client.get("/api/runs", params={"q": "^run-", "project": "p2", "limit": 1}).json()
    assert body["total"] == len(all_runs(client, q="^run-", project="p2"))
    assert client.get("/api/runs", params={"q": "no such run"}).json() == {
        "runs": [], "next": None, "total": 0
    }  # fmt: skip


def error(resp: Any) -> str:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["status"] == 400
    message: str = body["error"]["message"]
    return message


def test_a_bad_cursor_or_regex_is_a_400_in_the_documented_shape(client: TestClient) -> None:
    add_runs(db_of(client), 30)
    first = client.get("/api/runs", params={"limit": 10, "sort": "name"}).json()
    assert "cursor" in error(client.get("/api/runs", params={"cursor": "not-a-cursor"}))
    # A cursor is only good for the sort it was made under.
    assert "same sort" in error(
        client.get("/api/runs", params={"cursor": first["next"], "sort": "-started"})
    )
    assert "regular expression" in error(client.get("/api/runs", params={"q": "run-("}))
    assert "forever" in error(client.get("/api/runs", params={"q": "(a+)+$"}))
    assert "forever" in error(client.get("/api/runs", params={"q": "(a|aa)*b"}))
    assert "backreferences" in error(client.get("/api/runs", params={"q": r"(a)\1"}))
    assert "repetitions" in error(client.get("/api/runs", params={"q": "a*b*c*d*e"}))
    assert "limit" in error(client.get("/api/runs", params={"limit": 0}))
    assert "limit" in error(client.get("/api/runs", params={"limit": 1001}))
    assert "sort" in error(client.get("/api/runs", params={"sort": "loss"}))
    assert "status" in error(client.get("/api/runs", params={"status": "done"}))
    assert "q" in error(client.get("/api/runs", params={"q": "x" * 201}))


def test_a_regex_that_works_too_long_is_stopped(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_runs(db_of(client), 3000)  # the check runs every 2000 SQLite instructions
    monkeypatch.setattr(runs_query, "TIME_BUDGET_S", 0.0)
    assert "took more than" in error(client.get("/api/runs", params={"q": "^run-.*9$"}))


QUERY_VALUES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=string.printable, max_size=30),
    st.sampled_from(["", "-1", "0", "1", "100", "1000", "1001", "1e3", "NaN", "started",
                     "-name", "--name", "running", "(", "[a-", "^run", "x" * 300]),
)  # fmt: skip
PARAMS = st.dictionaries(
    st.sampled_from(["limit", "cursor", "q", "project", "status", "sort"]), QUERY_VALUES
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(params=PARAMS)
def test_any_query_string_is_a_page_or_a_documented_400(
    client: TestClient, params: dict[str, str]
) -> None:
    resp = client.get("/api/runs", params=params)
    assert resp.status_code in (200, 400), resp.text
    body = resp.json()
    if resp.status_code == 400:
        assert body["error"]["status"] == 400 and body["error"]["message"]
        return
    assert set(body) == {"runs", "next", "total"}
    assert isinstance(body["total"], int) and len(body["runs"]) <= body["total"]
    if params.get("status"):
        assert params["status"] in RUN_STATUSES


def test_size_bytes_grows_with_the_points_a_run_stored(client: TestClient) -> None:
    small, big = "a" * 32, "b" * 32
    stream(client, small, start(name="small"), batch(2, 1, loss=0.5), end(3))
    records = [batch(i + 2, i + 1, loss=0.5, accuracy=0.1) for i in range(200)]
    stream(client, big, start(name="big"), *records, end(202))
    sizes = {r["name"]: r["size_bytes"] for r in client.get("/api/runs").json()["runs"]}
    assert 0 < sizes["small"] < sizes["big"]
    assert sizes["big"] == 2 * 200 * runs_query.BYTES_PER_POINT  # 2 series x 200 steps
    stats = client.get("/api/stats").json()
    assert stats["runs"] == 2 and stats["projects"] == ["p"]
    assert stats["db_bytes"] >= db_of(client).stat().st_size > 0


def test_bulk_delete_by_filter_counts_first_and_keeps_running_runs(
    client: TestClient,
) -> None:
    db = db_of(client)
    add_runs(db, 20, prefix="old")
    add_runs(db, 5, prefix="keep")
    keep = {r["id"] for r in all_runs(client, q="keep")}
    matched = all_runs(client, q="^old-")
    running = sum(r["status"] == "running" for r in matched)
    assert running > 0

    dry = client.post("/api/runs/delete", json={"q": "^old-", "dry_run": True}).json()
    assert dry == {"matched": 20, "deleted": 0, "running": running, "dry_run": True}
    assert client.get("/api/runs").json()["total"] == 25

    done = client.post("/api/runs/delete", json={"q": "^old-"}).json()
    assert done == {"matched": 20, "deleted": 20 - running, "running": running, "dry_run": False}
    left = all_runs(client)
    assert {r["id"] for r in left} - keep == {r["id"] for r in matched if r["status"] == "running"}
    # Nothing matches: fine, nothing deleted.
    assert client.post("/api/runs/delete", json={"q": "nothing"}).json()["deleted"] == 0
    # An empty filter would delete everything: refused.
    assert "filter" in error(client.post("/api/runs/delete", json={}))
    assert "regular expression" in error(client.post("/api/runs/delete", json={"q": "(("}))
    assert "Unexpected" in error(client.post("/api/runs/delete", json={"name": "x"}))


def test_bulk_delete_tells_live_dashboards(client: TestClient) -> None:
    ids = add_runs(db_of(client), 6, prefix="gone")
    stopped = [i for i in range(len(ids)) if STATUSES[i % len(STATUSES)] != "running"]
    expected = {ids[i] for i in stopped if i % 3 in (0, 1)}  # projects p0 and p1
    assert len(expected) == 3
    with client.websocket_connect("/ws/live") as ws:
        assert ws.receive_json()["type"] == "hello"
        client.post("/api/runs/delete", json={"project": "p0"})
        client.post("/api/runs/delete", json={"project": "p1"})
        got = [ws.receive_json() for _ in expected]
    assert {m["type"] for m in got} == {"run_deleted"}
    assert {m["run_id"] for m in got} == expected


@pytest.mark.parametrize("sort", sorted(runs_query.SORTS))
@pytest.mark.parametrize("descending", [False, True])
def test_every_page_of_every_sort_is_an_index_search(
    client: TestClient, sort: str, descending: bool
) -> None:
    """EXPLAIN QUERY PLAN: no page scans the table or sorts it, so its cost does not
    grow with the number of runs."""
    add_runs(db_of(client), 50)
    expr, beyond = runs_query.SORTS[sort], "<" if descending else ">"
    queries = {
        "first page": (runs_query.select_sql(sort, descending, []), []),
        "rest of a tie": (
            runs_query.select_sql(sort, descending, [f"{expr} = ?", f"id {beyond} ?"], tie=True),
            [1, "a"],
        ),
        "beyond the tie": (runs_query.select_sql(sort, descending, [f"{expr} {beyond} ?"]), [1]),
    }
    with closing(sqlite3.connect(db_of(client))) as conn:
        for what, (sql, args) in queries.items():
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", [*args, 10])]
            assert len(plan) == 1 and "USING INDEX runs_by_" in plan[0], (what, plan)
            if what != "first page":
                assert plan[0].startswith("SEARCH"), (what, plan)  # a range, not a scan


REGEX_ALPHABET = "ab.*+?()|[]{}^$\\0-9,:=!<"


@settings(max_examples=300, deadline=None)
@given(q=st.text(alphabet=REGEX_ALPHABET, min_size=1, max_size=24))
def test_a_q_the_guard_accepts_costs_little_on_the_worst_name(q: str) -> None:
    """Any `q` is refused with a message, or is text, or searches a 200-character name
    built to make it backtrack in well under the time budget."""
    from server.errors import BadRequest

    try:
        pattern = runs_query.compile_q(q)
    except BadRequest as exc:
        assert exc.message.startswith("Bad value for query.q: ")
        return
    if pattern is None:
        return
    for name in ("a" * 200, "a" * 199 + "!", "ab" * 100):
        t0 = time.perf_counter()
        pattern.search(name)
        assert time.perf_counter() - t0 < 0.5, (q, name[:10])


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.sampled_from([*RUN_STATUSES, "done", 1]), max_size=3),
)  # fmt: skip
DELETE_BODIES = st.one_of(
    st.dictionaries(st.sampled_from(["q", "project", "status", "dry_run", "other"]), JSON_VALUES),
    JSON_VALUES,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(body=DELETE_BODIES)
def test_any_bulk_delete_body_is_counted_or_a_documented_400(client: TestClient, body: Any) -> None:
    resp = client.post("/api/runs/delete", json=body)
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert resp.json()["error"]["message"]
        return
    answer = resp.json()
    assert answer["deleted"] == 0 and answer["matched"] == 0  # the file holds no run
    assert answer["dry_run"] == bool(body.get("dry_run"))


def test_a_regex_finds_what_python_finds_with_its_like_prefilter(client: TestClient) -> None:
    """The LIKE on a regex's required literal drops no name the regex matches, case
    folding beyond ASCII included (the Kelvin sign, the long s, the dotted I)."""
    db = db_of(client)
    add_runs(db, 40, prefix="Sweep_0%")
    odd = ["\u212aelvin-run", "cla\u017f\u017f-run", "\u0130ndex-run", "100%_done"]
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO runs (id, name, status, created_at, updated_at)"
            " VALUES (?, ?, 'finished', 1, 1)",
            [(uuid.uuid4().hex, name) for name in odd],
        )
    every = [r["name"] for r in all_runs(client, limit=1000)]
    for q in ["^kelvin-", "class+-run$", "^index-r.n", r"^sweep_0%-00[1-3]\d$", r"100%_d.ne",
              "sweep.0%-003[0-9]", "^run"]:  # fmt: skip
        expected = sorted(n for n in every if re.search(q, n, re.IGNORECASE))
        assert sorted(r["name"] for r in all_runs(client, q=q, limit=7)) == expected, q
    assert runs_query.required_text(r"^sweep_0%-00[1-3]\d$") == "weep_0%-00"
