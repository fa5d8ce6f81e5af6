"""Storage faults under a live `fit`: an ack means stored, whatever the database does.

Each test runs a real `model.fit` streaming to a real server subprocess, makes
the database refuse writes mid-run, lets it recover, and then finds every batch
and epoch stored exactly once, equal to what Keras logged, in a sound database.
While the trouble lasts, `/api/health` answers 503 `degraded` with the reason,
and the trainer hears it (one warning) and keeps its records.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ServerProcess, callback, make_data, make_model

if TYPE_CHECKING:
    from tests.browser import Dashboard

keras = pytest.importorskip("keras")
from client_callback import FitdeckWarning, LiveMonitor  # noqa: E402

pytestmark = pytest.mark.slow

BATCHES_BEFORE_FAULT = 15
FAULT_HELD = 2.0  # seconds the trouble lasts after the server reported it
TIMEOUT = 30.0  # for any one wait below
MEMORY = 16  # records a trainer keeps in memory before it spills to its spool


class TmpfsServer(ServerProcess):
    """A server whose database lives on a small file system; its log stays outside."""

    @property
    def log_path(self) -> Path:
        return self.db_path.parent.parent / "server.log"


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    response = server.client.get("/api/health", timeout=5)
    return response.status_code, response.json()


def fit_through(
    server: ServerProcess,
    begin: Callable[[], object],
    end: Callable[[], object],
) -> tuple[LiveMonitor, list[dict[str, float]], Any, list[str], dict[str, Any]]:
    """A `fit` during which `begin()` makes writes fail and, once the server says
    so, `end()` makes them work again; its last epoch waits for the recovery.

    Returns the monitor, the batch logs Keras gave, the History, the
    FitdeckWarnings and the body `/api/health` answered during the trouble
    (with `spooled`: the most records the trainer's spool file held).
    """
    x, y = make_data(512)
    model = make_model()
    # Few records in memory: those the trouble holds back spill to the spool file.
    mon = LiveMonitor(
        url=server.url, token=server.token, run_name="storage-fault", memory_records=MEMORY
    )
    batches: list[dict[str, float]] = []
    degraded: dict[str, Any] = {"spooled": 0}
    problems: list[BaseException] = []
    recovered = threading.Event()

    def fault() -> None:
        try:
            begin()
            try:
                degraded.update(
                    server.wait_for(
                        lambda: (lambda s, b: b if s == 503 else None)(*health(server)),
                        TIMEOUT,
                        "/api/health to report the storage trouble",
                    )
                )
                time.sleep(FAULT_HELD)  # the trainer keeps sending into the trouble
            finally:
                end()
            server.wait_for(lambda: health(server)[0] == 200, TIMEOUT, "storage to recover")
        except BaseException as exc:  # re-raised by the test
            problems.append(exc)
        finally:
            recovered.set()

    def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
        batches.append(dict(logs))
        degraded["spooled"] = max(degraded["spooled"], len(mon._stream.spool))
        if len(batches) == BATCHES_BEFORE_FAULT:
            threading.Thread(target=fault, daemon=True).start()
        time.sleep(0.01)

    def on_epoch_begin(self: Any, epoch: int, logs: Any = None) -> None:
        if epoch == 3:  # the last: end the fit only once the stream is back
            recovered.wait(3 * TIMEOUT)
            server.wait_for(lambda: mon._stream.connected, TIMEOUT, "the stream to reconnect")

    hooks = callback(on_train_batch_end=on_train_batch_end, on_epoch_begin=on_epoch_begin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[hooks, mon])
    if problems:
        raise problems[0]
    warned = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    return mon, batches, history, warned, degraded


def assert_everything_stored_once(
    server: ServerProcess, mon: LiveMonitor, batches: list[dict[str, float]], history: Any
) -> None:
    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    for key in ("loss", "accuracy"):
        series = server.series(mon.run_id, "batch", key)
        assert series["step"] == list(range(1, len(batches) + 1)), key
        assert series["value"] == [b[key] for b in batches], key
    for key, values in history.history.items():
        assert server.series(mon.run_id, "epoch", key)["value"] == values, key
    assert mon._stream.pending() == 0
    assert not mon._stream.spool.path.exists()


def assert_told(degraded: dict[str, Any], reason: str, warned: list[str]) -> None:
    """Health said why; the trainer warned once and spilled what waited to its spool."""
    assert degraded.pop("spooled") > 0
    assert degraded == {"status": "degraded", "reason": reason}
    assert len(warned) == 1 and "cannot store records" in warned[0], warned
    assert reason in warned[0]


def assert_sound(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_write_lock_held_past_the_busy_timeout_loses_nothing(tmp_path: Path) -> None:
    """Another process holds the write lock (`BEGIN IMMEDIATE`) for longer than the
    writer's busy timeout (5 s), then lets go."""
    db = tmp_path / "locked.db"
    server = ServerProcess(db, "tok").start()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        mon, batches, history, warned, degraded = fit_through(
            server,
            begin=lambda: holder.execute("BEGIN IMMEDIATE"),
            end=lambda: holder.execute("ROLLBACK"),
        )
        assert_told(degraded, "database is locked", warned)
        assert_everything_stored_once(server, mon, batches, history)
    finally:
        holder.close()
        server.close()
    assert_sound(db)


PAGE_LIMIT_HOOK = """
import os
from pathlib import Path

from server import store

_control = Path(os.environ["FITDECK_TEST_PAGE_LIMIT"])
_run_batch = store.Store._run_batch


def _limited(self, conn, tasks):
    # SQLite's own "disk": at most the pages the control file names (none: no limit).
    limit = _control.read_text().strip() if _control.exists() else ""
    conn.execute(f"PRAGMA max_page_count = {int(limit) if limit else 1073741823}")
    return _run_batch(self, conn, tasks)


store.Store._run_batch = _limited
"""


@contextlib.contextmanager
def filling_disk(
    tmp_path: Path, size: str = "16m"
) -> Iterator[tuple[ServerProcess, Callable[[], object], Callable[[], object]]]:
    """A server whose disk can be filled (`begin`) and emptied again (`end`).

    A small tmpfs holds the database, filled by a ballast file: we run as root,
    here and in CI. Where mounting is refused, SQLite's `max_page_count` (set in
    the server process through a `sitecustomize` hook) plays the full disk.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode == 0:
        ballast = disk / "ballast"
        try:
            yield TmpfsServer(disk / "full.db", "tok"), lambda: fill(disk), ballast.unlink
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    hook, control = tmp_path / "hook", tmp_path / "page-limit"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAGE_LIMIT_HOOK)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "FITDECK_TEST_PAGE_LIMIT": str(control)}
    server = ServerProcess(disk / "full.db", "tok", env=env)

    def full() -> None:
        conn = sqlite3.connect(server.db_path)
        try:
            control.write_text(str(conn.execute("PRAGMA page_count").fetchone()[0]))
        finally:
            conn.close()

    yield server, full, control.unlink


def fill(disk: Path) -> Path:
    """Write a ballast file until the file system is full."""
    ballast = disk / "ballast"
    chunk = b"\0" * (64 << 10)
    with ballast.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
    return ballast


def test_disk_that_fills_mid_run_loses_nothing(tmp_path: Path) -> None:
    """The database's file system fills up (a ballast file takes all that is left of a
    small tmpfs), then has room again (the ballast is deleted)."""
    with filling_disk(tmp_path) as (server, full, room_again):
        server.start()
        try:
            mon, batches, history, warned, degraded = fit_through(server, full, room_again)
            assert_told(degraded, "database or disk is full", warned)
            assert_everything_stored_once(server, mon, batches, history)
        finally:
            server.close()
        assert_sound(server.db_path)


@pytest.mark.skipif(
    shutil.which("strace") is None and os.environ.get("CI") != "true",
    reason="needs strace (part of the machine image; CI must have it)",
)
def test_file_system_turning_read_only_mid_run_loses_nothing(tmp_path: Path) -> None:
    """Every write of the server to its files fails as on a read-only file system
    (EROFS), then works again.

    The kernel refuses `mount -o remount,ro` while a process holds a file open for
    writing (EBUSY), as the server holds its database, and a file system it turns
    read-only by force after an error (ext4 `errors=remount-ro`) stays so until
    unmounted; and chmod does not stop root. So the real server process gets EROFS
    from its `pwrite64` calls through strace's fault injection, until strace detaches.
    """
    db = tmp_path / "readonly.db"
    server = ServerProcess(db, "tok").start()
    assert server.proc is not None
    pid = server.proc.pid
    tracer: list[subprocess.Popen[bytes]] = []
    inject = ["-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EROFS"]

    def read_only() -> None:
        cmd = ["strace", "-qq", "-f", "-p", str(pid), "-o", "/dev/null", *inject]
        tracer.append(subprocess.Popen(cmd))

    def writable() -> None:
        tracer[0].send_signal(signal.SIGINT)  # strace detaches and leaves the server be
        tracer[0].wait(10)

    try:
        mon, batches, history, warned, degraded = fit_through(server, read_only, writable)
        assert_told(degraded, "disk I/O error", warned)
        assert_everything_stored_once(server, mon, batches, history)
    finally:
        for proc in tracer:
            if proc.poll() is None:
                proc.kill()
        server.close()
    assert_sound(db)


@pytest.mark.browser
def test_dashboard_shows_a_banner_while_writes_fail_and_drops_it_after(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    page = dashboard.page
    banner = page.locator("#storage-banner")
    assert banner.is_hidden()
    holder = sqlite3.connect(server.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers: list[int] = []
    run_id = "e" * 32

    def write() -> None:  # any write will do: it meets the lock
        response = server.client.post(
            f"/api/runs/{run_id}/commands", json={"kind": "stop"}, timeout=60
        )
        answers.append(response.status_code)

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        banner.wait_for(state="visible", timeout=TIMEOUT * 1000)
        assert "database is locked" in banner.inner_text()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    banner.wait_for(state="hidden", timeout=TIMEOUT * 1000)
    writer.join(TIMEOUT)
    assert answers == [404]  # the write ran once storage was back: no such run
