"""LiveMonitor: the Keras callback that streams `model.fit` to a fitdeck server."""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
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
from types import FrameType, TracebackType
from typing import Any

import keras

from client_callback import commands as cockpit
from client_callback.knobs import user_knobs
from client_callback.stream import BATCH, EPOCH, RECORD, FitdeckWarning, Stream
from server.discovery import resolve_target
from server.protocol import (
    LR_KEY,
    MAX_NAME,
    RUN_ID,
    SETTINGS_META,
    Env,
    Rec,
    encode_value,
    jsonable,
)
from server.spool import default_spool_dir

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

    In a multi-worker job every process adds its own LiveMonitor: they share
    one run, process 0 streams the metrics, every process is listed as a
    worker, and commands apply on every process before the same batch.

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
        run_id: The run to stream into: 32 lowercase hex characters as they
            are, any other name hashed to such an id (the same in every
            process). Give every process of a multi-worker job the same one,
            or none: the processes of a JAX or `MultiWorkerMirroredStrategy`
            job then take process 0's. Defaults to `FITDECK_RUN_ID`, else a
            new id.
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
        ValueError: on a malformed `url`, over-long names or `run_id`,
            `params` that is not a dict, or non-positive timeouts and sizes.
    """

    async_safe = True

    # tf_keras (Keras 2) asks every callback these before it calls any hook;
    # Keras 3 never does. With them one LiveMonitor serves both.
    _supports_tf_logs = False  # tf_keras hands the hooks NumPy/Python values
    _chief_worker_only = None
    validation_data = None

    def _implements_train_batch_hooks(self) -> bool:
        return True

    def _implements_test_batch_hooks(self) -> bool:
        return False

    def _implements_predict_batch_hooks(self) -> bool:
        return False

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
        run_id: str | None = None,
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

        given_id = run_id if run_id is not None else os.environ.get(Env.RUN_ID) or None
        self._named_run = given_id is not None
        self.run_id = _run_id(given_id) if given_id is not None else uuid.uuid4().hex
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
        self._token = token
        self._stream_options: dict[str, Any] = {
            "max_buffer": max_buffer,
            "memory_records": memory_records,
            "spool_dir": Path(spool_dir) if spool_dir is not None else None,
            "connect_timeout": connect_timeout,
            "ping_timeout": ping_timeout,
        }
        self._stream = Stream(url, self.run_id, token, **self._stream_options)
        self._buffer = self._stream.buffer
        self._inbox = self._stream.inbox
        # A multi-worker job: this process's worker index and the job's size.
        self._job: tuple[int, int] | None = None
        self._position = 0  # steps run when the training thread last entered a batch
        self._waiting: list[dict[str, Any]] = []  # commands waiting for their step
        self._max_buffer = max_buffer
        self._fits = 0
        self._epoch = 0
        self._epoch_base = 0  # global steps completed before the current epoch
        self._max_batch = -1
        self._steps = _NO_STEPS  # batches per epoch, when Keras knows it
        self._iter_offset = 0  # the run's step minus optimizer.iterations, this fit
        self._lr: float | None = None
        self._lr_check = False
        self._lr_watch: _LrWatch | None = None
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
        # With steps_per_execution > 1 Keras passes the last batch index of the
        # execution, which can overshoot the epoch: count what really ran.
        if batch >= self._steps:
            batch = self._steps - 1
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
        self._position = self._epoch_base + batch
        if self._inbox or self._lr_check or self._waiting:
            self._between_batches(batch)

    # -- once per epoch or fit -------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self in _ACTIVE:  # the last fit raised unseen by `_watch_fit` and was caught
            self._fail(None, "the previous fit ended by an exception that was caught")
        if self._fits == 0:
            self._join_job()
        _install_exit_hooks()
        _ACTIVE.add(self)
        self._thread_ident = threading.get_ident()
        self._fits += 1
        self._stopped_by_command = False
        steps = (self.params or {}).get("steps")
        self._steps = steps if isinstance(steps, int) and steps > 0 else _NO_STEPS
        iterations = self._read_iterations()
        self._iter_offset = self._epoch_base - iterations if iterations is not None else 0
        name = self.run_name or f"{self.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._record(
            Rec.run_start(time.time(), name, self.project, self.user_params, self._describe())
        )
        lr = self._read_lr()
        self._record_lr(lr, previous=None, source="initial")
        self._watch_lr()
        self._cockpit_call(self._cockpit.begin, self, self._scheduled())
        self._stream.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._cockpit_call(self._cockpit.flush)
        self._epoch = epoch
        self._max_batch = -1
        # Schedulers act in on_epoch_begin, possibly after us: look at the first batch.
        self._lr_check = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The optimizer counts the steps that really ran (any steps_per_execution,
        # a short last execution); the batch indices are the fallback.
        start = self._epoch_base
        iterations = self._read_iterations()
        if iterations is not None and iterations + self._iter_offset >= self._epoch_base:
            self._epoch_base = iterations + self._iter_offset
        else:
            self._epoch_base += self._max_batch + 1
        self._max_batch = -1
        if iterations is not None:
            self._record_schedule(start, self._epoch_base)
        self._check_lr()
        epoch_logs = dict(logs or {})
        if LR_KEY not in epoch_logs and self._lr is not None:
            epoch_logs[LR_KEY] = self._lr
        self._stream.put((EPOCH, epoch, self._epoch_base, time.time(), epoch_logs))
        self._cockpit_call(self._cockpit.epoch_end, epoch, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._unwatch_lr()
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
        spooled = self._stream.finish(self.flush_timeout, failed=status == "failed")
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
        if self._job is None:
            while self._inbox:
                self._apply(self._inbox.popleft(), batch)
        else:
            self._apply_in_step(batch)
        if self._cockpit.paused:  # hold here; the stream thread keeps the link alive
            self._cockpit.hold(batch)

    def _apply_in_step(self, batch: int) -> None:
        """A job: every worker applies a command before the same batch, the one
        the server's commit names; until it is known, hold at the first batch
        boundary after the one this worker reported (see server.workers)."""
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        for command in list(self._waiting):
            at_step = self._stream.commits.get(command["id"])
            if at_step is None:
                seen = command.get("seen_at")
                if seen is None or self._position <= seen:
                    continue  # this worker may still go on
                at_step = self._hold(command["id"])
                if at_step is None:
                    self._waiting.remove(command)
                    self._command_status(
                        command,
                        "rejected",
                        f"the workers did not agree on a step within {HOLD_SECONDS:g} s",
                        self._where(batch),
                    )
                    continue
            if self._position >= at_step:
                self._waiting.remove(command)
                self._apply(command, batch)

    def _hold(self, command_id: int) -> int | None:
        """Wait here, between two batches, for the step the server sets for a command."""
        deadline = time.monotonic() + HOLD_SECONDS
        commits = self._stream.commits
        while command_id not in commits:
            if time.monotonic() > deadline:
                self._stream.warn_once(
                    "hold",
                    f"fitdeck: no step for command {command_id} from {self.url} within "
                    f"{HOLD_SECONDS:g} s; this worker goes on without it.",
                )
                return None
            time.sleep(0.001)
        return commits[command_id]

    # -- multi-worker jobs ---------------------------------------------------------

    def _join_job(self) -> None:
        """In a multi-process job, share one run: every process streams as a worker.

        Each process runs this in its first `on_train_begin`, in the same order,
        so the one collective here (process 0's run id to all, unless the run
        was named) is entered by all.
        """
        job = _job_of(self.model)
        if job is None:
            return
        index, count = job
        if not self._named_run:
            try:
                self.run_id = _broadcast_run_id(self.model, self.run_id, index)
            except Exception as exc:
                _warn_now(
                    f"fitdeck: worker {index} of {count} could not learn worker 0's run id "
                    f"({type(exc).__name__}: {exc}); name the run with "
                    f"LiveMonitor(run_id=...) or {Env.RUN_ID}."
                )
        options = dict(self._stream_options)
        if index > 0:  # its own spool: the run's file is worker 0's
            base = options["spool_dir"] or default_spool_dir()
            options["spool_dir"] = Path(base) / f"worker-{index}"
        stream = Stream(self.url, self.run_id, self._token, **options)
        stream.worker = {"index": index, "count": count}
        stream.position = self._current_position
        self._stream, self._job = stream, job
        self._buffer, self._inbox = stream.buffer, stream.inbox

    def _current_position(self) -> int | None:
        return self._position

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
        watch = self._lr_watch
        if watch is not None:
            watch.muted = True  # this change is recorded here, as the command's
        try:
            optimizer.learning_rate = float(lr)
        finally:
            if watch is not None:
                watch.muted = False
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
        watch = self._lr_watch
        if watch is not None:  # the variable itself: no model access, no JAX state sync
            return watch.read()
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        try:
            lr = optimizer.learning_rate
            if callable(lr) and not hasattr(lr, "assign"):  # a tf_keras schedule
                lr = lr(optimizer.iterations)
            return _scalar(lr)
        except Exception:  # an optimizer without a readable LR: nothing to chart
            return None

    def _read_iterations(self) -> int | None:
        """`optimizer.iterations`: the train steps that really ran (read once an epoch)."""
        try:
            return int(_scalar(self.model.optimizer.iterations))
        except Exception:
            return None

    def _check_lr(self, batch: int | None = None) -> None:
        """Note an LR changed by someone else: a schedule, or another callback."""
        lr = self._read_lr()
        if lr is not None and lr != self._lr:
            scheduled = _schedule_name(self.model.optimizer) is not None
            source = "schedule" if scheduled else "callback"
            self._record_lr(lr, previous=self._lr, source=source, batch=batch)

    def _record_schedule(self, start: int, end: int) -> None:
        """The rate a `LearningRateSchedule` gave each step of the epoch that just ended.

        A schedule changes the rate inside the train step, where no hook sees
        it; it is a function of the step, so its values are computed here, once
        an epoch, for every step (at most MAX_SCHEDULE_POINTS, evenly spread),
        and recorded where they change, as readings (no event per step).
        """
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or end <= start or _schedule_name(optimizer) is None:
            return
        schedule = getattr(_innermost(optimizer), "_learning_rate", None)
        if not callable(schedule):
            return
        import numpy as np

        steps = np.arange(start, end)
        if len(steps) > MAX_SCHEDULE_POINTS:
            steps = np.unique(np.linspace(start, end - 1, MAX_SCHEDULE_POINTS).astype(np.int64))
        try:
            values = [float(v) for v in np.asarray(_numpy(schedule(steps - self._iter_offset)))]
            if len(values) != len(steps):
                raise ValueError("not one value per step")
        except Exception:  # a schedule that takes one step at a time
            try:
                values = [_scalar(schedule(int(s) - self._iter_offset)) for s in steps[:256]]
            except Exception:
                return
        spe = self._steps if self._steps != _NO_STEPS else None
        t = time.time()
        for step, lr in zip(steps.tolist()[: len(values)], values, strict=True):
            if lr != self._lr and math.isfinite(lr):
                self._lr = lr
                progress = self._epoch + (step - start) / spe if spe else self._epoch
                self._record(Rec.lr(t, step, progress, lr, None, "schedule"))

    def _watch_lr(self) -> None:
        """Hear every assignment to the optimizer's learning-rate variable, by anyone.

        A callback that sets the rate every batch, before or after this one in
        the list, assigns the variable: the wrapper reads the new value and the
        optimizer's step counter right then, so the change is recorded at the
        step from which the optimizer uses it, and the batch hooks read nothing.
        """
        self._unwatch_lr()
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or _schedule_name(optimizer) is not None:
            return
        watch = _LrWatch.install(self, optimizer)
        if watch is not None:
            self._lr_watch = watch

    def _unwatch_lr(self) -> None:
        watch, self._lr_watch = self._lr_watch, None
        if watch is not None:
            watch.remove()

    def _lr_assigned(self, lr: float, iterations: int | None) -> None:
        """The LR variable was assigned (by someone else): record a change at its step."""
        if self not in _ACTIVE or lr == self._lr:
            return
        if iterations is None:  # unreadable now: the next batch boundary looks
            self._lr_check = True
            return
        step = iterations + self._iter_offset
        spe = self._steps if self._steps != _NO_STEPS else None
        progress = self._epoch + (step - self._epoch_base) / spe if spe else self._epoch
        previous, self._lr = self._lr, lr
        self._record(Rec.lr(time.time(), step, progress, lr, previous, "callback"))

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
        legacy = type(model).__module__.startswith("tf_keras")
        meta: dict[str, Any] = {
            "fit": self._fits,
            "epochs": params.get("epochs"),
            "steps_per_epoch": params.get("steps"),
            "model_name": getattr(model, "name", None),
            "keras_version": _legacy_version() if legacy else keras.__version__,
            "backend": "tensorflow" if legacy else keras.backend.backend(),
            "lr_schedule": _schedule_name(optimizer) if optimizer is not None else None,
            SETTINGS_META: [LR_KEY],  # series that hold until changed: drawn as steps
        }
        batch_size = params.get("batch_size") or _fit_batch_size()
        if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
            meta["batch_size"] = batch_size  # absent, not null, when it cannot be known
        spe = getattr(model, "steps_per_execution", None)
        if isinstance(spe, int) and spe > 1:
            meta["steps_per_execution"] = spe
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


HOLD_SECONDS = 10.0
"""How long a worker of a job waits between two batches for a command's step."""


