"""Locked by default (issue 4): token, Origin, Host, input caps, text-only names, headers.

Almost everything runs against a real server (`python -m server serve` or
uvicorn in a thread), spoken to with httpx and the `websockets` sync client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from server import Settings, create_app
from server.auth import allowed_hosts, token_path
from server.cli import build_parser, settings_from_args, warn_if_open
from server.runner import uvicorn_config
from tests.conftest import ROOT, ServerProcess, free_port, local_client

if TYPE_CHECKING:
    from tests.browser import Dashboard


FOREIGN = "http://evil.test"
LOOK_ALIKE = "http://localhost.evil.test"
PAYLOADS = {
    "script": "<script>window.__pwned = 'name'</script>",
    "img": '"><img src=x onerror="window.__pwned = \'project\'">',
    "rtl": "\u202eevil\u202c \u200f\u05e9\u05dc\u05d5\u05dd",
    "emoji": "🔥 run 👩🏽‍💻 ✓",
}

# -- helpers -------------------------------------------------------------------


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def open_ws(
    server: ServerProcess,
    path: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    host: str | None = None,
) -> ClientConnection:
    """A WebSocket to `path`, as a script (no Origin) unless `origin` is given.

    `host` connects to the server but sends that name in the Host header.
    """
    url = ws_url(server, path)
    sock = None
    if host is not None:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        url = f"ws://{host}{path}"
    ws = connect(
        url,
        sock=sock,
        additional_headers=auth(token),
        origin=origin,  # type: ignore[arg-type]
        open_timeout=5,
        max_size=None,
        max_queue=None,
    )
    # Entered at once (websockets >= 17.1 warns about connections that are not).
    return ws.__enter__()


def refused(ws: ClientConnection) -> tuple[int, str]:
    """The close code and reason of a connection that must get no data first."""
    with ws:
        try:
            frame = ws.recv(timeout=5)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason
    pytest.fail(f"data flowed before the close: {frame!r}")


def closed(ws: ClientConnection, timeout: float = 5) -> tuple[int, str]:
    """Read (and drop) frames until the server closes; its code and reason."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason
    except TimeoutError:
        pass
    pytest.fail("the server did not close the connection")


def trainer(server: ServerProcess, run_id: str | None = None) -> tuple[ClientConnection, str]:
    run_id = run_id or uuid.uuid4().hex
    ws = open_ws(server, "/ws/train", token=server.token)
    ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
    assert json.loads(ws.recv(timeout=5))["type"] == "welcome"
    return ws, run_id


def run_start(seq: int = 1, **fields: Any) -> dict[str, Any]:
    record = {"seq": seq, "type": "run_start", "t": 1.0, "name": "run", "project": "sec",
              "params": {}, "meta": {"epochs": 1}}  # fmt: skip
    return {**record, **fields}


def batch(seq: int, step: int, **logs: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "batch", "t": 1.0 + step, "step": step, "epoch": 0.0, "logs": logs}


def records(*recs: dict[str, Any]) -> str:
    return json.dumps({"type": "records", "records": list(recs)})


def reply(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=5))
    return message


def started_run(server: ServerProcess, **fields: Any) -> tuple[ClientConnection, str]:
    """A connected trainer whose run exists (status `running`)."""
    ws, run_id = trainer(server)
    ws.send(records(run_start(**fields)))
    assert reply(ws) == {"type": "ack", "seq": 1}
    return ws, run_id


def live(server: ServerProcess, **kwargs: Any) -> ClientConnection:
    ws = open_ws(server, "/ws/live", token=server.token, **kwargs)
    assert reply(ws)["type"] == "hello"
    return ws


def live_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = reply(ws)
        if predicate(message):
            return message
    pytest.fail("the awaited live message never came")


def flood(ws: ClientConnection, frame: str, most: int = 100_000) -> int:
    """Send `frame` as fast as possible until the server closes; how many went out."""
    for sent in range(most):
        try:
            ws.send(frame)
        except ConnectionClosed:
            return sent
    return most


