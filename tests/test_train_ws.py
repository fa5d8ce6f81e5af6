"""`/ws/train` in-process: acks only after COMMIT, storage trouble, one live trainer per run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server import Settings, create_app, store
from server.protocol import Close, Msg
from tests.conftest import TOKEN
from tests.test_api import RUN, batch, start, status_soon


@pytest.fixture
def app_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app in-process with a writer that gives up waiting on a lock after 0.2 s."""
    monkeypatch.setattr(store, "BUSY_TIMEOUT", 0.2)
    app = create_app(Settings(db=tmp_path / "t.db", token=TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def hello(ws: Any, role: str | None = None) -> dict[str, Any]:
    ws.send_text(json.dumps(Msg.hello(RUN, role)))
    reply: dict[str, Any] = ws.receive_json()
    return reply


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def lock(db: Path) -> sqlite3.Connection:
    """Another connection takes the database's write lock and keeps it."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


# -- storage trouble -----------------------------------------------------------------


def test_a_locked_database_is_reported_by_health_and_to_dashboards_until_it_is_free(
    app_client: TestClient, tmp_path: Path
) -> None:
    state = app_client.app.state.fitdeck  # type: ignore[attr-defined]
    with app_client.websocket_connect("/ws/live") as live:
        first = live.receive_json()
        assert first["type"] == "hello" and first["storage"] == {"status": "ok", "reason": None}
        holder = lock(tmp_path / "t.db")
        try:
            pending = state.store.submit(lambda c: c.execute("UPDATE runs SET name = 'x'"))
            body = wait_until(
                lambda: (r := app_client.get("/api/health")).status_code == 503 and r.json()
            )
            assert body == {"status": "degraded", "reason": "database is locked"}
            assert live.receive_json() == Msg.storage("database is locked")
            assert not pending.done()  # nobody hears of success before COMMIT
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        pending.result(timeout=10)
        assert live.receive_json() == Msg.storage(None)
    assert app_client.get("/api/health").json() == {"status": "ok"}


def test_trainer_hears_storage_error_gets_no_ack_and_its_records_land_once_after(
    app_client: TestClient, tmp_path: Path
) -> None:
    with app_client.websocket_connect("/ws/train") as ws:
        assert hello(ws)["last_seq"] == 0
        ws.send_text(json.dumps(Msg.records([start()])))
        assert ws.receive_json() == Msg.ack(1)
        holder = lock(tmp_path / "t.db")
        try:
            ws.send_text(json.dumps(Msg.records([batch(2, 1, loss=0.5)])))
            told = ws.receive_json()  # no ack comes first: nothing was stored
            assert told["type"] == "storage_error" and "database is locked" in told["message"]
            assert ws.receive() == {
                "type": "websocket.close",
                "code": Close.TRY_AGAIN_LATER,
                "reason": "storage trouble; try again later",
            }
            with app_client.websocket_connect("/ws/train") as again:
                # While the trouble lasts, a new connection is told so instead of welcomed.
                assert hello(again)["type"] == "storage_error"
                with pytest.raises(WebSocketDisconnect) as closed:
                    again.receive_json()
                assert closed.value.code == Close.TRY_AGAIN_LATER
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    wait_until(lambda: app_client.get("/api/health").status_code == 200)
    with app_client.websocket_connect("/ws/train") as ws:
        assert hello(ws)["last_seq"] == 2  # the frame sent into the trouble was kept
        ws.send_text(json.dumps(Msg.records([batch(2, 1, loss=0.5)])))  # a resend
        assert ws.receive_json() == Msg.ack(2)
    series = app_client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
    assert series["series"]["loss"]["step"] == [1]


# -- one live trainer per run --------------------------------------------------------


def test_sync_is_refused_while_the_run_has_a_live_trainer_and_commands_reach_the_trainer(
    app_client: TestClient,
) -> None:
    with app_client.websocket_connect("/ws/train") as trainer:
        hello(trainer)
        trainer.send_text(json.dumps(Msg.records([start()])))
        assert trainer.receive_json() == Msg.ack(1)
        with app_client.websocket_connect("/ws/train") as uploader:
            uploader.send_text(json.dumps(Msg.hello(RUN, "sync")))
            with pytest.raises(WebSocketDisconnect) as refused:
                uploader.receive_json()
            assert refused.value.code == Close.TRY_AGAIN_LATER
            assert "has a live trainer" in refused.value.reason
        assert status_soon(app_client, "running")
        posted = app_client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"})
        assert posted.status_code == 202
        command = trainer.receive_json()
        assert command["type"] == "command" and command["command"]["kind"] == "stop"
        events = app_client.get(f"/api/runs/{RUN}/events").json()["events"]
        assert "disconnected" not in [e["kind"] for e in events]


def test_an_uploader_without_a_live_trainer_stores_records_but_gets_no_commands(
    app_client: TestClient,
) -> None:
    with app_client.websocket_connect("/ws/train") as trainer:
        hello(trainer)
        trainer.send_text(json.dumps(Msg.records([start()])))
        assert trainer.receive_json() == Msg.ack(1)
    assert status_soon(app_client, "disconnected")
    assert app_client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"}).status_code == 202
    with app_client.websocket_connect("/ws/train") as uploader:
        assert hello(uploader, "sync") == Msg.welcome(RUN, 1)
        uploader.send_text(json.dumps(Msg.records([batch(2, 1, loss=0.5)])))
        assert uploader.receive_json() == Msg.ack(2)  # an ack, not the waiting command
        # Connecting to upload is not the trainer coming back.
        assert app_client.get(f"/api/runs/{RUN}").json()["run"]["status"] == "disconnected"
    (waiting,) = app_client.get(f"/api/runs/{RUN}/commands").json()["commands"]
    assert waiting["status"] == "pending"
    with app_client.websocket_connect("/ws/train") as trainer:
        hello(trainer)  # the trainer is back: the command goes to it
        assert trainer.receive_json()["command"]["id"] == waiting["id"]


def test_a_hello_with_an_unknown_role_is_refused(app_client: TestClient) -> None:
    with app_client.websocket_connect("/ws/train") as ws:
        ws.send_text(json.dumps({**Msg.hello(RUN), "role": "boss"}))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == Close.POLICY and "role must be one of" in closed.value.reason


@pytest.mark.slow
def test_fitdeck_sync_during_a_live_fit_is_refused_and_stop_still_stops_the_fit(
    tmp_path: Path,
) -> None:
    """`fitdeck sync` (a real subprocess) of a spool file of a run that is training
    leaves the trainer its command link: Stop from the API then stops the fit."""
    pytest.importorskip("keras")
    from client_callback import LiveMonitor
    from server.protocol import Rec
    from server.spool import Spool
    from tests.conftest import ROOT, ServerProcess, callback, make_data, make_model

    server = ServerProcess(tmp_path / "live.db", "tok").start()
    mon = LiveMonitor(url=server.url, token="tok", run_name="live", spool_dir=tmp_path / "own")
    leftover = tmp_path / "spool" / f"{mon.run_id}.jsonl"  # as an earlier process left it
    Spool(leftover, header={"run_id": mon.run_id, "url": server.url}).append(
        [{**Rec.run_start(1.0, "live", None, {}, {}), "seq": 1}]
    )
    seen: dict[str, Any] = {}

    def sync_then_stop() -> None:
        cmd = [sys.executable, "-m", "server", "sync", str(leftover.parent), "--token", "tok"]
        seen["sync"] = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        seen["status"] = server.run(mon.run_id)["status"]
        posted = server.client.post(f"/api/runs/{mon.run_id}/commands", json={"kind": "stop"})
        seen["posted"] = posted.status_code

    batches = [0]

    def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
        batches[0] += 1
        if batches[0] == 5:
            threading.Thread(target=sync_then_stop, daemon=True).start()
        time.sleep(0.05)

    x, y = make_data(128)
    try:
        history = make_model().fit(
            x, y, epochs=60, batch_size=16, verbose=0,
            callbacks=[mon, callback(on_train_batch_end=on_train_batch_end)],
        )  # fmt: skip
        done = seen["sync"]
        assert done.returncode == 1, done.stdout + done.stderr
        assert "NOT uploaded" in done.stdout and "has a live trainer" in done.stdout
        assert leftover.exists()  # untouched, for a sync after the fit
        assert seen["status"] == "running" and seen["posted"] == 202
        assert len(history.epoch) < 60  # the Stop reached the live trainer
        assert server.run(mon.run_id)["status"] == "stopped"
        (command,) = server.commands(mon.run_id)
        assert command["status"] == "applied"
        events = server.client.get(f"/api/runs/{mon.run_id}/events").json()["events"]
        assert "disconnected" not in [e["kind"] for e in events]
    finally:
        server.close()
