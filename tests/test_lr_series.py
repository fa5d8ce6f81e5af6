"""The stored run equals what really happened: the LR at every batch whoever set it,
steps that follow `optimizer.iterations`, and the real batch size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from client_callback import LiveMonitor
from tests.conftest import ServerProcess, callback, make_data, make_model

pytestmark = pytest.mark.slow


def lr_used_per_batch(server: ServerProcess, run_id: str, batches: int) -> list[float]:
    """The stored series read as the rate each batch used: the point at step s holds
    from the batch whose record has step s + 1 on."""
    series = server.series(run_id, "batch", "learning_rate")
    points = list(zip(series["step"], series["value"], strict=True))
    out = []
    for k in range(1, batches + 1):
        out.append([v for s, v in points if s <= k - 1][-1])
    return out


def warmup(where: str, peak: float = 0.1, steps: int = 40) -> Any:
    """Sets the LR every batch, in its batch-begin hook or (for the next batch) batch-end."""

    def rate(i: int) -> float:
        return peak * (i + 1) / steps

    if where == "begin":

        def on_train_batch_begin(self: Any, batch: int, logs: Any = None) -> None:
            self.model.optimizer.learning_rate = rate(self.seen)

        def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
            self.seen += 1

        hooks = {
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
        }
    else:

        def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
            self.seen += 1
            self.model.optimizer.learning_rate = rate(self.seen)

        hooks = {"on_train_batch_end": on_train_batch_end}
    cb = callback(**hooks)
    cb.seen = 0
    return cb


def probe() -> Any:
    """Listed last, it reads the rate the optimizer is about to use for each batch."""
    cb = callback(
        on_train_batch_begin=lambda self, batch, logs=None: self.used.append(
            float(np.asarray(self.model.optimizer.learning_rate))
        )
    )
    cb.used = []
    return cb


@pytest.mark.parametrize(
    ("where", "first"),
    [("begin", "warmup"), ("begin", "monitor"), ("end", "warmup"), ("end", "monitor")],
)
def test_lr_series_equals_the_rate_used_at_every_batch_with_a_per_batch_warmup(
    server: ServerProcess, where: str, first: str
) -> None:
    x, y = make_data(n=640)
    model = make_model(lr=0.001)
    mon = LiveMonitor(url=server.url, token=server.token)
    setter, seen = warmup(where), probe()
    pair = [setter, mon] if first == "warmup" else [mon, setter]
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[*pair, seen])
    assert len(seen.used) == 40
    assert len(set(seen.used)) >= 39  # the rate really changed every batch
    stored = lr_used_per_batch(server, mon.run_id, 40)
    assert stored == pytest.approx(seen.used, rel=1e-6)
    changes = [e for e in server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
               if e["kind"] == "lr_change"]  # fmt: skip
    assert {e["data"]["source"] for e in changes} == {"callback"}


def test_a_dashboard_lr_command_beside_a_warmup_is_recorded_where_it_applied(
    server: ServerProcess,
) -> None:
    x, y = make_data(n=640)
    model = make_model(lr=0.001)
    mon = LiveMonitor(url=server.url, token=server.token)
    seen = probe()
    sent = []

    def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
        if len(seen.used) == 25 and not sent:  # warmup over; the dashboard sets 0.5
            sent.append(
                server.client.post(
                    f"/api/runs/{mon.run_id}/commands", json={"kind": "set_lr", "lr": 0.5}
                )
            )
            server.wait_for(lambda: mon._inbox, what="the command to arrive")

    def on_train_batch_begin(self: Any, batch: int, logs: Any = None) -> None:
        if len(seen.used) < 20:
            self.model.optimizer.learning_rate = 0.01 * (len(seen.used) + 1)

    steer = callback(
        on_train_batch_begin=on_train_batch_begin, on_train_batch_end=on_train_batch_end
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[mon, steer, seen])
    assert seen.used[-1] == pytest.approx(0.5)
    assert lr_used_per_batch(server, mon.run_id, 40) == pytest.approx(seen.used, rel=1e-6)


@pytest.mark.parametrize("epochs", [3])
def test_steps_follow_optimizer_iterations_under_steps_per_execution(
    server: ServerProcess, epochs: int
) -> None:
    import keras

    x, y = make_data(n=320)  # 20 batches of 16 per epoch
    model = make_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="binary_crossentropy",
        steps_per_execution=8,
    )
    mon = LiveMonitor(url=server.url, token=server.token)
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[mon])
    iterations = int(model.optimizer.iterations.numpy())
    assert iterations == 20 * epochs
    run = server.run(mon.run_id)
    assert run["step"] == iterations
    loss = server.series(mon.run_id, "batch", "loss")
    per_epoch = [8, 16, 20]
    assert loss["step"] == [20 * e + s for e in range(epochs) for s in per_epoch]
    for step, progress in zip(loss["step"], loss["epoch"], strict=True):
        epoch = (step - 1) // 20
        assert epoch < progress <= epoch + 1.0
    epoch_loss = server.series(mon.run_id, "epoch", "loss")
    assert epoch_loss["step"] == [20, 40, 60]
    assert run["meta"]["steps_per_execution"] == 8


def test_meta_batch_size_is_the_real_one_or_absent(server: ServerProcess) -> None:
    x, y = make_data(n=96)
    arrays = LiveMonitor(url=server.url, token=server.token)
    make_model().fit(x, y, epochs=1, batch_size=24, verbose=0, callbacks=[arrays])
    assert server.run(arrays.run_id)["meta"]["batch_size"] == 24

    def batches() -> Any:
        while True:
            yield x[:12], y[:12]

    generator = LiveMonitor(url=server.url, token=server.token)
    make_model().fit(
        batches(), steps_per_epoch=3, epochs=1, shuffle=False, verbose=0, callbacks=[generator]
    )
    meta = server.run(generator.run_id)["meta"]
    assert "batch_size" not in meta and meta["steps_per_epoch"] == 3


@pytest.mark.parametrize("staircase", [False, True])
def test_a_schedule_s_rate_is_recorded_for_every_batch(
    server: ServerProcess, staircase: bool
) -> None:
    import keras

    x, y = make_data(n=640)
    model = make_model(
        lr=keras.optimizers.schedules.ExponentialDecay(0.1, 7, 0.5, staircase=staircase)
    )
    mon = LiveMonitor(url=server.url, token=server.token)
    seen = probe()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[mon, seen])
    assert len(set(seen.used)) == (6 if staircase else 40)
    assert lr_used_per_batch(server, mon.run_id, 40) == pytest.approx(seen.used, rel=1e-6)
    changes = [e for e in server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
               if e["kind"] == "lr_change"]  # fmt: skip
    assert len(changes) <= 2  # readings, not an event per batch
    assert {e["data"]["source"] for e in changes} <= {"schedule"}