@pytest.fixture
def threaded_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """uvicorn in a thread with Settings no flag reaches (small rate limits)."""
    servers: list[uvicorn.Server] = []
    threads: list[threading.Thread] = []
    procs: list[ServerProcess] = []

    def start(**fields: Any) -> ServerProcess:
        token = secrets.token_hex(16)
        port = free_port()
        settings = Settings(db=tmp_path / f"t{port}.db", port=port, token=token, **fields)
        srv = uvicorn.Server(uvicorn_config(settings))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        servers.append(srv)
        threads.append(thread)
        procs.append(ServerProcess(db_path=settings.db, token=token, port=port))
        return procs[-1]

    yield start
    for proc in procs:
        proc.client.close()
    for srv in servers:
        srv.should_exit = True
    for thread in threads:
        thread.join(10)


# -- token on by default -----------------------------------------------------


def serve(db: Path, *args: str, wait_for: str = "open http") -> tuple[subprocess.Popen[str], str]:
    """`python -m server serve` as a user runs it: no --token; what it prints first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITDECK_")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--db", str(db), *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    out = ""
    deadline = time.monotonic() + 30
    try:
        while wait_for not in out:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"server exited: {out}"
            assert time.monotonic() < deadline, f"no {wait_for!r} in {out}"
            out += line
        base = f"http://127.0.0.1:{port}"
        while True:  # the URL is printed just before uvicorn listens
            try:
                if httpx.get(base + "/api/health").status_code == 200:
                    return proc, out
            except httpx.ConnectError:
                assert time.monotonic() < deadline, f"{base} never became healthy"
                time.sleep(0.05)
    except BaseException:
        stop(proc)  # never leave a server behind
        raise


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.mark.slow
def test_serve_without_a_token_makes_one_keeps_it_and_prints_the_url(tmp_path: Path) -> None:
    db = tmp_path / "fitdeck.db"
    proc, out = serve(db)
    try:
        path = token_path(db)
        assert path == tmp_path / "fitdeck.db.token"
        token = path.read_text().strip()
        assert len(token) >= 32
        assert path.stat().st_mode & 0o777 == 0o600
        url = re.search(r"open (http://\S+)", out)
        assert url and url.group(1).endswith(f"/?token={token}"), out
        base = url.group(1).split("/?")[0]
        assert httpx.get(base + "/api/runs").status_code == 401
        assert httpx.get(base + "/api/runs", headers=auth(token)).status_code == 200
    finally:
        stop(proc)

    # A restart keeps the token: a reconnecting trainer still gets in.
    proc, out = serve(db)
    try:
        assert token_path(db).read_text().strip() == token
        assert f"?token={token}" in out
        port = int(re.search(r"127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        srv = ServerProcess(db_path=db, token=token, port=port)
        ws, _ = trainer(srv)
        ws.close()
        srv.client.close()
    finally:
        stop(proc)


@pytest.mark.slow
def test_no_auth_is_explicit_and_warns_louder_beyond_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc, out = serve(tmp_path / "open.db", "--no-auth")
    try:
        assert "auth is OFF (--no-auth)" in out
        assert "?token=" not in out
        assert not token_path(tmp_path / "open.db").exists()
    finally:
        stop(proc)
    # Louder beyond loopback (checked in-process: a test opens no port to the network).
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--no-auth"])
    with caplog.at_level(logging.WARNING, logger="fitdeck"):
        warn_if_open(settings_from_args(args))
    assert "ANYONE WHO CAN REACH THIS PORT" in caplog.text
    assert "!" * 40 in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fitdeck"):
        warn_if_open(settings_from_args(build_parser().parse_args(["serve"])))
    assert caplog.text == ""  # auth on: nothing to warn about


# -- every route and both WebSockets need the token --------------------------


def api_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every /api route and method, from the app's own OpenAPI schema."""
    app = create_app(Settings(db=tmp_path / "routes.db", auth=False))
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/api/")
        for method in operations
    ]


