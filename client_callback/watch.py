"""The live state of the Keras callbacks LiveMonitor watches, read once per epoch.

EarlyStopping (monitor, best, wait / patience, epochs left before it stops),
ReduceLROnPlateau (wait / patience, cooldown, the rate it would set next),
ModelCheckpoint (best, the last file it saved and when), LearningRateScheduler
(the next epoch's rate) and TerminateOnNaN. Each snapshot is a plain dict of
JSON values (`snapshot`); nothing here runs in the batch hooks.

How the other callbacks are found: `siblings` looks, once per `fit` in
`on_train_begin`, up the call stack for the `keras.callbacks.CallbackList`
that is calling LiveMonitor (Keras 3 gives a callback no handle on its
siblings). `LiveMonitor(watch=[...])` names them instead, for a loop that
calls callbacks some other way.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from types import FrameType
from typing import Any

import keras

__all__ = ["WATCHED", "Watcher", "siblings"]

WATCHED = (
    "EarlyStopping",
    "ReduceLROnPlateau",
    "ModelCheckpoint",
    "LearningRateScheduler",
    "TerminateOnNaN",
)
"""The Keras callback classes (and their subclasses) whose state is reported."""

MAX_FRAMES = 8


def siblings(me: Any) -> list[Any] | None:
    """The callbacks of the `fit` calling `me.on_train_begin`, or None if not found."""
    frame: FrameType | None
    try:
        frame = sys._getframe(1)  # from our caller up to the CallbackList calling us
    except ValueError:
        return None
    cls = keras.callbacks.CallbackList
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, cls) and any(cb is me for cb in owner.callbacks):
            return list(owner.callbacks)
        frame = frame.f_back
    return None


def _kind(cb: Any) -> str | None:
    for name in WATCHED:
        cls = getattr(keras.callbacks, name, None)
        if cls is not None and isinstance(cb, cls):
            return name
    return None


def _num(value: Any) -> float | str | None:
    """A number as JSON (non-finite as "NaN"/"Infinity"), None when there is none."""
    if value is None:
        return None
    try:
        number = float(keras.ops.convert_to_numpy(value))
    except Exception:
        return None
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


class Watcher:
    """The watched callbacks of one fit, by their knob prefix (`early_stopping`, …)."""

    def __init__(self, named: Iterable[tuple[str, Any]]) -> None:
        self.callbacks = [(name, cb, kind) for name, cb in named if (kind := _kind(cb))]
        self._saved: dict[str, tuple[str, float]] = {}
        """ModelCheckpoint: the last file seen and its modification time."""

    def snapshot(self, model: Any, epoch: int, logs: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Each watched callback: `{"name", "class", "state"}` after epoch `epoch`."""
        out = []
        for name, cb, kind in self.callbacks:
            try:
                state = getattr(self, f"_{kind}")(name, cb, model, epoch, logs or {})
            except Exception as exc:  # a subclass with other attributes: shown, not raised
                state = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            out.append({"name": name, "class": type(cb).__name__, "state": state})
        return out

    def _EarlyStopping(self, name: str, cb: Any, model: Any, epoch: int, logs: Any) -> Any:
        wait, patience = int(cb.wait), int(cb.patience)
        return {
            "monitor": cb.monitor,
            "best": _num(cb.best),
            "wait": wait,
            "patience": patience,
            "epochs_left": max(patience - wait, 0),
            "min_delta": abs(float(cb.min_delta)),
            "baseline": _num(cb.baseline),
            "stopped_epoch": int(cb.stopped_epoch) or None,
        }

    def _ReduceLROnPlateau(self, name: str, cb: Any, model: Any, epoch: int, logs: Any) -> Any:
        lr = _num(model.optimizer.learning_rate)
        next_lr = max(lr * float(cb.factor), float(cb.min_lr)) if isinstance(lr, float) else None
        return {
            "monitor": cb.monitor,
            "best": _num(cb.best),
            "wait": int(cb.wait),
            "patience": int(cb.patience),
            "cooldown": int(cb.cooldown),
            "cooldown_left": int(cb.cooldown_counter),
            "factor": float(cb.factor),
            "min_lr": float(cb.min_lr),
            "next_lr": next_lr,
        }

    def _ModelCheckpoint(self, name: str, cb: Any, model: Any, epoch: int, logs: Any) -> Any:
        path = None
        try:  # the file this epoch's save would have written (Keras' own formatting)
            path = cb._get_file_path(epoch, None, logs)
        except Exception:
            path = cb.filepath
        if path and os.path.exists(path):
            mtime = os.path.getmtime(path)
            last = self._saved.get(name)
            if last is None or last != (path, mtime):
                self._saved[name] = (path, mtime)
        last_file, saved_at = self._saved.get(name, (None, None))
        return {
            "monitor": cb.monitor,
            "best": _num(cb.best),
            "save_best_only": bool(cb.save_best_only),
            "last_file": last_file,
            "saved_at": saved_at,
        }

    def _LearningRateScheduler(self, name: str, cb: Any, model: Any, epoch: int, logs: Any) -> Any:
        lr = _num(model.optimizer.learning_rate)
        try:
            next_lr = _num(cb.schedule(epoch + 1, lr))
        except TypeError:  # a schedule of the epoch alone
            next_lr = _num(cb.schedule(epoch + 1))
        return {"lr": lr, "next_lr": next_lr}

    def _TerminateOnNaN(self, name: str, cb: Any, model: Any, epoch: int, logs: Any) -> Any:
        return {"watching": "loss", "last_loss": _num(logs.get("loss"))}
