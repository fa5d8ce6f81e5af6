"""server.guard: the token bucket, and the ASGI Guard driven directly with ASGI messages."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from server import guard as guard_mod
from server.guard import SECURITY_HEADERS, Guard, TokenBucket
from server.protocol import Close
from server.settings import Settings

HOST = ("host", "127.0.0.1:8000")


# -- token bucket ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1024.0  # and steps of binary fractions: exact arithmetic

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """server.guard's own clock, set by hand (the real `time` module is left alone)."""
    c = Clock()
    monkeypatch.setattr(guard_mod, "time", SimpleNamespace(monotonic=c))
    return c


def takes(bucket: TokenBucket, n: int) -> list[bool]:
    return [bucket.take() for _ in range(n)]


def test_bucket_allows_a_burst_then_refuses(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert takes(bucket, 7) == [True] * 5 + [False] * 2


def test_bucket_refills_at_its_rate(clock: Clock) -> None:
    bucket = TokenBucket(rate=8, burst=5)
    takes(bucket, 5)
    clock.now += 0.3125  # 2.5 tokens
    assert takes(bucket, 3) == [True, True, False]
    clock.now += 0.0625  # the half token left plus half a token
    assert takes(bucket, 2) == [True, False]


def test_bucket_never_saves_more_than_its_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=100, burst=3)
    clock.now += 3600
    assert takes(bucket, 5) == [True] * 3 + [False] * 2


def test_bucket_at_a_steady_rate_never_refuses(clock: Clock) -> None:
    bucket = TokenBucket(rate=64, burst=1)
    for _ in range(200):
        clock.now += 1 / 64
        assert bucket.take()


@pytest.mark.parametrize("burst", [0, -3])
def test_bucket_burst_is_at_least_one(clock: Clock, burst: int) -> None:
    bucket = TokenBucket(rate=1, burst=burst)
    assert takes(bucket, 2) == [True, False]


def test_refused_takes_do_not_spend_tokens(clock: Clock) -> None:
    bucket = TokenBucket(rate=1, burst=1)
    bucket.take()
    for _ in range(100):
        assert not bucket.take()
    clock.now += 1.0
    assert bucket.take()


# -- the Guard, over raw ASGI -----------------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: reads the whole body and answers its length. WebSocket: echoes text frames."""
    if scope["type"] == "http":
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps({"n": len(body)}).encode()})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message["text"]})


def make_guard(token: str | None = None, **settings: Any) -> Guard:
    return Guard(echo_app, Settings(**settings), token)


