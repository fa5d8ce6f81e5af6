"""The paged runs list: sorts, filters, keyset cursors, and the bounded name filter.

A page is an index range. Every sort is an expression that one of
`server.schema.RUNS_INDEXES` indexes together with `id`, and the next page
starts after the last row's `(sort value, id)`: the rest of that value's tie
(`expr = v AND id > i`), then the values beyond (`expr > v`), each an index
search. A page costs the same at the first run as at the 100,000th: no OFFSET.

The cursor is opaque to clients: base64url of `[sort, value, id]`. A cursor
made under another sort, or one that does not decode, is a 400.

`q` filters on the name, case-insensitively: text without regular-expression
characters is a substring (`LIKE`, native speed); anything else is a Python
regular expression (`REGEXP`), refused when its cost could explode (nested
repetition, backreferences, more than `MAX_REPEATS` repeats, more than `MAX_Q`
characters) and cut off after `TIME_BUDGET_S` of work. A regex is run only on
the names that hold its longest required literal (`required_text`, by LIKE).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import json
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from server.errors import BadRequest
from server.protocol import REGEX_CHARS

__all__ = [
    "BYTES_PER_POINT",
    "MAX_Q",
    "MAX_REPEATS",
    "SORTS",
    "TIME_BUDGET_S",
    "RunFilter",
    "compile_q",
    "decode_cursor",
    "encode_cursor",
    "install",
    "matching_ids",
    "page",
    "required_text",
    "select_sql",
    "sizes",
]

MAX_Q = 200
"""Longest `q` (characters): a run name is at most `server.protocol.MAX_NAME` long too."""
MAX_REPEATS = 2
"""Most repetitions (`*`, `+`, `{m,n}`) a `q` regular expression may hold, none nested.

