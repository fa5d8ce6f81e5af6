"""server.sync (`fitdeck sync`) against a tiny in-process `/ws/train` server."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from server.protocol import Close, Msg, Rec, dumps, loads
from server.spool import Spool
from server.sync import sync
from tests.conftest import ServerProcess

RUN = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


class TinyServer:
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


class Received:
    """What an acking server saw: run ids said hello, records, Authorization headers."""

    def __init__(self, last_seq: int = 0, ack: bool = True) -> None:
        self.last_seq = last_seq
        self.ack = ack
        self.hellos: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    def __call__(self, ws: ServerConnection) -> None:
        self.auth.append(ws.request.headers.get("Authorization") if ws.request else None)
        hello = loads(ws.recv())
        self.hellos.append(hello["run_id"])
        ws.send(dumps(Msg.welcome(hello["run_id"], self.last_seq)))
        try:
            for text in ws:
                frame = loads(text)
                self.records.extend(frame["records"])
                if self.ack:
                    ws.send(dumps(Msg.ack(frame["records"][-1]["seq"])))
        except ConnectionClosed:
            pass

    @property
    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.records]


def spool_file(directory: Path, run_id: str = RUN, n: int = 10, url: str | None = None) -> Path:
    path = directory / f"{run_id}.jsonl"
    header = {"run_id": run_id, **({"url": url} if url else {})}
    Spool(path, header).append(
        {"seq": s, "type": "batch", "t": 1.0, "step": s, "epoch": 0, "logs": {"loss": "NaN"}}
        for s in range(1, n + 1)
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FITDECK_URL", raising=False)
    monkeypatch.delenv("FITDECK_TOKEN", raising=False)


def test_uploads_a_spool_exactly_once_and_deletes_it_after_the_last_ack(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    seen = Received()
    server = tiny(seen)
    path = spool_file(tmp_path, n=2500)
    [result] = sync(path, url=server.url, timeout=10)
    assert result.done and result.error is None
    assert (result.run_id, result.records, result.url) == (RUN, 2500, server.url)
    assert seen.hellos == [RUN]
    assert seen.seqs == list(range(1, 2501))
    assert seen.records[0]["logs"] == {"loss": "NaN"}
    assert not path.exists()


def test_only_what_the_server_lacks_is_sent(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    seen = Received(last_seq=7)
    server = tiny(seen)
    path = spool_file(tmp_path, n=10)
    [result] = sync(path, url=server.url, timeout=5)
    assert result.done
    assert seen.seqs == [8, 9, 10]
    assert not path.exists()


def test_a_server_that_has_it_all_gets_nothing_and_the_file_goes(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    seen = Received(last_seq=10)
    server = tiny(seen)
    path = spool_file(tmp_path, n=10)
    [result] = sync(path, url=server.url, timeout=5)
    assert result.done and seen.records == []
    assert not path.exists()


def test_a_whole_directory_is_synced_file_by_file(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    seen = Received()
    server = tiny(seen)
    spool_file(tmp_path, RUN, n=3)
    spool_file(tmp_path, OTHER, n=2)
    (tmp_path / "notes.txt").write_text("not a spool")
    results = sync(tmp_path, url=server.url, timeout=5)
    assert [(r.run_id, r.records, r.done) for r in results] == [(RUN, 3, True), (OTHER, 2, True)]
    assert sorted(seen.hellos) == sorted([RUN, OTHER])
    assert list(tmp_path.glob("*.jsonl")) == []


def test_the_url_comes_from_the_file_when_not_given(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    seen = Received()
    server = tiny(seen)
    [result] = sync(spool_file(tmp_path, url=server.url), timeout=5)
    assert result.done and result.url == server.url


def test_the_environment_beats_the_file_and_the_token_is_sent(
    tmp_path: Path, tiny: Callable[..., TinyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Received()
    server = tiny(seen)
    monkeypatch.setenv("FITDECK_URL", server.url)
    monkeypatch.setenv("FITDECK_TOKEN", "tok-123")
    [result] = sync(spool_file(tmp_path, url=f"http://127.0.0.1:{free_port()}"), timeout=5)
    assert result.done
    assert seen.auth == ["Bearer tok-123"]


def test_a_server_that_never_acks_fails_within_the_timeout(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    server = tiny(Received(ack=False))
    path = spool_file(tmp_path, n=5)
    started = time.monotonic()
    [result] = sync(path, url=server.url, timeout=0.5)
    assert time.monotonic() - started < 3
    assert not result.done
    assert result.error is not None and result.error.startswith("TimeoutError")
    assert path.exists() and len(Spool(path)) == 5


def test_no_server_listening_fails_fast_naming_the_failure(tmp_path: Path) -> None:
    path = spool_file(tmp_path, n=5)
    started = time.monotonic()
    [result] = sync(path, url=f"http://127.0.0.1:{free_port()}", timeout=10)
    assert time.monotonic() - started < 2
    assert not result.done and result.records == 5
    assert result.error is not None and "ConnectionRefused" in result.error
    assert path.exists()


def test_a_refusing_server_fails_with_its_reason(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    def refuse(ws: ServerConnection) -> None:
        ws.recv()
        ws.close(Close.POLICY, "Missing or wrong token.")

    server = tiny(refuse)
    path = spool_file(tmp_path)
    [result] = sync(path, url=server.url, timeout=5)
    assert not result.done
    assert result.error is not None and "Missing or wrong token" in result.error
    assert path.exists()


def test_a_server_that_does_not_welcome_fails(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    def unwelcoming(ws: ServerConnection) -> None:
        ws.recv()
        ws.send(dumps(Msg.error("no")))

    server = tiny(unwelcoming)
    [result] = sync(spool_file(tmp_path), url=server.url, timeout=5)
    assert not result.done
    assert result.error is not None and "expected a welcome" in result.error


def test_a_server_speaking_garbage_fails_that_file_only(
    tmp_path: Path, tiny: Callable[..., TinyServer]
) -> None:
    def garbage(ws: ServerConnection) -> None:
        ws.recv()
        ws.send("<html>")

    server = tiny(garbage)
    spool_file(tmp_path, RUN)
    spool_file(tmp_path, OTHER)
    results = sync(tmp_path, url=server.url, timeout=5)
    assert [r.run_id for r in results] == sorted([RUN, OTHER])  # the second was tried too
    for result in results:
        assert not result.done and result.error is not None
        assert "not a fitdeck server" in result.error


def test_a_header_only_file_is_done_with_nothing_to_send(tmp_path: Path) -> None:
    path = tmp_path / f"{RUN}.jsonl"
    path.write_text(dumps({"fitdeck_spool": 1, "run_id": RUN}) + "\n")
    [result] = sync(path, url=f"http://127.0.0.1:{free_port()}")
    assert result.done and result.records == 0
    assert not path.exists()


@pytest.mark.parametrize(
    ("name", "header_run"),
    [("notes", RUN), (OTHER, RUN), (RUN.upper(), None), ("run", None)],
    ids=["not-hex", "other-run", "upper-case", "no-header"],
)
def test_a_file_not_named_after_its_run_is_refused(
    tmp_path: Path, name: str, header_run: str | None
) -> None:
    path = tmp_path / f"{name}.jsonl"
    header = {"fitdeck_spool": 1, **({"run_id": header_run} if header_run else {})}
    record = {"seq": 1, "type": "event", "t": 1.0, "kind": "x", "data": {}}
    path.write_text(dumps(header) + "\n" + dumps(record) + "\n")
    with pytest.raises(ValueError, match="is not named after its run"):
        sync(path, url="http://127.0.0.1:9")
    assert path.exists()


@pytest.mark.slow
def test_a_spool_holding_what_json_cannot_send_is_uploaded_as_text(
    tmp_path: Path, server: ServerProcess
) -> None:
    """An older callback spooled params orjson refuses (2**70, a lone surrogate) or the
    server refuses (2**63 + 5): sync sends them as text, and the run is complete."""
    run_id = uuid.uuid4().hex
    path = tmp_path / f"{run_id}.jsonl"
    params = {"big": 2**70, "u64": 2**63 + 5, "path": "/data/\udcff"}
    Spool(path, {"run_id": run_id}).append(
        [{"seq": 1, **Rec.run_start(1.0, "spooled", None, params, {"epochs": 1})}]
        + [
            {"seq": s, **Rec.metrics("batch", 1.0 + s, s - 1, 0.0, {"loss": 0.5})}
            for s in range(2, 12)
        ]
    )
    [result] = sync(path, url=server.url, token=server.token, timeout=20)
    assert result.done and result.error is None, result
    run = server.run(run_id)
    assert run["params"] == {"big": str(2**70), "u64": str(2**63 + 5), "path": "/data/\\udcff"}
    assert server.series(run_id, "batch", "loss")["step"] == list(range(1, 11))
    assert not path.exists()
