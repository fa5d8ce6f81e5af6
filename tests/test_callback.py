"""LiveMonitor against a real server with a real `model.fit`."""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, callback, make_data, make_model

keras = pytest.importorskip("keras")
from client_callback import FitdeckWarning, LiveMonitor  # noqa: E402
from client_callback.monitor import _schedule_name  # noqa: E402


def monitor(server: ServerProcess, **kwargs: Any) -> LiveMonitor:
    return LiveMonitor(url=server.url, token=server.token, **kwargs)


def slow(seconds: float) -> Any:
    """Makes each batch last a little, so commands meet a running fit."""
    return callback(on_train_batch_end=lambda self, batch, logs=None: time.sleep(seconds))


def post_at(server: ServerProcess, run_id: str, batch: int, body: dict[str, Any]) -> Any:
    """Posts a command from inside fit, at the end of the given global batch."""
    state: dict[str, Any] = {"seen": 0, "posted_at": None, "response": None}

    def on_train_batch_end(self: Any, b: int, logs: Any = None) -> None:
        state["seen"] += 1
        if state["seen"] == batch:
            state["response"] = server.client.post(f"/api/runs/{run_id}/commands", json=body)
            state["posted_at"] = state["seen"]

    cb = callback(on_train_batch_end=on_train_batch_end)
    cb.state = state
    return cb


@pytest.mark.slow
def test_every_batch_and_epoch_is_stored_once_equal_to_what_keras_logged(
    server: ServerProcess,
) -> None:
    x, y = make_data(256)
    model = make_model()
    batches: list[dict[str, float]] = []
    recorder = callback(on_train_batch_end=lambda self, b, logs=None: batches.append(dict(logs)))
    mon = monitor(server, run_name="exactly-once", project="tests", params={"units": 16})
    history = model.fit(
        x, y, epochs=3, batch_size=32, validation_split=0.25, callbacks=[mon, recorder], verbose=0
    )

    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    assert run["name"] == "exactly-once" and run["project"] == "tests"
    assert run["params"] == {"units": 16}
    assert run["meta"]["epochs"] == 3 and run["meta"]["steps_per_epoch"] == 6
    assert run["meta"]["optimizer"]["class_name"] == "SGD"
    assert run["meta"]["param_count"] == model.count_params()
    assert [layer["class_name"] for layer in run["meta"]["layers"]] == ["Dense", "Dense"]

    for key, values in history.history.items():
        series = server.series(mon.run_id, "epoch", key)
        assert series["value"] == values, key
        assert series["epoch"] == [0, 1, 2]
        assert series["step"] == [6, 12, 18]

    assert len(batches) == 18
    for key in ("loss", "accuracy"):
        series = server.series(mon.run_id, "batch", key)
        assert series["step"] == list(range(1, 19))
        assert series["value"] == [b[key] for b in batches]
        assert series["downsampled"] is False

    exported = list(
        csv.DictReader(server.client.get(f"/api/runs/{mon.run_id}/export.csv").text.splitlines())
    )
    assert sum(1 for r in exported if r["scope"] == "batch" and r["key"] == "loss") == 18


@pytest.mark.slow
def test_stop_command_ends_fit_early_and_is_applied(server: ServerProcess) -> None:
    x, y = make_data(256)
    model = make_model()
    mon = monitor(server, run_name="stop-me")
    poster = post_at(server, mon.run_id, batch=10, body={"kind": "stop"})
    history = model.fit(
        x, y, epochs=30, batch_size=32, callbacks=[mon, poster, slow(0.02)], verbose=0
    )

    assert poster.state["response"].status_code == 202
    assert len(history.epoch) < 30
    assert server.run(mon.run_id)["status"] == "stopped"
    (command,) = server.commands(mon.run_id)
    assert command["kind"] == "stop" and command["status"] == "applied"
    assert command["step"] >= 10 and command["epoch"] == command["step"] // 8
    assert command["batch"] == command["step"] % 8
    # fit returned after the batch during which the command was applied
    assert server.run(mon.run_id)["step"] == command["step"] + 1


