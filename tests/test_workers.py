"""The server's side of multi-worker jobs, in process: workers say hello, one run,
a commit that names the same step for every worker, and a lost worker failing the run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from starlette.websockets import WebSocketDisconnect

from server import Settings, create_app
from server.workers import Workers, parse_worker
from tests.conftest import TOKEN, local_client
from tests.test_api import batch, send, start

RUN = "c" * 32


def worker(client: TestClient, index: int, count: int = 2) -> Any:
    ws = client.websocket_connect("/ws/train")
    ws.__enter__()
    hello = {"type": "hello", "protocol": 1, "run_id": RUN,
             "worker": {"index": index, "count": count}}  # fmt: skip
    ws.send_text(json.dumps(hello))
    assert ws.receive_json()["type"] == "welcome"
    return ws


def leave(client: TestClient, ws: Any, index: int) -> None:
    """Close a worker's connection and wait until the server has let it go.

    TestClient cancels a handler still running when its context exits; waiting
    for the handler to end first keeps that cancellation out of the test."""
    ws.close(1000)
    deadline = time.monotonic() + 5
    while True:
        workers = client.get(f"/api/runs/{RUN}").json()["run"]["workers"]
        if next(w for w in workers if w["index"] == index)["status"] != "connected":
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.01)
    ws.__exit__(None, None, None)


def delivered(seq: int, command_id: int, step: int) -> dict[str, Any]:
    return {"seq": seq, "type": "command", "t": 2.0, "id": command_id, "status": "delivered",
            "step": step}  # fmt: skip


def test_a_job_s_workers_share_one_run_and_only_worker_0_is_stored(client: TestClient) -> None:
    w0, w1 = worker(client, 0), worker(client, 1)
    assert send(w0, start(), batch(2, 1, loss=1.0)) == {"type": "ack", "seq": 2}
    assert send(w1, start(), batch(2, 1, loss=9.0), batch(3, 2, loss=9.0))["seq"] == 3
    (run,) = client.get("/api/runs").json()["runs"]
    assert run["id"] == RUN and run["step"] == 1
    loss = client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
    assert loss["series"]["loss"]["value"] == [1.0]  # worker 1's values are not the run's
    workers = client.get(f"/api/runs/{RUN}").json()["run"]["workers"]
    assert workers == [
        {"index": 0, "status": "connected", "step": 1},
        {"index": 1, "status": "connected", "step": 2},
    ]
    leave(client, w1, 1)
    leave(client, w0, 0)


def test_commands_reach_every_worker_and_commit_names_one_step(client: TestClient) -> None:
    w0, w1 = worker(client, 0), worker(client, 1)
    send(w0, start())
    command = client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"}).json()["command"]
    for ws in (w0, w1):
        assert ws.receive_json()["command"]["id"] == command["id"]
    assert send(w0, delivered(2, command["id"], 40)) == {"type": "ack", "seq": 2}
    w1.send_text(json.dumps({"type": "records", "records": [delivered(1, command["id"], 41)]}))
    commit = {"type": "commit", "id": command["id"], "at_step": 42}
    # Worker 1's report completes the round: both hear the commit (worker 1 also its ack).
    assert w0.receive_json() == commit
    assert [w1.receive_json(), w1.receive_json()] in (
        [commit, {"type": "ack", "seq": 1}],
        [{"type": "ack", "seq": 1}, commit],
    )
    # A worker that reconnects hears the command and its step again.
    leave(client, w1, 1)
    again = client.websocket_connect("/ws/train")
    with again:
        hello = {"type": "hello", "protocol": 1, "run_id": RUN,
                 "worker": {"index": 1, "count": 2}}  # fmt: skip
        again.send_text(json.dumps(hello))
        assert again.receive_json() == {"type": "welcome", "run_id": RUN, "last_seq": 1}
        assert again.receive_json()["type"] == "command"
        assert again.receive_json() == commit
        leave(client, again, 1)
    leave(client, w0, 0)


def test_a_single_process_run_is_worker_0(client: TestClient) -> None:
    ws = client.websocket_connect("/ws/train")
    with ws:
        ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": RUN}))
        ws.receive_json()
        send(ws, start(), batch(2, 1, loss=1.0), batch(3, 2, loss=1.0))
        workers = client.get(f"/api/runs/{RUN}").json()["run"]["workers"]
        assert workers == [{"index": 0, "status": "connected", "step": 2}]
        leave(client, ws, 0)


@pytest.mark.parametrize(
    "bad", [{"index": 2, "count": 2}, {"index": -1, "count": 2}, {"index": 0}, "0", [0, 1]]
)
def test_a_bad_worker_field_closes_the_connection(client: TestClient, bad: Any) -> None:
    ws = client.websocket_connect("/ws/train")
    with ws:
        ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": RUN, "worker": bad}))
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1008


@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(
    st.sampled_from(["index", "count", "x"]), st.one_of(st.integers(), st.booleans(), st.none())
)))  # fmt: skip
def test_parse_worker_takes_only_an_index_below_its_count(value: Any) -> None:
    try:
        index, count = parse_worker(value)
    except ValueError as exc:
        assert "worker must be" in str(exc)
    else:
        assert 0 <= index < count and type(index) is int and type(count) is int


def test_a_lost_worker_fails_the_run_naming_it(tmp_path: Path) -> None:
    app = create_app(Settings(db=tmp_path / "t.db", token=TOKEN, disconnect_grace=0.3))
    with local_client(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        w0, w1 = worker(client, 0), worker(client, 1)
        send(w0, start())
        send(w1, start(), batch(2, 7, loss=1.0))
        leave(client, w1, 1)  # worker 1 is gone without its run_end
        deadline = time.monotonic() + 10
        while (run := client.get(f"/api/runs/{RUN}").json()["run"])["status"] != "failed":
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        assert run["error"] == {
            "type": "WorkerLost",
            "message": "worker 1 of 2 lost contact at step 7 and did not come back within "
            "0.3 seconds",
        }
        assert run["workers"][1] == {"index": 1, "status": "disconnected", "step": 7}
        events = client.get(f"/api/runs/{RUN}/events").json()["events"]
        assert events[-1]["kind"] == "train_end"
        leave(client, w0, 0)


def test_a_worker_that_ends_its_fit_is_not_lost() -> None:
    workers = Workers()
    workers.hello(RUN, 1, 2)
    workers.records(RUN, 1, [{"type": "run_end", "status": "finished"}])
    workers.lost(RUN, 1)
    assert workers.overdue(-1.0) == []
    assert workers.describe({"id": RUN}, True) == [{"index": 1, "status": "finished", "step": 0}]