Backtracking over k repetitions costs up to ~n**(k+1) steps on an n-character name:
with 2, a 200-character name costs at most ~15 ms (3 would be ~1.5 s)."""
TIME_BUDGET_S = 2.0
"""A listing, count or delete selection that has worked this long is stopped (400)."""
BYTES_PER_POINT = 56
"""Estimated storage of one metric point: its `points` row, index share and tier share
(measured on a 1,000,000-point series with `dbstat`)."""

_STATUS_RANK = (
    "(CASE status WHEN 'running' THEN 0 WHEN 'paused' THEN 1 WHEN 'disconnected' THEN 2"
    " WHEN 'failed' THEN 3 WHEN 'stopped' THEN 4 WHEN 'finished' THEN 5 ELSE 6 END)"
)

SORTS: dict[str, str] = {
    "started": "created_at",
    "name": "name COLLATE NOCASE",
    "project": "coalesce(project, '')",
    "status": _STATUS_RANK,
    "duration": "(coalesce(ended_at, updated_at) - created_at)",
    "epochs": "(coalesce(epoch, -1))",
}
"""`sort` name → the SQL it orders by, written exactly as its index in server.schema."""

_REGEX_CHARS = frozenset(REGEX_CHARS)
_FOLDS_BEYOND_ASCII = frozenset("iks")


@dataclass(frozen=True)
class RunFilter:
    """Which runs: `q` on the name, one project, any of some statuses (all when empty)."""

    q: str | None = None
    project: str | None = None
    status: tuple[str, ...] = ()

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.q:
            pattern = compile_q(self.q)
            text = self.q if pattern is None else required_text(self.q)
            if pattern is None or len(text) >= 2:
                # Native LIKE first: the regex then runs only on names holding its literal.
                clauses.append("name LIKE ? ESCAPE '\\'")
                args.append(f"%{_like_escape(text)}%")
            if pattern is not None:
                clauses.append("name REGEXP ?")
                args.append(self.q)
        if self.project is not None:
            clauses.append("project = ?")
            args.append(self.project)
        if self.status:
            clauses.append(f"status IN ({','.join('?' * len(self.status))})")
            args.extend(self.status)
        return clauses, args


# -- the name filter ---------------------------------------------------------------

_parser: Any = None


def _sre_parse(pattern: str) -> Any:
    global _parser
    if _parser is None:
        try:
            _parser = importlib.import_module("re._parser")
        except ImportError:  # Python 3.10
            _parser = importlib.import_module("sre_parse")
    return _parser.parse(pattern, re.IGNORECASE)


def _check_cost(tree: Any, inside_repeat: bool, count: list[int]) -> None:
    for op, av in tree:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _lo, hi, body = av
            repeats = hi > 1
            if repeats:
                if inside_repeat:
                    raise BadRequest(
                        "Bad value for query.q: a repetition inside a repetition (such as"
                        " (a+)+) could take forever; write it without nesting."
                    )
                count[0] += 1
            _check_cost(body, inside_repeat or repeats, count)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            raise BadRequest("Bad value for query.q: backreferences are not supported.")
        elif name == "SUBPATTERN":
            _check_cost(av[-1], inside_repeat, count)
        elif name == "BRANCH":
            for branch in av[1]:
                if inside_repeat:
                    raise BadRequest(
                        "Bad value for query.q: alternatives inside a repetition (such as"
                        " (a|b)+) could take forever; use a character class, [ab]+."
                    )
                _check_cost(branch, inside_repeat, count)
        elif name in ("ASSERT", "ASSERT_NOT"):
            _check_cost(av[1], inside_repeat, count)


@functools.lru_cache(maxsize=64)
def compile_q(q: str) -> re.Pattern[str] | None:
    """`q` as a case-insensitive pattern, or None for plain text (matched with LIKE).

    Raises `BadRequest` for a pattern that is not one, or whose cost could explode.
    """
    if len(q) > MAX_Q:
        raise BadRequest(f"Bad value for query.q: at most {MAX_Q} characters, got {len(q)}.")
    if not _REGEX_CHARS & set(q):
        return None
    try:
        with warnings.catch_warnings():
            # "Possible nested set" and the like: syntax whose meaning will change.
            warnings.simplefilter("error")
            tree = _sre_parse(q)
            pattern = re.compile(q, re.IGNORECASE)
    except (re.error, OverflowError, RecursionError, Warning) as exc:
        raise BadRequest(
            f"Bad value for query.q: not a regular expression ({exc}). Received {q!r}."
        ) from None
    count = [0]
    _check_cost(tree, False, count)
    if count[0] > MAX_REPEATS:
        raise BadRequest(
            f"Bad value for query.q: at most {MAX_REPEATS} repetitions (*, +, {{m,n}}),"
            f" got {count[0]}."
        )
    return pattern


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@functools.lru_cache(maxsize=64)
def required_text(q: str) -> str:
    """The longest run of plain ASCII characters every match of the regex `q` holds
    (its top-level literals in a row), "" if none: a LIKE on it is a safe prefilter.

    Not i, k or s: ignoring case, Python matches them to U+0130, U+0131, U+212A
    (Kelvin) and U+017F too, which LIKE (ASCII case only) would not."""
    best = run = ""
    for op, av in _sre_parse(q):
        if str(op) == "LITERAL" and av < 128 and chr(av).lower() not in _FOLDS_BEYOND_ASCII:
            run += chr(av)
            best = max(best, run, key=len)
        else:
            run = ""
    return best


def _regexp(pattern: str, value: str | None) -> bool:
    compiled = compile_q(pattern)
    if value is None:
        return False
    if compiled is None:
        return pattern.lower() in value.lower()
    return compiled.search(value) is not None


def install(conn: sqlite3.Connection) -> None:
    """Give `conn` the REGEXP function the name filter uses."""
    conn.create_function("regexp", 2, _regexp, deterministic=True)


@contextmanager
def _budget(conn: sqlite3.Connection) -> Iterator[None]:
    deadline = time.monotonic() + TIME_BUDGET_S
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 2000)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        raise BadRequest(
            f"The filter took more than {TIME_BUDGET_S:g} s over the runs; make it simpler"
            " (plain text is fastest)."
        ) from None
    finally:
        conn.set_progress_handler(None, 0)


# -- cursors -----------------------------------------------------------------------


def encode_cursor(sort: str, value: Any, run_id: str) -> str:
    raw = json.dumps([sort, value, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    """The (sort value, id) a cursor continues after; `BadRequest` if it is not one of
    ours or was made for another sort."""
    bad = BadRequest(
        f"Bad value for query.cursor: not a cursor from this listing. Received {cursor[:40]!r};"
        " pass the `next` of the previous page as it was, with the same sort."
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, value, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if made_for != sort or not isinstance(run_id, str):
        raise bad
    if not (value is None or isinstance(value, (int, float, str))) or isinstance(value, bool):
        raise bad
    return value, run_id


# -- queries -----------------------------------------------------------------------


def select_sql(sort: str, descending: bool, clauses: Sequence[str], *, tie: bool = False) -> str:
    """The SELECT of a page under `clauses`, its LIMIT a parameter. `tie`: the rows of
    one sort value, ordered by id alone (else SQLite would sort by the value again)."""
    expr = SORTS[sort]
    direction = "DESC" if descending else "ASC"
    sql = f"SELECT *, {expr} AS sort_value FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    order = f"id {direction}" if tie else f"{expr} {direction}, id {direction}"
    return sql + f" ORDER BY {order} LIMIT ?"


def page(
    conn: sqlite3.Connection,
    where: RunFilter,
    sort: str,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[sqlite3.Row], str | None, int]:
    """One page of runs, the cursor of the next (None at the end), and the total."""
    clauses, args = where.where()

    def select(
        extra: list[str], extra_args: list[Any], n: int, tie: bool = False
    ) -> list[sqlite3.Row]:
        sql = select_sql(sort, descending, [*clauses, *extra], tie=tie)
        return conn.execute(sql, [*args, *extra_args, n]).fetchall()

    expr = SORTS[sort]
    beyond = "<" if descending else ">"
    with _budget(conn):
        if cursor is None:
            rows = select([], [], limit + 1)
        else:
            # Two index ranges, never a scan from the top: the rest of the tie the last
            # page ended in, then the values beyond it.
            value, after = decode_cursor(cursor, sort)
            rows = select([f"{expr} = ?", f"id {beyond} ?"], [value, after], limit + 1, tie=True)
            if len(rows) <= limit:
                rows += select([f"{expr} {beyond} ?"], [value], limit + 1 - len(rows))
        more = len(rows) > limit
        rows = rows[:limit]
        if cursor is None and not more:
            total = len(rows)  # the first page holds them all: no second pass
        else:
            count_sql = "SELECT count(*) FROM runs"
            if clauses:
                count_sql += " WHERE " + " AND ".join(clauses)
            total = int(conn.execute(count_sql, args).fetchone()[0])
    last = rows[-1] if rows else None
    following = encode_cursor(sort, last["sort_value"], last["id"]) if more and last else None
    return rows, following, total


def matching_ids(conn: sqlite3.Connection, where: RunFilter) -> tuple[list[str], int]:
    """The ids of the matching runs that are not running, and how many are running."""
    clauses, args = where.where()
    sql = "SELECT id, status = 'running' FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    with _budget(conn):
        rows = conn.execute(sql, args).fetchall()
    return [r[0] for r in rows if not r[1]], sum(1 for r in rows if r[1])


def sizes(conn: sqlite3.Connection, runs: Sequence[sqlite3.Row]) -> dict[str, int]:
    """Estimated bytes each run holds: its points (batch series times steps, epoch series times
    epochs) times `BYTES_PER_POINT`. One query for the page; counting points would read
    them all."""
    if not runs:
        return {}
    by_id = {r["id"]: r for r in runs}
    series: dict[str, dict[str, int]] = {run_id: {} for run_id in by_id}
    marks = ",".join("?" * len(by_id))
    for run_id, scope, n in conn.execute(
        f"SELECT run_id, scope, count(*) FROM series WHERE run_id IN ({marks})"
        " GROUP BY run_id, scope",
        list(by_id),
    ):
        series[run_id][scope] = n
    out = {}
    for run_id, row in by_id.items():
        epochs = 0 if row["epoch"] is None else row["epoch"] + 1
        points = series[run_id].get("batch", 0) * (row["step"] or 0)
        points += series[run_id].get("epoch", 0) * epochs
        out[run_id] = points * BYTES_PER_POINT
    return out
