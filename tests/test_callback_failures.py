"""A `fit` that raises leaves a `failed` run with the exception's type and message.

Keras calls no hook when `fit` raises; LiveMonitor sees the exception on its way
out of `fit` (`monitor._watch_fit`), wherever it came from and whether or not the
caller catches it, and the run is failed on the server before `fit` re-raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ServerProcess, callback, free_port, make_data, make_model

keras = pytest.importorskip("keras")
from client_callback import FitdeckWarning, LiveMonitor  # noqa: E402

pytestmark = pytest.mark.slow

FLUSH = 5.0


class Boom(RuntimeError):
    """An exception of the training script's own."""


def raising(hook: str, at: int = 0) -> Any:
    """A callback whose `hook` raises `Boom` on call number `at` (0: the first)."""
    calls = [0]

    def fn(self: Any, *args: Any, **kwargs: Any) -> None:
        if calls[0] == at:
            raise Boom(f"{hook} failed on call {at}")
        calls[0] += 1

    return callback(**{hook: fn})


def fit_raising(
    server: ServerProcess, callbacks: list[Any], **fit: Any
) -> tuple[LiveMonitor, float]:
    """Runs a fit that must raise `Boom`; the monitor and how long the raise took."""
    x, y = make_data(128)
    model = make_model()
    mon = LiveMonitor(url=server.url, token=server.token, flush_timeout=FLUSH)
    cbs = [mon if c is None else c for c in callbacks]
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Boom):
            model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=cbs, **fit)
    took = time.monotonic() - started
    ours = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert not ours, ours  # a reachable server: nothing to warn about
    return mon, took


def assert_failed_with(server: ServerProcess, run_id: str, message: str) -> None:
    run = server.run(run_id)  # at once: fit re-raised only after the server had it
    assert run["status"] == "failed", run
    assert run["error"] == {"type": "Boom", "message": message}
    events = server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert events[-1]["kind"] == "train_end" and events[-1]["data"]["status"] == "failed"


@pytest.mark.parametrize(
    ("hook", "at"),
    [
        ("on_train_begin", 0),
        ("on_epoch_begin", 0),
        ("on_train_batch_begin", 0),
        ("on_train_batch_end", 2),
        ("on_epoch_end", 0),
        ("on_test_begin", 0),
    ],
)
def test_a_fit_raising_in_any_hook_is_failed_with_type_and_message_within_flush_timeout(
    server: ServerProcess, hook: str, at: int
) -> None:
    """The first hooks included: the run exists, is `failed` with the exception, and
    the caller, which caught it, got it back within `flush_timeout`."""
    mon, took = fit_raising(server, [None, raising(hook, at)], validation_split=0.25)
    assert took < FLUSH + 5  # the fit itself is ~1 s; the flush waits at most FLUSH
    assert_failed_with(server, mon.run_id, f"{hook} failed on call {at}")


def test_a_callback_ahead_of_the_monitor_raising_in_on_train_begin_still_leaves_a_run(
    server: ServerProcess,
) -> None:
    """LiveMonitor's on_train_begin never ran: the run is made from what is known."""
    mon, _ = fit_raising(server, [raising("on_train_begin"), None])
    assert_failed_with(server, mon.run_id, "on_train_begin failed on call 0")
    assert server.run(mon.run_id)["meta"]["model_name"] == "tiny_mlp"


def test_the_data_raising_mid_epoch_is_failed_with_what_fit_raised(
    server: ServerProcess,
) -> None:
    x, y = make_data(128)

    class Data(keras.utils.PyDataset):  # type: ignore[misc]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            if i == 2:
                raise Boom("batch 2 is unreadable")
            return x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]

    model = make_model()
    mon = LiveMonitor(url=server.url, token=server.token, flush_timeout=FLUSH)
    with pytest.raises(Exception, match="batch 2 is unreadable") as raised:
        model.fit(Data(), epochs=1, verbose=0, callbacks=[mon])
    # TensorFlow wraps it (UnknownError): the run says what the caller got.
    run = server.run(mon.run_id)
    assert run["status"] == "failed"
    assert run["error"] == {"type": type(raised.value).__name__,
                            "message": str(raised.value)[:2000]}  # fmt: skip


def test_a_caught_failure_then_a_second_fit_continues_the_same_run(
    server: ServerProcess,
) -> None:
    x, y = make_data(128)
    model = make_model()
    mon = LiveMonitor(url=server.url, token=server.token, flush_timeout=FLUSH)
    with pytest.raises(Boom):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0,
                  callbacks=[mon, raising("on_train_batch_end", 1)])  # fmt: skip
    assert server.run(mon.run_id)["error"]["type"] == "Boom"
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[mon])
    run = server.run(mon.run_id)
    assert run["status"] == "finished" and run["error"] is None


