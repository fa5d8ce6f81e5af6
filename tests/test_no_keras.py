"""The server package and `fitdeck sync` on a machine without Keras: a venv of their own.

The venv is made without the system's site-packages and gets fitdeck with only
its own dependencies (no `tf` extra), the way `pip install fitdeck` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("no-keras") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([*pip, str(ROOT)], check=True, env=env, cwd=where.parent, timeout=600)
    return where


def run(venv: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """A command from the venv, outside the checkout (so the installed code runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        cwd=venv.parent,
        env=env,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )


def test_the_venv_has_no_keras(venv: Path) -> None:
    out = run(venv, "python", "-c", "import keras")
    assert out.returncode != 0 and "No module named 'keras'" in out.stderr


def test_every_server_module_imports_without_keras(venv: Path) -> None:
    code = (
        "import importlib, pkgutil, sys, server\n"
        "names = [m.name for m in pkgutil.walk_packages(server.__path__, 'server.')]\n"
        "for name in names:\n"
        "    if name != 'server.__main__':\n"
        "        importlib.import_module(name)\n"
        "print(len(names), server.__file__, 'keras' in sys.modules, 'tensorflow' in sys.modules,"
        " 'client_callback' in sys.modules)\n"
    )
    out = run(venv, "python", "-c", code)
    assert out.returncode == 0, out.stderr
    count, where, *loaded = out.stdout.split()
    assert int(count) >= 20
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert loaded == ["False", "False", "False"]


def test_client_callback_without_keras_says_what_to_install(venv: Path) -> None:
    out = run(venv, "python", "-c", "import client_callback")
    assert out.returncode == 1
    assert "client_callback needs Keras 3" in out.stderr


def test_demo_without_keras_says_what_to_install(venv: Path, tmp_path: Path) -> None:
    port = str(free_port())
    out = run(venv, "fitdeck", "demo", "--exit", "--port", port, "--db", str(tmp_path / "d.db"))
    assert out.returncode == 2
    assert "pip install 'fitdeck[tf]'" in out.stderr


@pytest.fixture
def server(venv: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(venv / "bin" / "fitdeck"), "serve", "--port", str(port), "--no-auth",
         "--db", str(tmp_path / "s.db")],
        stderr=log,
        cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_sync_uploads_a_spool_without_keras(venv: Path, server: str, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    spool = tmp_path / f"{run_id}.jsonl"
    records = [
        {"seq": 1, "type": "run_start", "t": 1.0, "name": "offline", "project": None,
         "params": {}, "meta": {}},
        *({"seq": 1 + i, "type": "batch", "t": 1.0 + i, "step": i, "epoch": 0,
           "logs": {"loss": 1.0 / i if i != 3 else "NaN"}} for i in range(1, 6)),
        {"seq": 7, "type": "run_end", "t": 9.0, "status": "finished", "error": None},
    ]  # fmt: skip
    lines = [{"fitdeck_spool": 1, "run_id": run_id, "url": server}, *records]
    spool.write_text("".join(json.dumps(line) + "\n" for line in lines))

    out = run(venv, "fitdeck", "sync", str(spool))
    assert out.returncode == 0, out.stderr
    assert f"run {run_id}, 7 records uploaded" in out.stdout
    assert not spool.exists()
    run_ = httpx.get(f"{server}/api/runs/{run_id}").json()["run"]
    assert (run_["name"], run_["status"], run_["step"]) == ("offline", "finished", 5)
    values = httpx.get(
        f"{server}/api/runs/{run_id}/metrics", params={"scope": "batch", "key": "loss"}
    ).json()["series"]["loss"]["value"]
    assert values == [1.0, 0.5, "NaN", 0.25, 0.2]