@pytest.mark.slow
def test_every_api_route_but_health_needs_the_token(server: ServerProcess, tmp_path: Path) -> None:
    ws, run_id = started_run(server)
    ws.close()
    routes = api_routes(tmp_path)
    assert ("POST", "/api/runs/{run_id}/commands") in routes
    for method, path in routes:
        url = server.url + path.replace("{run_id}", run_id)
        body = {"kind": "stop"} if method != "GET" else None
        if path == "/api/health":
            assert httpx.request(method, url).status_code == 200
            continue
        if path == "/api/logout":  # clears the cookie, carries nothing: open (see test_docs)
            assert httpx.request(method, url).status_code == 204
            continue
        for headers in ({}, auth("wrong-" + server.token), {"Cookie": "fitdeck_token=wrong"}):  # type: ignore[operator]
            response = httpx.request(method, url, headers=headers, json=body)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "token" in response.json()["error"]["message"]
    # ... and the right token opens them (the run survives: only reads are replayed).
    assert httpx.get(f"{server.url}/api/runs/{run_id}", headers=auth(server.token)).is_success


@pytest.mark.parametrize("path", ["/ws/train", "/ws/live"])
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_websockets_without_the_right_token_are_closed_before_any_data(
    server: ServerProcess, path: str, token: str | None
) -> None:
    code, reason = refused(open_ws(server, path, token=token))
    assert (code, reason) == (1008, "Missing or wrong token.")


