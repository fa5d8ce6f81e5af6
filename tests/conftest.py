"""Shared fixtures: a real fitdeck server in a subprocess, small Keras models and data."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.browser"]  # the chromium and dashboard fixtures, for every module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """`python -m server serve` on a free port with its own SQLite file."""

    db_path: Path
    token: str | None = None
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        auth = ["--token", self.token] if self.token else ["--no-auth"]
        cmd = [sys.executable, "-m", "server", "serve", "--port", str(self.port)]
        cmd += ["--db", str(self.db_path), *auth, *self.extra_args]
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"server exited with {self.proc.returncode}: {err}")
            try:
                if self.client.get("/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"server on {self.url} not healthy after {timeout} s")

    @property
    def log_path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".log")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL to crash it); `start()` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.client.close()

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/runs/{run_id}")
        response.raise_for_status()
        run: dict[str, Any] = response.json()["run"]
        return run

    def series(self, run_id: str, scope: str, key: str, **params: Any) -> dict[str, Any]:
        response = self.client.get(
            f"/api/runs/{run_id}/metrics",
            params={"scope": scope, "key": key, "max_points": 20000, **params},
        )
        response.raise_for_status()
        series: dict[str, Any] = response.json()["series"].get(key, {})
        return series

    def commands(self, run_id: str) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = self.client.get(f"/api/runs/{run_id}/commands").json()[
            "commands"
        ]
        return commands

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 15, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(autouse=True, scope="session")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the callback's spool files out of the home directory."""
    path = tmp_path_factory.mktemp("spool")
    os.environ["FITDECK_SPOOL_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the session, with a token, on a free port."""
    proc = ServerProcess(tmp_path_factory.mktemp("srv") / "fitdeck.db", secrets.token_hex(8))
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of a test's own (stopped afterwards)."""
    started: list[ServerProcess] = []

    def make(**kwargs: Any) -> ServerProcess:
        kwargs.setdefault("db_path", tmp_path / "fitdeck.db")
        proc = ServerProcess(**kwargs).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.close()


# -- in process ---------------------------------------------------------------

TOKEN = "s3cret-token"
LOCAL_HOST = "127.0.0.1"
"""The `Host` in-process clients send: the guard has no exemption for Starlette's
`testserver`, so they say what a browser on this machine would."""


def local_client(app: Any, **kwargs: Any) -> Any:
    """`TestClient(app, ...)` whose requests and WebSockets carry `Host: 127.0.0.1`."""
    from fastapi.testclient import TestClient

    headers = {"host": LOCAL_HOST, **kwargs.pop("headers", {})}
    return TestClient(app, headers=headers, **kwargs)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    """The app in-process (`TestClient` runs its lifespan) with the token in every request."""
    from server import Settings, create_app

    app = create_app(Settings(db=tmp_path / "t.db", token=TOKEN))
    with local_client(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


# -- Keras --------------------------------------------------------------------


def make_data(n: int = 256, features: int = 8, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    return x, y


def make_model(lr: Any = 0.01, features: int = 8, seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="tiny_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def callback(**hooks: Callable[..., Any]) -> Any:
    """A Keras callback made of the given hook functions (`on_train_batch_end=...`)."""
    import keras

    return type("TestHooks", (keras.callbacks.Callback,), hooks)()
