"""Discovery files: `fitdeck serve` then `LiveMonitor()` with nothing to configure."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server import discovery
from server.discovery import find_server, live_servers, publish, resolve_target, runtime_dir
from server.protocol import DEFAULT_URL
from tests.conftest import ROOT, free_port, make_data, make_model

FAKE_TOKEN = "t0ken-from-the-file"
PARAMS = {"dropout": 0.2}


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's runtime directory, and no FITDECK_URL / FITDECK_TOKEN."""
    path = tmp_path / "runtime"
    monkeypatch.setenv(discovery.RUNTIME_DIR_ENV, str(path))
    monkeypatch.delenv("FITDECK_URL", raising=False)
    monkeypatch.delenv("FITDECK_TOKEN", raising=False)
    return path


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A live process other than this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(
    directory: Path,
    pid: int,
    port: int,
    token: str | None = FAKE_TOKEN,
    started: float | None = None,
    mode: int = 0o600,
) -> Path:
    """A discovery file as a server writes it (for a process that may be anything)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"server-{pid}.json"
    info = {
        "url": f"http://127.0.0.1:{port}",
        "token": token,
        "pid": pid,
        "port": port,
        "db": f"/data/{port}.db",
        "started": time.time() if started is None else started,
    }
    path.write_text(json.dumps(info))
    path.chmod(mode)
    return path


def env(rt: Path, **values: str) -> dict[str, str]:
    return {discovery.RUNTIME_DIR_ENV: str(rt), **values}


# -- where the files live ------------------------------------------------------


def test_runtime_dir_is_the_override_then_xdg_runtime_then_the_data_dir(tmp_path: Path) -> None:
    xdg = tmp_path / "run-user"
    xdg.mkdir(mode=0o700)
    assert runtime_dir({"FITDECK_RUNTIME_DIR": "/x/y", "XDG_RUNTIME_DIR": str(xdg)}) == Path("/x/y")
    assert runtime_dir({"XDG_RUNTIME_DIR": str(xdg)}) == xdg / "fitdeck"
    # Set but missing (a `su` shell, a container): the per-user data directory.
    missing = {"XDG_RUNTIME_DIR": str(tmp_path / "gone"), "XDG_DATA_HOME": str(tmp_path / "d")}
    assert runtime_dir(missing) == tmp_path / "d" / "fitdeck" / "runtime"
    assert runtime_dir({}) == Path.home() / ".local" / "share" / "fitdeck" / "runtime"


def test_publish_writes_url_and_token_readable_by_the_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "runtime"
    path = publish("http://127.0.0.1:8123", "secret", 8123, tmp_path / "f.db", directory)
    assert path == directory / f"server-{os.getpid()}.json"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["url"] == "http://127.0.0.1:8123" and info["token"] == "secret"
    assert info["pid"] == os.getpid() and info["port"] == 8123
    assert info["db"] == str((tmp_path / "f.db").resolve())
    assert abs(info["started"] - time.time()) < 60
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temporary file left
    (server,) = live_servers(directory)
    assert (server.url, server.token, server.path) == ("http://127.0.0.1:8123", "secret", path)
    discovery.unpublish(path)
    discovery.unpublish(path)  # twice is harmless
    assert live_servers(directory) == []


def test_publish_tightens_a_directory_others_could_read(tmp_path: Path) -> None:
    directory = tmp_path / "runtime"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    publish("http://127.0.0.1:1", None, 1, tmp_path / "f.db", directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


# -- what readers trust ----------------------------------------------------------


def test_a_stale_file_of_a_dead_server_is_ignored_and_removed(rt: Path) -> None:
    path = plant(rt, dead_pid(), 8001)
    assert live_servers(rt) == []
    assert not path.exists()


def test_the_newest_live_server_wins(rt: Path, other_pid: int) -> None:
    plant(rt, other_pid, 8001, token="older", started=time.time() - 60)
    plant(rt, os.getpid(), 8002, token="newer")
    assert [s.port for s in live_servers(rt)] == [8002, 8001]
    assert find_server(None, rt).token == "newer"  # type: ignore[union-attr]
    assert find_server("http://localhost:8001", rt).token == "older"  # type: ignore[union-attr]
    assert find_server("http://127.0.0.1:8003", rt) is None


def test_a_file_others_may_read_is_ignored_with_a_warning(rt: Path) -> None:
    path = plant(rt, os.getpid(), 8001, mode=0o644)
    problems: list[str] = []
    assert live_servers(rt, on_problem=problems.append) == []
    assert len(problems) == 1 and str(path) in problems[0] and "mode 644" in problems[0]
    assert path.exists()  # not ours to judge: left alone


def test_a_file_owned_by_someone_else_is_ignored_with_a_warning(
    rt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = plant(rt, os.getpid(), 8001)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # planted by `nobody`
    else:  # the same file seen by another user
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    problems: list[str] = []
    assert live_servers(rt, on_problem=problems.append) == []
    assert len(problems) == 1 and "belongs to user id" in problems[0], problems


def test_a_symlink_is_not_followed(rt: Path, tmp_path: Path) -> None:
    target = plant(tmp_path / "elsewhere", os.getpid(), 8001)
    rt.mkdir(mode=0o700)
    (rt / f"server-{os.getpid() + 1}.json").symlink_to(target)
    problems: list[str] = []
    assert live_servers(rt, on_problem=problems.append) == []
    assert problems and "symbolic link" in problems[0]


# -- precedence: argument > environment > discovery file > default ------------------


def test_arguments_and_environment_come_before_the_discovery_file(rt: Path) -> None:
    plant(rt, os.getpid(), 8001)
    found = ("http://127.0.0.1:8001", FAKE_TOKEN)
    e = env(rt)
    assert astuple(resolve_target(None, None, e)) == found
    assert astuple(resolve_target("http://h:1", "arg", e)) == ("http://h:1", "arg")
    assert astuple(resolve_target(None, "arg", e)) == ("http://127.0.0.1:8001", "arg")
    e = env(rt, FITDECK_URL="http://h:2", FITDECK_TOKEN="env")
    assert astuple(resolve_target(None, None, e)) == ("http://h:2", "env")
    assert astuple(resolve_target("http://h:1", None, e)) == ("http://h:1", "env")
    # The file's token goes only to the server the file describes.
    e = env(rt, FITDECK_URL="http://localhost:8001")
    assert astuple(resolve_target(None, None, e)) == ("http://localhost:8001", FAKE_TOKEN)
    e = env(rt, FITDECK_URL="http://127.0.0.1:9999")
    assert astuple(resolve_target(None, None, e)) == ("http://127.0.0.1:9999", None)
    assert astuple(resolve_target("http://gpu-box:8001", None, env(rt))) == (
        "http://gpu-box:8001",
        None,
    )


def test_without_any_server_the_default_url_and_no_token(rt: Path) -> None:
    assert astuple(resolve_target(None, None, env(rt))) == (DEFAULT_URL, None)
    plant(rt, dead_pid(), 8001)
    assert astuple(resolve_target(None, None, env(rt))) == (DEFAULT_URL, None)


def astuple(target: discovery.Target) -> tuple[str, str | None]:
    return target.url, target.token


# -- LiveMonitor() -------------------------------------------------------------------


@pytest.mark.slow
def test_live_monitor_with_nothing_given_uses_the_discovery_file(rt: Path) -> None:
    keras = pytest.importorskip("keras")
    del keras
    from client_callback import LiveMonitor

    plant(rt, os.getpid(), 8001)
    mon = LiveMonitor(run_name="x")
    assert mon.url == "http://127.0.0.1:8001" and mon._stream.token == FAKE_TOKEN
    shutil.rmtree(rt)  # read once, in the constructor: fit never looks again
    assert mon.url == "http://127.0.0.1:8001" and mon._stream.token == FAKE_TOKEN


def test_live_monitor_never_adopts_a_token_someone_could_have_planted(rt: Path) -> None:
    pytest.importorskip("keras")
    from client_callback import FitdeckWarning, LiveMonitor

    path = plant(rt, os.getpid(), 8001, mode=0o664)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = LiveMonitor()
    ours = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert len(ours) == 1 and str(path) in ours[0] and "token is not used" in ours[0]
    assert mon.url == DEFAULT_URL and mon._stream.token is None


# -- with a real `fitdeck serve` -------------------------------------------------------


def fitdeck_serve(db: Path, rt: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """`fitdeck serve` as the README says, with no token given; its port once healthy."""
    script = Path(sys.executable).with_name("fitdeck")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "server"]
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FITDECK_")}
    environ[discovery.RUNTIME_DIR_ENV] = str(rt)
    proc = subprocess.Popen(
        [*cmd, "serve", "--port", str(port), "--db", str(db), *args],
        cwd=ROOT,
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("fitdeck serve did not come up")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.slow
def test_the_readme_snippet_streams_to_fitdeck_serve_with_nothing_configured(
    rt: Path, tmp_path: Path
) -> None:
    pytest.importorskip("keras")
    from client_callback import FitdeckWarning, LiveMonitor

    db = tmp_path / "fitdeck.db"
    proc, port = fitdeck_serve(db, rt)
    try:
        (path,) = rt.glob("server-*.json")
        assert path.name == f"server-{proc.pid}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(rt.stat().st_mode) == 0o700
        token = (tmp_path / "fitdeck.db.token").read_text().strip()
        assert json.loads(path.read_text())["token"] == token

        x, y = make_data(256)
        model = make_model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # As printed in the README, url and token left out:
            mon = LiveMonitor(run_name="baseline", project="digits", params={"dropout": 0.2})
            assert mon.url == f"http://127.0.0.1:{port}"
            history = model.fit(
                x, y, epochs=2, batch_size=32, validation_split=0.2, verbose=0, callbacks=[mon]
            )
        assert not [w for w in caught if issubclass(w.category, FitdeckWarning)]

        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth) as api:
            run = api.get(f"/api/runs/{mon.run_id}").json()["run"]
            series = api.get(f"/api/runs/{mon.run_id}/metrics", params={"scope": "batch"})
            epochs = api.get(f"/api/runs/{mon.run_id}/metrics", params={"scope": "epoch"})
        assert (run["name"], run["project"], run["params"]) == ("baseline", "digits", PARAMS)
        assert run["status"] == "finished"
        loss = series.json()["series"]["loss"]
        assert loss["step"] == list(range(1, 2 * 7 + 1))  # 205 training points, batches of 32
        assert epochs.json()["series"]["val_loss"]["value"] == history.history["val_loss"]
    finally:
        stop(proc)
    assert list(rt.glob("server-*.json")) == []  # removed on a clean exit


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_discovery_file_goes_away_when_the_server_is_stopped(
    rt: Path, tmp_path: Path, sig: int
) -> None:
    proc, port = fitdeck_serve(tmp_path / "f.db", rt, "--no-auth")
    (path,) = rt.glob("server-*.json")
    info = json.loads(path.read_text())
    assert info["url"] == f"http://127.0.0.1:{port}" and info["token"] is None
    err = stop(proc, sig)
    assert not path.exists(), err
    assert "Traceback" not in err, err


@pytest.mark.slow
def test_a_killed_servers_file_is_ignored_and_cleaned_by_the_next_reader(
    rt: Path, tmp_path: Path
) -> None:
    proc, port = fitdeck_serve(tmp_path / "f.db", rt)
    (path,) = rt.glob("server-*.json")
    assert find_server(None, rt).port == port  # type: ignore[union-attr]
    stop(proc, signal.SIGKILL)
    assert path.exists()  # nobody could remove it
    assert find_server(None, rt) is None
    assert not path.exists()
    assert astuple(resolve_target(None, None, env(rt))) == (DEFAULT_URL, None)
