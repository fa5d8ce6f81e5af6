"""Fault injection with real processes: nothing logged is lost, training is never hurt."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import ROOT, ServerProcess, callback, free_port, make_data, make_model

keras = pytest.importorskip("keras")
from client_callback import FitdeckWarning, LiveMonitor  # noqa: E402
from client_callback.stream import RECORD, Stream  # noqa: E402

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def fitdeck_warnings() -> Iterator[list[str]]:
    """The FitdeckWarnings raised inside (others, e.g. TensorFlow's, are let be)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages: list[str] = []
        yield messages
    messages += [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]


def recorder() -> tuple[list[dict[str, float]], Any]:
    batches: list[dict[str, float]] = []
    return batches, callback(
        on_train_batch_end=lambda self, b, logs=None: batches.append(dict(logs))
    )


def at_batch(n: int, action: Callable[[], Any], sleep: float = 0.0) -> Any:
    """Runs `action` in a thread after global batch `n`; every batch sleeps `sleep`."""
    seen = [0]

    def on_train_batch_end(self: Any, b: int, logs: Any = None) -> None:
        seen[0] += 1
        if seen[0] == n:
            threading.Thread(target=action, daemon=True).start()
        time.sleep(sleep)

    return callback(on_train_batch_end=on_train_batch_end)


def assert_stored_exactly(server: ServerProcess, run_id: str, batches: list[dict[str, float]],
                          history: Any) -> None:  # fmt: skip
    for key in ("loss", "accuracy"):
        series = server.series(run_id, "batch", key)
        assert series["step"] == list(range(1, len(batches) + 1)), key
        assert series["value"] == [b[key] for b in batches], key
    for key, values in history.history.items():
        assert server.series(run_id, "epoch", key)["value"] == values, key


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "faults.db"


def test_server_down_at_start_and_up_mid_run_gets_everything(db: Path, spool_dir: Path) -> None:
    server = ServerProcess(db, "tok")
    x, y = make_data(256)
    model = make_model()
    batches, rec = recorder()
    mon = LiveMonitor(url=server.url, token="tok", run_name="late-server")
    with fitdeck_warnings() as warned:
        history = model.fit(
            x, y, epochs=5, batch_size=32, verbose=0,
            callbacks=[mon, rec, at_batch(3, server.start, sleep=0.2)],
        )  # fmt: skip
    try:
        assert len(warned) == 1 and "cannot stream" in warned[0]
        assert len(history.epoch) == 5
        assert server.run(mon.run_id)["status"] == "finished"
        assert_stored_exactly(server, mon.run_id, batches, history)
        assert not (spool_dir / f"{mon.run_id}.jsonl").exists()
    finally:
        server.close()


def test_server_never_up_spools_with_bounded_memory_and_sync_uploads_once(
    db: Path, tmp_path: Path
) -> None:
    port = free_port()
    x, y = make_data(512)
    model = make_model()
    batches, rec = recorder()
    spool = tmp_path / "spool"
    mon = LiveMonitor(url=f"http://127.0.0.1:{port}", token="tok", run_name="offline",
                      memory_records=16, max_buffer=100_000, spool_dir=spool)  # fmt: skip
    stream = mon._stream
    in_memory: list[int] = []
    probe = callback(on_epoch_end=lambda self, e, logs=None: in_memory.append(len(stream._unacked)))
    with fitdeck_warnings() as warned:
        history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[mon, rec, probe])
    assert any("fitdeck sync" in m for m in warned)
    path = spool / f"{mon.run_id}.jsonl"
    assert len(history.epoch) == 3
    assert max(in_memory) <= 16  # older records went to disk, not to memory
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["run_id"] == mon.run_id
    assert [json.loads(line)["seq"] for line in lines[1:]] == list(range(1, len(lines)))
    backup = path.read_bytes()

    server = ServerProcess(db, "tok", port=port).start()
    try:
        sync = [sys.executable, "-m", "server", "sync", str(spool), "--token", "tok"]
        first = subprocess.run(sync, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "uploaded" in first.stdout and not path.exists()
        assert server.run(mon.run_id)["status"] == "finished"
        assert_stored_exactly(server, mon.run_id, batches, history)
        path.write_bytes(backup)  # the same spool again: nothing is stored twice
        again = subprocess.run(sync, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert again.returncode == 0, again.stderr
        assert_stored_exactly(server, mon.run_id, batches, history)
        events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
        assert [e["kind"] for e in events].count("train_end") == 1
    finally:
        server.close()


def test_server_killed_mid_run_the_run_continues_without_gap_or_duplicate(db: Path) -> None:
    server = ServerProcess(db, "tok").start()
    x, y = make_data(256)
    model = make_model()
    batches, rec = recorder()
    mon = LiveMonitor(url=server.url, token="tok", run_name="crash")

    def crash_and_restart() -> None:
        server.stop(signal.SIGKILL)
        time.sleep(0.5)
        server.start()

    try:
        history = model.fit(
            x, y, epochs=5, batch_size=32, verbose=0,
            callbacks=[mon, rec, at_batch(10, crash_and_restart, sleep=0.15)],
        )  # fmt: skip
        assert len(history.epoch) == 5
        run = server.run(mon.run_id)
        assert run["id"] == mon.run_id and run["status"] == "finished"
        assert_stored_exactly(server, mon.run_id, batches, history)
        kinds = [
            e["kind"] for e in server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
        ]
        assert kinds.index("disconnected") < kinds.index("reconnected") < kinds.index("train_end")
    finally:
        server.close()


class SilentServer:
    """Accepts TCP connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("connect_timeout", "batch_sleep"),
    [(1.0, 0.05), (30.0, 0.0)],
    ids=["gives-up-during-fit", "fit-ends-first"],
)
def test_server_that_never_answers_costs_one_warning_not_a_stall(
    silent: SilentServer, tmp_path: Path, connect_timeout: float, batch_sleep: float
) -> None:
    """One problem, one warning: the server does not answer. Whether the stream
    gives up on it during the fit (a ~2.4 s fit, a 1 s connect timeout) or the fit
    ends first (a 30 s timeout), the single warning says where the records are and
    that `fitdeck sync` uploads them; nothing is said later from the stream thread."""
    x, y = make_data(256)
    model = make_model()
    mon = LiveMonitor(url=f"http://127.0.0.1:{silent.port}", run_name="hung",
                      connect_timeout=connect_timeout, flush_timeout=1.0,
                      spool_dir=tmp_path)  # fmt: skip
    pace = callback(on_train_batch_end=lambda self, b, logs=None: time.sleep(batch_sleep))
    with fitdeck_warnings() as messages:
        started = time.monotonic()
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[mon, pace])
        took = time.monotonic() - started
        assert silent.conns  # it did connect, and was left hanging
        silent.close()  # the stream thread's last attempt fails now: late warnings would show
        thread = mon._stream._thread
        assert thread is not None
        thread.join(10)
        assert not thread.is_alive()
    assert len(history.epoch) == 3
    assert took < 48 * batch_sleep + 20  # never a stall on the server's account
    path = tmp_path / f"{mon.run_id}.jsonl"
    assert len(messages) == 1, messages
    (message,) = messages
    assert "fitdeck sync" in message and str(path) in message, message
    if connect_timeout < 2:
        assert message.startswith("fitdeck: cannot stream to ws://127.0.0.1:"), message
    else:
        assert message.startswith("fitdeck: 58 records did not reach http://127.0.0.1:"), message
    spooled = path.read_text().splitlines()
    # run_start, lr, state, batches, epochs and their states, run_end
    assert len(spooled) - 1 == 1 + 1 + 1 + 48 + 3 * 2 + 1


def test_dead_link_is_detected_by_the_ping_timeout(tmp_path: Path) -> None:
    """A server that takes the connection and then stops reading and answering pings."""
    from websockets.sync.server import serve

    stop = threading.Event()

    def handler(ws: Any) -> None:
        hello = json.loads(ws.recv())
        ws.send(json.dumps({"type": "welcome", "run_id": hello["run_id"], "last_seq": 0}))
        stop.wait(30)  # never reads again: pongs are not sent once its queue is full

    with serve(handler, "127.0.0.1", 0, max_queue=1, ping_interval=None) as ws_server:
        port = ws_server.socket.getsockname()[1]
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        stream = Stream(f"http://127.0.0.1:{port}", "a" * 32, None, ping_timeout=1.0,
                        spool_dir=tmp_path)  # fmt: skip
        stream.start()
        deadline = time.monotonic() + 5
        while not stream.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.connected
        lost_at = time.monotonic()
        with fitdeck_warnings():
            for i in range(2000):
                stream.put((RECORD, {"type": "event", "t": 1.0, "kind": "x", "data": {"i": i}}))
            while stream.connected and time.monotonic() - lost_at < 10:
                time.sleep(0.05)
        assert not stream.connected
        assert time.monotonic() - lost_at < 1.0 * 2 + 2  # ping interval + timeout, with slack
        stop.set()
        stream.finish(0.1)


TRAINER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tests.conftest import make_data, make_model, callback
    from client_callback import LiveMonitor
    x, y = make_data(256)
    model = make_model()
    mon = LiveMonitor(url={url!r}, token="tok", run_name="subprocess")
    print(mon.run_id, flush=True)
    def on_batch(self, b, logs=None):
        time.sleep(0.05)
        if {fail_at} and b == {fail_at}:
            raise ValueError("boom at batch {fail_at}")
    model.fit(x, y, epochs=50, batch_size=32, verbose=0,
              callbacks=[mon, callback(on_train_batch_end=on_batch)])
    """
)


def trainer(server: ServerProcess, fail_at: int = 0) -> tuple[subprocess.Popen[str], str]:
    code = TRAINER.format(root=str(ROOT), url=server.url, fail_at=fail_at)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert len(run_id) == 32, proc.stderr.read() if proc.stderr else ""
    return proc, run_id


def test_fit_raising_marks_the_run_failed_with_the_exception(db: Path) -> None:
    server = ServerProcess(db, "tok").start()
    try:
        proc, run_id = trainer(server, fail_at=3)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "ValueError: boom at batch 3" in err
        run = server.run(run_id)
        assert run["status"] == "failed"
        assert run["error"] == {"type": "ValueError", "message": "boom at batch 3"}
        events = server.client.get(f"/api/runs/{run_id}/events").json()["events"]
        assert events[-1]["kind"] == "train_end" and events[-1]["data"]["status"] == "failed"
    finally:
        server.close()


def test_killed_trainer_is_disconnected_then_failed_after_the_grace_period(db: Path) -> None:
    server = ServerProcess(db, "tok", env={"FITDECK_DISCONNECT_GRACE": "2"}).start()
    try:
        proc, run_id = trainer(server)
        server.wait_for(lambda: progress(server, run_id) >= 3, timeout=60, what="batches")
        server.client.post(f"/api/runs/{run_id}/commands", json={"kind": "set_lr", "lr": 1e-9})
        proc.kill()
        proc.communicate(timeout=30)
        server.wait_for(lambda: server.run(run_id)["status"] == "disconnected", what="disconnected")
        server.wait_for(lambda: server.run(run_id)["status"] == "failed", timeout=10, what="failed")
        assert server.run(run_id)["error"]["type"] == "LostContact"
        for command in server.commands(run_id):
            assert command["status"] in ("applied", "expired")
    finally:
        server.close()


def progress(server: ServerProcess, run_id: str) -> int:
    response = server.client.get(f"/api/runs/{run_id}")
    return int(response.json()["run"]["step"]) if response.status_code == 200 else 0


def burst_records(run_id: str, n: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {"seq": 1, "type": "run_start", "t": 1.0, "name": "burst", "params": {}, "meta": {}}
    ]
    for i in range(1, n):
        records.append({"seq": i + 1, "type": "batch", "t": 1.0 + i, "step": i, "epoch": 0.0,
                        "logs": {"loss": 1.0 / i, "acc": i / n, "aux": float(i)}})  # fmt: skip
    return records


def send_from(
    url: str,
    run_id: str,
    records: list[dict[str, Any]],
    wait_acks: bool,
    after_frame: Callable[[int], None] = lambda i: None,
) -> int:
    """Speaks the /ws/train protocol; returns the server's last_seq from its welcome."""
    ws_url = url.replace("http", "ws") + "/ws/train"
    with connect(ws_url, additional_headers={"Authorization": "Bearer tok"}) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
        last = json.loads(ws.recv(timeout=10))["last_seq"]
        todo = [r for r in records if r["seq"] > last]
        for i in range(0, len(todo), 500):
            ws.send(json.dumps({"type": "records", "records": todo[i : i + 500]}))
            after_frame(i // 500)
        while wait_acks and todo:
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "ack" and message["seq"] >= todo[-1]["seq"]:
                break
    return int(last)


def test_server_killed_during_ingest_burst_keeps_its_database_and_replay_fills_in(
    db: Path,
) -> None:
    server = ServerProcess(db, "tok").start()
    run_id = "b" * 32
    records = burst_records(run_id, 15_000)
    errors: list[BaseException] = []
    reads: list[int] = []
    stop_reading = threading.Event()

    def read_while_writing() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer tok"}) as c:
            while not stop_reading.is_set():
                try:
                    reads.append(
                        c.get(f"/api/runs/{run_id}/metrics", params={"scope": "batch"}).status_code
                    )
                except httpx.TransportError:
                    pass  # the server is being killed
                except BaseException as exc:
                    errors.append(exc)

    def kill_mid_burst(frame: int) -> None:
        if frame == 20:  # of 30, sent without waiting: the server is busy storing
            server.stop(signal.SIGKILL)

    reader = threading.Thread(target=read_while_writing, daemon=True)
    reader.start()
    server.wait_for(lambda: reads, what="a first read")
    try:
        with pytest.raises((ConnectionClosed, OSError)):  # it dies with the server
            send_from(server.url, run_id, records, wait_acks=True, after_frame=kill_mid_burst)
        stop_reading.set()
        reader.join(10)
        assert not errors and reads and set(reads) <= {200, 404}  # never "database is locked"
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = conn.execute("SELECT count(*) FROM points").fetchone()[0]
            row = conn.execute("SELECT last_seq FROM runs WHERE id = ?", (run_id,)).fetchone()
        last_seq = row[0] if row else 0
        assert stored < 3 * (len(records) - 1)  # the kill did cut the burst short
        assert stored == 3 * max(last_seq - 1, 0)  # points and last_seq commit together
        server.start()
        resumed_from = send_from(server.url, run_id, records, wait_acks=True)
        assert resumed_from == last_seq  # the welcome knows what is stored
        loss = server.series(run_id, "batch", "loss")
        assert loss["step"] == list(range(1, len(records)))
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM points").fetchone()[0] == 3 * (
                len(records) - 1
            )
    finally:
        stop_reading.set()
        server.close()


def test_command_sent_while_the_trainer_is_away_is_applied_once_when_it_returns(
    db: Path,
) -> None:
    server = ServerProcess(db, "tok").start()
    x, y = make_data(256)
    model = make_model()
    mon = LiveMonitor(url=server.url, token="tok", run_name="away")
    posted: list[int] = []

    def crash_restart_and_command() -> None:
        server.stop(signal.SIGKILL)
        server.start()
        response = server.client.post(f"/api/runs/{mon.run_id}/commands", json={"kind": "stop"})
        posted.append(response.status_code)

    try:
        history = model.fit(
            x, y, epochs=30, batch_size=32, verbose=0,
            callbacks=[mon, at_batch(5, crash_restart_and_command, sleep=0.1)],
        )  # fmt: skip
        assert posted == [202]
        assert len(history.epoch) < 30
        (command,) = server.commands(mon.run_id)
        assert command["status"] == "applied"
        assert server.run(mon.run_id)["status"] == "stopped"
        events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
        applied = [e for e in events if e["kind"] == "command" and e["data"]["status"] == "applied"]
        assert len(applied) == 1
    finally:
        server.close()


def test_a_command_received_twice_is_handled_once(tmp_path: Path) -> None:
    stream = Stream("http://127.0.0.1:9", "c" * 32, None, spool_dir=tmp_path)
    message = {"type": "command", "command": {"id": 4, "kind": "stop", "lr": None}}
    stream._handle(message)
    stream._handle(message)  # resent after a reconnect
    assert list(stream.inbox) == [message["command"]]
    delivered = [item for item in stream.buffer if item[1].get("status") == "delivered"]
    assert len(delivered) == 1


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """uvicorn in this process with a tiny live queue, on a free port."""
    import uvicorn

    from server import Settings, create_app

    settings = Settings(db=tmp_path / "live.db", auth=False, live_queue_size=4)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield f"127.0.0.1:{port}", srv
    srv.should_exit = True
    thread.join(10)


def test_a_browser_that_stops_reading_is_dropped_and_slows_nobody(
    live_server: tuple[str, Any],
) -> None:
    host, _ = live_server
    run_id = "d" * 32
    wide = {f"metric_{k:03d}": 0.5 for k in range(200)}
    frames = [[{"seq": 1, "type": "run_start", "t": 1.0, "name": "wide", "params": {}, "meta": {}}]]
    for f in range(150):  # ~80 KB of live message per frame, ~12 MB in all
        frames.append([{"seq": 2 + f * 20 + i, "type": "batch", "t": 1.0, "step": 1 + f * 20 + i,
                        "epoch": 0.0, "logs": wide} for i in range(20)])  # fmt: skip
    total = 150 * 20

    good_points: list[int] = []

    def read_all(ws: Any) -> None:
        while len(good_points) < total:
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "metrics":
                good_points.extend(p["step"] for p in message["points"])

    stalled = NeverReads(host, "/ws/live")
    stalled.send_text(json.dumps({"type": "subscribe", "run_ids": [run_id]}))
    with connect(f"ws://{host}/ws/live", max_size=None) as good:
        good.send(json.dumps({"type": "subscribe", "run_ids": [run_id]}))
        while json.loads(good.recv(timeout=5))["type"] != "subscribed":
            pass
        reader = threading.Thread(target=read_all, args=(good,), daemon=True)
        reader.start()
        with connect(f"ws://{host}/ws/train", max_size=None) as trainer_ws:
            trainer_ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
            trainer_ws.recv(timeout=5)
            for frame in frames:  # one live message per frame
                trainer_ws.send(json.dumps({"type": "records", "records": frame}))
                assert json.loads(trainer_ws.recv(timeout=10))["type"] == "ack"
        reader.join(30)
        assert good_points == list(range(1, total + 1))  # the reading browser got every point
    # The stalled browser was dropped: reading now, it finds the end of the stream
    # (with a 1013 close frame when there was room to send one).
    closed, code = stalled.read_to_end(timeout=30)
    assert closed and code in (None, 1013)


class NeverReads:
    """A WebSocket client with a tiny receive buffer that stops reading after the handshake."""

    def __init__(self, host: str, path: str) -> None:
        name, port = host.split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((name, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # byte by byte: leave the frames unread
        assert response.startswith(b"HTTP/1.1 101"), response

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_to_end(self, timeout: float) -> tuple[bool, int | None]:
        """Read what was queued for it: did the server close, and with which close code."""
        self.sock.settimeout(timeout)
        data = b""
        closed = False
        try:
            while chunk := self.sock.recv(1 << 20):
                data += chunk
            closed = True
        except TimeoutError:
            pass
        finally:
            self.sock.close()
        pos = code = 0
        while pos + 2 <= len(data):
            opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
            pos += 2
            if length == 126:
                length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
            elif length == 127:
                length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
            if opcode == 0x8:
                code = int.from_bytes(data[pos : pos + 2], "big")
            pos += length
        return closed, code or None


def test_env_spool_dir_is_used_by_default(spool_dir: Path) -> None:
    assert os.environ["FITDECK_SPOOL_DIR"] == str(spool_dir)
    stream = Stream("http://127.0.0.1:9", "e" * 32, None)
    assert stream.spool.path == spool_dir / f"{'e' * 32}.jsonl"
