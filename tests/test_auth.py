"""server.auth: loopback, Host and Origin checks, and the token (tables, look-alikes included)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import HTTPConnection

from server.auth import (
    COOKIE,
    TokenFileError,
    allowed_hosts,
    host_allowed,
    host_name,
    is_authorized,
    is_loopback,
    origin_allowed,
    origin_matches,
    presented_token,
    resolve_token,
    token_matches,
    token_path,
)
from server.settings import Settings

LOOPBACK_ONLY = allowed_hosts(Settings())


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("0:0:0:0:0:0:0:1", True),
        ("localhost.evil.test", False),
        ("evil.localhost.test", False),
        ("127.0.0.1.nip.io", False),
        ("127.1", False),
        ("0x7f000001", False),
        ("0.0.0.0", False),
        ("::", False),
        ("128.0.0.1", False),
        ("", False),
        ("[]", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8000", "::1"),
        (" deck.lan:80 ", "deck.lan"),
        ("[::1", None),
        ("[::1]8000", None),
        ("[::1]:", None),
        ("[::1]:x", None),
        ("host:", None),
        ("host:80x", None),
        ("a:b:c", None),
        (":80", None),
        ("", None),
    ],
)
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("LOCALHOST", True),
        ("[::1]:8000", True),
        ("127.0.0.2", True),
        ("localhost.evil.test", False),
        ("localhost.evil.test:8000", False),
        ("127.0.0.1.nip.io:8000", False),
        ("evil.test", False),
        ("0.0.0.0:8000", False),
        ("127.0.0.1:8000x", False),
        ("127.0.0.1:80:80", False),
        ("", False),
    ],
)
def test_host_allowed_on_loopback_only(host: str, expected: bool) -> None:
    assert host_allowed({"host": host}, LOOPBACK_ONLY) is expected


def test_host_allowed_without_a_host_header_is_refused() -> None:
    assert not host_allowed({}, LOOPBACK_ONLY)


def test_allowed_hosts_adds_flags_and_the_bound_name_normalised() -> None:
    allowed = allowed_hosts(
        Settings(host="Deck.LAN", allowed_hosts=(" Box.Example.org ", "[fd00::1]", ""))
    )
    assert allowed is not None
    assert {"localhost", "127.0.0.1", "::1", "deck.lan", "box.example.org", "fd00::1"} == allowed
    assert host_allowed({"host": "BOX.example.org:443"}, allowed)
    assert host_allowed({"host": "[fd00::1]:8000"}, allowed)
    assert not host_allowed({"host": "box.example.org.evil.test"}, allowed)


@pytest.mark.parametrize("bound", ["0.0.0.0", "::", "", "*"])
def test_binding_a_wildcard_does_not_allow_the_wildcard_as_a_host(bound: str) -> None:
    allowed = allowed_hosts(Settings(host=bound))
    assert allowed == LOOPBACK_ONLY
    assert not host_allowed({"host": f"{bound}:8000"}, allowed)


def test_a_star_allows_any_host() -> None:
    allowed = allowed_hosts(Settings(allowed_hosts=("deck.lan", "*")))
    assert allowed is None
    assert host_allowed({"host": "anything.evil.test"}, allowed)
    assert host_allowed({}, allowed)


@settings(deadline=None, database=None, max_examples=80)
@given(st.text(max_size=30))
def test_host_allowed_never_raises_and_loopback_only_admits_loopback(host: str) -> None:
    if host_allowed({"host": host}, LOOPBACK_ONLY):
        name = host_name(host)
        assert name is not None and is_loopback(name)


# -- Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "expected"),
    [
        (None, "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://deck.example.org", "deck.example.org", True),
        ("HTTP://LOCALHOST:8000", "localhost:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("null", "127.0.0.1:8000", False),
        ("", "127.0.0.1:8000", False),
        ("http://localhost.evil.test", "localhost", False),
        ("http://localhost.evil.test:8000", "localhost:8000", False),
        ("http://127.0.0.1.nip.io:8000", "127.0.0.1:8000", False),
        ("http://localhost:8000", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False),
        ("http://127.0.0.1", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000/", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000?x", "127.0.0.1:8000", False),
        ("http://u@127.0.0.1:8000", "u@127.0.0.1:8000", False),
        ("ws://127.0.0.1:8000", "127.0.0.1:8000", False),
        ("file://", "", False),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False),
        ("http://127.0.0.1:8000", "", False),
    ],
)
def test_origin_matches(origin: str | None, host: str, expected: bool) -> None:
    assert origin_matches(origin, host) is expected


def conn(*headers: tuple[str, str]) -> HTTPConnection:
    return HTTPConnection(
        {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers]}
    )


def test_origin_allowed_reads_the_request_headers() -> None:
    assert origin_allowed(conn(("host", "localhost:8000")))
    assert origin_allowed(conn(("host", "localhost:8000"), ("origin", "http://localhost:8000")))
    assert not origin_allowed(conn(("host", "localhost:8000"), ("origin", "null")))
    assert not origin_allowed(conn(("origin", "http://localhost:8000")))


@settings(deadline=None, database=None, max_examples=80)
@given(st.text(max_size=40), st.text(max_size=20))
def test_origin_matches_never_raises_and_needs_the_host_in_it(origin: str, host: str) -> None:
    if origin_matches(origin, host):
        assert host.strip() and host.strip().lower() in origin.lower()


# -- the token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_token", "expected"),
    [("tok", True), ("tok ", False), ("TOK", False), ("", False), (None, False), ("tokk", False)],
)
def test_token_matches_exactly(given_token: str | None, expected: bool) -> None:
    assert token_matches(given_token, "tok") is expected


def test_token_matches_non_ascii_without_raising() -> None:
    assert not token_matches("tök", "tok")
    assert token_matches("tök", "tök")


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("authorization", "bearer abc ")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("authorization", "Bearer ")], None),
        ([("cookie", f"{COOKIE}=fromcookie")], "fromcookie"),
        ([("authorization", "Bearer h"), ("cookie", f"{COOKIE}=c")], "h"),
        ([("authorization", "Basic x"), ("cookie", f"{COOKIE}=c")], "c"),
        ([], None),
    ],
)
def test_presented_token(headers: list[tuple[str, str]], token: str | None) -> None:
    assert presented_token(conn(*headers)) == token


def test_is_authorized() -> None:
    assert is_authorized(conn(), None)
    assert not is_authorized(conn(), "tok")
    assert is_authorized(conn(("authorization", "Bearer tok")), "tok")
    assert not is_authorized(conn(("authorization", "Bearer tok2")), "tok")


def test_resolve_token_off_given_and_generated_once(tmp_path: Path) -> None:
    db = tmp_path / "d" / "fitdeck.db"
    assert resolve_token(Settings(db=db, auth=False, token="x")) is None
    assert resolve_token(Settings(db=db, token="given-token")) == "given-token"
    assert not token_path(db).exists()
    made = resolve_token(Settings(db=db))
    assert made is not None and len(made) >= 32
    assert token_path(db).read_text().strip() == made
    assert stat.S_IMODE(token_path(db).stat().st_mode) == 0o600
    assert resolve_token(Settings(db=db)) == made


def test_resolve_token_tightens_a_readable_token_file(tmp_path: Path) -> None:
    db = tmp_path / "fitdeck.db"
    token_path(db).write_text("kept-token\n")
    os.chmod(token_path(db), 0o644)
    assert resolve_token(Settings(db=db)) == "kept-token"
    assert stat.S_IMODE(token_path(db).stat().st_mode) == 0o600


def test_an_empty_token_file_gets_the_token_in_force(tmp_path: Path) -> None:
    db = tmp_path / "fitdeck.db"
    token_path(db).write_text("\n")
    token = resolve_token(Settings(db=db))
    assert token
    assert token_path(db).read_text().strip() == token
    assert resolve_token(Settings(db=db)) == token


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_token_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "fitdeck.db"
    token_path(db).write_text("planted-token\n")
    os.chmod(token_path(db), 0o600)
    os.chown(token_path(db), 65534, 65534)
    with pytest.raises(TokenFileError, match=r"belongs to uid 65534.*Remove it"):
        resolve_token(Settings(db=db))


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_token_file_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    db = tmp_path / "fitdeck.db"
    token_path(db).write_text("planted-token\n")
    os.chmod(token_path(db), mode)
    with pytest.raises(TokenFileError, match=r"may be written by others"):
        resolve_token(Settings(db=db))


def test_the_database_and_its_wal_are_created_private(tmp_path: Path) -> None:
    from server.store import Store

    db = tmp_path / "new" / "fitdeck.db"
    store = Store(db)
    store.open()
    try:
        store.submit(lambda c: c.execute("CREATE TABLE scratch (x)")).result(timeout=10)
        files = sorted(db.parent.glob("fitdeck.db*"))
        assert {f.name for f in files} >= {"fitdeck.db", "fitdeck.db-wal", "fitdeck.db-shm"}
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files
        }
    finally:
        store.close()


def test_an_existing_open_database_is_made_private(tmp_path: Path) -> None:
    from server.store import Store

    db = tmp_path / "fitdeck.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    store = Store(db)
    store.open()
    store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