def http(
    guard: Guard,
    method: str = "GET",
    path: str = "/x",
    headers: list[tuple[str, str]] | None = None,
    chunks: tuple[bytes, ...] = (b"",),
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> tuple[int, dict[str, str], Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [
            (k.encode(), v.encode()) for k, v in (headers if headers is not None else [HOST])
        ],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    inbox = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    head = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], head, json.loads(body)


def assert_security_headers(headers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, name


def test_an_allowed_request_passes_with_the_security_headers() -> None:
    status, headers, body = http(make_guard(), "POST", chunks=(b"abc", b"de"))
    assert (status, body) == (200, {"n": 5})
    assert_security_headers(headers)


def test_a_declared_body_over_the_limit_is_413_before_the_app_runs() -> None:
    guard = make_guard(max_message_bytes=10)
    status, headers, body = http(guard, "POST", headers=[HOST, ("content-length", "11")])
    assert status == 413
    assert body == {
        "error": {"status": 413, "message": "The request body is over the limit of 10 bytes."}
    }
    assert_security_headers(headers)


@pytest.mark.parametrize("length", ["-1", "1e3", "ten", " 5", "0x5"])
def test_a_malformed_content_length_is_413(length: str) -> None:
    status, _, body = http(make_guard(), "POST", headers=[HOST, ("content-length", length)])
    assert status == 413 and body["error"]["status"] == 413


def test_an_undeclared_body_over_the_limit_is_413_once_read() -> None:
    guard = make_guard(max_message_bytes=10)
    assert http(guard, "POST", chunks=(b"x" * 6, b"x" * 4))[0] == 200
    status, headers, body = http(guard, "POST", chunks=(b"x" * 6, b"x" * 5))
    assert status == 413
    assert body["error"]["message"] == "The request body is over the limit of 10 bytes."
    assert_security_headers(headers)


@pytest.mark.parametrize(
    "host", ["evil.test", "localhost.evil.test", "127.0.0.1.nip.io", "", "127.0.0.1:80x"]
)
def test_a_foreign_host_is_400_naming_the_fix(host: str) -> None:
    status, headers, body = http(make_guard(), headers=[("host", host)])
    assert status == 400
    assert "DNS rebinding" in body["error"]["message"]
    assert "FITDECK_ALLOWED_HOSTS" in body["error"]["message"]
    assert_security_headers(headers)


def test_a_missing_host_header_is_400() -> None:
    assert http(make_guard(), headers=[])[0] == 400


def test_health_answers_any_host() -> None:
    assert http(make_guard(), path="/api/health", headers=[("host", "probe.internal")])[0] == 200


def test_an_allowed_host_passes() -> None:
    guard = make_guard(allowed_hosts=("deck.example.org",))
    assert http(guard, headers=[("host", "DECK.example.org:443")])[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_cross_origin_state_change_is_403(method: str) -> None:
    status, headers, body = http(
        make_guard(), method, headers=[HOST, ("origin", "http://evil.test")]
    )
    assert status == 403
    assert "Origin 'http://evil.test' is not this server" in body["error"]["message"]
    assert_security_headers(headers)


def test_a_cross_origin_read_is_allowed() -> None:
    """Reads are the browser's same-origin policy's business, not a state change."""
    assert http(make_guard(), "GET", headers=[HOST, ("origin", "http://evil.test")])[0] == 200


def test_a_same_origin_state_change_passes() -> None:
    headers = [HOST, ("origin", "http://127.0.0.1:8000")]
    assert http(make_guard(), "POST", headers=headers)[0] == 200


def test_an_app_crash_is_a_500_with_the_headers_and_still_raises() -> None:
    guard = make_guard()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/boom",
        "headers": [(b"host", b"localhost")],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(guard(scope, receive, send))
    start = sent[0]
    assert start["status"] == 500
    assert dict(start["headers"])[b"x-frame-options"] == b"DENY"


# -- WebSockets -----------------------------------------------------------------------------


def websocket(
    guard: Guard, frames: int = 0, headers: list[tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    scope = {
        "type": "websocket",
        "path": "/ws/train",
        "raw_path": b"/ws/train",
        "query_string": b"",
        "root_path": "",
        "scheme": "ws",
        "http_version": "1.1",
        "subprotocols": [],
        "headers": [
            (k.encode(), v.encode()) for k, v in (headers if headers is not None else [HOST])
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    inbox += [{"type": "websocket.receive", "text": f"frame {i}"} for i in range(frames)]
    inbox.append({"type": "websocket.disconnect", "code": 1000})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def test_websocket_frames_within_the_rate_pass() -> None:
    sent = websocket(make_guard(), frames=5)
    assert [m.get("text") for m in sent[1:]] == [f"frame {i}" for i in range(5)]


@pytest.mark.parametrize(
    ("guard_kwargs", "headers", "reason"),
    [
        ({}, [("host", "evil.test")], "Host not allowed."),
        ({}, [HOST, ("origin", "http://evil.test")], "Origin not allowed."),
        ({}, [HOST, ("origin", "null")], "Origin not allowed."),
        ({"token": "tok"}, [HOST], "Missing or wrong token."),
        ({"token": "tok"}, [HOST, ("authorization", "Bearer nope")], "Missing or wrong token."),
    ],
)
def test_a_refused_websocket_is_accepted_then_closed_with_1008_before_any_data(
    guard_kwargs: dict[str, Any], headers: list[tuple[str, str]], reason: str
) -> None:
    sent = websocket(make_guard(**guard_kwargs), frames=3, headers=headers)
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": Close.POLICY, "reason": reason},
    ]


def test_a_websocket_with_the_token_passes() -> None:
    headers = [HOST, ("authorization", "Bearer tok"), ("origin", "http://127.0.0.1:8000")]
    sent = websocket(make_guard("tok"), frames=1, headers=headers)
    assert sent[-1] == {"type": "websocket.send", "text": "frame 0"}


def test_a_flooding_websocket_is_closed_for_the_rate_limit_and_then_silent() -> None:
    guard = make_guard(max_frames_per_second=0.001, max_frame_burst=3)
    sent = websocket(guard, frames=10)
    assert sent[0] == {"type": "websocket.accept"}
    assert [m["text"] for m in sent[1:4]] == ["frame 0", "frame 1", "frame 2"]
    assert sent[4] == {
        "type": "websocket.close",
        "code": Close.POLICY,
        "reason": "rate limit: 0.001 frames/s",
    }
    assert len(sent) == 5  # nothing is sent after the close


# -- no test-only exemption; logs that cannot be forged -------------------------------------


def test_starlettes_test_client_gets_no_host_exemption() -> None:
    """What TestClient sends by default (or a forwarded `testclient` peer) is a foreign Host."""
    status, _, body = http(make_guard(), headers=[("host", "testserver")], client=("testclient", 1))
    assert status == 400 and "DNS rebinding" in body["error"]["message"]


def test_a_refused_path_is_logged_with_control_characters_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = "/x\nINFO fitdeck.auth: token accepted\r\x1b[2K"
    with caplog.at_level("INFO", logger="fitdeck.guard"):
        status, _, _ = http(make_guard(), path=forged, headers=[("host", "evil.test")])
    assert status == 400
    [line] = [r.getMessage() for r in caplog.records if r.name == "fitdeck.guard"]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/x\\nINFO fitdeck.auth: token accepted\\r\\x1b[2K" in line


def test_log_safe_keeps_printable_text_and_caps_its_length() -> None:
    assert guard_mod.log_safe("/api/runs/é") == "/api/runs/é"
    assert guard_mod.log_safe("\udcff\u2028") == "\\udcff\\u2028"
    assert len(guard_mod.log_safe("a" * 1000)) == 201
