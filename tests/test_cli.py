"""The `fitdeck` command line: the demo a new user runs first, and its errors."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


@pytest.mark.slow
def test_demo_trains_into_its_own_server_and_prints_the_dashboard_url(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    port = free_port()
    demo = ["demo", "--epochs", "2", "--exit", "--port", str(port), "--db", str(db)]
    out = subprocess.run(
        [sys.executable, "-m", "server", *demo],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    token = (tmp_path / "demo.db.token").read_text().strip()
    assert f"open http://127.0.0.1:{port}/?token={token}" in out.stderr
    assert "training finished" in out.stderr
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
