"""Connection hygiene against a real server, with real sockets on loopback.

Half-sent requests are cut after the header timeout, idle keep-alive connections
after the keep-alive timeout; connections are capped with a clear 503; and however
many anonymous sockets pile up, a dashboard request and a trainer are served.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "connections-test-token"
RUN = "0123456789abcdef0123456789abcdef"
HALF_SENT = b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"


def open_sockets(server: ServerProcess, n: int, first: bytes = HALF_SENT) -> list[socket.socket]:
    """`n` connections, each sending `first` and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing `s` within `within` s; None if still open."""
    s.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


@contextlib.contextmanager
def held(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def dashboard_request(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/api/runs", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=5)  # fmt: skip


def trainer_session(server: ServerProcess, run_id: str = RUN) -> int:
    """A trainer's exchange: hello, welcome, a run_start record, its ack."""
    ws: ClientConnection
    with connect(f"ws://127.0.0.1:{server.port}/ws/train", open_timeout=5,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:  # fmt: skip
        ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
        assert json.loads(ws.recv(5))["type"] == "welcome"
        start = {"seq": 1, "type": "run_start", "t": 1.0, "name": "through", "project": None,
                 "params": {}, "meta": {}}  # fmt: skip
        ws.send(json.dumps({"type": "records", "records": [start]}))
        reply = json.loads(ws.recv(5))
        assert reply["type"] == "ack", reply
        return int(reply["seq"])


@pytest.fixture
def serve(make_server: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    def start(**env: str) -> ServerProcess:
        return make_server(token=TOKEN, env={f"FITDECK_{k.upper()}": v for k, v in env.items()})

    return start


@pytest.mark.parametrize(
    "caps",
    [{}, {"max_connections": "100", "max_anonymous_connections": "20"}],
    ids=["defaults", "small-caps"],
)
def test_300_half_sent_requests_held_open_stop_neither_a_dashboard_nor_a_trainer(
    serve: Callable[..., ServerProcess], caps: dict[str, str]
) -> None:
    server = serve(**caps)
    with held(open_sockets(server, 300)) as socks:
        time.sleep(3.2)  # old enough to be the first to go, with small caps
        assert dashboard_request(server).status_code == 200
        assert trainer_session(server) == 1
        assert dashboard_request(server).status_code == 200
        if caps:  # they made room: the oldest anonymous sockets were closed
            assert sum(closed_by_server(s, 0.01) is not None for s in socks[:100]) >= 50
    assert dashboard_request(server).status_code == 200


LIMITED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({files}, {files}))
sys.argv = ["fitdeck", "serve", "--port", "{port}", "--db", {db!r}, "--token", {token!r}]
runpy.run_module("server", run_name="__main__")
"""


def test_more_idle_sockets_than_open_files_lock_out_neither_dashboards_nor_trainers(
    tmp_path: Any,
) -> None:
    """A 400 open-file limit and 500 idle sockets without a token: the cap stays below
    the limit, so the server never runs out of files to accept with."""
    server = ServerProcess(tmp_path / "limited.db", TOKEN)
    code = LIMITED.format(files=400, port=server.port, db=str(server.db_path), token=TOKEN)
    with server.log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=log)
    try:
        server.wait_for(lambda: _healthy(server), timeout=30, what="the server")
        with held(open_sockets(server, 500, b"")):
            time.sleep(3.2)
            assert dashboard_request(server).status_code == 200
            assert trainer_session(server) == 1
        assert "the open-file limit (400) allows 336 connections" in server.log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        server.client.close()


def _healthy(server: ServerProcess) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200
    return False


def test_half_sent_headers_are_answered_408_and_closed_after_the_header_timeout(
    serve: Callable[..., ServerProcess],
) -> None:
    server = serve(header_timeout="1")
    with held(open_sockets(server, 3)) as half, held(open_sockets(server, 2, b"")) as silent:
        trickle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        opened = time.monotonic()
        # A slowloris: a byte now and then does not keep the connection.
        for byte in HALF_SENT[:8]:
            trickle.sendall(bytes([byte]))
            time.sleep(0.1)
        for s in [*half, *silent, trickle]:
            got = closed_by_server(s, 5)
            assert got is not None, "still open after the header timeout"
            assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
            assert b'"status":408' in got
        assert time.monotonic() - opened < 1 + 5
        trickle.close()
    assert dashboard_request(server).status_code == 200


def test_a_whole_request_is_not_cut_by_the_header_timeout(
    serve: Callable[..., ServerProcess],
) -> None:
    """The timer stops at the end of the headers; the next request starts it again."""
    server = serve(header_timeout="1")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for _ in range(3):
            assert c.get("/api/runs").status_code == 200
            time.sleep(0.6)  # idle, under the 5 s keep-alive: the same connection
        assert c.get("/api/runs").status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    serve: Callable[..., ServerProcess],
) -> None:
    server = serve()
    with held(open_sockets(server, 1, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")) as (s,):
        got = closed_by_server(s, 5 + 3)
        assert got is not None and got.startswith(b"HTTP/1.1 200 OK\r\n"), got


def live_socket(server: ServerProcess) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{server.port}/ws/live", open_timeout=5,
                   additional_headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip


def test_over_the_connection_cap_a_new_connection_is_refused_with_503_and_retry_after(
    serve: Callable[..., ServerProcess],
) -> None:
    """Every connection shows the token, so none can be closed to make room."""
    server = serve(max_connections="12", max_anonymous_connections="4")
    server.client.close()  # its keep-alive connection would be one of the 12
    with contextlib.ExitStack() as stack:
        dashboards = [stack.enter_context(live_socket(server)) for _ in range(12)]
        with held(open_sockets(server, 1, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")) as (s,):
            got = closed_by_server(s, 5)
        assert got is not None and got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), got
        assert b"\r\nretry-after: 2\r\n" in got
        body = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert body == {"error": {"status": 503, "message": "The server has its maximum of 12 "
                                  "connections open; retry in 2 s."}}  # fmt: skip
        dashboards.pop().close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if dashboard_request(server).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("no room after a connection closed")


def test_anonymous_sockets_make_room_for_a_known_client_at_the_cap(
    serve: Callable[..., ServerProcess],
) -> None:
    server = serve(max_connections="30", max_anonymous_connections="10")
    server.client.close()
    with contextlib.ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(live_socket(server))
        with held(open_sockets(server, 10, b"")) as idle:
            assert trainer_session(server) == 1  # the oldest idle socket made room
            closed = [s for s in idle if closed_by_server(s, 0.5) is not None]
            assert closed == idle[:1]


def test_forwarded_headers_are_ignored_unless_a_proxy_is_configured(
    serve: Callable[..., ServerProcess],
) -> None:
    """Loopback is not a proxy: a forged peer address cannot pass the Host check."""
    server = serve()
    forged = {"X-Forwarded-For": "testclient", "X-Forwarded-Proto": "https", "Host": "testserver",
              "Authorization": f"Bearer {TOKEN}"}  # fmt: skip
    answer = httpx.get(f"{server.url}/api/runs", headers=forged, timeout=5)
    assert answer.status_code == 400, answer.text
    assert "DNS rebinding" in answer.json()["error"]["message"]


OPEN_FILES = """
import resource, sys
sys.path.insert(0, {root!r})
from server.connections import open_file_room
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
print(open_file_room(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    ("soft", "hard", "room", "raised_to"),
    [(256, 4096, 1000, 1064), (256, 512, 448, 512)],
    ids=["raised", "capped-by-the-hard-limit"],
)
def test_the_connection_cap_stays_below_the_open_file_limit(
    soft: int, hard: int, room: int, raised_to: int
) -> None:
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("the hard open-file limit is too low here")
    code = OPEN_FILES.format(root=str(ROOT), soft=soft, hard=hard)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    assert out.stdout.split() == [str(room), str(raised_to)], out.stderr


def test_settings_reach_uvicorn(tmp_path: Any) -> None:
    from server import Settings
    from server.connections import FitdeckH11Protocol
    from server.runner import uvicorn_config

    settings = Settings(db=tmp_path / "c.db", token=TOKEN, max_connections=50,
                        max_anonymous_connections=9, header_timeout=3.5,
                        keep_alive_timeout=2.5)  # fmt: skip
    config = uvicorn_config(settings)
    assert config.timeout_keep_alive == 2.5 and config.proxy_headers is False
    protocol = config.http
    assert isinstance(protocol, type) and issubclass(protocol, FitdeckH11Protocol)
    doorman = protocol.doorman
    assert (doorman.max_connections, doorman.max_anonymous, doorman.header_timeout) == (50, 9, 3.5)
    trusted = uvicorn_config(Settings(db=tmp_path / "c.db", token=TOKEN,
                                      forwarded_allow_ips=("10.0.0.1",)))  # fmt: skip
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == ["10.0.0.1"]


def test_a_refused_path_cannot_forge_a_log_line(serve: Callable[..., ServerProcess]) -> None:
    """`%0A` in a refused WebSocket's path is logged as `\\x0a`, on the same line."""
    server = serve()
    with held(open_sockets(server, 1, (
        b"GET /ws/train%0AINFO%20fitdeck.guard:%20forged HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ))):  # fmt: skip
        server.wait_for(lambda: "refused a WebSocket" in server.log_path.read_text(),
                        timeout=5, what="the refusal in the log")  # fmt: skip
    lines = server.log_path.read_text().splitlines()
    assert not any(line.startswith("INFO fitdeck.guard: forged") for line in lines), lines
    # The path stays on the refusal's own line, its newline written escaped.
    assert any(
        line.startswith("INFO fitdeck.guard: refused a WebSocket on /ws/train\\")
        and "INFO fitdeck.guard: forged" in line
        for line in lines
    ), lines


def test_the_log_filter_escapes_arguments_but_keeps_its_own_newlines() -> None:
    import logging

    from server.runner import EscapeControlCharacters

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\n%s %d %s", ("p\r\nq",
                               3, ValueError("v\x1b[2J")), None)  # fmt: skip
    assert EscapeControlCharacters().filter(record)
    assert record.getMessage() == "a\np\\x0d\\x0aq 3 v\\x1b[2J"
