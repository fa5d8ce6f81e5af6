"""The HTML report's figure (server/report.py): settings are steps held to the end of the run."""

from __future__ import annotations

from typing import Any

from server.downsample import Point
from server.protocol import LR_KEY, SETTINGS_META
from server.report import figure, setting_keys

SPE = 10  # steps per epoch


def batch_points(steps: range, value: Any) -> list[Point]:
    return [Point(s, s / SPE, float(s), value(s)) for s in steps]


def run(**meta: Any) -> dict[str, Any]:
    return {"id": "ab" * 16, "name": "r", "status": "finished", "epoch": 2, "step": 30,
            "meta": {"epochs": 3, "steps_per_epoch": SPE, **meta}, "params": {}}  # fmt: skip


def trace(fig: Any, name: str) -> Any:
    return next(t for t in fig.data if t.name == name)


def test_the_learning_rate_line_runs_to_the_last_batch_of_the_run() -> None:
    """Changes at steps 0 and 12; the run goes on to step 30: the last value shows to x = 3."""
    batch = {
        "loss": (batch_points(range(1, 31), lambda s: 1 / s), False),
        LR_KEY: ([Point(0, 0.0, 0.0, 0.01), Point(12, 1.2, 12.0, 0.001)], False),
    }
    epoch = {"loss": ([Point(10 * (e + 1), e, 0.0, 0.5) for e in range(3)], False)}
    lr = trace(figure(run(), epoch, batch, []), LR_KEY)
    assert list(lr.x) == [0.0, 1.2, 3.0]
    assert list(lr.y) == [0.01, 0.001, 0.001]
    assert lr.line.shape == "hv"


def test_an_epoch_only_learning_rate_runs_to_the_last_epoch() -> None:
    epoch = {
        "loss": ([Point(10 * (e + 1), e, 0.0, 0.5) for e in range(3)], False),
        LR_KEY: ([Point(10, 0, 0.0, 0.1), Point(20, 1, 0.0, 0.05)], False),
    }
    lr = trace(figure(run(), epoch, {}, []), LR_KEY)
    # Epoch index e (0-based, as stored) is drawn at e + 1: the first epoch ends at 1.
    assert list(lr.x) == [1, 2, 3]
    assert list(lr.y) == [0.1, 0.05, 0.05]


def test_a_series_marked_as_a_setting_is_a_step_line_held_to_the_end() -> None:
    batch = {
        "loss": (batch_points(range(1, 31), lambda s: 1 / s), False),
        "momentum": ([Point(0, 0.0, 0.0, 0.9), Point(5, 0.5, 5.0, 0.8)], False),
    }
    fig = figure(run(**{SETTINGS_META: [LR_KEY, "momentum"]}), {}, batch, [])
    momentum = trace(fig, "momentum (batch)")
    assert momentum.line.shape == "hv"
    assert list(momentum.x) == [0.0, 0.5, 3.0] and list(momentum.y) == [0.9, 0.8, 0.8]
    loss = trace(fig, "loss (batch)")
    assert loss.line.shape == "linear" and list(loss.x)[-1] == 3.0


def test_setting_keys_are_the_learning_rate_and_what_meta_lists() -> None:
    assert setting_keys(run()) == {LR_KEY}
    assert setting_keys(run(**{SETTINGS_META: ["momentum", 3]})) == {LR_KEY, "momentum"}
    assert setting_keys(run(**{SETTINGS_META: "momentum"})) == {LR_KEY}