def test_keyboard_interrupt_is_failed_as_such(server: ServerProcess) -> None:
    def interrupt(self: Any, batch: int, logs: Any = None) -> None:
        if batch == 1:
            raise KeyboardInterrupt

    x, y = make_data(128)
    model = make_model()
    mon = LiveMonitor(url=server.url, token=server.token, flush_timeout=FLUSH)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0,
                  callbacks=[mon, callback(on_train_batch_begin=interrupt)])  # fmt: skip
    assert server.run(mon.run_id)["status"] == "failed"
    assert server.run(mon.run_id)["error"] == {"type": "KeyboardInterrupt", "message": ""}


UNCAUGHT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from tests.conftest import make_data, make_model, callback
    from client_callback import LiveMonitor
    x, y = make_data(64)
    mon = LiveMonitor(url={url!r}, token={token!r}, run_name="uncaught")
    print(mon.run_id, flush=True)
    def boom(self, epoch, logs=None):
        raise ValueError("no first epoch")
    make_model().fit(x, y, epochs=3, verbose=0, callbacks=[mon, callback(on_epoch_begin=boom)])
    """
)


def test_an_uncaught_exception_in_the_first_on_epoch_begin_fails_the_run_once(
    server: ServerProcess,
) -> None:
    """The process dies of it: the run is failed with it (not spooled), and the one
    report of it is Python's traceback, not a fitdeck warning."""
    code = UNCAUGHT.format(root=str(ROOT), url=server.url, token=server.token)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "ValueError: no first epoch" in proc.stderr
    assert "FitdeckWarning" not in proc.stderr, proc.stderr
    run_id = proc.stdout.strip()
    run = server.run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == {"type": "ValueError", "message": "no first epoch"}


@pytest.mark.parametrize("hook", ["on_train_begin", "on_train_batch_end"])
def test_a_fit_raising_with_no_server_costs_one_warning_and_spools_the_failure(
    tmp_path: Path, hook: str
) -> None:
    """One problem (no server), one warning, whatever the timing: it is given by the
    stream's first attempt, which the end of the fit waits for, so the end of the fit
    has nothing to add. The spool ends with the failure, for `fitdeck sync`."""
    x, y = make_data(64)
    mon = LiveMonitor(url=f"http://127.0.0.1:{free_port()}", flush_timeout=FLUSH,
                      spool_dir=tmp_path)  # fmt: skip
    cbs = [raising(hook), mon] if hook == "on_train_begin" else [mon, raising(hook, 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Boom):
            make_model().fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=cbs)
        thread = mon._stream._thread
        assert thread is not None
        thread.join(10)  # anything the thread might still say is said inside
        assert not thread.is_alive()
    ours = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert len(ours) == 1, ours
    assert ours[0].startswith("fitdeck: cannot stream to ws://127.0.0.1:"), ours
    assert "No server listens there" in ours[0] and "fitdeck sync" in ours[0]
    lines = (tmp_path / f"{mon.run_id}.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["type"] == "run_end" and last["status"] == "failed"
    assert last["error"]["type"] == "Boom"


def test_params_json_cannot_carry_are_sent_as_text_with_one_warning(
    server: ServerProcess,
) -> None:
    """An int beyond 64 bits or a lone surrogate (os.fsdecode of a non-UTF-8 name) once
    killed the stream thread: nothing streamed, nothing said. Now: text, one warning."""
    name = b"data-\xff.csv".decode("utf-8", "surrogateescape")
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["d"] = {}
        node = node["d"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = LiveMonitor(url=server.url, token=server.token, run_name=name,
                          params={"big": 2**64, "file": name, "ok": 3, "deep": deep})  # fmt: skip
        x, y = make_data(64)
        make_model().fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[mon])
    ours = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert len(ours) == 1, ours
    # The first three places are named, the run name's surrogate counted after them.
    assert "params['big']" in ours[0] and "params['file']" in ours[0]
    assert "nested deeper than 32 levels and 1 more." in ours[0]
    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    assert run["params"]["big"] == str(2**64) and run["params"]["ok"] == 3
    assert run["params"]["file"] == "data-\\udcff.csv" and run["name"] == "data-\\udcff.csv"
    assert server.series(mon.run_id, "batch", "loss")["step"] == [1, 2]