def _run_id(value: str) -> str:
    """A run id as given: 32 lowercase hex characters as they are, any other name
    (a job id, say) hashed to 32, the same in every process."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValueError(
            f"run_id must be a non-empty string of at most {MAX_NAME} characters. "
            f"Received {value!r}."
        )
    if RUN_ID.fullmatch(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _job_of(model: Any) -> tuple[int, int] | None:
    """(this process's index, the number of processes) in a multi-process job: JAX
    (`jax.distributed`), or TensorFlow's `MultiWorkerMirroredStrategy` (chief first)."""
    try:
        strategy = getattr(model, "distribute_strategy", None)
        if type(strategy).__name__.startswith(("MultiWorkerMirrored", "CollectiveAllReduce")):
            resolver = strategy.cluster_resolver  # type: ignore[union-attr]
            cluster = resolver.cluster_spec().as_dict()
            chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
            if chiefs + workers < 2:
                return None
            task = resolver.task_id or 0
            index = task if resolver.task_type == "chief" else chiefs + task
            return index, chiefs + workers
        if type(model).__module__.startswith("tf_keras") or keras.backend.backend() != "jax":
            return None
        jax = sys.modules.get("jax")
        count = int(jax.process_count()) if jax is not None else 1
        return (int(jax.process_index()), count) if jax is not None and count > 1 else None
    except Exception:
        return None


def _broadcast_run_id(model: Any, run_id: str, index: int) -> str:
    """Worker 0's run id, on every process of the job (one collective)."""
    import numpy as np

    data = np.frombuffer(bytes.fromhex(run_id), dtype=np.uint8)
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and type(model).__module__.startswith("tf_keras"):
        import tensorflow as tf

        # Worker 0's replicas give the id and a count of one each, the others zeros.
        mine = np.concatenate([data, [1]]).astype(np.int64) * (index == 0)
        total = strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(mine)), axis=None
        ).numpy()
        data = (total[:-1] // max(int(total[-1]), 1)).astype(np.uint8)
        return bytes(data.tolist()).hex()
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(data)
    return bytes(np.asarray(out, dtype=np.uint8).tolist()).hex()


_NO_STEPS = 2**62
"""`_steps` when the number of batches per epoch is unknown: no clamping."""


class _LrWatch:
    """An instance-level wrapper around the LR variable's `assign` (removed after fit).

    Keras 3 and tf_keras optimizers set a float learning rate through
    `variable.assign(value)`; so do `keras.backend.set_value` and the LR
    callbacks. The wrapper calls the original first and never raises.
    """

    def __init__(self, monitor: LiveMonitor, optimizer: Any, variable: Any) -> None:
        self._monitor = weakref.ref(monitor)
        self.optimizer = optimizer
        self.variable = variable
        self.muted = False
        self._original = variable.assign

    @classmethod
    def install(cls, monitor: LiveMonitor, optimizer: Any) -> _LrWatch | None:
        inner = _innermost(optimizer)
        variable: Any = getattr(inner, "_learning_rate", None)
        if not hasattr(variable, "assign"):
            try:
                variable = inner.learning_rate
            except Exception:
                return None
        if not hasattr(variable, "assign") or "assign" in getattr(variable, "__dict__", {}):
            return None  # not a variable, or someone else's wrapper is there already
        watch = cls(monitor, optimizer, variable)
        try:
            variable.assign = watch._assign
        except Exception:  # a variable type that takes no attributes: epoch checks only
            return None
        return watch

    def _assign(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        out = self._original(value, *args, **kwargs)
        monitor = self._monitor()
        if monitor is not None and not self.muted:
            with contextlib.suppress(Exception):  # a wrapper must never break an assign
                lr = self.read()
                if lr is not None and lr != monitor._lr:
                    iterations: int | None
                    try:
                        iterations = int(_scalar(self.optimizer.iterations))
                    except Exception:
                        iterations = None
                    monitor._lr_assigned(lr, iterations)
        return out

    def read(self) -> float | None:
        try:
            return _scalar(self.variable)
        except Exception:
            return None

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            if self.variable.__dict__.get("assign") == self._assign:
                del self.variable.assign


MAX_SCHEDULE_POINTS = 2000
"""Most learning-rate readings of a schedule recorded for one epoch."""


def _numpy(value: Any) -> Any:
    numpy = getattr(value, "numpy", None)
    return numpy() if callable(numpy) else keras.ops.convert_to_numpy(value)


def _scalar(value: Any) -> float:
    """A scalar tensor or variable (Keras 3, TensorFlow, JAX, NumPy) as a float.

    A JAX array spread over several processes is read from this process's copy.
    """
    try:
        return float(value)
    except Exception:
        pass
    inner = getattr(value, "value", value)
    shards = getattr(inner, "addressable_shards", None)
    if shards:
        return float(shards[0].data)
    numpy = getattr(value, "numpy", None)  # TensorFlow's distributed (mirrored) variables
    if callable(numpy):
        return float(numpy())
    return float(keras.ops.convert_to_numpy(value))


def _innermost(optimizer: Any) -> Any:
    """The optimizer inside any `LossScaleOptimizer` (mixed precision) wrappers."""
    for _ in range(8):  # wrappers of wrappers, within reason
        inner = getattr(optimizer, "inner_optimizer", None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def _legacy_version() -> str | None:
    module = sys.modules.get("tf_keras")
    return getattr(module, "__version__", None)


def _fit_batch_size() -> int | None:
    """The batch size `fit` is using, from its data adapter, when it is known.

    Keras does not pass it to callbacks; `fit` (Keras 3: `epoch_iterator`,
    tf_keras: `data_handler`) is on the call stack of `on_train_begin`. Arrays
    and datasets of a fixed batch size know it; generators do not.
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            return None
        if frame.f_code.co_name == "fit":
            names = frame.f_locals
            holder = names.get("epoch_iterator")
            adapter = getattr(holder, "data_adapter", None)
            if adapter is None:
                adapter = getattr(names.get("data_handler"), "_adapter", None)
            if adapter is not None:
                with contextlib.suppress(Exception):
                    size = adapter.batch_size
                    size = size() if callable(size) else size
                    return int(size) if size is not None else None
                return None
        frame = frame.f_back
    return None


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
    optimizer = _innermost(optimizer)
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, _schedule_classes()):
        return type(lr).__name__
    if callable(lr) and not hasattr(lr, "assign"):
        return getattr(lr, "__name__", type(lr).__name__)
    return None


def _schedule_classes() -> tuple[type, ...]:
    """LearningRateSchedule of Keras 3, and of tf_keras when it is loaded."""
    classes: list[type] = [keras.optimizers.schedules.LearningRateSchedule]
    legacy = sys.modules.get("tf_keras")
    if legacy is not None:
        with contextlib.suppress(Exception):
            classes.append(legacy.optimizers.schedules.LearningRateSchedule)
    return tuple(classes)


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
