"""`fitdeck demo`: a server plus a real Keras training streaming into it."""

from __future__ import annotations

import errno
import logging
import math
import os
import sys
import threading
import time
from typing import Any

from server.runner import (
    FitdeckServer,
    bind_problem,
    dashboard_url,
    listen_socket,
    server_url,
    uvicorn_config,
)
from server.settings import Settings

__all__ = ["run_demo", "spirals", "spirals_model", "train_spirals"]

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


def spirals_model() -> Any:
    """The demo's small MLP, compiled; building it starts TensorFlow (and its chatter)."""
    import keras

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
    return model


def train_spirals(
    monitor: Any, epochs: int, batch_pause: float, *extra: Any, model: Any = None
) -> Any:
    """Fit `model` (default: a new `spirals_model()`) on `spirals()` with `monitor`,
    ReduceLROnPlateau and `extra` callbacks, each batch lasting at least `batch_pause`
    seconds; the History."""
    import keras

    x, y = spirals()
    if model is None:
        model = spirals_model()
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


def run_demo(settings: Settings, epochs: int = 30, keep_serving: bool = True) -> int:
    """Serve, train, and print the dashboard URL last, alone, once TensorFlow is up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter short
    try:
        from client_callback import LiveMonitor
    except ImportError as exc:
        print(f"fitdeck demo needs Keras with TensorFlow: {exc}", file=sys.stderr)
        return 2
    # TensorFlow prints its start-up lines while the model is built: before the URL.
    model = spirals_model()

    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            print(f"fitdeck demo: {bind_problem(settings, exc)}", file=sys.stderr, flush=True)
            return 1
        sock = listen_socket(settings.host, 0)
        print(
            f"fitdeck demo: port {settings.port} is busy; using {sock.getsockname()[1]}",
            file=sys.stderr,
            flush=True,
        )
    port = int(sock.getsockname()[1])
    config = uvicorn_config(settings)
    server = FitdeckServer(config, settings, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fitdeck-server", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                print("fitdeck demo: the server did not start (see above).", file=sys.stderr)
                return 1
            time.sleep(0.05)
        monitor = LiveMonitor(
            url=server_url(settings, port),
            token=server.token,
            run_name=f"spirals-{time.strftime('%H%M%S')}",
            project="demo",
            params={"hidden": [64, 64], "data": "3 spirals, 3000 points", "batch_size": 32},
        )
        url = dashboard_url(settings, server.token, port)
        print(f"\nfitdeck demo: open {url}", file=sys.stderr, flush=True)
        train_spirals(monitor, epochs, 0.02, model=model)
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
        server.forget()
        sock.close()
    return 0
