"""Multi-worker jobs: two JAX processes on CPU (`jax.distributed`, Keras' DataParallel)
are one run; Stop and Set LR apply on both at the same step; a dead worker fails the
run by name. Each process is a real `fit` streaming to a real server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.slow
pytest.importorskip("jax")

BOUND = 180  # seconds a scenario may take, both processes included

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    os.environ["KERAS_BACKEND"] = "jax"
    port, pid, url, token, mode, out = sys.argv[1:7]
    pid = int(pid)
    import jax
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid
    )
    import httpx
    import numpy as np
    import keras
    from client_callback import LiveMonitor

    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    x, y = x[pid::2], y[pid::2]  # each process feeds its own half of every batch
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="binary_crossentropy")
    mon = LiveMonitor(url=url, token=token, run_name="job")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    batches = []

    def command(body):
        api.post(f"/api/runs/{mon.run_id}/commands", json=body).raise_for_status()
        deadline = time.monotonic() + 30
        while not (mon._inbox or mon._waiting):
            assert time.monotonic() < deadline, "the command never arrived"
            time.sleep(0.005)

    class Steer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)
            if mode == "kill" and pid == 1 and len(batches) == 10:
                os._exit(3)  # a worker dies mid-run
            if pid == 0 and len(batches) == 20 and mode in ("stop", "set_lr"):
                command({"kind": "stop"} if mode == "stop" else {"kind": "set_lr", "lr": 0.5})

    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[mon, Steer()])
    weights = [np.asarray(w) for w in model.get_weights()]
    json.dump({
        "run_id": mon.run_id,
        "batches": len(batches),
        "iterations": int(np.asarray(model.optimizer.iterations.value)),
        "lr": float(np.asarray(model.optimizer.learning_rate)),
        "weights": float(sum(float(np.abs(w).sum()) for w in weights)),
    }, open(out, "w"))
    """
)


