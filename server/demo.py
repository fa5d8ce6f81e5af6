"""`fitdeck demo`: a server plus a real Keras training streaming into it."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import uvicorn

from server.runner import app_token, dashboard_url, uvicorn_config
from server.settings import Settings

__all__ = ["run_demo", "spirals", "train_spirals"]

log = logging.getLogger("fitdeck.demo")


def spirals(n: int = 3000, arms: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """Interleaved noisy spirals: a small problem an MLP learns visibly, epoch by epoch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    label = rng.integers(0, arms, size=n)
    radius = rng.uniform(0.05, 1.0, size=n)
    angle = 4.0 * radius + label * (2 * math.pi / arms) + rng.normal(0, 0.25, size=n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype("float32")
    return x, label.astype("int32")


def train_spirals(monitor: Any, epochs: int, batch_pause: float, *extra: Any) -> Any:
    """Fit a small MLP on `spirals()` with `monitor`, ReduceLROnPlateau and `extra`
    callbacks, each batch lasting at least `batch_pause` seconds; the History."""
    import keras

    x, y = spirals()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(64, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(3, activation="softmax", name="classes"),
        ],
        name="spiral_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    pace = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: time.sleep(batch_pause)
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3)
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=32,
        validation_split=0.2,
        verbose=0,
        callbacks=[monitor, reduce_lr, pace, *extra],
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def run_demo(settings: Settings, epochs: int = 30, keep_serving: bool = True) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter short
    try:
        from client_callback import LiveMonitor
    except ImportError as exc:
        print(f"fitdeck demo needs Keras with TensorFlow: {exc}", file=sys.stderr)
        return 2

    if not _port_free(settings.host, settings.port):
        with socket.socket() as s:
            s.bind((settings.host, 0))
            port = s.getsockname()[1]
        print(f"port {settings.port} is busy; using {port}", file=sys.stderr)
        settings = replace(settings, port=port)
    config = uvicorn_config(settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fitdeck-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            return 1
        time.sleep(0.05)
    token = app_token(config)
    print(f"fitdeck demo: open {dashboard_url(settings, token)}", file=sys.stderr, flush=True)

    monitor = LiveMonitor(
        url=f"http://127.0.0.1:{settings.port}",
        token=token,
        run_name=f"spirals-{time.strftime('%H%M%S')}",
        project="demo",
        params={"hidden": [64, 64], "data": "3 spirals, 3000 points", "batch_size": 32},
    )
    try:
        train_spirals(monitor, epochs, batch_pause=0.02)
        print("training finished", file=sys.stderr, flush=True)
        if keep_serving:
            print("the dashboard stays up; press Ctrl-C to stop", file=sys.stderr, flush=True)
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(10)
    return 0
