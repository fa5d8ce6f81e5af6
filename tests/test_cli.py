"""The `fitdeck` command line: the demo a new user runs first, and its errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.protocol import Rec
from server.spool import Spool
from tests.conftest import ROOT, ServerProcess, free_port, local_client


def clean_env() -> dict[str, str]:
    """This environment without any FITDECK_ variable: what a newcomer has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FITDECK_")}


def fitdeck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env if env is not None else clean_env(),
        timeout=60,
    )


@pytest.mark.slow
def test_demo_trains_into_its_own_server_and_prints_the_dashboard_url(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    runtime = tmp_path / "runtime"
    port = free_port()
    demo = ["demo", "--epochs", "2", "--exit", "--port", str(port), "--db", str(db)]
    env = {**clean_env(), "FITDECK_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", *demo],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    published: list[dict[str, object]] = []
    deadline = time.monotonic() + 180
    while proc.poll() is None and not published and time.monotonic() < deadline:
        for path in runtime.glob("server-*.json"):  # while the demo serves
            with contextlib.suppress(ValueError):
                published.append(json.loads(path.read_text()))
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert proc.returncode == 0, stderr
    token = (tmp_path / "demo.db.token").read_text().strip()
    url_line = f"fitdeck demo: open http://127.0.0.1:{port}/?token={token}"
    assert f"open http://127.0.0.1:{port}/?token={token}" in stderr
    assert "training finished" in stderr
    # The URL comes last and alone: after TensorFlow's start-up lines and a blank
    # line, with nothing between it and the end of training.
    lines = stderr.splitlines()
    at = lines.index(url_line)
    assert lines[at - 1] == "" and lines[at + 1] == "training finished", lines
    # While it served, the demo told this machine's callbacks where; then it cleaned up.
    assert published and published[0]["url"] == f"http://127.0.0.1:{port}"
    assert published[0]["token"] == token and published[0]["pid"] == proc.pid
    assert list(runtime.glob("server-*.json")) == []
    with sqlite3.connect(db) as conn:
        (name, status, step, meta) = conn.execute(
            "SELECT name, status, step, meta FROM runs"
        ).fetchone()
        keys = {k for (k,) in conn.execute("SELECT key FROM series WHERE scope = 'epoch'")}
    assert re.fullmatch(r"spirals-\d{6}", name) and status == "finished"
    assert step == 2 * 75  # 2,400 training points in batches of 32, twice
    assert '"epochs":2' in meta
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= keys


def test_bad_environment_values_are_refused_with_the_variable_named() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"FITDECK_PORT": "eighty", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 2
    assert "FITDECK_PORT must be a port number (0-65535), got 'eighty'." in out.stderr


def test_sync_with_nothing_to_upload_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "sync", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0
    assert "nothing to upload" in out.stderr


# -- errors a newcomer meets ----------------------------------------------------


@pytest.mark.slow
def test_serve_on_a_busy_port_prints_no_url_and_suggests_another(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:  # some other program
        port = busy.getsockname()[1]
        out = fitdeck("serve", "--port", str(port), "--db", str(tmp_path / "f.db"))
    assert out.returncode == 1, out.stderr
    assert "http://" not in out.stderr and "?token=" not in out.stderr
    assert "Traceback" not in out.stderr and "address already in use" not in out.stderr.lower()
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("fitdeck serve:")]
    assert f"port {port} on 127.0.0.1 is busy" in line
    assert re.search(r"Choose another with --port \d+\.$", line), line
    assert not (tmp_path / "f.db").exists()  # nothing started: no database, no token


@pytest.mark.slow
def test_serve_refuses_a_token_file_others_may_write(tmp_path: Path) -> None:
    token = tmp_path / "f.db.token"
    token.write_text("planted\n")
    token.chmod(0o666)
    out = fitdeck("serve", "--port", "0", "--db", str(tmp_path / "f.db"))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "?token=" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("fitdeck serve:")]
    assert f"the token file {token} may be written by others (mode 666)" in line
    assert "Remove it" in line