@pytest.mark.slow
def test_set_lr_command_changes_the_optimizer_within_one_batch(server: ServerProcess) -> None:
    x, y = make_data(256)
    model = make_model(lr=0.01)
    lrs: list[float] = []
    probe = callback(
        on_train_batch_begin=lambda self, b, logs=None: lrs.append(
            float(self.model.optimizer.learning_rate)
        )
    )
    mon = monitor(server, run_name="set-lr")
    poster = post_at(server, mon.run_id, batch=5, body={"kind": "set_lr", "lr": 0.25})
    model.fit(x, y, epochs=4, batch_size=32, callbacks=[mon, probe, poster, slow(0.05)], verbose=0)

    (command,) = server.commands(mon.run_id)
    assert command["status"] == "applied", command
    # posted after batch 5 completed; applied before the 6th or 7th batch ran
    assert 5 <= command["step"] <= 6
    assert lrs[command["step"]] == pytest.approx(0.25)
    assert all(lr == pytest.approx(0.01) for lr in lrs[: command["step"]])
    assert float(model.optimizer.learning_rate) == pytest.approx(0.25)

    lr_series = server.series(mon.run_id, "batch", "learning_rate")
    assert lr_series["step"] == [0, command["step"]]
    assert lr_series["value"] == [pytest.approx(0.01), pytest.approx(0.25)]
    epoch_lr = server.series(mon.run_id, "epoch", "learning_rate")["value"]
    assert epoch_lr[-1] == pytest.approx(0.25)
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    change = next(e for e in events if e["kind"] == "lr_change")
    assert change["data"]["source"] == "command" and change["data"]["command_id"] == command["id"]


@pytest.mark.slow
def test_set_lr_on_a_schedule_is_rejected_and_training_finishes(server: ServerProcess) -> None:
    x, y = make_data(256)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=10, decay_rate=0.9)
    model = make_model(lr=schedule)
    mon = monitor(server, run_name="schedule")
    poster = post_at(server, mon.run_id, batch=3, body={"kind": "set_lr", "lr": 0.1})
    history = model.fit(
        x, y, epochs=3, batch_size=32, callbacks=[mon, poster, slow(0.02)], verbose=0
    )

    assert len(history.epoch) == 3
    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    assert run["meta"]["lr_schedule"] == "ExponentialDecay"
    (command,) = server.commands(mon.run_id)
    assert command["status"] == "rejected"
    assert "ExponentialDecay" in command["reason"] and "cannot be set" in command["reason"]
    # the schedule's decay shows in the LR series, once per epoch
    lr_values = server.series(mon.run_id, "epoch", "learning_rate")["value"]
    assert lr_values == sorted(lr_values, reverse=True) and lr_values[0] < 0.05


@pytest.mark.slow
def test_a_schedule_is_seen_through_mixed_precision(server: ServerProcess) -> None:
    """Under `mixed_float16` Keras wraps the optimizer in a LossScaleOptimizer: the
    schedule inside is still found, reported, and refuses set_lr with its reason."""
    x, y = make_data(256)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=10, decay_rate=0.9)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = make_model(lr=schedule)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        mon = monitor(server, run_name="mixed-precision-schedule")
        poster = post_at(server, mon.run_id, batch=3, body={"kind": "set_lr", "lr": 0.1})
        history = model.fit(
            x, y, epochs=3, batch_size=32, callbacks=[mon, poster, slow(0.02)], verbose=0
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")

    assert len(history.epoch) == 3
    run = server.run(mon.run_id)
    assert run["meta"]["lr_schedule"] == "ExponentialDecay"
    assert run["meta"]["optimizer"]["class_name"] == "LossScaleOptimizer"
    (command,) = server.commands(mon.run_id)
    assert command["status"] == "rejected"
    assert "ExponentialDecay" in command["reason"] and "cannot be set" in command["reason"]
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    sources = {e["data"]["source"] for e in events if e["kind"] == "lr_change"}
    assert sources == {"schedule"}


def test_schedule_name_unwraps_a_loss_scale_optimizer() -> None:
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule))
    assert _schedule_name(wrapped) == "CosineDecay"
    assert _schedule_name(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))) is None
    assert _schedule_name(keras.optimizers.SGD(0.1)) is None


@pytest.mark.slow
def test_works_beside_the_keras_callbacks(server: ServerProcess, tmp_path: Path) -> None:
    x, y = make_data(256)
    model = make_model(lr=0.01)
    mon = monitor(server, run_name="beside-keras")
    csv_path = tmp_path / "log.csv"
    ckpt = tmp_path / "best.keras"
    history = model.fit(
        x,
        y,
        epochs=10,
        batch_size=64,
        validation_split=0.25,
        verbose=0,
        callbacks=[
            mon,
            # never "improves" after the first epoch: stops after epoch index 2
            keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=2),
            # halves the LR at the end of epochs 1 and 2
            keras.callbacks.ReduceLROnPlateau(
                monitor="loss", min_delta=1e9, patience=0, factor=0.5
            ),
            keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=False),
            keras.callbacks.CSVLogger(str(csv_path)),
            keras.callbacks.TerminateOnNaN(),
        ],
    )

    assert history.epoch == [0, 1, 2]  # EarlyStopping still stops
    assert ckpt.exists()  # ModelCheckpoint still saves
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # CSVLogger still logs
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0025)  # ROP still reduces

    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    lr = server.series(mon.run_id, "batch", "learning_rate")
    assert lr["value"] == [pytest.approx(0.01), pytest.approx(0.005), pytest.approx(0.0025)]
    # each reduction is recorded at the step from which it applies: the end of its epoch
    assert lr["step"] == [0, 6, 9]
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    changes = [e for e in events if e["kind"] == "lr_change"]
    assert [e["data"]["source"] for e in changes] == ["callback", "callback"]
    assert any(e["kind"] == "early_stop" for e in events)


@pytest.mark.slow
def test_terminate_on_nan_stops_and_the_nan_is_stored(server: ServerProcess) -> None:
    x, y = make_data(128)
    y[40:] = math.nan  # the loss becomes NaN on the second batch
    model = make_model()
    mon = monitor(server, run_name="diverges")
    history = model.fit(
        x, y, epochs=3, batch_size=32, shuffle=False, verbose=0,
        callbacks=[mon, keras.callbacks.TerminateOnNaN()],
    )  # fmt: skip

    assert len(history.epoch) == 1
    loss = server.series(mon.run_id, "batch", "loss")
    assert loss["step"] == [1, 2]
    assert isinstance(loss["value"][0], float) and loss["value"][1] == "NaN"
    assert server.run(mon.run_id)["status"] == "finished"
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    assert any(e["kind"] == "early_stop" for e in events)


def fitdeck_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]


@pytest.mark.slow
def test_a_wrong_token_is_one_clear_warning_and_the_records_are_kept(
    server: ServerProcess, tmp_path: Path
) -> None:
    x, y = make_data(128)
    model = make_model()
    mon = LiveMonitor(url=server.url, token="not-the-token", spool_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[mon])
    ours = fitdeck_warnings(caught)
    assert len(history.epoch) == 2
    assert len(ours) == 1, ours  # the refusal says where the records went: no second warning
    assert "refused" in ours[0] and "Missing or wrong token" in ours[0], ours
    assert server.client.get(f"/api/runs/{mon.run_id}").status_code == 404
    path = tmp_path / f"{mon.run_id}.jsonl"
    assert str(path) in ours[0] and "fitdeck sync" in ours[0]
    spooled = path.read_text().splitlines()
    # run_start, lr, state, batches, epochs and their states, run_end
    assert len(spooled) - 1 == 1 + 1 + 1 + 8 + 2 * 2 + 1


@pytest.mark.slow
@pytest.mark.parametrize("token", ["not-the-token", None])
def test_a_refused_token_says_how_to_pass_it_and_where_it_is_kept(
    make_server: Callable[..., ServerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
) -> None:
    """Wrong or missing, the one warning names FITDECK_TOKEN and the token file: the
    server's own when this machine's discovery file names it, else where it usually is."""
    runtime = tmp_path / "runtime"
    srv = make_server(db_path=tmp_path / "team.db", token="the-real-token",
                      env={"FITDECK_RUNTIME_DIR": str(runtime)})  # fmt: skip
    # Missing: the callback cannot see the server's discovery file (another user's server).
    seen = runtime if token is not None else tmp_path / "elsewhere"
    monkeypatch.setenv("FITDECK_RUNTIME_DIR", str(seen))
    monkeypatch.delenv("FITDECK_TOKEN", raising=False)
    x, y = make_data(64)
    model = make_model()
    mon = LiveMonitor(url=srv.url, token=token, spool_dir=tmp_path / "spool")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[mon])
    (message,) = fitdeck_warnings(caught)
    where = (
        f"{(tmp_path / 'team.db').resolve()}.token" if token else "<db>.token beside its database"
    )
    assert message.startswith(
        f"fitdeck: the server at {srv.url} refused the token (1008 Missing or wrong token.): "
        "pass LiveMonitor(token=...) or set FITDECK_TOKEN; `fitdeck serve` prints the token "
        f"and keeps it in {where}."
    ), message
    assert "the-real-token" not in message


@pytest.mark.slow
def test_with_no_url_and_no_token_it_streams_to_the_local_server(
    make_server: Callable[..., ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("FITDECK_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("FITDECK_URL", raising=False)
    monkeypatch.delenv("FITDECK_TOKEN", raising=False)
    srv = make_server(token="found-token", env={"FITDECK_RUNTIME_DIR": str(runtime)})
    x, y = make_data(64)
    model = make_model()
    mon = LiveMonitor(run_name="found")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[mon])
    assert srv.run(mon.run_id)["status"] == "finished"
    assert srv.series(mon.run_id, "batch", "loss")["step"] == [1, 2]


@pytest.mark.slow
def test_works_beside_learning_rate_scheduler_and_tensorboard(
    server: ServerProcess, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    x, y = make_data(256)
    model = make_model(lr=0.01)
    mon = monitor(server, run_name="beside-scheduler")
    halve_after_first = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: lr if epoch == 0 else lr * 0.5
    )
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"), update_freq=1)
    history = model.fit(
        x, y, epochs=3, batch_size=32, verbose=0, callbacks=[mon, halve_after_first, board]
    )

    assert len(history.epoch) == 3
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))  # TensorBoard wrote
    lr = server.series(mon.run_id, "batch", "learning_rate")
    # the scheduler acts in on_epoch_begin, after LiveMonitor's: seen at the epoch's first batch
    assert lr["step"] == [0, 8, 16]
    assert lr["value"] == [pytest.approx(0.01), pytest.approx(0.005), pytest.approx(0.0025)]
    events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
    sources = [e["data"]["source"] for e in events if e["kind"] == "lr_change"]
    assert sources == ["callback", "callback"]


# -- values the server cannot keep ------------------------------------------------------


class _Opaque:
    def __str__(self) -> str:
        return "opaque-object"


@pytest.mark.slow
def test_params_json_cannot_hold_are_sent_as_text_with_one_warning_and_streaming_goes_on(
    server: ServerProcess,
) -> None:
    import numpy as np

    x, y = make_data(128)
    model = make_model()
    params = {"big": 2**70, "path": "/data/\udcff", "np": np.float32(0.5), "obj": _Opaque()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = monitor(server, run_name="odd-params", params=params)
        history = model.fit(x, y, epochs=2, batch_size=32, callbacks=[mon], verbose=0)
    run = server.run(mon.run_id)
    assert run["status"] == "finished"
    assert run["params"] == {"big": str(2**70), "path": "/data/\\udcff", "np": 0.5,
                             "obj": "opaque-object"}  # fmt: skip
    assert server.series(mon.run_id, "epoch", "loss")["value"] == history.history["loss"]
    assert server.series(mon.run_id, "batch", "loss")["step"] == list(range(1, 9))
    fitdeck = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert len(fitdeck) == 1, fitdeck
    assert "sent as text" in fitdeck[0] and "params['big']" in fitdeck[0]
    assert "params['path']" in fitdeck[0] and "params['obj']" in fitdeck[0]


@pytest.mark.slow
def test_a_stream_thread_that_meets_an_unexpected_error_says_so_and_goes_on(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client_callback.stream import Stream

    real = Stream._send_some
    calls = {"n": 0}

    def flaky(self: Stream, ws: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody expected")
        return real(self, ws)

    monkeypatch.setattr(Stream, "_send_some", flaky)
    x, y = make_data(128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = monitor(server, run_name="flaky-stream")
        history = make_model().fit(x, y, epochs=2, batch_size=32, callbacks=[mon], verbose=0)
    assert server.run(mon.run_id)["status"] == "finished"
    assert server.series(mon.run_id, "epoch", "loss")["value"] == history.history["loss"]
    fitdeck = [str(w.message) for w in caught if issubclass(w.category, FitdeckWarning)]
    assert len(fitdeck) == 1 and "RuntimeError: a bug nobody expected" in fitdeck[0], fitdeck
