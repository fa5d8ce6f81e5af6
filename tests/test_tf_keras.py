"""LiveMonitor under tf_keras (Keras 2, `TF_USE_LEGACY_KERAS=1`) as under Keras 3.

tf_keras and Keras 3 do not mix in one process's models, so the training runs
in a subprocess of its own; it streams to a real server and takes a Set LR and
a Stop from the dashboard's API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.slow
pytest.importorskip("tf_keras")

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import httpx
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from client_callback import LiveMonitor

    url, token, steer = sys.argv[1], sys.argv[2], sys.argv[3] == "steer"
    assert tf.keras is tf_keras or tf.keras.__name__.startswith("tf_keras")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 8)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((8,)),
        tf_keras.layers.Dense(16, activation="relu"),
        tf_keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01), loss="binary_crossentropy",
                  metrics=["accuracy"])
    mon = LiveMonitor(url=url, token=token, run_name="tf-keras")
    steps = []

    def command(body):
        api.post(f"/api/runs/{mon.run_id}/commands", json=body).raise_for_status()
        deadline = time.monotonic() + 20
        while not mon._inbox:  # arrived: applied at the next batch boundary
            assert time.monotonic() < deadline, "the command never arrived"
            time.sleep(0.01)

    class Steer(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
            if steer and len(steps) == 5:
                command({"kind": "set_lr", "lr": 0.25})
            if steer and len(steps) == 30:
                command({"kind": "stop"})

    history = model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[mon, Steer()])
    print(json.dumps({
        "run_id": mon.run_id,
        "batches": len(steps),
        "lr": float(model.optimizer.learning_rate.numpy()),
        "iterations": int(model.optimizer.iterations.numpy()),
        "loss": [float(v) for v in history.history["loss"]],
    }))
    """
)


def run_script(server: ServerProcess, mode: str) -> dict[str, object]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, server.url, server.token or "", mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_tf_keras_fit_streams_every_batch_and_epoch(server: ServerProcess) -> None:
    out = run_script(server, "plain")
    run_id = str(out["run_id"])
    run = server.wait_for(
        lambda: (r := server.run(run_id))["status"] == "finished" and r, what="finished"
    )
    assert run["meta"]["keras_version"].startswith("2.") and run["meta"]["backend"] == "tensorflow"
    assert run["meta"]["batch_size"] == 16
    loss = server.series(run_id, "batch", "loss")
    assert loss["step"] == list(range(1, 81)) and run["step"] == out["iterations"] == 80
    assert server.series(run_id, "epoch", "loss")["value"] == pytest.approx(out["loss"])


def test_tf_keras_takes_set_lr_and_stop_from_the_dashboard(server: ServerProcess) -> None:
    out = run_script(server, "steer")
    run_id = str(out["run_id"])
    assert out["lr"] == pytest.approx(0.25)
    assert out["batches"] == 31  # stop arrives after batch 30, applies before batch 31
    run = server.wait_for(
        lambda: (r := server.run(run_id))["status"] == "stopped" and r, what="stopped"
    )
    commands = {c["kind"]: c for c in server.commands(run_id)}
    assert commands["set_lr"]["status"] == "applied" and commands["set_lr"]["step"] == 5
    assert commands["stop"]["status"] == "applied" and commands["stop"]["step"] == 30
    lr = server.series(run_id, "batch", "learning_rate")
    assert lr["step"] == [0, 5] and lr["value"] == pytest.approx([0.01, 0.25])
    assert run["step"] == 31