# tf_keras (Keras 2) with MultiWorkerMirroredStrategy: two TensorFlow workers (TF_CONFIG).
TF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    ports, pid, url, token, mode, out = sys.argv[1:7]
    pid = int(pid)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": pid},
    })
    import httpx
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from client_callback import LiveMonitor

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    tf_keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tf_keras.Sequential([
            tf_keras.Input((8,)),
            tf_keras.layers.Dense(16, activation="relu"),
            tf_keras.layers.Dense(1, activation="sigmoid"),
        ])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.01), loss="binary_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # sharded across the workers
    mon = LiveMonitor(url=url, token=token, run_name="job")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    batches = []

    def command(body):
        api.post(f"/api/runs/{mon.run_id}/commands", json=body).raise_for_status()
        deadline = time.monotonic() + 30
        while not (mon._inbox or mon._waiting):
            assert time.monotonic() < deadline, "the command never arrived"
            time.sleep(0.005)

    class Steer(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)
            if pid == 0 and len(batches) == 20 and mode in ("stop", "set_lr"):
                command({"kind": "stop"} if mode == "stop" else {"kind": "set_lr", "lr": 0.5})

    model.fit(data, epochs=3, verbose=0, callbacks=[mon, Steer()])
    weights = model.get_weights()
    json.dump({
        "run_id": mon.run_id,
        "batches": len(batches),
        "iterations": int(model.optimizer.iterations.numpy()),
        "lr": float(model.optimizer.learning_rate.numpy()),
        "weights": float(sum(float(np.abs(w).sum()) for w in weights)),
    }, open(out, "w"))
    """
)


def start_job(
    server: ServerProcess, mode: str, tmp_path: Path, kind: str = "jax", **env_vars: str
) -> list[subprocess.Popen[bytes]]:
    """Both processes of the job, started."""
    if kind == "jax":
        script, where = SCRIPT, str(free_port())
    else:
        script, where = TF_SCRIPT, f"{free_port()},{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "jax", **env_vars}
    env.pop("XLA_FLAGS", None)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    logs = [(tmp_path / f"proc{i}.log").open("w") for i in range(2)]
    args = [where, "", server.url, server.token or "", mode, ""]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args[:1], str(i), *args[2:5], str(outs[i])],
            cwd=ROOT,
            env=env,
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    for log in logs:
        log.close()  # the children hold their own copies
    return procs


def run_job(
    server: ServerProcess, mode: str, tmp_path: Path, kind: str = "jax", **env_vars: str
) -> tuple[list[int], list[Any]]:
    """Both processes of the job, to their end; their exit codes and what each wrote."""
    procs = start_job(server, mode, tmp_path, kind, **env_vars)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    deadline = time.monotonic() + BOUND
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        tails = [(tmp_path / f"proc{i}.log").read_text()[-2000:] for i in range(2)]
        raise AssertionError(f"the job did not finish within {BOUND} s: {tails}") from None
    results = [json.loads(out.read_text()) if out.exists() else None for out in outs]
    assert codes == [0, 0], [(tmp_path / f"proc{i}.log").read_text()[-3000:] for i in range(2)]
    return codes, results


def test_a_job_is_one_run_with_every_process_as_a_worker(
    server: ServerProcess, tmp_path: Path
) -> None:
    before = {r["id"] for r in server.client.get("/api/runs").json()["runs"]}
    _, (first, second) = run_job(server, "plain", tmp_path)
    assert first["run_id"] == second["run_id"]
    new = [r for r in server.client.get("/api/runs").json()["runs"] if r["id"] not in before]
    assert [r["id"] for r in new] == [first["run_id"]]  # one run, not one per process
    run = server.wait_for(
        lambda: (r := server.run(first["run_id"]))["status"] == "finished" and r, what="finish"
    )
    assert run["step"] == first["iterations"] == 96  # 3 epochs of 32 batches
    assert server.series(run["id"], "batch", "loss")["step"] == list(range(1, 97))
    assert [(w["index"], w["step"]) for w in run["workers"]] == [(0, 96), (1, 96)]
    assert {w["status"] for w in run["workers"]} == {"finished"}
    assert first["weights"] == pytest.approx(second["weights"])


def test_stop_ends_every_process_after_the_same_batch(
    server: ServerProcess, tmp_path: Path
) -> None:
    _, (first, second) = run_job(server, "stop", tmp_path)
    assert first["run_id"] == second["run_id"]
    assert first["batches"] == second["batches"] < 96
    assert first["iterations"] == second["iterations"] == first["batches"]
    assert first["weights"] == pytest.approx(second["weights"], rel=1e-6)
    run = server.wait_for(
        lambda: (r := server.run(first["run_id"]))["status"] == "stopped" and r, what="stopped"
    )
    (command,) = server.commands(run["id"])
    assert command["status"] == "applied" and command["step"] + 1 == first["batches"]
    assert {w["status"] for w in run["workers"]} == {"stopped"}


def test_set_lr_applies_on_every_process_from_the_same_step(
    server: ServerProcess, tmp_path: Path
) -> None:
    name = f"job-{time.time_ns()}"  # named by the scheduler, say: no broadcast needed
    _, (first, second) = run_job(server, "set_lr", tmp_path, FITDECK_RUN_ID=name)
    assert first["run_id"] == second["run_id"] == hashlib.sha256(name.encode()).hexdigest()[:32]
    assert first["lr"] == second["lr"] == pytest.approx(0.5)
    assert first["batches"] == second["batches"] == 96
    assert first["weights"] == pytest.approx(second["weights"], rel=1e-6)
    run = server.wait_for(
        lambda: (r := server.run(first["run_id"]))["status"] == "finished" and r, what="finish"
    )
    (command,) = server.commands(run["id"])
    assert command["status"] == "applied" and 20 <= command["step"] <= 24
    lr = server.series(run["id"], "batch", "learning_rate")
    assert lr["step"] == [0, command["step"]] and lr["value"] == pytest.approx([0.01, 0.5])


def test_a_worker_that_dies_fails_the_run_naming_it(make_server: Any, tmp_path: Path) -> None:
    server = make_server(token="t" * 16, env={"FITDECK_DISCONNECT_GRACE": "3"})
    survivor, doomed = start_job(server, "kill", tmp_path)
    try:
        assert doomed.wait(BOUND) == 3
        # The survivor waits in its next collective until JAX gives up on the peer;
        # the server does not wait for that.
        (run,) = server.client.get("/api/runs").json()["runs"]
        run = server.wait_for(
            lambda: (r := server.run(run["id"]))["status"] == "failed" and r,
            timeout=30,
            what="the run to fail",
        )
    finally:
        survivor.kill()
        survivor.wait()
    assert run["error"]["type"] == "WorkerLost"
    assert "worker 1 of 2" in run["error"]["message"]
    workers = {w["index"]: w["status"] for w in run["workers"]}
    assert workers[1] == "disconnected"


# -- tf_keras with MultiWorkerMirroredStrategy -------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "stop", "set_lr"])
def test_tf_keras_multi_worker_mirrored_job_is_one_run_and_takes_commands_at_one_step(
    server: ServerProcess, tmp_path: Path, mode: str
) -> None:
    pytest.importorskip("tf_keras")
    _, (first, second) = run_job(server, mode, tmp_path, kind="tf")
    assert first["run_id"] == second["run_id"]
    assert first["batches"] == second["batches"] == first["iterations"] == second["iterations"]
    assert first["weights"] == pytest.approx(second["weights"], rel=1e-6)
    assert first["lr"] == second["lr"]
    status = {"plain": "finished", "stop": "stopped", "set_lr": "finished"}[mode]
    run = server.wait_for(
        lambda: (r := server.run(first["run_id"]))["status"] == status and r, what=status
    )
    assert [w["index"] for w in run["workers"]] == [0, 1]
    assert run["step"] == first["iterations"]
    if mode == "plain":
        assert first["batches"] == 96  # 3 epochs of 32 batches (each worker half of each)
    elif mode == "stop":
        (command,) = server.commands(run["id"])
        assert first["batches"] < 96 and command["step"] + 1 == first["batches"]
    else:
        (command,) = server.commands(run["id"])
        assert first["lr"] == pytest.approx(0.5) and command["status"] == "applied"
        lr = server.series(run["id"], "batch", "learning_rate")
        assert lr["step"] == [0, command["step"]]


def test_run_id_names_the_run_as_given_or_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    from client_callback import LiveMonitor

    url = "http://127.0.0.1:9"
    assert LiveMonitor(url=url, run_id="ab" * 16).run_id == "ab" * 16
    hashed = hashlib.sha256(b"slurm-1234").hexdigest()[:32]
    assert LiveMonitor(url=url, run_id="slurm-1234").run_id == hashed
    monkeypatch.setenv("FITDECK_RUN_ID", "slurm-1234")
    assert LiveMonitor(url=url).run_id == hashed
    assert LiveMonitor(url=url, run_id="other").run_id != hashed  # the argument wins
    for bad in ("", "x" * 201):
        with pytest.raises(ValueError, match="run_id must be"):
            LiveMonitor(url=url, run_id=bad)
