"""The processes of a run (its workers), and the step at which each command applies.

Every `/ws/train` connection is a worker of its run: a single-process `fit`
is worker 0 of 1; in a multi-worker job each process says which it is in its
`hello` (`{"index": 1, "count": 2}`). Worker 0 streams the run's records;
the others' records are read here only for their progress, their command
reports and their end, and acknowledged without being stored.

Commands in a job apply on every worker at the same step. Each worker, when a
command reaches it, reports the step its training thread had reached (its
`delivered` record's `step`), and holds at its next batch boundary until the
server's `commit` names the step. Once every worker has reported, the step is
the highest reported plus one: no worker has passed it, since each holds
there at the latest, and every worker enters the same batches in the same
order, so all apply before the same batch.

All state here is the event loop's, in memory: after a server restart the
workers reconnect and say hello again.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from server import lifecycle
from server.lifecycle import Changes
from server.memory import WriterMemory
from server.protocol import ENDED, MAX_WORKERS, dumps
from server.store import event_dict

__all__ = ["WORKER_LOST", "Worker", "Workers", "fail_run", "parse_worker"]

WORKER_LOST = "WorkerLost"


def parse_worker(value: object) -> tuple[int, int]:
    """A hello's `worker` field as (index, count); (0, 1) when there is none.

    Raises:
        ValueError: a field that is not `{"index": i, "count": n}`, 0 <= i < n.
    """
    if value is None:
        return 0, 1
    if isinstance(value, dict):
        index, count = value.get("index"), value.get("count")
        if type(index) is int and type(count) is int and 0 <= index < count <= MAX_WORKERS:
            return index, count
    raise ValueError(
        f"worker must be {{'index': i, 'count': n}} with 0 <= i < n <= {MAX_WORKERS}, "
        f"got {value!r}."
    )


@dataclass
class Worker:
    index: int
    status: str = "connected"
    step: int = 0
    last_seq: int = 0
    """Highest record `seq` this worker's stream has had acknowledged (index > 0)."""
    lost_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "status": self.status, "step": self.step}


@dataclass
class _Job:
    count: int
    workers: dict[int, Worker] = field(default_factory=dict)
    seen: dict[int, dict[int, int]] = field(default_factory=dict)
    """Per command id: the step each worker had reached when it got the command."""
    commits: dict[int, int] = field(default_factory=dict)
    """Per command id: the step it applies at, once decided."""
    failed: bool = False


class Workers:
    """Every run's workers, as their connections report them."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}

    def hello(self, run_id: str, index: int, count: int) -> Worker | None:
        """A worker connected; None for a single-process run (nothing to coordinate)."""
        if count < 2:
            return None
        job = self._jobs.get(run_id)
        if job is None or job.count != count:
            job = self._jobs[run_id] = _Job(count)
        worker = job.workers.get(index)
        if worker is None:
            worker = job.workers[index] = Worker(index)
        worker.status, worker.lost_at = "connected", None
        return worker

    def get(self, run_id: str, index: int) -> Worker | None:
        job = self._jobs.get(run_id)
        return job.workers.get(index) if job is not None else None

    def count(self, run_id: str) -> int:
        job = self._jobs.get(run_id)
        return job.count if job is not None else 1

    def describe(self, run: dict[str, Any], connected: bool) -> list[dict[str, Any]]:
        """`GET /api/runs/{run_id}`'s `workers`: one entry per worker seen, by index.

        A single-process run is its one worker 0, with the run's step and (once
        it has ended) the run's status."""
        job = self._jobs.get(run["id"])
        if job is not None:
            return [job.workers[i].public() for i in sorted(job.workers)]
        status = run.get("status")
        if status not in ENDED:
            status = "connected" if connected else "disconnected"
        return [{"index": 0, "status": status, "step": run.get("step") or 0}]

    def records(self, run_id: str, index: int, records: list[dict[str, Any]]) -> list[int]:
        """Note a worker's progress, command reports and end; the commands whose step
        is decided by these reports."""
        job = self._jobs.get(run_id)
        worker = job.workers.get(index) if job is not None else None
        if job is None or worker is None:
            return []
        decided: list[int] = []
        for rec in records:
            kind = rec["type"]
            if kind == "batch" or kind == "epoch":
                if rec["step"] > worker.step:
                    worker.step = rec["step"]
            elif kind == "command" and rec["status"] == "delivered" and rec["step"] is not None:
                if self._seen(job, rec["id"], index, rec["step"]):
                    decided.append(rec["id"])
            elif kind == "run_end":
                worker.status = rec["status"]
            elif kind == "run_start":
                worker.status = "connected"
        return decided

    def _seen(self, job: _Job, command_id: int, index: int, step: int) -> bool:
        if job.count < 2 or command_id in job.commits:
            return False
        seen = job.seen.setdefault(command_id, {})
        seen[index] = step
        if len(seen) < job.count:
            return False
        job.commits[command_id] = max(seen.values()) + 1
        del job.seen[command_id]
        return True

    def commit(self, run_id: str, command_id: int) -> int | None:
        job = self._jobs.get(run_id)
        return job.commits.get(command_id) if job is not None else None

    def commits(self, run_id: str) -> dict[int, int]:
        job = self._jobs.get(run_id)
        return dict(job.commits) if job is not None else {}

    def lost(self, run_id: str, index: int) -> None:
        """A worker's connection ended; unless it said its `fit` ended, it is lost."""
        job = self._jobs.get(run_id)
        worker = job.workers.get(index) if job is not None else None
        if worker is not None and worker.status == "connected":
            worker.status, worker.lost_at = "disconnected", time.time()

    def overdue(self, grace: float) -> list[tuple[str, Worker, int]]:
        """(run, worker, count) for each job with a worker lost longer than `grace`
        seconds, the first lost of its job; each job is reported once."""
        now = time.time()
        out = []
        for run_id, job in self._jobs.items():
            if job.failed or job.count < 2:
                continue
            lost = [w for w in job.workers.values() if w.lost_at is not None]
            if lost:
                first = min(lost, key=lambda w: w.lost_at or now)
                if first.lost_at is not None and now - first.lost_at > grace:
                    job.failed = True
                    out.append((run_id, first, job.count))
        return out

    def forget(self, run_id: str) -> None:
        self._jobs.pop(run_id, None)


def fail_run(conn: sqlite3.Connection, memory: WriterMemory, run_id: str, message: str) -> Changes:
    """End a job's run as `failed` (`WorkerLost`) unless it has ended already."""
    memo = memory.get(conn, run_id)
    changes = Changes(last_seq=memo.last_seq if memo else 0)
    if memo is None or memo.status in ENDED:
        return changes
    now = time.time()
    error = {"type": WORKER_LOST, "message": message}
    rec = {"seq": None, "t": now, "status": "failed", "error": error}
    (_seq, t, kind, step, epoch, data), expired = lifecycle.end_run(conn, run_id, rec, now)
    row = conn.execute(
        "INSERT INTO events (run_id, seq, t, kind, step, epoch, data)"
        " VALUES (?, NULL, ?, ?, ?, ?, ?) RETURNING *",
        (run_id, t, kind, step, epoch, dumps(data)),
    ).fetchone()
    memo.status = "failed"
    changes.events.append(event_dict(row))
    changes.commands = expired
    changes.run = lifecycle.read_run(conn, run_id)
    return changes
