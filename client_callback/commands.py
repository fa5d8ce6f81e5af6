"""The cockpit: `checkpoint`, `stop` with `checkpoint`, `pause`, `resume` and `set`.

`Cockpit` is LiveMonitor's half for the command kinds beyond `stop` and
`set_lr`. It is called in the training thread at a batch boundary (from
`on_train_batch_begin`, only when a command is waiting), and answers each
command with `Outcome`: applied with its `result`, or rejected with a reason;
it never raises into `fit`.

Pause holds the training thread in `on_train_batch_begin`: it waits for the
next command (polling the inbox every `POLL` seconds) while the stream's own
thread keeps the connection and its heartbeats alive. `resume` (or `stop`)
lets it go on. If the server stays unreachable for `offline_limit` seconds
while paused, training resumes by itself with a warning: a dead server must
not stall training forever.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from client_callback import knobs as knob_mod
from client_callback.knobs import Knob
from client_callback.watch import Watcher, siblings
from server.protocol import Rec

__all__ = ["COCKPIT_KINDS", "Cockpit", "Outcome"]

COCKPIT_KINDS = frozenset({"checkpoint", "pause", "resume", "set"})
"""Kinds `Cockpit.apply` handles; `stop` too when it asks for a checkpoint."""
POLL = 0.02
"""Seconds between looks at the inbox while paused."""


@dataclass
class Outcome:
    """What a command came to: `applied` (with `result`) or `rejected` (with `reason`)."""

    status: str
    reason: str | None = None
    result: dict[str, Any] | None = None


class Host(Protocol):
    """What the cockpit needs of LiveMonitor."""

    run_id: str
    model: Any
    _inbox: Any
    _stream: Any

    def _record(self, record: dict[str, Any]) -> None: ...
    def _where(self, batch: int | None) -> dict[str, Any]: ...
    def _apply(self, command: dict[str, Any], batch: int) -> None: ...
    def _set_lr(self, command: dict[str, Any], batch: int) -> str | None: ...


@dataclass
class Cockpit:
    """Knobs, watched callbacks, checkpoints and pause for one LiveMonitor."""

    host: Host
    checkpoint_dir: Path
    user: list[Knob] = field(default_factory=list)
    watch: list[Any] | None = None
    """Callbacks named by `LiveMonitor(watch=...)`; None: found in on_train_begin."""
    offline_limit: float = 300.0
    knobs: dict[str, Knob] = field(default_factory=dict)
    watcher: Watcher = field(default_factory=lambda: Watcher([]))
    paused: bool = False
    paused_at: float = 0.0
    last: bool = True
    pending: tuple[int, dict[str, Any]] | None = None
    epoch: int = -1
    logs: dict[str, Any] | None = None
    clock: Callable[[], float] = time.monotonic

    # -- once per fit / epoch ------------------------------------------------------

    def begin(self, me: Any, scheduled: bool) -> None:
        """`on_train_begin`: find the other callbacks and the knobs, report them."""
        found = self.watch if self.watch is not None else siblings(me)
        ours = next((i for i, cb in enumerate(found or []) if cb is me), None)
        others = [cb for cb in (found or []) if cb is not me]
        named = knob_mod.callback_names(others)
        self.watcher = Watcher(named)
        # Called after every watched callback's on_epoch_end, we report then; else (or
        # when the order is unknown) at the next on_epoch_begin or on_train_end, once
        # they have all had their say.
        self.last = ours is not None and all(
            i < ours
            for i, cb in enumerate(found or [])
            if any(cb is w for _, w, _ in self.watcher.callbacks)
        )
        self.pending = None
        self.knobs = knob_mod.discover(self.host.model, named, self.user, scheduled)
        self.paused = False
        self.report(-1, None)

    def epoch_end(self, epoch: int, logs: dict[str, Any] | None) -> None:
        if self.last:
            self.report(epoch, logs)
        else:
            self.pending = (epoch, dict(logs or {}))

    def flush(self) -> None:
        """`on_epoch_begin` / `on_train_end`: the report the last epoch end left to us."""
        if self.pending is not None:
            epoch, logs = self.pending
            self.pending = None
            self.report(epoch, logs)

    def report(
        self, epoch: int | None, logs: dict[str, Any] | None, batch: int | None = None
    ) -> None:
        """Send the knobs' values and the watched callbacks' state as a `state` event."""
        if epoch is None:  # after a `set`: the state as of the last epoch
            epoch, logs = self.epoch, self.logs
        self.epoch, self.logs = epoch, logs
        where = self.host._where(batch)
        callbacks = self.watcher.snapshot(self.host.model, epoch, logs)
        knobs = knob_mod.knob_values(self.knobs)
        self.host._record(Rec.state(time.time(), knobs, callbacks, where["step"], where["epoch"]))

    # -- commands --------------------------------------------------------------------

    def apply(self, command: dict[str, Any], batch: int) -> Outcome:
        kind = command.get("kind")
        try:
            if kind == "checkpoint":
                return self._checkpoint(command, batch)
            if kind == "stop":  # with `checkpoint`: save first; no save, no stop
                saved = self._checkpoint(command, batch)
                if saved.status != "applied":
                    return saved
                self.host.model.stop_training = True
                self.paused = False
                where = self.host._where(batch)
                result = {"epoch": where["epoch"], "batch": batch, **(saved.result or {})}
                return Outcome("applied", result=result)
            if kind == "pause":
                return self._pause(command, batch)
            if kind == "resume":
                return self._resume(command, batch)
            if kind == "set":
                return self._set(command, batch)
        except Exception as exc:  # a command must never raise into fit
            return Outcome("rejected", f"{type(exc).__name__}: {exc}")
        return Outcome("rejected", f"unknown command kind {kind!r}")

    def _checkpoint(self, command: dict[str, Any], batch: int) -> Outcome:
        where = self.host._where(batch)
        step = where["step"]
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            path = self.checkpoint_dir / f"{self.host.run_id}-step{step}.keras"
            n = 2
            while path.exists():
                path = self.checkpoint_dir / f"{self.host.run_id}-step{step}-{n}.keras"
                n += 1
            try:
                self.host.model.save(path)
                size = path.stat().st_size
            except BaseException:
                if path.exists():  # no half-written file is left behind
                    path.unlink()
                raise
        except Exception as exc:
            return Outcome("rejected", f"could not save the checkpoint: {exc}"[:1000])
        result = {"path": str(path), "bytes": size, "step": step}
        data = {"path": str(path), "bytes": size, "command_id": command.get("id")}
        self.host._record(Rec.event(time.time(), "checkpoint", data, step, where["epoch"]))
        return Outcome("applied", result=result)

    def _pause(self, command: dict[str, Any], batch: int) -> Outcome:
        if self.paused:
            return Outcome("rejected", "already paused")
        where = self.host._where(batch)
        self.paused, self.paused_at = True, self.clock()
        data = {"command_id": command.get("id")}
        self.host._record(Rec.event(time.time(), "paused", data, where["step"], where["epoch"]))
        return Outcome("applied", result={"step": where["step"]})

    def _resume(self, command: dict[str, Any] | None, batch: int) -> Outcome:
        if not self.paused:
            return Outcome("rejected", "not paused")
        where = self.host._where(batch)
        seconds = round(self.clock() - self.paused_at, 3)
        self.paused = False
        data = {"command_id": command.get("id") if command else None, "seconds": seconds}
        self.host._record(Rec.event(time.time(), "resumed", data, where["step"], where["epoch"]))
        return Outcome("applied", result={"step": where["step"], "seconds": seconds})

    def hold(self, batch: int) -> None:
        """While paused: wait for commands and apply them, until resumed or stopped."""
        offline_since: float | None = None
        while self.paused:
            inbox = self.host._inbox
            while inbox and self.paused:
                self.host._apply(inbox.popleft(), batch)
            if not self.paused or getattr(self.host.model, "stop_training", False):
                self.paused = False
                return
            now = self.clock()
            if self.host._stream.connected:
                offline_since = None
            elif offline_since is None:
                offline_since = now
            elif now - offline_since > self.offline_limit:
                self.host._stream.warn_once(
                    "pause_offline",
                    f"fitdeck: paused, and the server was unreachable for {self.offline_limit:g}"
                    " seconds; training resumes by itself.",
                )
                self._resume(None, batch)
                return
            time.sleep(POLL)

    def _set(self, command: dict[str, Any], batch: int) -> Outcome:
        name, value = command.get("name"), command.get("value")
        knob = self.knobs.get(name) if isinstance(name, str) else None
        if knob is None:
            have = ", ".join(sorted(self.knobs)) or "none"
            return Outcome("rejected", f"unknown knob {name!r}; this run has: {have}"[:1000])
        new, reason = knob.coerce(value)
        if reason is None and knob.check is not None and new is not None:
            problem = knob.check(new)
            reason = f"{name} {problem}" if problem else None
        if reason is not None:
            return Outcome("rejected", reason)
        old = knob.read()
        if name == "optimizer.learning_rate":  # Set LR: charted as an LR change
            lr_reason = self.host._set_lr({"id": command.get("id"), "lr": new}, batch)
            if lr_reason is not None:
                return Outcome("rejected", lr_reason)
        else:
            knob.put(new)
            if knob.after is not None:
                knob.after()
        current = knob.read()
        where = self.host._where(batch)
        data = {"name": name, "old": old, "new": current, "command_id": command.get("id")}
        self.host._record(
            Rec.event(time.time(), "knob_change", data, where["step"], where["epoch"])
        )
        self.report(None, None, batch)
        return Outcome("applied", result={"name": name, "old": old, "new": current})


def default_checkpoint_dir(spool_dir: Path) -> Path:
    """`checkpoints` beside the spool folder: `~/.cache/fitdeck/checkpoints` by default."""
    return spool_dir.parent / "checkpoints"


def checkpoint_dir_from(value: str | os.PathLike[str] | None, spool_dir: Path) -> Path:
    return Path(value) if value is not None else default_checkpoint_dir(spool_dir)