@pytest.mark.slow
def test_serve_beside_a_running_fitdeck_says_which_one(
    tmp_path: Path, make_server: Callable[..., ServerProcess]
) -> None:
    runtime = {"FITDECK_RUNTIME_DIR": str(tmp_path / "runtime")}
    first = make_server(token="tok", env=runtime)
    out = fitdeck("serve", "--port", str(first.port), "--db", str(tmp_path / "second.db"),
                  env={**clean_env(), **runtime})  # fmt: skip
    assert out.returncode == 1 and "open http" not in out.stderr, out.stderr
    assert f"fitdeck (pid {first.proc.pid}, database {first.db_path}) already serves" in (  # type: ignore[union-attr]
        out.stderr
    )
    assert first.client.get("/api/health").status_code == 200  # and it is left alone


def spool_file(directory: Path, url: str, batches: int = 2) -> Path:
    """What a run left when its server was away: start, batches, end."""
    run_id = "f" * 32
    spool = Spool(directory / f"{run_id}.jsonl", header={"run_id": run_id, "url": url})
    records = [Rec.run_start(1.0, "offline", None, {}, {})]
    records += [
        Rec.metrics("batch", 1.0 + s, s, 0.0, {"loss": 1.0 / s}) for s in range(1, batches + 1)
    ]
    records.append(Rec.run_end(9.0, "finished", None))
    spool.append([{**r, "seq": seq} for seq, r in enumerate(records, 1)])
    return spool.path


def test_sync_with_the_server_down_says_so_at_once(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    path = spool_file(tmp_path, url)
    started = time.monotonic()
    out = fitdeck("sync", str(tmp_path))
    took = time.monotonic() - started
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"fitdeck sync: no server at {url} (connection refused); start it with `fitdeck serve` "
        "or pass --url. 1 spool file (4 records) kept for the next try."
    ]
    assert path.exists()
    assert took < 5, f"sync took {took:.1f} s to give up"  # the interpreter's start-up included


@pytest.mark.slow
def test_sync_takes_the_token_of_the_local_server_it_uploads_to(
    tmp_path: Path, make_server: Callable[..., ServerProcess]
) -> None:
    runtime = {"FITDECK_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = make_server(token="the-servers-token", env=runtime)
    spool_dir = tmp_path / "spool"
    path = spool_file(spool_dir, server.url)
    out = fitdeck("sync", str(spool_dir), "--timeout", "20", env={**clean_env(), **runtime})
    assert out.returncode == 0, out.stderr
    assert "uploaded" in out.stdout and not path.exists()
    assert server.run("f" * 32)["status"] == "finished"


# -- a wrong token in the dashboard link -------------------------------------------------


def test_a_wrong_token_in_the_link_gets_the_sign_in_page_with_a_note(tmp_path: Path) -> None:
    from server import Settings, create_app

    app = create_app(Settings(db=tmp_path / "t.db", token="the-token"))
    with local_client(app) as browser:
        missing = browser.get("/")
        wrong = browser.get("/?token=wrong", follow_redirects=False)
        assert browser.get("/api/runs").status_code == 401  # still not signed in
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert wrong.headers["content-type"].startswith("text/html")
    assert wrong.headers["cache-control"] == "no-store"
    # The same page a browser without the token gets, plus one note.
    note = re.search(r'<p id="wrong-token"[^>]*>(.*?)</p>\n\s*', wrong.text, re.S)
    assert note is not None
    assert "not this server's token" in note.group(1) and "fitdeck serve" in note.group(1)
    assert wrong.text.replace(note.group(0), "") == missing.text


@pytest.mark.browser
def test_a_browser_with_a_wrong_token_is_told_how_to_sign_in(
    chromium: Any,
    server: ServerProcess,
) -> None:
    context = chromium.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"{server.url}/?token=wrong-{server.token}")
        assert response is not None and response.status == 401
        note = page.locator("#wrong-token")
        assert "not this server's token" in note.inner_text()
        banner = page.get_by_text("Not signed in: open the dashboard URL printed by")
        banner.wait_for(timeout=10_000)  # what a browser without the token is told
        assert page.locator("#runs-body tr").count() == 0  # and it shows no data
        assert not [c for c in context.cookies() if c["name"] == "fitdeck_token"]
    finally:
        context.close()
