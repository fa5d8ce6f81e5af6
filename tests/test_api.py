"""The server in-process (`TestClient` runs the lifespan): routes, ingest, live push."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server import Settings, create_app
from tests.conftest import TOKEN, local_client

RUN = "0123456789abcdef0123456789abcdef"


def status_soon(client: TestClient, expected: str, run_id: str = RUN) -> bool:
    """The run's status becomes `expected` within a second.

    TestClient cancels a WebSocket's handler when the test leaves it; the write
    the handler had submitted (e.g. "disconnected") still lands, a moment later.
    """
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if client.get(f"/api/runs/{run_id}").json()["run"]["status"] == expected:
            return True
        time.sleep(0.01)
    return False


def start(seq: int = 1, **meta: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "run_start", "t": 1.0, "name": "r", "project": "p",
            "params": {"lr": 0.1}, "meta": {"epochs": 2, "steps_per_epoch": 4, **meta}}  # fmt: skip


def batch(seq: int, step: int, **logs: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "batch", "t": 1.0 + step, "step": step, "epoch": step / 4,
            "logs": logs}  # fmt: skip


def send(ws: Any, *records: dict[str, Any]) -> dict[str, Any]:
    ws.send_text(json.dumps({"type": "records", "records": list(records)}))
    reply: dict[str, Any] = ws.receive_json()
    return reply


def trainer(client: TestClient, run_id: str = RUN) -> Any:
    ws = client.websocket_connect("/ws/train")
    ws.__enter__()
    ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
    assert ws.receive_json()["type"] == "welcome"
    return ws


def test_health_is_open_and_everything_else_needs_the_token(tmp_path: Path) -> None:
    app = create_app(Settings(db=tmp_path / "t.db", token=TOKEN))
    with local_client(app) as c:
        assert c.get("/api/health").json() == {"status": "ok"}
        denied = c.get("/api/runs")
        assert denied.status_code == 401
        assert "token" in denied.json()["error"]["message"]
        assert c.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_browser_login_sets_an_httponly_cookie_and_drops_the_token_from_the_url(
    tmp_path: Path,
) -> None:
    with local_client(create_app(Settings(db=tmp_path / "t.db", token=TOKEN))) as c:
        response = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert c.get("/api/runs").status_code == 200  # the cookie now opens the API
        assert c.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_replayed_records_are_stored_once(client: TestClient) -> None:
    ws = trainer(client)
    records = [start(), *(batch(i + 2, i + 1, loss=1.0 / (i + 1)) for i in range(8))]
    assert send(ws, *records) == {"type": "ack", "seq": 9}
    assert send(ws, *records[3:]) == {"type": "ack", "seq": 9}  # a replay
    ws.__exit__(None, None, None)
    ws = trainer(client)  # reconnects: the welcome says where to resume
    ws.__exit__(None, None, None)
    loss = client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
    assert loss["series"]["loss"]["step"] == list(range(1, 9))
    assert status_soon(client, "disconnected")


def test_welcome_reports_the_last_stored_sequence_number(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start(), batch(2, 1, loss=1.0))
    ws.__exit__(None, None, None)
    with client.websocket_connect("/ws/train") as again:
        again.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": RUN}))
        assert again.receive_json() == {"type": "welcome", "run_id": RUN, "last_seq": 2}
    assert status_soon(client, "disconnected")


def test_non_finite_values_round_trip_as_strict_json(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start(), batch(2, 1, loss="NaN", acc="Infinity", low="-Infinity", ok=0.5))
    ws.__exit__(None, None, None)
    response = client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"})
    json.loads(response.text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    series = response.json()["series"]
    assert series["loss"]["value"] == ["NaN"]
    assert series["acc"]["value"] == ["Infinity"]
    assert series["low"]["value"] == ["-Infinity"]
    assert series["ok"]["value"] == [0.5]
    csv_text = client.get(f"/api/runs/{RUN}/export.csv").text
    assert "batch,loss,1,0.25,2.0,nan" in csv_text and "batch,acc,1,0.25,2.0,inf" in csv_text


def test_metrics_are_downsampled_keeping_extremes_and_nan(client: TestClient) -> None:
    ws = trainer(client)
    values = [math.sin(i / 50) for i in range(5000)]
    values[1234] = 99.0
    values[4321] = -99.0
    records = [start()]
    for i, v in enumerate(values):
        records.append(batch(i + 2, i + 1, loss="NaN" if i == 2500 else v))
    for i in range(0, len(records), 1000):
        send(ws, *records[i : i + 1000])
    ws.__exit__(None, None, None)
    body = client.get(
        f"/api/runs/{RUN}/metrics", params={"scope": "batch", "key": "loss", "max_points": 300}
    ).json()["series"]["loss"]
    assert body["downsampled"] is True
    assert len(body["step"]) <= 300
    assert body["step"] == sorted(body["step"])
    assert 99.0 in body["value"] and -99.0 in body["value"] and "NaN" in body["value"]
    zoom = client.get(
        f"/api/runs/{RUN}/metrics",
        params={"scope": "batch", "key": "loss", "start": 1200, "end": 1300, "max_points": 300},
    ).json()["series"]["loss"]
    assert zoom["downsampled"] is False and zoom["step"] == list(range(1200, 1301))


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"kind": "reboot"},
            400,
            "body.kind: Input should be 'stop', 'set_lr', 'checkpoint', 'pause', 'resume' or 'set'",
        ),
        ({"kind": "set_lr"}, 400, "body.lr: Field required"),
        ({"kind": "set_lr", "lr": -0.1}, 400, "body.lr: Input should be greater than 0"),
        (
            {"kind": "set_lr", "lr": "fast"},
            400,
            'body.lr: Input should be a valid number. Received "fast".',
        ),
        ([1, 2], 400, "body: Input should be a JSON object"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(
    client: TestClient, body: Any, status: int, message: str
) -> None:
    ws = trainer(client)
    send(ws, start())
    response = client.post(f"/api/runs/{RUN}/commands", json=body)
    ws.__exit__(None, None, None)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_commands_to_unknown_or_ended_runs(client: TestClient) -> None:
    assert client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"}).status_code == 404
    ws = trainer(client)
    send(ws, start(), {"seq": 2, "type": "run_end", "t": 3.0, "status": "finished", "error": None})
    ws.__exit__(None, None, None)
    response = client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"})
    assert response.status_code == 409
    assert "already finished" in response.json()["error"]["message"]


def test_command_goes_to_the_trainer_and_its_statuses_are_stored(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start())
    posted = client.post(f"/api/runs/{RUN}/commands", json={"kind": "set_lr", "lr": 0.5})
    assert posted.status_code == 202
    command = posted.json()["command"]
    assert command["status"] == "pending" and command["lr"] == 0.5
    assert ws.receive_json() == {
        "type": "command",
        "command": {"id": command["id"], "kind": "set_lr", "lr": 0.5},
    }
    report = {"type": "command", "t": 2.0, "id": command["id"]}
    send(ws, {**report, "seq": 2, "status": "delivered"})
    send(ws, {**report, "seq": 3, "status": "applied", "epoch": 0, "batch": 3, "step": 3})
    send(ws, {**report, "seq": 4, "status": "delivered"})  # late, out of order: ignored
    ws.__exit__(None, None, None)
    (stored,) = client.get(f"/api/runs/{RUN}/commands").json()["commands"]
    assert stored["status"] == "applied" and (stored["epoch"], stored["batch"]) == (0, 3)


def test_run_end_expires_unfinished_commands(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start())
    client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"})
    ws.receive_json()
    send(ws, {"seq": 2, "type": "run_end", "t": 3.0, "status": "finished", "error": None})
    ws.__exit__(None, None, None)
    (command,) = client.get(f"/api/runs/{RUN}/commands").json()["commands"]
    assert command["status"] == "expired" and "finished" in command["reason"]


def test_unfinished_commands_are_resent_when_the_trainer_comes_back(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start())
    ws.__exit__(None, None, None)
    command = client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"}).json()["command"]
    with client.websocket_connect("/ws/train") as again:
        again.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": RUN}))
        assert again.receive_json()["type"] == "welcome"
        assert again.receive_json()["command"]["id"] == command["id"]


def test_bad_records_are_refused_one_by_one(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start())
    ws.send_text(json.dumps({"type": "records", "records": [
        batch(2, 1, loss=0.5),
        {"seq": 3, "type": "bogus", "t": 1.0},
        batch(4, 2, loss="fast"),
        batch(5, 3, loss=0.25),
    ]}))  # fmt: skip
    errors = [ws.receive_json() for _ in range(2)]
    assert errors[0] == {"type": "error", "message": "Record 3: unknown type 'bogus'."}
    assert "metric 'loss' has value 'fast', not a number" in errors[1]["message"]
    assert ws.receive_json() == {"type": "ack", "seq": 5}
    ws.__exit__(None, None, None)
    loss = client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
    assert loss["series"]["loss"]["step"] == [1, 3]


def test_live_subscribers_get_points_events_commands_and_run_updates(client: TestClient) -> None:
    with client.websocket_connect("/ws/live") as live:
        assert live.receive_json()["type"] == "hello"
        live.send_text(json.dumps({"type": "subscribe", "run_ids": [RUN]}))
        assert live.receive_json() == {"type": "subscribed", "run_ids": [RUN]}
        ws = trainer(client)
        send(ws, start(), batch(2, 1, loss=0.5))
        seen = [live.receive_json() for _ in range(3)]
        assert seen[0]["type"] == "run" and seen[0]["run"]["status"] == "running"
        assert seen[1] == {"type": "metrics", "run_id": RUN, "scope": "batch",
                           "points": [{"step": 1, "epoch": 0.25, "t": 2.0,
                                       "logs": {"loss": 0.5}}]}  # fmt: skip
        assert seen[2]["type"] == "event" and seen[2]["event"]["kind"] == "train_begin"
        client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"})
        pushed = live.receive_json()
        assert pushed["type"] == "command" and pushed["command"]["status"] == "pending"
        ws.__exit__(None, None, None)
        assert live.receive_json()["run"]["status"] == "disconnected"


def test_runs_and_their_data_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "t.db", token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(create_app(settings), headers=headers) as c:
        ws = trainer(c)
        send(ws, start(), batch(2, 1, loss=0.5))
        ws.__exit__(None, None, None)
    with local_client(create_app(settings), headers=headers) as c:
        run = c.get(f"/api/runs/{RUN}").json()
        assert run["run"]["name"] == "r" and run["run"]["params"] == {"lr": 0.1}
        assert run["keys"]["batch"] == ["loss"]
        ws = trainer(c)
        assert send(ws, batch(2, 1, loss=0.5), batch(3, 2, loss=0.4)) == {"type": "ack", "seq": 3}
        ws.__exit__(None, None, None)
        steps = c.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
        assert steps["series"]["loss"]["step"] == [1, 2]


def test_bad_metrics_queries_are_refused(client: TestClient) -> None:
    ws = trainer(client)
    send(ws, start())
    ws.__exit__(None, None, None)
    assert client.get(f"/api/runs/{RUN}/metrics", params={"scope": "minute"}).status_code == 400
    assert client.get(f"/api/runs/{RUN}/metrics", params={"max_points": 1}).status_code == 400
    bad = client.get(f"/api/runs/{RUN}/metrics", params={"max_points": "many"})
    assert bad.status_code == 400 and "max_points" in bad.json()["error"]["message"]
    assert client.get(f"/api/runs/{RUN}/metrics", params={"start": -1}).status_code == 400
    assert client.get(f"/api/runs/{'f' * 32}/metrics").status_code == 404
    assert client.get("/api/runs/not-a-run-id/metrics").status_code == 404


# -- export.csv against formula injection ------------------------------------------------


def test_csv_text_cells_that_start_a_formula_are_neutralised_numbers_are_not(
    client: TestClient,
) -> None:
    """OWASP CSV injection: a metric name a spreadsheet would run gets a leading quote;
    negative values stay numbers."""
    ws = trainer(client)
    names = ["=HYPERLINK(1)", "+1", "-loss", "@SUM(A1)", "\tx", "\rx", "loss"]
    send(ws, start(), {**batch(2, 1), "logs": {name: -0.5 for name in names}})
    ws.__exit__(None, None, None)
    text = client.get(f"/api/runs/{RUN}/export.csv").text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    keys = {row[1]: row for row in rows[1:]}
    assert set(keys) == {"'=HYPERLINK(1)", "'+1", "'-loss", "'@SUM(A1)", "'\tx", "'\rx", "loss"}
    assert all(row[5] == "-0.5" for row in keys.values())


# -- logout ------------------------------------------------------------------------------


def test_logout_clears_the_browser_cookie(tmp_path: Path) -> None:
    with local_client(create_app(Settings(db=tmp_path / "t.db", token=TOKEN))) as browser:
        browser.get(f"/?token={TOKEN}", follow_redirects=False)
        assert browser.get("/api/runs").status_code == 200  # signed in by the cookie
        out = browser.post("/api/logout")
        assert out.status_code == 204
        cookie = out.headers["set-cookie"]
        assert cookie.startswith("fitdeck_token=") and "Max-Age=0" in cookie
        assert "HttpOnly" in cookie and "Path=/" in cookie
        assert browser.get("/api/runs").status_code == 401


def test_logout_from_a_foreign_origin_is_refused(tmp_path: Path) -> None:
    with local_client(create_app(Settings(db=tmp_path / "t.db", token=TOKEN))) as browser:
        browser.get(f"/?token={TOKEN}", follow_redirects=False)
        out = browser.post("/api/logout", headers={"Origin": "http://evil.test"})
        assert out.status_code == 403
        assert browser.get("/api/runs").status_code == 200
