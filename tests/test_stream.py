"""client_callback.stream: numbering, chunking, acks, spilling and the real send path.

Most tests drive a `Stream` that never connects, through its internals; the last
ones run it against a tiny in-process WebSocket server speaking `/ws/train`.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from client_callback import stream as stream_mod
from client_callback.stream import (
    BATCH,
    EPOCH,
    FLUSH_SECONDS,
    RECORD,
    SEND_CHUNK,
    FitdeckWarning,
    Stream,
)
from server.protocol import Close, Msg, Rec, dumps, loads

RUN = "0123456789abcdef0123456789abcdef"
FUTURE = 1e12  # a record time that is never old enough to flush on its own


def make(tmp_path: Path, url: str = "http://127.0.0.1:9", **kwargs: Any) -> Stream:
    return Stream(url, RUN, None, spool_dir=tmp_path, **kwargs)


def batch(step: int, t: float = FUTURE, **logs: Any) -> tuple[Any, ...]:
    return (BATCH, 0, step - 1, step, t, logs or {"loss": 0.5})


def drain(s: Stream) -> None:
    with s._lock:
        s._drain_locked()


def seqs(records: list[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in records]


# -- numbering ---------------------------------------------------------------------


def test_drain_numbers_every_kind_of_item_in_order(tmp_path: Path) -> None:
    s = make(tmp_path)
    start = Rec.run_start(1.0, "r", None, {}, {"steps_per_epoch": 4})
    s.put((RECORD, start))
    s.put((BATCH, 1, 2, 7, 2.0, {"loss": 0.25}))
    s.put((EPOCH, 1, 8, 3.0, {"val_loss": 0.5}))
    s.put((RECORD, Rec.event(4.0, "note", {})))
    drain(s)
    records = list(s._unacked)
    assert seqs(records) == [1, 2, 3, 4]
    assert not s.buffer
    assert records[0] is start and start["seq"] == 1
    assert records[1] == {
        "type": "batch",
        "t": 2.0,
        "step": 7,
        "epoch": 1.75,
        "logs": {"loss": 0.25},
        "seq": 2,
    }
    assert records[2] == {
        "type": "epoch",
        "t": 3.0,
        "step": 8,
        "epoch": 1,
        "logs": {"val_loss": 0.5},
        "seq": 3,
    }


def test_batch_progress_is_the_epoch_until_steps_per_epoch_is_known(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.put((BATCH, 2, 0, 1, 1.0, {"loss": 1.0}))
    s.put((RECORD, Rec.run_start(1.0, "r", None, {}, {"steps_per_epoch": None})))
    s.put((BATCH, 3, 0, 2, 1.0, {"loss": 1.0}))
    drain(s)
    assert [r["epoch"] for r in s._unacked if r["type"] == "batch"] == [2, 3]


def test_numbering_goes_on_across_drains(tmp_path: Path) -> None:
    s = make(tmp_path)
    for step in range(1, 4):
        s.put(batch(step))
    drain(s)
    s.put(batch(4))
    drain(s)
    assert seqs(list(s._unacked)) == [1, 2, 3, 4]


def test_a_stream_over_a_left_spool_numbers_after_it(tmp_path: Path) -> None:
    """Records left by an earlier process keep their numbers; new ones follow."""
    first = make(tmp_path)
    for step in range(1, 6):
        first.put(batch(step))
    assert first.finish(0.1) == 5
    second = make(tmp_path)
    second.put(batch(6))
    drain(second)
    assert seqs(list(second._unacked)) == [6]
    assert second.pending() == 6


# -- chunking ------------------------------------------------------------------------


def test_a_fresh_record_waits_for_company_then_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(stream_mod, "time", SimpleNamespace(time=lambda: now[0]))
    s = make(tmp_path)
    s.put(batch(1, t=1000.0))
    drain(s)
    assert s._next_chunk() == []
    now[0] += FLUSH_SECONDS * 0.9
    s.put(batch(2, t=now[0]))
    drain(s)
    assert s._next_chunk() == []  # the oldest has not waited long enough yet
    now[0] += FLUSH_SECONDS * 0.2
    assert seqs(s._next_chunk()) == [1, 2]


def test_an_old_record_flushes_at_once_with_those_behind_it(tmp_path: Path) -> None:
    """The age that counts is that of the oldest unsent record."""
    s = make(tmp_path)
    s.put(batch(1, t=time.time() - 1))
    s.put(batch(2))
    s.put(batch(3))
    drain(s)
    assert seqs(s._next_chunk()) == [1, 2, 3]


def test_finishing_flushes_at_once(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.put(batch(1))
    drain(s)
    assert s._next_chunk() == []
    s._finishing.set()
    assert seqs(s._next_chunk()) == [1]


def test_a_full_chunk_flushes_at_once_and_no_bigger(tmp_path: Path) -> None:
    s = make(tmp_path, memory_records=10 * SEND_CHUNK)
    for step in range(1, SEND_CHUNK):
        s.put(batch(step))
    drain(s)
    assert s._next_chunk() == []  # one short of a chunk
    s.put(batch(SEND_CHUNK))
    s.put(batch(SEND_CHUNK + 1))
    drain(s)
    chunk = s._next_chunk()
    assert seqs(chunk) == list(range(1, SEND_CHUNK + 1))
    s._sent_seq = chunk[-1]["seq"]
    assert s._next_chunk() == []  # the one left over waits again


def test_next_chunk_starts_after_what_was_sent(tmp_path: Path) -> None:
    s = make(tmp_path)
    for step in range(1, 8):
        s.put(batch(step, t=0.0))
    drain(s)
    s._sent_seq = 4
    assert seqs(s._next_chunk()) == [5, 6, 7]
    s._sent_seq = 7
    assert s._next_chunk() == []


def test_after_a_reconnect_everything_unacknowledged_is_sent_again(tmp_path: Path) -> None:
    s = make(tmp_path)
    for step in range(1, 6):
        s.put(batch(step, t=0.0))
    drain(s)
    s._sent_seq = 5
    s._handle({"type": "ack", "seq": 2})
    s._sent_seq = 2  # what a welcome with last_seq 2 sets
    assert seqs(s._next_chunk()) == [3, 4, 5]


def test_spilled_records_are_sent_first_from_the_spool(tmp_path: Path) -> None:
    s = make(tmp_path, memory_records=10)
    for step in range(1, 31):
        s.put(batch(step, t=0.0))
    s._drain()
    assert s.spool.last_seq is not None and s.spool.path.exists()
    sent: list[int] = []
    while chunk := s._next_chunk():
        sent += seqs(chunk)
        s._sent_seq = chunk[-1]["seq"]
    assert sent == list(range(1, 31))


# -- acks --------------------------------------------------------------------------


def test_an_ack_drops_the_records_up_to_it(tmp_path: Path) -> None:
    s = make(tmp_path)
    for step in range(1, 6):
        s.put(batch(step))
    drain(s)
    s._handle({"type": "ack", "seq": 3})
    assert seqs(list(s._unacked)) == [4, 5]
    s._handle({"type": "ack", "seq": 1})  # late and stale: changes nothing
    assert seqs(list(s._unacked)) == [4, 5]
    s._handle({"type": "ack", "seq": 5})
    assert s.pending() == 0


def test_acks_delete_the_spool_once_all_of_it_is_acknowledged(tmp_path: Path) -> None:
    s = make(tmp_path, memory_records=4)
    for step in range(1, 21):
        s.put(batch(step))
    s._drain()
    spooled_to = s.spool.last_seq
    assert spooled_to is not None and s.spool.path.exists()
    s._handle({"type": "ack", "seq": spooled_to - 1})
    assert s.spool.path.exists()
    s._handle({"type": "ack", "seq": spooled_to})
    assert not s.spool.path.exists()
    assert seqs(list(s._unacked)) == list(range(spooled_to + 1, 21))
    assert s.pending() == 20 - spooled_to


# -- memory bound and overflow ----------------------------------------------------------


def test_memory_stays_bounded_by_spilling(tmp_path: Path) -> None:
    s = make(tmp_path, memory_records=50)
    for step in range(1, 1001):
        s.put(batch(step))
        if step % 7 == 0:
            s._drain()
            assert len(s._unacked) <= 50
    s._drain()
    assert len(s._unacked) <= 50
    assert s.pending() == 1000
    assert seqs(s.spool.read_after(0, 2000) + list(s._unacked)) == list(range(1, 1001))


def test_finish_without_a_server_spools_everything(tmp_path: Path) -> None:
    s = make(tmp_path)
    for step in range(1, 11):
        s.put(batch(step))
    assert s.finish(0.1) == 10
    assert not s._unacked and not s.buffer
    assert seqs(s.spool.read_after(0, 100)) == list(range(1, 11))


def test_overflow_counts_drops_and_warns_once(tmp_path: Path) -> None:
    s = make(tmp_path, max_buffer=3)
    with pytest.warns(FitdeckWarning, match="send buffer is full") as warned:
        for step in range(1, 11):
            s.put(batch(step))
    assert s.dropped == 7
    assert len(s.buffer) == 3
    assert len([w for w in warned if issubclass(w.category, FitdeckWarning)]) == 1


def test_warn_once_never_raises_even_when_warnings_are_errors(tmp_path: Path) -> None:
    """The suite runs with `-W error`: a warning must still not reach fit."""
    s = make(tmp_path, max_buffer=0)
    s.put(batch(1))  # would raise FitdeckWarning as an error if not suppressed
    assert s.dropped == 1


# -- commands and server errors --------------------------------------------------------


def test_a_command_resent_after_a_reconnect_is_handled_once(tmp_path: Path) -> None:
    s = make(tmp_path)
    command = {"id": 7, "kind": "set_lr", "lr": 0.01}
    s._handle(Msg.command(command))
    s._handle(Msg.command(command))
    s._handle(Msg.command({"id": 8, "kind": "stop", "lr": None}))
    assert list(s.inbox) == [command, {"id": 8, "kind": "stop", "lr": None}]
    drain(s)
    delivered = [(r["id"], r["status"]) for r in s._unacked]
    assert delivered == [(7, "delivered"), (8, "delivered")]


def test_a_server_error_warns_once(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    s = make(tmp_path)
    s._handle(Msg.error("Record 3: bad"))
    s._handle(Msg.error("Record 4: bad"))
    warned = [w for w in recwarn if issubclass(w.category, FitdeckWarning)]
    assert len(warned) == 1 and "Record 3" in str(warned[0].message)


def test_unknown_messages_are_ignored(tmp_path: Path) -> None:
    s = make(tmp_path)
    s._handle({"type": "welcome", "last_seq": 99})
    s._handle({"type": "surprise"})
    assert s.pending() == 0 and not s.inbox


# -- log values ------------------------------------------------------------------------


def test_clean_keeps_scalars_encodes_nonfinite_and_drops_the_rest(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    s = make(tmp_path)
    logs = {
        "loss": 0.5,
        "acc": np.float32(0.75),
        "n": np.int64(3),
        "t": np.array(2.0),
        "nan": float("nan"),
        "inf": np.float64("-inf"),
        "vec": np.array([1.0, 2.0]),
        "label": "abc",
        "none": None,
        5: 1.0,
    }
    assert s._clean(logs) == {
        "loss": 0.5,
        "acc": 0.75,
        "n": 3.0,
        "t": 2.0,
        "nan": "NaN",
        "inf": "-Infinity",
        "5": 1.0,
    }
    s._clean(logs)  # the same offenders again: no new warnings
    messages = sorted(str(w.message) for w in recwarn if issubclass(w.category, FitdeckWarning))
    assert len(messages) == 3
    assert all("is not a scalar number" in m for m in messages)
    assert any("'vec'" in m and "ndarray" in m for m in messages)


def test_records_carry_strict_json(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.put(batch(1, loss=math.nan, acc=math.inf))
    drain(s)
    assert loads(dumps(s._unacked[0]))["logs"] == {"loss": "NaN", "acc": "Infinity"}


# -- against a real WebSocket ------------------------------------------------------------


class TinyServer:
    """A `/ws/train` server in a thread: welcome, store, ack; scripted by `handler`."""

    def __init__(self, handler: Callable[[ServerConnection], None]) -> None:
        self.server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def tiny() -> Iterator[Callable[[Callable[[ServerConnection], None]], TinyServer]]:
    servers: list[TinyServer] = []

    def start(handler: Callable[[ServerConnection], None]) -> TinyServer:
        servers.append(TinyServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def acking(
    got: list[dict[str, Any]],
    last_seq: Callable[[], int] = lambda: 0,
    after_welcome: Callable[[ServerConnection], None] | None = None,
) -> Callable[[ServerConnection], None]:
    def handler(ws: ServerConnection) -> None:
        hello = loads(ws.recv())
        assert hello == Msg.hello(RUN)
        ws.send(dumps(Msg.welcome(RUN, last_seq())))
        if after_welcome is not None:
            after_welcome(ws)
        try:
            for text in ws:
                frame = loads(text)
                assert frame["type"] == "records"
                got.extend(frame["records"])
                ws.send(dumps(Msg.ack(frame["records"][-1]["seq"])))
        except ConnectionClosed:
            pass

    return handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_everything_is_delivered_exactly_once_and_finish_returns_zero(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    got: list[dict[str, Any]] = []
    command = {"id": 3, "kind": "stop", "lr": None}
    server = tiny(acking(got, after_welcome=lambda ws: ws.send(dumps(Msg.command(command)))))
    s = make(tmp_path, url=server.url, memory_records=300)
    s.start()
    s.put((RECORD, Rec.run_start(time.time(), "r", None, {}, {"steps_per_epoch": 10})))
    for step in range(1, 2501):
        s.put(batch(step, t=time.time()))
    wait_until(lambda: s.connected)
    wait_until(lambda: s.inbox)
    assert s.finish(5.0) == 0
    assert seqs(got) == list(range(1, len(got) + 1))
    assert len(got) == 2502  # run_start, 2500 batches and the command's "delivered"
    assert [(r["id"], r["status"]) for r in got if r["type"] == "command"] == [(3, "delivered")]
    assert list(s.inbox) == [command]
    assert not s.spool.path.exists()
    assert s._thread is not None and not s._thread.is_alive()


def test_after_a_dropped_link_only_what_the_server_lacks_is_resent(
    tmp_path: Path, tiny: Callable[..., TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)
    got: list[list[int]] = [[], []]
    connections = 0

    def handler(ws: ServerConnection) -> None:
        nonlocal connections
        n, connections = connections, connections + 1
        loads(ws.recv())
        ws.send(dumps(Msg.welcome(RUN, 0 if n == 0 else 4)))
        try:
            for text in ws:
                got[min(n, 1)].extend(seqs(loads(text)["records"]))
                if n == 0:
                    ws.close()  # stored 1..4 (say), acked nothing, and went away
                    return
                ws.send(dumps(Msg.ack(got[1][-1])))
        except ConnectionClosed:
            pass

    server = tiny(handler)
    s = make(tmp_path, url=server.url)
    for step in range(1, 11):
        s.put(batch(step, t=0.0))
    s.start()
    wait_until(lambda: connections == 2 and s.connected)
    assert s.finish(5.0) == 0
    assert got[0] == list(range(1, 11))
    assert got[1] == list(range(5, 11))


def test_a_refusal_close_is_not_retried_and_the_records_are_kept(
    tmp_path: Path, tiny: Callable[..., TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)  # a retry would come at once
    connections = 0

    def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        ws.recv()
        ws.close(Close.POLICY, "Missing or wrong token.")

    server = tiny(handler)
    s = make(tmp_path, url=server.url)
    for step in range(1, 4):
        s.put(batch(step))
    with pytest.warns(FitdeckWarning, match="refused.*Missing or wrong token") as warned:
        s.start()
        wait_until(lambda: "refused" in s._warned)
        time.sleep(0.2)
    assert connections == 1
    assert len([w for w in warned if issubclass(w.category, FitdeckWarning)]) == 1
    assert s.finish(0.1) == 3
    assert s._thread is not None
    s._thread.join(2)
    assert not s._thread.is_alive()


def test_no_server_warns_unreachable_and_keeps_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)
    s = make(tmp_path, url=f"http://127.0.0.1:{free_port()}", connect_timeout=0.5)
    s.put(batch(1))
    with pytest.warns(FitdeckWarning, match="cannot stream to ws://127.0.0.1:.*/ws/train"):
        s.start()
        wait_until(lambda: "unreachable" in s._warned)
    assert s.finish(0.1) == 1
    assert s._thread is not None
    s._thread.join(2)
    assert not s._thread.is_alive()


def test_a_fit_started_while_the_last_one_still_finishes_is_streamed(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    """finish() gave up waiting for an ack; the thread lives on and must serve the next fit."""
    got: list[int] = []

    def slow_acks(ws: ServerConnection) -> None:
        loads(ws.recv())
        ws.send(dumps(Msg.welcome(RUN, got[-1] if got else 0)))
        try:
            for text in ws:
                got.extend(seqs(loads(text)["records"]))
                time.sleep(0.15)
                ws.send(dumps(Msg.ack(got[-1])))
        except ConnectionClosed:
            pass

    server = tiny(slow_acks)
    s = make(tmp_path, url=server.url)
    for step in range(1, 6):
        s.put(batch(step, t=0.0))
    s.start()
    wait_until(lambda: s.connected and got)
    s.finish(0.01)  # the first fit ends before its ack arrives
    s.start()  # the next fit of the same LiveMonitor
    time.sleep(0.3)  # the late ack has arrived by now
    for step in range(6, 9):
        s.put(batch(step, t=0.0))
    wait_until(lambda: got[-1:] == [8], timeout=3)
    assert s.finish(3) == 0
    assert sorted(set(got)) == list(range(1, 9))


def test_storage_trouble_is_one_warning_a_backoff_and_a_resend_of_everything_unacked(
    tmp_path: Path, tiny: Callable[..., TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server takes a frame, cannot store it (storage_error, close 1013), refuses
    the next hello the same way, then welcomes: nothing was acked, all is resent."""
    monkeypatch.setattr(stream_mod, "BACKOFF_START", 0.01)
    got: list[list[int]] = [[], []]
    connections = 0

    def handler(ws: ServerConnection) -> None:
        nonlocal connections
        n, connections = connections, connections + 1
        loads(ws.recv())
        if n == 1:  # still in trouble when the trainer comes back
            ws.send(dumps(Msg.storage_error("database or disk is full")))
            ws.close(Close.TRY_AGAIN_LATER, "storage trouble; try again later")
            return
        ws.send(dumps(Msg.welcome(RUN, 0)))
        try:
            for text in ws:
                got[min(n, 1)].extend(seqs(loads(text)["records"]))
                if n == 0:
                    ws.send(dumps(Msg.storage_error("database or disk is full")))
                    ws.close(Close.TRY_AGAIN_LATER, "storage trouble; try again later")
                    return
                ws.send(dumps(Msg.ack(got[1][-1])))
        except ConnectionClosed:
            pass

    server = tiny(handler)
    s = make(tmp_path, url=server.url)
    for step in range(1, 6):
        s.put(batch(step, t=0.0))
    with pytest.warns(FitdeckWarning, match="cannot store records right now") as warned:
        s.start()
        wait_until(lambda: connections == 3 and s.connected)
        assert s.finish(5.0) == 0
    assert len([w for w in warned if issubclass(w.category, FitdeckWarning)]) == 1
    assert "database or disk is full" in str(warned[0].message)
    assert got == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