def test_tokens_are_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bearer header, cookie, `/?token=` login and WebSockets all go through hmac.compare_digest."""
    import hmac

    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = secrets.token_hex(16)
    with local_client(create_app(Settings(db=tmp_path / "t.db", token=token))) as c:
        c.get("/api/runs", headers={"Authorization": "Bearer by-header"})
        c.get("/api/runs", headers={"Cookie": "fitdeck_token=by-cookie"})
        c.get("/?token=by-login", follow_redirects=False)
        ws_headers = {"Authorization": "Bearer by-ws"}
        with (
            c.websocket_connect("/ws/live", headers=ws_headers) as ws,
            pytest.raises(WebSocketDisconnect),
        ):
            ws.receive_text()
    assert {b"by-header", b"by-cookie", b"by-login", b"by-ws"} <= set(calls)


# -- browser login and cross-site requests -----------------------------------


def test_browser_login_sets_a_strict_httponly_cookie_and_drops_the_token(
    server: ServerProcess,
) -> None:
    with httpx.Client(base_url=server.url) as browser:
        response = browser.get(f"/?token={server.token}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"fitdeck_token={server.token};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert browser.get("/api/runs").status_code == 200  # the cookie opens the API
        wrong = httpx.get(f"{server.url}/?token=wrong", follow_redirects=False)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers


@pytest.mark.parametrize("origin", [FOREIGN, "null", LOOK_ALIKE, "http://127.0.0.1.evil.test"])
def test_cross_site_state_changes_are_refused_even_with_the_cookie(
    server: ServerProcess, origin: str
) -> None:
    ws, run_id = started_run(server)
    cookie = {"Cookie": f"fitdeck_token={server.token}"}
    try:
        for method, path, body in [
            ("POST", f"/api/runs/{run_id}/commands", {"kind": "stop"}),
            ("PATCH", f"/api/runs/{run_id}", {"name": "renamed"}),
            ("DELETE", f"/api/runs/{run_id}", None),
        ]:
            response = httpx.request(
                method, server.url + path, json=body, headers={**cookie, "Origin": origin}
            )
            assert response.status_code == 403, (method, response.text)
            assert "Cross-origin request refused" in response.json()["error"]["message"]
        assert server.client.get(f"/api/runs/{run_id}/commands").json()["commands"] == []
        # The dashboard's own origin goes through.
        same = httpx.post(
            f"{server.url}/api/runs/{run_id}/commands",
            json={"kind": "stop"},
            headers={**cookie, "Origin": server.url},
        )
        assert same.status_code == 202
    finally:
        ws.close()


# -- WebSocket Origin and Host ------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/train", "/ws/live"])
@pytest.mark.parametrize("origin", [FOREIGN, "null", LOOK_ALIKE, "https://localhost.evil.test"])
def test_websocket_from_a_foreign_origin_is_refused_even_with_the_token(
    server: ServerProcess, path: str, origin: str
) -> None:
    ws = open_ws(server, path, token=server.token, origin=origin)
    assert refused(ws) == (1008, "Origin not allowed.")


def test_websocket_from_the_servers_own_origin_or_a_script_gets_in(server: ServerProcess) -> None:
    live(server, origin=server.url).close()
    live(server).close()  # no Origin: the Python callback, with the token
    # A look-alike port is another origin.
    other = server.url.rsplit(":", 1)[0] + f":{server.port + 1}"
    assert refused(open_ws(server, "/ws/live", token=server.token, origin=other))[0] == 1008


@pytest.mark.parametrize("host", ["evil.test", "localhost.evil.test", "127.0.0.1.nip.io"])
def test_rebinding_host_is_refused_over_http_and_websocket(
    server: ServerProcess, host: str
) -> None:
    name = f"{host}:{server.port}"
    response = server.client.get("/api/runs", headers={"Host": name})
    assert response.status_code == 400
    assert "DNS rebinding" in response.json()["error"]["message"]
    assert server.client.get("/", headers={"Host": name}).status_code == 400
    # A health probe may use any name.
    assert server.client.get("/api/health", headers={"Host": name}).status_code == 200
    for path in ("/ws/train", "/ws/live"):
        ws = open_ws(server, path, token=server.token, host=name)
        assert refused(ws) == (1008, "Host not allowed.")


def test_loopback_names_are_allowed_hosts(server: ServerProcess) -> None:
    for host in ("localhost", "127.0.0.1", "[::1]", "LOCALHOST"):
        name = f"{host}:{server.port}"
        assert server.client.get("/api/runs", headers={"Host": name}).status_code == 200, host
        live(server, host=name, origin=f"http://{name}").close()


@pytest.mark.slow
def test_allowed_hosts_by_flag_and_environment(
    make_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITDECK_ALLOWED_HOSTS", "env.example, other.example")
    srv = make_server(token=secrets.token_hex(16))
    for host, status in [("env.example", 200), ("other.example", 200), ("flag.example", 400)]:
        assert srv.client.get("/api/runs", headers={"Host": host}).status_code == status, host
    srv.stop()
    monkeypatch.delenv("FITDECK_ALLOWED_HOSTS")
    srv = make_server(
        token=secrets.token_hex(16),
        extra_args=["--allowed-host", "flag.example", "--allowed-host", "gpu.lan"],
    )
    for host, status in [("flag.example", 200), ("gpu.lan:8000", 200), ("env.example", 400)]:
        assert srv.client.get("/api/runs", headers={"Host": host}).status_code == status, host
    live(srv, host=f"gpu.lan:{srv.port}", origin=f"http://gpu.lan:{srv.port}").close()


def test_default_allowed_hosts_follow_the_bind_address() -> None:
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(Settings()) == loopback
    # The Docker image binds 0.0.0.0 and is reached as localhost/127.0.0.1.
    assert allowed_hosts(Settings(host="0.0.0.0")) == loopback
    assert allowed_hosts(Settings(host="::")) == loopback
    assert allowed_hosts(Settings(host="10.1.2.3")) == {*loopback, "10.1.2.3"}
    assert allowed_hosts(Settings(allowed_hosts=("Gpu.Lan",))) == {*loopback, "gpu.lan"}
    assert allowed_hosts(Settings(allowed_hosts=("*",))) is None


# -- loopback bind --------------------------------------------------------------


def test_the_server_binds_loopback_by_default() -> None:
    assert Settings().host == "127.0.0.1"
    assert settings_from_args(build_parser().parse_args(["serve"])).host == "127.0.0.1"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r'^\s*- "127\.0\.0\.1:8000:8000"$', compose, re.M)


# -- bad input: specific errors, nothing harmed ---------------------------------


def test_train_bad_frames_get_specific_errors(server: ServerProcess) -> None:
    cases: list[tuple[str | bytes, tuple[int, str] | dict[str, Any]]] = [
        ("{not json", (1008, "Frame is not valid JSON")),
        (b"\x00\x01binary", (1003, "Binary frames are not supported; send JSON text.")),
        (
            json.dumps({"type": "bogus"}),
            {"type": "error", "message": "Unknown frame type 'bogus'."},
        ),
        (json.dumps([1, 2]), {"type": "error", "message": "Unknown frame type 'list'."}),
        (
            json.dumps({"type": "records", "records": 5}),
            {"type": "error", "message": "'records' must be a list."},
        ),
        ("x" * ((1 << 20) + 1), (1009, "")),
        (
            '{"type": "records", "records": [{"seq": 1, "type": "batch", "t": NaN}]}',
            (1008, "Frame is not valid JSON: bare NaN is not JSON"),
        ),
    ]
    for frame, expected in cases:
        ws, run_id = trainer(server)
        with ws:
            ws.send(frame)
            if isinstance(expected, dict):
                assert reply(ws) == expected, frame
                ws.send(records(run_start(), batch(2, 1, loss=0.5)))  # still usable
                assert reply(ws) == {"type": "ack", "seq": 2}
            else:
                code, reason = closed(ws)
                assert code == expected[0] and reason.startswith(expected[1]), (frame, reason)
                assert server.client.get(f"/api/runs/{run_id}").status_code == 404


def test_train_bad_hello_is_refused(server: ServerProcess) -> None:
    for hello, reason in [
        ({"type": "records", "records": []}, "The first frame must be a hello."),
        (
            {"type": "hello", "protocol": 2, "run_id": "0" * 32},
            "Unsupported protocol 2; this is 1.",
        ),
        (
            {"type": "hello", "protocol": 1, "run_id": "../../etc"},
            "run_id must be 32 lowercase hex",
        ),
        ({"type": "hello", "protocol": 1, "run_id": "😀" * 100}, "run_id must be 32 lowercase hex"),
    ]:
        with open_ws(server, "/ws/train", token=server.token) as ws:
            ws.send(json.dumps(hello))
            code, got = closed(ws)
            assert code == 1008 and got.startswith(reason), got
            assert len(got.encode()) <= 123


def test_train_bad_records_are_refused_one_by_one(server: ServerProcess) -> None:
    ws, run_id = started_run(server)
    too_many = {f"m{i}": 1.0 for i in range(257)}
    cases = [
        (batch(2, 1, **too_many), "Record 2: 257 metrics in one record; the limit is 256."),
        (batch(2, 1, **{"m" * 201: 1.0}), "Record 2: metric name longer than 200 characters"),
        ({**batch(2, 1, loss=1.0), "step": "one"}, "Record 2: 'step' must be an integer from 0"),
        (batch(2, 2**70, loss=1.0), "Record 2: 'step' must be an integer from 0 to 2**63-1"),
        (batch(2, 1, loss="high"), "Record 2: metric 'loss' has value 'high', not a number."),
        ({**batch(2, 1), "logs": [1, 2]}, "Record 2: 'logs' must be an object"),
        ({"seq": 2, "type": "nope", "t": 1.0}, "Record 2: unknown type 'nope'."),
        ({"seq": "2", "type": "batch"}, "A record needs a positive integer 'seq', got '2'."),
    ]
    with ws:
        for record, message in cases:
            ws.send(records(record))
            error = reply(ws)
            assert error["type"] == "error" and error["message"].startswith(message), error
            assert reply(ws)["type"] == "ack"
        ws.send(records(batch(2, 1, loss=0.25)))
        assert reply(ws) == {"type": "ack", "seq": 2}
    series = server.series(run_id, "batch", "loss")
    assert series["value"] == [0.25]
    assert set(server.client.get(f"/api/runs/{run_id}").json()["keys"]["batch"]) == {"loss"}


def test_names_over_the_cap_get_clear_errors(server: ServerProcess) -> None:
    ws, run_id = trainer(server)
    with ws:
        for field in ("name", "project"):
            ws.send(records(run_start(**{field: "n" * 201})))
            assert reply(ws) == {
                "type": "error",
                "message": f"Record 1: '{field}' must be a string of at most 200 characters.",
            }
            reply(ws)  # the ack: the record is refused for good, not resent
    assert server.client.get(f"/api/runs/{run_id}").status_code == 404


def test_live_bad_frames_get_specific_errors(server: ServerProcess) -> None:
    with live(server) as ws:
        ws.send("{nope")
        assert reply(ws)["message"].startswith("Frame is not valid JSON")
        for bad in [{"type": "zap"}, {"type": "subscribe", "run_ids": ["x"]},
                    {"type": "subscribe", "run_ids": ["0" * 32] * 65}, [1]]:  # fmt: skip
            ws.send(json.dumps(bad))
            error = reply(ws)
            assert error["type"] == "error" and "subscribe" in error["message"], bad
        ws.send(json.dumps({"type": "subscribe", "run_ids": []}))
        assert reply(ws)["type"] == "subscribed"  # still usable
    with live(server) as ws:
        ws.send(b"\x00binary")
        assert closed(ws) == (1003, "Binary frames are not supported; send JSON text.")
    with live(server) as ws:
        ws.send("x" * ((1 << 20) + 1))
        assert closed(ws)[0] == 1009


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/ws/train", "/ws/live"])
def test_a_flooding_connection_is_closed_and_others_are_unaffected(
    threaded_server: Callable[..., ServerProcess], path: str
) -> None:
    srv = threaded_server(max_frames_per_second=20.0, max_frame_burst=40)
    good, run_id = started_run(srv)
    watcher = live(srv)
    watcher.send(json.dumps({"type": "subscribe", "run_ids": [run_id]}))
    assert live_until(watcher, lambda m: m["type"] == "subscribed")
    # A polite connection, well within the rate, is never cut.
    for step in range(1, 11):
        good.send(records(batch(step + 1, step, loss=1.0 / step)))
        assert reply(good) == {"type": "ack", "seq": step + 1}
        time.sleep(0.1)

    if path == "/ws/train":
        bad, _ = trainer(srv)
        frame = json.dumps({"type": "bogus"})
    else:
        bad = live(srv)
        frame = json.dumps({"type": "subscribe", "run_ids": []})
    sent = flood(bad, frame)
    assert closed(bad) == (1008, "rate limit: 20 frames/s")
    assert sent < 100_000

    good.send(records(batch(12, 11, loss=0.01)))
    assert reply(good) == {"type": "ack", "seq": 12}
    pushed = live_until(watcher, lambda m: m["type"] == "metrics" and m["points"][-1]["step"] == 11)
    assert pushed["run_id"] == run_id
    good.close()
    watcher.close()
    assert srv.client.get("/api/health").status_code == 200


def test_bad_input_on_one_connection_leaves_other_runs_alone(server: ServerProcess) -> None:
    good, run_id = started_run(server)
    watcher = live(server)
    watcher.send(json.dumps({"type": "subscribe", "run_ids": [run_id]}))
    live_until(watcher, lambda m: m["type"] == "subscribed")
    for frame in ["{bad", b"\xff", "x" * ((1 << 20) + 1), "[NaN]"]:
        bad, _ = trainer(server)
        bad.send(frame)
        closed(bad)
        broken = live(server)
        broken.send(b"\x00")
        closed(broken)
    good.send(records(batch(2, 1, loss=0.5)))
    assert reply(good) == {"type": "ack", "seq": 2}
    live_until(watcher, lambda m: m["type"] == "metrics" and m["run_id"] == run_id)
    assert server.run(run_id)["status"] == "running"
    good.close()
    watcher.close()


def test_commands_are_validated_against_the_real_server(server: ServerProcess) -> None:
    ws, run_id = started_run(server)
    post = server.client.post
    url = f"/api/runs/{run_id}/commands"
    with ws:
        for body, message in [
            (
                {"kind": "explode"},
                "Bad value for body.kind: Input should be 'stop', 'set_lr', 'checkpoint',"
                " 'pause', 'resume' or 'set'.",
            ),
            ({"kind": "set_lr"}, "Bad value for body.lr: Field required."),
            (
                {"kind": "set_lr", "lr": "0.1"},
                "Bad value for body.lr: Input should be a valid number.",
            ),
            (
                {"kind": "set_lr", "lr": True},
                "Bad value for body.lr: Input should be a valid number.",
            ),
            ({"kind": "set_lr", "lr": 0}, "Bad value for body.lr: Input should be greater than 0."),
            (
                {"kind": "set_lr", "lr": -1e-3},
                "Bad value for body.lr: Input should be greater than 0.",
            ),
            ([1, 2], "Bad value for body: Input should be a JSON object"),
        ]:
            response = post(url, json=body)
            assert response.status_code == 400, body
            assert response.json()["error"]["message"].startswith(message), response.text
        huge = post(url, content=b'{"kind": "set_lr", "lr": 1e400}')
        assert huge.status_code == 400
        assert "Input should be a finite number" in huge.json()["error"]["message"]
        not_json = post(url, content=b"{kind: stop}")
        assert not_json.status_code == 400
        assert "not valid JSON" in not_json.json()["error"]["message"]
        too_big = post(url, content=b"{" + b" " * (1 << 20) + b"}")
        assert too_big.status_code == 413
        assert "over the limit of 1048576 bytes" in too_big.json()["error"]["message"]
        assert server.commands(run_id) == []  # nothing was stored

        assert post(f"/api/runs/{'f' * 32}/commands", json={"kind": "stop"}).status_code == 404
        ws.send(records({"seq": 2, "type": "run_end", "t": 2.0, "status": "finished"}))
        assert reply(ws) == {"type": "ack", "seq": 2}
    server.wait_for(lambda: server.run(run_id)["status"] == "finished", what="finished")
    ended = post(url, json={"kind": "set_lr", "lr": 0.1})
    assert ended.status_code == 409
    assert "has already finished" in ended.json()["error"]["message"]


# -- user strings are text ---------------------------------------------------------


def test_user_strings_round_trip_exactly(server: ServerProcess) -> None:
    big = "<b>" + "x" * 10_000 + "</b>\u202e🔥"
    params = {**PAYLOADS, "big": big, "nested": {"<k>": ["<script>", None, 1.5]}}
    metric = '"><svg onload=alert(1)>'
    ws, run_id = started_run(
        server, name=PAYLOADS["script"], project=PAYLOADS["img"], params=params
    )
    with ws:
        ws.send(records(batch(2, 1, **{metric: 1.0, PAYLOADS["emoji"]: 2.0, PAYLOADS["rtl"]: 3.0})))
        assert reply(ws) == {"type": "ack", "seq": 2}
    got = server.client.get(f"/api/runs/{run_id}").json()
    assert got["run"]["name"] == PAYLOADS["script"]
    assert got["run"]["project"] == PAYLOADS["img"]
    assert got["run"]["params"] == params
    assert set(got["keys"]["batch"]) == {metric, PAYLOADS["emoji"], PAYLOADS["rtl"]}
    assert server.series(run_id, "batch", metric)["value"] == [1.0]
    listed = {r["id"]: r for r in server.client.get("/api/runs").json()["runs"]}
    assert listed[run_id]["name"] == PAYLOADS["script"]
    # JSON, never HTML, and the browser is told not to guess.
    response = server.client.get(f"/api/runs/{run_id}")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_security_headers_on_every_kind_of_response(server: ServerProcess) -> None:
    ws, run_id = started_run(server)
    ws.close()
    c = server.client
    responses = {
        "json": c.get("/api/runs"),
        "health": c.get("/api/health"),
        "401": httpx.get(server.url + "/api/runs"),
        "404": c.get(f"/api/runs/{'e' * 32}"),
        "400": c.get(f"/api/runs/{run_id}/metrics", params={"scope": "nope"}),
        "422->400": c.get(f"/api/runs/{run_id}/metrics", params={"max_points": "many"}),
        "405": c.put("/api/runs"),
        "route 404": c.get("/nowhere"),
        "403 origin": c.post(f"/api/runs/{run_id}/commands", headers={"Origin": FOREIGN}),
        "400 host": c.get("/api/runs", headers={"Host": "evil.test"}),
        "413": c.post(f"/api/runs/{run_id}/commands", content=b"x" * ((1 << 20) + 1)),
        "csv": c.get(f"/api/runs/{run_id}/export.csv"),
        "index": c.get("/"),
        "login redirect": c.get(f"/?token={server.token}", follow_redirects=False),
        "static": c.get("/static/js/main.js"),
        "static 404": c.get("/static/js/nope.js"),
        "plotly": c.get("/static/vendor/plotly.min.js"),
    }
    for what, response in responses.items():
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, what
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], what
        assert response.headers.get("x-content-type-options") == "nosniff", what
        assert response.headers.get("x-frame-options") == "DENY", what
    assert responses["422->400"].status_code == 400
    assert responses["static"].status_code == 200 and responses["plotly"].status_code == 200


@pytest.mark.browser
def test_script_payloads_in_names_show_as_text_and_never_run(
    server: ServerProcess, dashboard: Dashboard
) -> None:
    metric = "<img src=x onerror=\"window.__pwned='metric'\">"
    params = {"note": PAYLOADS["img"], "rtl": PAYLOADS["rtl"], "emoji": PAYLOADS["emoji"]}
    ws, run_id = started_run(
        server, name=PAYLOADS["script"], project=PAYLOADS["img"], params=params
    )
    with ws:
        for step in range(1, 4):
            ws.send(records(batch(step + 1, step, **{metric: 1.0 / step, "loss": 0.5})))
            reply(ws)
        page = dashboard.page
        page.goto(dashboard.url + "/")
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        row.wait_for()
        assert row.locator(".run-link").text_content() == PAYLOADS["script"]
        assert row.locator(".project").text_content() == PAYLOADS["img"]
        dashboard.open_run(run_id)
        page.wait_for_function(
            "name => document.querySelector('#run-name').textContent === name",
            arg=PAYLOADS["script"],
        )
        assert page.title().startswith(PAYLOADS["script"])
        assert page.locator("#run-project").text_content() == PAYLOADS["img"]
        titles = page.evaluate(
            "Array.from(document.querySelectorAll('.chart-card h2'), h => h.textContent)"
        )
        assert metric in titles, titles
        page.wait_for_timeout(500)
        assert page.evaluate("window.__pwned") is None, "a payload ran"
        injected = page.evaluate(
            """() => Array.from(document.querySelectorAll('img, svg, script, iframe'))
                .filter(el => /x|pwned/.test(el.getAttribute('src') || '') ||
                              el.hasAttribute('onerror') || el.hasAttribute('onload') ||
                              (el.tagName === 'SCRIPT' && /pwned/.test(el.textContent)))
                .length"""
        )
        assert injected == 0, "a payload became markup"


# -- forwarded headers -----------------------------------------------------------------------


def forwarded_peer(tmp_path: Path, **settings: Any) -> tuple[Any, str]:
    """The peer and scheme the app sees, through uvicorn's own middleware as `fitdeck serve`
    configures it, for a request from loopback that claims another client."""
    seen: dict[str, Any] = {}

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        seen.update(client=scope["client"], scheme=scope["scheme"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn_config(Settings(db=tmp_path / "t.db", **settings))
    config.app = probe
    config.load()
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/",
             "query_string": b"", "headers": [(b"host", b"127.0.0.1"),
             (b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "scheme": "http",
             "http_version": "1.1", "asgi": {"version": "3.0"}}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    # Its own thread: a module that drives Chromium keeps an event loop running here.
    thread = threading.Thread(target=lambda: asyncio.run(config.loaded_app(scope, receive, send)))
    thread.start()
    thread.join(10)
    return seen["client"], seen["scheme"]


def test_forwarded_headers_from_loopback_are_ignored_by_default(tmp_path: Path) -> None:
    """uvicorn alone would believe X-Forwarded-For from 127.0.0.1."""
    assert forwarded_peer(tmp_path) == (("127.0.0.1", 50000), "http")


def test_forwarded_headers_are_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    client, scheme = forwarded_peer(tmp_path, forwarded_allow_ips=("127.0.0.1",))
    assert client[0] == "203.0.113.9" and scheme == "https"


def test_forwarded_allow_ips_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser().parse_args(["serve", "--forwarded-allow-ips", "10.0.0.1, 10.1.0.0/16"])
    assert settings_from_args(args).forwarded_allow_ips == ("10.0.0.1", "10.1.0.0/16")
    monkeypatch.setenv("FITDECK_FORWARDED_ALLOW_IPS", "192.0.2.7")
    args = build_parser().parse_args(["serve"])
    assert settings_from_args(args).forwarded_allow_ips == ("192.0.2.7",)
    monkeypatch.delenv("FITDECK_FORWARDED_ALLOW_IPS")
    assert settings_from_args(args).forwarded_allow_ips == ()
