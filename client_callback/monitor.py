"""LiveMonitor: the Keras callback that streams `model.fit` to a fitdeck server."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import keras

from client_callback import commands as cockpit
from client_callback.knobs import user_knobs
from client_callback.stream import BATCH, EPOCH, RECORD, FitdeckWarning, Stream
from server.discovery import resolve_target
from server.protocol import LR_KEY, MAX_NAME, SETTINGS_META, Rec, encode_value, jsonable

__all__ = ["LiveMonitor"]

log = logging.getLogger("fitdeck.callback")

_ACTIVE: weakref.WeakSet[LiveMonitor] = weakref.WeakSet()
"""Monitors whose `fit` has begun and not ended."""
_hooks_installed = False
_fit_watched = False


class LiveMonitor(keras.callbacks.Callback):  # type: ignore[misc]
    """Streams every batch and epoch of `fit` to a fitdeck server, live.

    Add it to any `model.fit(..., callbacks=[...])`. Each batch's logs are
    copied into a bounded in-memory queue and the hook returns at once; a
    background thread sends them over one WebSocket, resending whatever the
    server has not acknowledged after a reconnect. From the dashboard you can
    stop the training or set its learning rate: commands are applied in the
    training thread at the next batch boundary, through `self.model`, and
    their outcome is reported back. A dead, slow or hung server costs a
    warning, never a crash or a stall.

    One instance is one run: calling `fit` again with the same instance
    continues the run. A `fit` that raises, wherever (a step, the data, any
    callback's hook), ends the run `failed` with the exception's type and
    message before the exception reaches the caller (LiveMonitor watches
    `keras.Model.fit` for that, since Keras calls no hook then).

    Example:

    ```python
    from client_callback import LiveMonitor

    model.fit(x, y, epochs=10, callbacks=[LiveMonitor(run_name="baseline")])
    ```

    With neither `url` nor `token` (nor `FITDECK_URL` / `FITDECK_TOKEN`), it
    streams to the newest server `fitdeck serve` runs on this machine for this
    user, found through the discovery file the server keeps while it runs
    (see `server.discovery`), with that server's token.

    Args:
        url: Address of the fitdeck server. Defaults to the `FITDECK_URL`
            environment variable, then the newest fitdeck server running on
            this machine, then `http://127.0.0.1:8000`.
        run_name: Name shown in the dashboard. Defaults to the model's name
            and the start time.
        project: Optional group name for runs. Defaults to `None`.
        token: The server's token. Defaults to the `FITDECK_TOKEN`
            environment variable, then the token of the fitdeck server
            running on this machine at that address, then no token.
        params: Hyperparameters or notes to show with the run; a dict of
            JSON-friendly values. What the server cannot keep (integers
            beyond 64 bits, lone surrogates, objects, nesting deeper than 32)
            is sent as text, with one warning. Defaults to `{}`.
        flush_timeout: Seconds the end of `fit` (or a `fit` that raised)
            waits for the server to acknowledge the last records, while
            connected or while the first connection is being made. Defaults
            to `5.0`.
        memory_records: Most sent-but-unacknowledged records kept in memory;
            older ones are spilled to the spool file. Defaults to `10_000`.
        spool_dir: Where records the server has not acknowledged are kept
            on disk (`<spool_dir>/<run_id>.jsonl`; upload them later with
            `fitdeck sync`). Defaults to `$FITDECK_SPOOL_DIR`, else
            `~/.cache/fitdeck/spool`.
        max_buffer: Most records held in memory while the server is away or
            slow. Defaults to `100_000`.
        connect_timeout: Seconds to wait when opening the connection.
            Defaults to `5.0`.
        ping_timeout: Seconds without an answer to a ping before the link is
            declared dead and reopened. Defaults to `10.0`.
        checkpoint_dir: Where the `checkpoint` command (and `stop` with
            `checkpoint`) saves the model, as `<run_id>-step<step>.keras`.
            Defaults to a `checkpoints` folder beside the spool folder
            (`~/.cache/fitdeck/checkpoints`).
        knobs: Your own values the dashboard may set, by name (shown as
            `user.<name>`): a `keras.Variable`, or a `(get, set)` pair of
            functions. Defaults to `{}`.
        watch: The other callbacks whose knobs and state to report. Defaults
            to those of the same `fit`, found once when training begins.
        pause_offline_limit: Seconds a paused fit waits while the server is
            unreachable before it resumes by itself. Defaults to `300.0`.

    Raises:
        ValueError: on a malformed `url`, over-long names, `params` that is
            not a dict, or non-positive timeouts and sizes.
    """

    async_safe = True

    def __init__(
        self,
        url: str | None = None,
        run_name: str | None = None,
        project: str | None = None,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        *,
        flush_timeout: float = 5.0,
        max_buffer: int = 100_000,
        memory_records: int = 10_000,
        spool_dir: str | os.PathLike[str] | None = None,
        connect_timeout: float = 5.0,
        ping_timeout: float = 10.0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        knobs: dict[str, Any] | None = None,
        watch: list[Any] | None = None,
        pause_offline_limit: float = 300.0,
    ) -> None:
        super().__init__()
        # Read once, here: the hooks never look at the environment or the disk.
        target = resolve_target(url, token, on_problem=_warn_now)
        url, token = target.url, target.token
        if target.server is not None:
            log.info("fitdeck: streaming to %s (found in %s)", url, target.server.path)
        for name, value in (("run_name", run_name), ("project", project)):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME):
                raise ValueError(
                    f"{name} must be a string of at most {MAX_NAME} characters. Received {value!r}."
                )
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"params must be a dict. Received {type(params).__name__}.")
        for name, number in (
            ("flush_timeout", flush_timeout),
            ("connect_timeout", connect_timeout),
            ("ping_timeout", ping_timeout),
            ("pause_offline_limit", pause_offline_limit),
        ):
            if not number > 0:
                raise ValueError(f"{name} must be > 0. Received {name}={number!r}.")
        for name, size in (("max_buffer", max_buffer), ("memory_records", memory_records)):
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"{name} must be a positive int. Received {name}={size!r}.")

        self.run_id = uuid.uuid4().hex
        self.url = url
        # What JSON or the server cannot hold (2**70, "\udcff", objects) is sent as text.
        self.user_params, self._unsendable = jsonable(params or {}, "params")
        names, unsendable_names = jsonable(
            {"run_name": run_name, "project": project}, "LiveMonitor"
        )
        self.run_name: str | None = names["run_name"]
        self.project: str | None = names["project"]
        self._unsendable += unsendable_names
        self.flush_timeout = flush_timeout
        self._stream = Stream(
            url,
            self.run_id,
            token,
            max_buffer=max_buffer,
            memory_records=memory_records,
            spool_dir=Path(spool_dir) if spool_dir is not None else None,
            connect_timeout=connect_timeout,
            ping_timeout=ping_timeout,
        )
        self._buffer = self._stream.buffer
        self._inbox = self._stream.inbox
        self._max_buffer = max_buffer
        self._fits = 0
        self._epoch = 0
        self._epoch_base = 0  # global steps completed before the current epoch
        self._max_batch = -1
        self._lr: float | None = None
        self._lr_check = False
        self._stopped_by_command = False
        self._thread_ident: int | None = None
        _watch_fit()
        if knobs is not None and not isinstance(knobs, dict):
            raise ValueError(f"knobs must be a dict. Received {type(knobs).__name__}.")
        self._cockpit = cockpit.Cockpit(
            self,
            cockpit.checkpoint_dir_from(checkpoint_dir, self._stream.spool.path.parent),
            user_knobs(knobs or {}),
            list(watch) if watch is not None else None,
            pause_offline_limit,
        )

    # -- the hot path ------------------------------------------------------------

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch > self._max_batch:
            self._max_batch = batch
        if len(self._buffer) < self._max_buffer:
            self._buffer.append(
                (BATCH, self._epoch, batch, self._epoch_base + batch + 1, time.time(),
                 dict(logs) if logs else {})
            )  # fmt: skip
        else:
            self._stream.overflow()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._inbox or self._lr_check:
            self._between_batches(batch)

    # -- once per epoch or fit -------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self in _ACTIVE:  # the last fit raised unseen by `_watch_fit` and was caught
            self._fail(None, "the previous fit ended by an exception that was caught")
        _install_exit_hooks()
        _ACTIVE.add(self)
        self._thread_ident = threading.get_ident()
        self._fits += 1
        self._stopped_by_command = False
        name = self.run_name or f"{self.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._record(
            Rec.run_start(time.time(), name, self.project, self.user_params, self._describe())
        )
        lr = self._read_lr()
        self._record_lr(lr, previous=None, source="initial")
        self._cockpit_call(self._cockpit.begin, self, self._scheduled())
        self._stream.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._cockpit_call(self._cockpit.flush)
        self._epoch = epoch
        self._max_batch = -1
        # Schedulers act in on_epoch_begin, possibly after us: look at the first batch.
        self._lr_check = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_base += self._max_batch + 1
        self._max_batch = -1
        self._check_lr()
        epoch_logs = dict(logs or {})
        if LR_KEY not in epoch_logs and self._lr is not None:
            epoch_logs[LR_KEY] = self._lr
        self._stream.put((EPOCH, epoch, self._epoch_base, time.time(), epoch_logs))
        self._cockpit_call(self._cockpit.epoch_end, epoch, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if getattr(model, "stop_training", False) and not self._stopped_by_command:
            self._record(Rec.event(time.time(), "early_stop", {"by": "callback"},
                                   step=self._epoch_base, epoch=self._epoch))  # fmt: skip
        self._cockpit_call(self._cockpit.flush)
        self._end("stopped" if self._stopped_by_command else "finished", None)

    def _end(self, status: str, error: dict[str, str] | None) -> None:
        """Close this fit: expire waiting commands, send `run_end`, flush or spool."""
        _ACTIVE.discard(self)
        where = self._where(None)
        while self._inbox:
            command = self._inbox.popleft()
            self._command_status(command, "expired", "training ended before the next batch", where)
        self._check_lr()
        self._record(Rec.run_end(time.time(), status, error))
        spooled = self._stream.finish(self.flush_timeout)
        if spooled:
            self._stream.warn_once(
                "spooled",
                f"fitdeck: the server did not acknowledge {spooled} records before training "
                f"ended; they are kept in {self._stream.spool.path} and sent when this "
                "LiveMonitor trains again, or by `fitdeck sync`.",
            )

    def _fail(self, exc: BaseException | None, message: str | None = None) -> None:
        """The fit ended by an exception (or the process is exiting during it)."""
        with contextlib.suppress(Exception):  # reporting a failure must not fail
            if exc is not None:
                error = {"type": type(exc).__name__, "message": _message(exc)}
            else:
                error = {"type": "Interrupted", "message": message or "fit did not finish"}
            self._end("failed", error)

    def _fit_raised(self, model: Any, exc: BaseException, began: bool) -> None:
        """`fit` raised `exc` (seen by `_watch_fit`); `began`: this fit reached our
        `on_train_begin`. A fit that raised before it (in another callback's
        `on_train_begin`, or before any hook) still leaves a failed run."""
        if self in _ACTIVE:
            self._fail(exc)
        elif not began:
            with contextlib.suppress(Exception):
                if self._model is None:
                    self.set_model(model)
                self.on_train_begin()
                self._fail(exc)

    # -- commands, applied on the training thread ------------------------------

    def _between_batches(self, batch: int) -> None:
        if self._lr_check:
            self._lr_check = False
            self._check_lr(batch)
        while self._inbox:
            self._apply(self._inbox.popleft(), batch)
        if self._cockpit.paused:  # hold here; the stream thread keeps the link alive
            self._cockpit.hold(batch)

    def _apply(self, command: dict[str, Any], batch: int) -> None:
        where = self._where(batch)
        kind = command.get("kind")
        result: dict[str, Any] | None = None
        try:
            if kind in cockpit.COCKPIT_KINDS or (kind == "stop" and command.get("checkpoint")):
                outcome = self._cockpit.apply(command, batch)
                if outcome.status == "applied" and kind == "stop":
                    self._stopped_by_command = True
                self._command_status(command, outcome.status, outcome.reason, where,
                                     outcome.result)  # fmt: skip
                return
            if kind == "stop":
                self.model.stop_training = True
                self._stopped_by_command = True
                self._cockpit.paused = False
                result = {"epoch": where["epoch"], "batch": batch, "step": where["step"]}
            elif kind == "set_lr":
                old = self._lr
                reason = self._set_lr(command, batch)
                if reason is not None:
                    self._command_status(command, "rejected", reason, where)
                    return
                result = {"old": encode_value(old), "new": encode_value(self._lr)}
            else:
                self._command_status(command, "rejected", f"unknown command kind {kind!r}", where)
                return
        except Exception as exc:  # a command must never raise into fit
            self._command_status(command, "rejected", f"{type(exc).__name__}: {exc}", where)
            return
        self._command_status(command, "applied", None, where, result)

    def _set_lr(self, command: dict[str, Any], batch: int) -> str | None:
        """Set the learning rate; a reason when it cannot be done."""
        lr = command.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            return f"learning rate must be a number, got {lr!r}"
        if not math.isfinite(lr) or lr <= 0:
            return f"learning rate must be finite and > 0, got {lr!r}"
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return "the model has no optimizer"
        schedule = _schedule_name(optimizer)
        if schedule is not None:
            return (
                f"the learning rate is given by a {schedule} schedule and cannot be set; "
                "build the optimizer with a float learning_rate to steer it"
            )
        previous = self._read_lr()
        optimizer.learning_rate = float(lr)
        self._record_lr(self._read_lr(), previous=previous, source="command",
                        command_id=command.get("id"), batch=batch)  # fmt: skip
        return None

    def _command_status(
        self,
        command: dict[str, Any],
        status: str,
        reason: str | None,
        where: dict[str, Any],
        result: dict[str, Any] | None = None,
    ) -> None:
        self._record(
            Rec.command(time.time(), command.get("id"), status, reason, **where, result=result)
        )

    def _scheduled(self) -> bool:
        optimizer = getattr(self.model, "optimizer", None)
        return optimizer is not None and _schedule_name(optimizer) is not None

    def _cockpit_call(self, fn: Any, *args: Any) -> None:
        """Knobs and watched callbacks are a report: trouble costs one warning, not the fit."""
        try:
            fn(*args)
        except Exception as exc:
            self._stream.warn_once(
                f"cockpit:{getattr(fn, '__name__', fn)}",
                f"fitdeck: could not report knobs or callback state: {type(exc).__name__}: {exc}",
            )

    def _where(self, batch: int | None) -> dict[str, Any]:
        """Epoch, batch index and the global step from which something acts."""
        step = self._epoch_base + (batch if batch is not None else 0)
        return {"epoch": self._epoch, "batch": batch, "step": step}

    # -- learning rate -----------------------------------------------------------

    def _read_lr(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except Exception:  # an optimizer without a readable LR: nothing to chart
            return None

    def _check_lr(self, batch: int | None = None) -> None:
        """Note an LR changed by someone else: a schedule, or another callback."""
        lr = self._read_lr()
        if lr is not None and lr != self._lr:
            scheduled = _schedule_name(self.model.optimizer) is not None
            source = "schedule" if scheduled else "callback"
            self._record_lr(lr, previous=self._lr, source=source, batch=batch)

    def _record_lr(
        self,
        lr: float | None,
        *,
        previous: float | None,
        source: str,
        command_id: int | None = None,
        batch: int | None = None,
    ) -> None:
        if lr is None:
            return
        self._lr = lr
        where = self._where(batch)
        spe = self.params.get("steps") if self.params else None
        progress = self._epoch + (where["step"] - self._epoch_base) / spe if spe else self._epoch
        self._record(Rec.lr(time.time(), where["step"], progress, lr, previous, source, command_id))

    # -- helpers -------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        self._stream.put((RECORD, record))

    def _describe(self) -> dict[str, Any]:
        """What Keras knows about this fit, for the run's header."""
        model, params = self.model, self.params or {}
        optimizer = getattr(model, "optimizer", None)
        meta: dict[str, Any] = {
            "fit": self._fits,
            "epochs": params.get("epochs"),
            "steps_per_epoch": params.get("steps"),
            "batch_size": params.get("batch_size"),
            "model_name": getattr(model, "name", None),
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "lr_schedule": _schedule_name(optimizer) if optimizer is not None else None,
            SETTINGS_META: [LR_KEY],  # series that hold until changed: drawn as steps
        }
        if optimizer is not None:
            try:
                config = optimizer.get_config()
            except Exception:
                config = {}
            meta["optimizer"] = {"class_name": type(optimizer).__name__, "config": config}
        try:
            meta["param_count"] = int(model.count_params())
            meta["trainable_param_count"] = int(
                sum(math.prod(w.shape) for w in model.trainable_weights)
            )
            meta["layers"] = [_layer(layer) for layer in model.layers]
        except Exception as exc:  # an unbuilt or exotic model still trains
            log.debug("could not describe the model: %s", exc)
        clean, unsendable = jsonable(meta, "meta")
        unsendable = self._unsendable + unsendable
        if unsendable:
            more = f" and {len(unsendable) - 3} more" if len(unsendable) > 3 else ""
            self._stream.warn_once(
                "unsendable",
                "fitdeck: values that are not JSON the server can keep are sent as text: "
                f"{'; '.join(unsendable[:3])}{more}.",
            )
        return clean  # type: ignore[no-any-return]


def _layer(layer: Any) -> dict[str, Any]:
    try:
        shape = str(layer.output.shape)
    except Exception:
        shape = None
    return {
        "name": layer.name,
        "class_name": type(layer).__name__,
        "output_shape": shape,
        "params": int(layer.count_params()) if layer.built else 0,
    }


def _warn_now(message: str) -> None:
    # A warnings filter set to "error" must not make the constructor raise.
    with contextlib.suppress(Exception):
        warnings.warn(message, FitdeckWarning, stacklevel=4)


def _schedule_name(optimizer: Any) -> str | None:
    """The schedule's name when the learning rate is a `LearningRateSchedule` (or a
    callable), else `None`; a `LossScaleOptimizer` (mixed precision) is seen through."""
    for _ in range(8):  # wrappers of wrappers, within reason
        inner = getattr(optimizer, "inner_optimizer", None)
        if inner is None:
            break
        optimizer = inner
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return type(lr).__name__
    if callable(lr) and not hasattr(lr, "assign"):
        return getattr(lr, "__name__", type(lr).__name__)
    return None


# -- fits that end by an exception --------------------------------------------
# Keras does not call on_train_end when fit raises. `_watch_fit` sees the
# exception on its way out of `fit`, caught later or not. Behind it, for a fit
# it cannot see (a model class whose `fit` bypasses keras.Model.fit): the
# uncaught exception reaches sys.excepthook (or threading.excepthook, or
# IPython's post_run_cell); a process that exits mid-fit runs atexit. Each marks
# the run failed with the exception's type and message and sends or spools what
# is left.


def _watch_fit() -> None:
    """Wrap `keras.Model.fit` once (every Keras model's `fit`, also a subclass's that
    calls `super().fit`), so that a fit that raises is seen with its exception wherever
    it came from (a step, the data, any callback's hook, the first ones included) and
    whether or not the caller catches it. Keras calls no hook when fit raises."""
    global _fit_watched
    fit = keras.Model.fit
    if _fit_watched or getattr(fit, "_fitdeck_watched", False):
        _fit_watched = True
        return
    _fit_watched = True

    @functools.wraps(fit)
    def watched_fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("callbacks", args[5] if len(args) > 5 else None)
        monitors = {m: m._fits for m in _monitors_in(given)}
        try:
            return fit(self, *args, **kwargs)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                for monitor, fits in monitors.items():
                    monitor._fit_raised(self, exc, began=monitor._fits > fits)
            raise

    watched_fit._fitdeck_watched = True  # type: ignore[attr-defined]
    keras.Model.fit = watched_fit


def _monitors_in(callbacks: Any) -> list[LiveMonitor]:
    """The LiveMonitors among `fit`'s `callbacks` argument (a list, nested or not, or
    a `CallbackList`)."""
    found: list[LiveMonitor] = []
    todo = [callbacks]
    while todo and len(found) < 64:
        item = todo.pop()
        if isinstance(item, LiveMonitor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, keras.callbacks.CallbackList):
            todo.extend(item.callbacks)
    return found


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except Exception:  # an exception whose __str__ raises
        return f"<{type(exc).__name__}: unprintable>"


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous_excepthook = sys.excepthook
    previous_thread_hook = threading.excepthook

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _fail_active(exc, threading.main_thread().ident)
        previous_excepthook(kind, exc, tb)

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and args.thread is not None:
            _fail_active(args.exc_value, args.thread.ident)
        previous_thread_hook(args)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    atexit.register(_fail_active, None, None)
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:  # IPython shows cell errors without sys.excepthook

        def post_run_cell(result: Any) -> None:
            if result.error_in_exec is not None:
                _fail_active(result.error_in_exec, threading.get_ident())

        shell.events.register("post_run_cell", post_run_cell)


def _fail_active(exc: BaseException | None, thread_ident: int | None) -> None:
    for monitor in list(_ACTIVE):
        if thread_ident is None or monitor._thread_ident == thread_ident:
            monitor._fail(exc, "the process exited while fit was running")
