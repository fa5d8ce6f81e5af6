"""The Keras side of the benchmarks, run as a child process (TensorFlow stays out of the harness).

`python -m bench.fitwork MODE JSON_ARGS` prints one JSON line with its results on
stdout (progress goes to stderr). Modes:

- `overhead`: figures 1 and 2 (fit wall time per callback configuration,
  interleaved repeats) and the in-fit half of figure 3.
- `hook`: figure 3, `on_train_batch_end` called directly in a loop (also
  done at the end of `overhead`).
- `latency`: figure 5, a real LiveMonitor whose hooks are called at a fixed
  rate (batch records carry wall time `t`).
- `command`: figure 5, a real `fit` with LiveMonitor and a callback that
  records when each batch begins; the harness posts commands meanwhile.
- `live`: `latency` then `command` in one process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

from client_callback import LiveMonitor

FEATURES = 8
LOGS = {"loss": 0.5, "accuracy": 0.9}


def err(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_data(n: int, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = (x[:, :2].sum(axis=1) > 0).astype("float32")
    return x, y


def make_model(seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="bench_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


class BatchClock(keras.callbacks.Callback):  # type: ignore[misc]
    """Wall time at which each batch begins, indexed by global step (0-based)."""

    def __init__(self, max_seconds: float = 1e9) -> None:
        super().__init__()
        self.begins: list[float] = []
        self.max_seconds = max_seconds
        self._deadline = 0.0

    def on_train_begin(self, logs: Any = None) -> None:
        self._deadline = time.monotonic() + self.max_seconds

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.begins.append(time.time())
        if time.monotonic() > self._deadline:
            self.model.stop_training = True  # a safety bound, never reached when all goes well


def timed_hook(callback: Any, sink: list[int]) -> None:
    """Wrap an instance's `on_train_batch_end` to record its duration (ns) per call."""
    inner = callback.on_train_batch_end
    clock = time.perf_counter_ns

    def wrapper(batch: int, logs: Any = None) -> None:
        t0 = clock()
        inner(batch, logs)
        sink.append(clock() - t0)

    callback.on_train_batch_end = wrapper


# -- figures 1, 2 and 3 (in fit) -------------------------------------------------


