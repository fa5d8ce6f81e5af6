"""What the writer thread remembers between writes: per run, its progress and series ids.

Only the writer thread touches it. A write learns of new rows only once every
statement of it succeeded (`RunMemo.series` is updated last), and a failed
transaction clears it all: the memo never describes rows that were rolled back.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

__all__ = ["RunMemo", "WriterMemory"]


@dataclass
class RunMemo:
    """One run as the writer last left it."""

    last_seq: int
    """Highest record `seq` stored: replays at or below it are skipped."""
    status: str
    series: dict[tuple[str, str], int] = field(default_factory=dict)
    """Series id by (scope, key)."""
    pushed_at: float = 0.0
    """When the run's summary was last pushed to browsers for progress alone."""


class WriterMemory:
    """Every run's `RunMemo`, loaded from the database on first use."""

    def __init__(self) -> None:
        self._runs: dict[str, RunMemo] = {}

    def get(self, conn: sqlite3.Connection, run_id: str) -> RunMemo | None:
        """The run's memo; None when the run does not exist."""
        memo = self._runs.get(run_id)
        if memo is None:
            row = conn.execute(
                "SELECT last_seq, status FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return None
            memo = self._runs[run_id] = RunMemo(row[0], row[1])
        return memo

    def put(self, run_id: str, memo: RunMemo) -> None:
        self._runs[run_id] = memo

    def forget(self, run_id: str) -> None:
        """Drop everything known of a run (it was deleted)."""
        self._runs.pop(run_id, None)

    def clear(self) -> None:
        """Drop everything (a transaction was rolled back)."""
        self._runs.clear()

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs
