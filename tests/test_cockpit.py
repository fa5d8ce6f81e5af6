"""The cockpit end to end: checkpoint, stop with checkpoint, pause/resume, knobs and
the watched callbacks' state, with a real `model.fit` against a real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess, callback, make_data, make_model

keras = pytest.importorskip("keras")
from client_callback import LiveMonitor  # noqa: E402
from client_callback.knobs import Knob, callback_names, snake_case  # noqa: E402


def monitor(server: ServerProcess, **kwargs: Any) -> LiveMonitor:
    return LiveMonitor(url=server.url, token=server.token, **kwargs)


def post_at(server: ServerProcess, run_id: str, batch: int, *bodies: dict[str, Any]) -> Any:
    """Posts commands from inside fit, at the end of the given global batch (1-based)."""
    state = {"seen": 0}

    def on_train_batch_end(self: Any, b: int, logs: Any = None) -> None:
        state["seen"] += 1
        if state["seen"] == batch:
            for body in bodies:
                response = server.client.post(f"/api/runs/{run_id}/commands", json=body)
                assert response.status_code == 202, response.text

    return callback(on_train_batch_end=on_train_batch_end)


def slow(seconds: float) -> Any:
    return callback(on_train_batch_end=lambda self, batch, logs=None: time.sleep(seconds))


def final(server: ServerProcess, run_id: str, n: int) -> list[dict[str, Any]]:
    """The run's commands once the first `n` have a final status."""
    return server.wait_for(  # type: ignore[no-any-return]
        lambda: (
            (cmds := server.commands(run_id))[:n]
            and all(c["status"] in ("applied", "rejected", "expired") for c in cmds[:n])
            and cmds
        ),
        what=f"{n} commands to finish",
    )


def events(server: ServerProcess, run_id: str, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    return [e for e in out if e["kind"] == kind]


# -- fast: names and types -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        ("EarlyStopping", "early_stopping"),
        ("ReduceLROnPlateau", "reduce_lr_on_plateau"),
        ("ModelCheckpoint", "model_checkpoint"),
        ("LearningRateScheduler", "learning_rate_scheduler"),
        ("TerminateOnNaN", "terminate_on_nan"),
    ],
)
def test_callback_classes_are_named_in_snake_case(cls: str, name: str) -> None:
    assert snake_case(cls) == name


def test_a_second_instance_of_a_class_is_numbered() -> None:
    a, b = keras.callbacks.EarlyStopping(), keras.callbacks.EarlyStopping()
    assert [n for n, _ in callback_names([a, b])] == ["early_stopping", "early_stopping_2"]


def test_knob_values_are_checked_against_the_type() -> None:
    box = {"v": 3}
    knob = Knob("early_stopping.patience", "int", lambda: box["v"], lambda v: box.update(v=v))
    assert knob.coerce(5) == (5, None) and knob.coerce(5.0) == (5, None)
    assert knob.coerce(2.5)[1] == "early_stopping.patience takes an int, got 2.5"
    assert knob.coerce(True)[1] is not None and knob.coerce(None)[1] is not None
    flag = Knob("model_checkpoint.save_best_only", "bool", lambda: True, lambda v: None)
    assert flag.coerce(False) == (False, None) and flag.coerce(0)[1] is not None


def test_knobs_that_are_not_variables_or_pairs_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match=r"keras\.Variable or a"):
        LiveMonitor(url="http://127.0.0.1:9", knobs={"dropout": 0.2})
    with pytest.raises(ValueError, match="identifiers"):
        LiveMonitor(url="http://127.0.0.1:9", knobs={"no dots.here": (lambda: 1.0, print)})


FAST = settings(deadline=None, database=None, max_examples=100)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@FAST
@given(json_values, st.sampled_from(["float", "int", "bool"]), st.booleans())
def test_a_knob_takes_any_value_its_type_allows_and_gives_a_reason_otherwise(
    value: Any, kind: str, nullable: bool
) -> None:
    knob = Knob("user.x", kind, lambda: None, lambda v: None, nullable=nullable)
    new, reason = knob.coerce(value)
    if reason is not None:
        assert new is None and reason.startswith("user.x ")
    elif new is not None:
        expected = {"float": float, "int": int, "bool": bool}[kind]
        assert type(new) is expected
        if kind == "float":
            assert np.isfinite(new)
    else:
        assert value is None and nullable


@FAST
@given(json_values)
def test_any_state_event_data_is_stored_or_refused_with_a_message(data: Any) -> None:
    from server.records import validate_records

    record = {"seq": 1, "type": "event", "t": 1.0, "kind": "state",
              "data": {"knobs": data, "callbacks": data}}  # fmt: skip
    good, errors, top = validate_records([record], 256)
    assert len(good) + len(errors) == 1 and top == 1
    if errors:
        assert errors[0].startswith("Record 1: ")


@FAST
@given(json_values, json_values)
def test_any_set_body_validates_or_is_a_400_naming_the_field(name: Any, value: Any) -> None:
    from fastapi.exceptions import RequestValidationError

    from server.models import SetCommand, command_body, validation_error

    body = {"kind": "set", "name": name, "value": value}
    try:
        parsed = command_body.adapter.validate_python(body)
    except Exception as exc:
        assert not isinstance(exc, (TypeError, AttributeError))
        errors = [command_body._error(e) for e in exc.errors(include_url=False)]  # type: ignore[attr-defined]
        status, message = validation_error(RequestValidationError(errors).errors())
        assert status == 400 and message.startswith("Bad value for body.")
        return
    assert isinstance(parsed, SetCommand) and parsed.name == name


# -- real fits -----------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_saves_a_model_that_loads(server: ServerProcess, tmp_path: Path) -> None:
    x, y = make_data(128)
    model = make_model()
    mon = monitor(server, checkpoint_dir=tmp_path / "ck")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[mon, post_at(server, mon.run_id, 2, {"kind": "checkpoint"})])  # fmt: skip
    [command] = final(server, mon.run_id, 1)
    assert command["status"] == "applied", command
    result = command["result"]
    path = Path(result["path"])
    assert (
        path.parent == tmp_path / "ck" and path.name == f"{mon.run_id}-step{result['step']}.keras"
    )
    assert path.stat().st_size == result["bytes"] > 0
    assert 2 <= result["step"] <= 3
    loaded = keras.models.load_model(path)
    assert loaded.predict(x[:4], verbose=0).shape == (4, 1)
    [event] = events(server, mon.run_id, "checkpoint")
    assert event["data"]["path"] == str(path) and event["data"]["command_id"] == command["id"]
    assert server.run(mon.run_id)["status"] == "finished"


@pytest.mark.slow
def test_stop_with_checkpoint_saves_then_stops(server: ServerProcess, tmp_path: Path) -> None:
    x, y = make_data(256)
    model = make_model()
    mon = monitor(server, checkpoint_dir=tmp_path)
    stop = post_at(server, mon.run_id, 3, {"kind": "stop", "checkpoint": True})
    history = model.fit(x, y, epochs=20, batch_size=32, verbose=0,
                        callbacks=[mon, stop, slow(0.01)])  # fmt: skip
    assert len(history.history["loss"]) < 20
    [command] = final(server, mon.run_id, 1)
    assert command["status"] == "applied" and command["args"] == {"checkpoint": True}
    assert {"epoch", "batch", "path", "bytes", "step"} <= set(command["result"])
    assert keras.models.load_model(command["result"]["path"]) is not None
    assert server.wait_for(lambda: server.run(mon.run_id)["status"] == "stopped")


@pytest.mark.slow
def test_checkpoint_into_a_path_that_cannot_be_a_folder_is_rejected_and_fit_goes_on(
    server: ServerProcess,
) -> None:
    x, y = make_data(128)
    model = make_model()
    mon = monitor(server, checkpoint_dir="/dev/null/x")
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                        callbacks=[mon, post_at(server, mon.run_id, 2, {"kind": "checkpoint"},
                                                {"kind": "stop", "checkpoint": True})])  # fmt: skip
    assert len(history.history["loss"]) == 3, "a failed save must not stop or break fit"
    checkpoint, stop = final(server, mon.run_id, 2)
    for command in (checkpoint, stop):
        assert command["status"] == "rejected"
        assert command["reason"].startswith("could not save the checkpoint:"), command
        assert "/dev/null/x" in command["reason"]
    assert server.run(mon.run_id)["status"] == "finished"


@pytest.mark.slow
def test_pause_holds_the_steps_past_the_grace_and_resume_continues_at_the_same_step(
    make_server: Any,
) -> None:
    server = make_server(env={"FITDECK_DISCONNECT_GRACE": "0.5"})
    x, y = make_data(256)
    model = make_model()
    mon = monitor(server)
    seen: list[tuple[float, int]] = []
    counter = callback(
        on_train_batch_begin=lambda self, b, logs=None: seen.append((time.monotonic(), b))
    )
    post = lambda body: server.client.post(f"/api/runs/{mon.run_id}/commands", json=body)  # noqa: E731
    report: dict[str, Any] = {}

    def steer() -> None:
        server.wait_for(lambda: len(seen) >= 3, what="training to start")
        assert post({"kind": "pause"}).status_code == 202
        server.wait_for(lambda: server.run(mon.run_id)["status"] == "paused", what="paused")
        held = len(seen)
        step = server.run(mon.run_id)["step"]
        time.sleep(2.0)  # four times the disconnect grace
        report["held"] = (held, len(seen))
        report["run"] = server.run(mon.run_id)
        report["step"] = (step, server.run(mon.run_id)["step"])
        assert post({"kind": "resume"}).status_code == 202

    thread = threading.Thread(target=steer)
    thread.start()
    model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[mon, counter, slow(0.02)])
    thread.join()
    assert report["held"][0] == report["held"][1], "no batch may begin while paused"
    assert report["step"][0] == report["step"][1], "no batch point may arrive while paused"
    assert report["run"]["status"] == "paused", "a pause longer than the grace fails no run"
    pause, resume = final(server, mon.run_id, 2)
    assert pause["status"] == resume["status"] == "applied"
    assert pause["result"]["step"] == resume["result"]["step"], "resume goes on at the same step"
    assert resume["result"]["seconds"] >= 1.5
    assert len(seen) == 4 * 8, "every batch still ran"
    assert server.wait_for(lambda: server.run(mon.run_id)["status"] == "finished")
    assert [e["kind"] for e in events(server, mon.run_id, "paused")] == ["paused"]
    assert len(events(server, mon.run_id, "resumed")) == 1


@pytest.mark.slow
def test_stop_works_while_paused(server: ServerProcess) -> None:
    x, y = make_data(256)
    model = make_model()
    mon = monitor(server)
    history = model.fit(x, y, epochs=10, batch_size=32, verbose=0,
                        callbacks=[mon, post_at(server, mon.run_id, 2, {"kind": "pause"}),
                                   post_at(server, mon.run_id, 2, {"kind": "stop"})])  # fmt: skip
    assert len(history.history["loss"]) == 1
    pause, stop = final(server, mon.run_id, 2)
    assert pause["status"] == stop["status"] == "applied"
    assert server.wait_for(lambda: server.run(mon.run_id)["status"] == "stopped")


@pytest.mark.slow
def test_early_stopping_with_patience_raised_from_the_dashboard_runs_past_its_stop(
    server: ServerProcess,
) -> None:
    """patience=0 and an impossible min_delta stop after epoch 2; patience 100 does not."""
    x, y = make_data(128)

    def train(*extra: Any, raise_to: int | None = None) -> tuple[LiveMonitor, int]:
        model = make_model()
        stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
        mon = monitor(server)
        steer = []
        if raise_to is not None:
            body = {"kind": "set", "name": "early_stopping.patience", "value": raise_to}
            steer = [post_at(server, mon.run_id, 1, body)]
        history = model.fit(x, y, epochs=5, batch_size=32, verbose=0,
                            callbacks=[mon, stopper, *steer, slow(0.01)])  # fmt: skip
        return mon, len(history.history["loss"])

    _, untouched = train()
    assert untouched == 2
    mon, raised = train(raise_to=100)
    assert raised == 5
    [command] = final(server, mon.run_id, 1)
    assert command["status"] == "applied"
    assert command["result"] == {"name": "early_stopping.patience", "old": 0, "new": 100}
    body = server.client.get(f"/api/runs/{mon.run_id}").json()
    assert body["knobs"]["early_stopping.patience"] == {"value": 100, "type": "int"}
    assert body["knobs"]["optimizer.learning_rate"]["type"] == "float"
    [stopping] = [c for c in body["callbacks"] if c["name"] == "early_stopping"]
    assert stopping["class"] == "EarlyStopping"
    state = stopping["state"]
    assert state["monitor"] == "loss" and state["patience"] == 100 and state["wait"] == 4
    assert state["epochs_left"] == 96
    [change] = events(server, mon.run_id, "knob_change")
    assert change["data"]["name"] == "early_stopping.patience" and change["data"]["new"] == 100


@pytest.mark.slow
def test_bad_sets_are_rejected_with_the_reason(server: ServerProcess) -> None:
    x, y = make_data(128)
    model = make_model()
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=3)
    mon = monitor(server)
    bodies = [
        {"kind": "set", "name": "optimizer.nonesuch", "value": 1.0},
        {"kind": "set", "name": "early_stopping.patience", "value": 2.5},
        {"kind": "set", "name": "early_stopping.patience", "value": -1},
        {"kind": "set", "name": "early_stopping.patience", "value": True},
        {"kind": "set", "name": "optimizer.learning_rate", "value": 0},
    ]
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[mon, stopper, post_at(server, mon.run_id, 1, *bodies)])  # fmt: skip
    commands = final(server, mon.run_id, len(bodies))
    assert [c["status"] for c in commands] == ["rejected"] * len(bodies)
    reasons = [c["reason"] for c in commands]
    assert reasons[0].startswith("unknown knob 'optimizer.nonesuch'; this run has: ")
    assert "early_stopping.patience" in reasons[0]
    assert reasons[1] == "early_stopping.patience takes an int, got 2.5"
    assert reasons[2] == "early_stopping.patience must be >= 0, got -1"
    assert reasons[3] == "early_stopping.patience takes an int, got True"
    assert reasons[4] == "optimizer.learning_rate must be > 0, got 0.0"
    assert stopper.patience == 3


@pytest.mark.slow
def test_optimizer_user_and_callback_knobs_are_reported_and_set(server: ServerProcess) -> None:
    x, y = make_data(128)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="binary_crossentropy")
    scale = keras.Variable(1.0, name="scale")
    box = {"dropout": 0.2}
    knobs = {"scale": scale, "dropout": (lambda: box["dropout"], lambda v: box.update(dropout=v))}
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=5)
    saver = keras.callbacks.ModelCheckpoint(
        str(Path(server.db_path).parent / "best.keras"), monitor="loss"
    )
    mon = monitor(server, knobs=knobs)
    bodies = [
        {"kind": "set", "name": "optimizer.momentum", "value": 0.5},
        {"kind": "set", "name": "user.scale", "value": 3},
        {"kind": "set", "name": "user.dropout", "value": 0.4},
        {"kind": "set", "name": "reduce_lr_on_plateau.factor", "value": 0.25},
        {"kind": "set", "name": "reduce_lr_on_plateau.factor", "value": 2.0},
        {"kind": "set", "name": "model_checkpoint.save_best_only", "value": True},
        {"kind": "set", "name": "optimizer.learning_rate", "value": 0.02},
    ]
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[plateau, mon, saver, post_at(server, mon.run_id, 1, *bodies)])  # fmt: skip
    commands = final(server, mon.run_id, len(bodies))
    assert [c["status"] for c in commands] == ["applied"] * 4 + ["rejected"] + ["applied"] * 2
    assert commands[0]["result"] == {"name": "optimizer.momentum", "old": 0.9, "new": 0.5}
    assert float(model.optimizer.momentum) == 0.5
    assert float(np.asarray(scale.numpy())) == 3.0 and box["dropout"] == 0.4
    assert plateau.factor == 0.25 and saver.save_best_only is True
    assert commands[4]["reason"] == (
        "reduce_lr_on_plateau.factor must be in (0, 1) (ReduceLROnPlateau), got 2.0"
    )
    assert server.run(mon.run_id)["lr"] == pytest.approx(0.02)
    body = server.client.get(f"/api/runs/{mon.run_id}").json()
    knobs_seen = body["knobs"]
    assert knobs_seen["user.scale"] == {"value": 3.0, "type": "float"}
    assert knobs_seen["user.dropout"] == {"value": 0.4, "type": "float"}
    assert knobs_seen["optimizer.momentum"]["value"] == 0.5
    assert knobs_seen["reduce_lr_on_plateau.patience"] == {"value": 5, "type": "int"}
    names = {c["name"]: c for c in body["callbacks"]}
    assert set(names) == {"reduce_lr_on_plateau", "model_checkpoint"}
    assert names["reduce_lr_on_plateau"]["state"]["next_lr"] == pytest.approx(0.02 * 0.25)
    saved = names["model_checkpoint"]["state"]
    assert saved["last_file"].endswith("best.keras") and saved["saved_at"] > 0


@pytest.mark.slow
def test_an_optimizer_knob_takes_effect_in_the_compiled_train_step() -> None:
    """momentum is a Python float baked into the traced step: the knob retraces it."""
    from client_callback.knobs import discover

    x, y = make_data(256)

    def train(set_momentum: bool) -> Any:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")

        def on_train_batch_begin(self: Any, batch: int, logs: Any = None) -> None:
            if batch == 3 and set_momentum:
                knob = discover(self.model, [], [], scheduled=False)["optimizer.momentum"]
                knob.put(0.0)
                assert knob.after is not None
                knob.after()

        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False,
                  callbacks=[callback(on_train_batch_begin=on_train_batch_begin)])  # fmt: skip
        return model.get_weights()[0]

    assert not np.allclose(train(False), train(True))