def overhead(args: dict[str, Any]) -> dict[str, Any]:
    steps, epochs, repeats = args["steps"], args["epochs"], args["repeats"]
    per_epoch = steps // epochs
    x, y = make_data(per_epoch)
    model = make_model()
    tmp = Path(tempfile.mkdtemp(prefix="fitdeck-bench-fit-"))
    counter = iter(range(10**9))

    def live(url: str) -> Callable[[], list[Any]]:
        return lambda: [LiveMonitor(url=url, run_name="bench-overhead", flush_timeout=5.0)]

    configs: dict[str, Callable[[], list[Any]] | None] = {
        "none": lambda: [],
        "fitdeck": live(args["live_url"]),
        "fitdeck_down": live(args["down_url"]),
        "fitdeck_hung": live(args["hung_url"]),
        "tensorboard": lambda: [
            keras.callbacks.TensorBoard(log_dir=str(tmp / f"tb{next(counter)}"), update_freq=1)
        ],
        "csvlogger": lambda: [keras.callbacks.CSVLogger(str(tmp / f"log{next(counter)}.csv"))],
        "remotemonitor": lambda: [keras.callbacks.RemoteMonitor(root=args["remote_url"])],
    }
    try:
        import tensorboard  # noqa: F401  (not a dependency of tensorflow any more)
    except ImportError:
        configs["tensorboard"] = None
    missing = [n for n, make in configs.items() if make is None]
    names = [n for n in args.get("configs", list(configs)) if configs.get(n) is not None]

    def fit(callbacks: list[Any]) -> float:
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=1, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)
        return time.perf_counter() - t0

    model.fit(x[:64], y[:64], batch_size=1, epochs=1, verbose=0)  # compile
    for name in names if args.get("warm", True) else []:  # every path once: writers, imports
        fit(configs[name]())  # type: ignore[misc]
    # Sandwiched pairs: none, A, none, B, none, C, … ; each configuration's ratio is
    # taken against the mean of the two baseline fits around it (linear drift cancels).
    others = [n for n in names if n != "none"]
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in others}
    for r in range(repeats):
        order = [others[(r + i) % len(others)] for i in range(len(others))]
        before = fit([])
        times["none"].append(before)
        for name in order:
            t = fit(configs[name]())  # type: ignore[misc]
            after = fit([])
            times[name].append(t)
            times["none"].append(after)
            ratios[name].append(t / ((before + after) / 2))
            before = after
        err(f"  overhead repeat {r + 1}/{repeats}: "
            + ", ".join(f"{k}={v[-1]:.3f}" for k, v in ratios.items()))  # fmt: skip

    # Figure 3 in a real fit: each hook call timed by a wrapper (+~0.2 µs of its own).
    in_fit: dict[str, list[int]] = {}
    for name in args.get("timed", ["fitdeck", "tensorboard"]):
        make = configs.get(name)
        if make is None:
            continue
        sink: list[int] = []
        callbacks = make()
        timed_hook(callbacks[0], sink)
        fit(callbacks)
        in_fit[name] = sink
    import shutil

    import tensorflow as tf

    shutil.rmtree(tmp, ignore_errors=True)  # TensorBoard logs and CSV files
    return {
        "steps": per_epoch * epochs,
        "times": times,
        "ratios": ratios,
        "missing": missing,
        "in_fit_ns": {k: summary_ns(v) for k, v in in_fit.items()},
        "hook": hook({**args["hook"], "model": model}),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def summary_ns(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64) / 1000.0
    return {
        "calls": int(a.size),
        "mean_us": float(a.mean()),
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
        "max_us": float(a.max()),
    }


# -- figure 3, direct ------------------------------------------------------------------


def hook(args: dict[str, Any]) -> dict[str, Any]:
    """µs per `on_train_batch_end` call, the hook called in a tight loop."""
    calls, chunk, repeats = args["calls"], args["chunk"], args["repeats"]
    model = args["model"] if "model" in args else make_model()
    monitor = LiveMonitor(url=args["url"], run_name="bench-hook")
    monitor.set_model(model)
    monitor.set_params({"epochs": 1, "steps": calls, "verbose": 0})
    empty = keras.callbacks.Callback()
    empty.set_model(model)
    # The same hook with the cockpit set up: a user knob and watched callbacks found.
    box = {"scale": 1.0}
    watched = [
        keras.callbacks.EarlyStopping(monitor="loss", patience=3),
        keras.callbacks.ReduceLROnPlateau(monitor="loss"),
        keras.callbacks.ModelCheckpoint(str(Path(tempfile.mkdtemp()) / "best.keras")),
        keras.callbacks.TerminateOnNaN(),
    ]
    knobs = {"scale": (lambda: box["scale"], lambda v: box.update(scale=v))}
    cockpit = LiveMonitor(
        url=args["url"], run_name="bench-hook-cockpit", watch=watched, knobs=knobs
    )
    cockpit.set_model(model)
    cockpit.set_params({"epochs": 1, "steps": calls, "verbose": 0})
    cockpit._cockpit.begin(cockpit, scheduled=False)
    clock = time.perf_counter_ns

    def loop(fn: Callable[..., None], clear: Callable[[], None]) -> float:
        total = 0
        done = 0
        while done < calls:
            logs = dict(LOGS)
            t0 = clock()
            for b in range(done, done + chunk):
                fn(b, logs)
            total += clock() - t0
            done += chunk
            clear()  # keep the buffer under max_buffer (not timed)
        return total / done / 1000.0

    buffer = monitor._buffer
    results: dict[str, list[float]] = {"fitdeck": [], "empty_callback": [], "fitdeck_cockpit": []}
    for _ in range(repeats):
        results["fitdeck"].append(loop(monitor.on_train_batch_end, buffer.clear))
        results["empty_callback"].append(loop(empty.on_train_batch_end, lambda: None))
        results["fitdeck_cockpit"].append(loop(cockpit.on_train_batch_end, cockpit._buffer.clear))
    return {"calls": calls, "us_per_call": results, "knobs": sorted(cockpit._cockpit.knobs)}


# -- figure 5 ------------------------------------------------------------------------------


def latency(args: dict[str, Any]) -> dict[str, Any]:
    """Batch hooks at a fixed rate on a real LiveMonitor; `t` in each record is wall time."""
    rate, seconds = args["rate"], args["seconds"]
    n = int(rate * seconds)
    model = make_model()
    monitor = LiveMonitor(url=args["url"], run_name="bench-latency")
    monitor.set_model(model)
    monitor.set_params({"epochs": 1, "steps": n, "verbose": 0})
    print(json.dumps({"run_id": monitor.run_id}), flush=True)
    sys.stdin.readline()  # the harness's subscribers are listening
    monitor.on_train_begin()
    monitor.on_epoch_begin(0)
    start = time.perf_counter()
    late = 0
    for b in range(n):
        target = start + b / rate
        now = time.perf_counter()
        if target > now:
            time.sleep(target - now)
        elif now - target > 0.01:
            late += 1
        monitor.on_train_batch_begin(b)
        monitor.on_train_batch_end(b, {"loss": 1.0 / (b + 1), "accuracy": b / n})
    elapsed = time.perf_counter() - start
    monitor.on_epoch_end(0, {"loss": 0.1, "accuracy": 0.9})
    monitor.on_train_end()
    return {"batches": n, "rate": n / elapsed, "late": late}


def live(args: dict[str, Any]) -> dict[str, Any]:
    """`latency`, then `command`, in one process (TensorFlow is imported once)."""
    print(json.dumps({"latency": latency(args["latency"])}), flush=True)
    return command(args["command"])


def command(args: dict[str, Any]) -> dict[str, Any]:
    """A real `fit` with LiveMonitor, stopped by a dashboard command; batch begin times."""
    x, y = make_data(args["per_epoch"])
    model = make_model()
    model.fit(x[:64], y[:64], batch_size=1, epochs=1, verbose=0)  # compile first
    ckpt = tempfile.mkdtemp(prefix="fitdeck-bench-ckpt-")
    monitor = LiveMonitor(url=args["url"], run_name="bench-command", checkpoint_dir=ckpt)
    clock = BatchClock(args["max_seconds"])
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=10**9)  # a knob to set
    print(json.dumps({"run_id": monitor.run_id}), flush=True)
    t0 = time.time()
    model.fit(x, y, batch_size=1, epochs=10_000, verbose=0, callbacks=[monitor, clock, stopper])
    return {"begins": clock.begins, "fit_start": t0, "stopped": bool(model.stop_training)}


MODES = {
    "overhead": overhead,
    "hook": hook,
    "latency": latency,
    "command": command,
    "live": live,
}


def main() -> None:
    warnings.simplefilter("ignore")  # FitdeckWarning when the server is down is expected here
    mode, raw = sys.argv[1], sys.argv[2]
    result = MODES[mode](json.loads(raw))
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
