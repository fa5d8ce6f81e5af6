"""Routes the dashboard adds: rename, delete, JSON export, HTML report (in-process)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.test_api import RUN

OTHER = "fedcba9876543210fedcba9876543210"


def start(seq: int = 1, name: str = "r") -> dict[str, Any]:
    return {"seq": seq, "type": "run_start", "t": 1.0, "name": name, "project": "p",
            "params": {"lr": 0.1}, "meta": {"epochs": 2, "steps_per_epoch": 4}}  # fmt: skip


def batch(seq: int, step: int, **logs: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "batch", "t": 1.0 + step, "step": step, "epoch": step / 4,
            "logs": logs}  # fmt: skip


def end(seq: int) -> dict[str, Any]:
    return {"seq": seq, "type": "run_end", "t": 99.0, "status": "finished", "error": None}


def stream(client: TestClient, run_id: str, *records: dict[str, Any]) -> None:
    """One trainer connection that sends `records` and leaves."""
    with client.websocket_connect("/ws/train") as ws:
        ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
        assert ws.receive_json()["type"] == "welcome"
        ws.send_text(json.dumps({"type": "records", "records": list(records)}))
        reply = ws.receive_json()
        assert reply == {"type": "ack", "seq": records[-1]["seq"]}, reply


def finished_run(client: TestClient, run_id: str = RUN, n: int = 6) -> None:
    values = [0.5, "NaN", "Infinity", "-Infinity", 0.25, 1e-9]
    batches = [batch(i + 2, i + 1, loss=values[i % len(values)]) for i in range(n)]
    epoch = {"seq": n + 2, "type": "epoch", "t": 50.0, "step": n, "epoch": 0,
             "logs": {"loss": 0.4, "val_loss": "NaN", "learning_rate": 0.01}}  # fmt: skip
    lr = {"seq": n + 3, "type": "lr", "t": 51.0, "step": n, "epoch": 1.0, "lr": 0.005,
          "previous": 0.01, "source": "callback"}  # fmt: skip
    early = {"seq": n + 4, "type": "event", "t": 52.0, "kind": "early_stop", "step": n,
             "epoch": 0, "data": {"by": "callback"}}  # fmt: skip
    stream(client, run_id, start(), *batches, epoch, lr, early, end(n + 5))


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_rename_validates_and_is_pushed_to_dashboards(client: TestClient) -> None:
    finished_run(client)
    with client.websocket_connect("/ws/live") as live:
        assert live.receive_json()["type"] == "hello"
        answer = client.patch(f"/api/runs/{RUN}", json={"name": "  <b>renamed</b>  "})
        assert answer.status_code == 200
        assert answer.json()["run"]["name"] == "<b>renamed</b>"
        pushed = live.receive_json()
        assert pushed["type"] == "run" and pushed["run"]["name"] == "<b>renamed</b>"
    assert client.get(f"/api/runs/{RUN}").json()["run"]["name"] == "<b>renamed</b>"

    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": 5}, {}, [1]):
        refused = client.patch(f"/api/runs/{RUN}", json=bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["message"]
    assert client.patch(f"/api/runs/{RUN}", json={"name": "x" * 200}).status_code == 200
    assert client.patch(f"/api/runs/{OTHER}", json={"name": "a"}).status_code == 404


def test_delete_refuses_a_running_run_then_removes_everything(
    client: TestClient, tmp_path: Path
) -> None:
    finished_run(client)
    stream(client, OTHER, start(name="keep"), batch(2, 1, loss=1.0))
    client.post(f"/api/runs/{RUN}/commands", json={"kind": "stop"})  # 409: ended, not stored
    with client.websocket_connect("/ws/train") as ws:  # OTHER is running while connected
        ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": OTHER}))
        ws.receive_json()
        assert client.get(f"/api/runs/{OTHER}").json()["run"]["status"] == "running"
        conflict = client.delete(f"/api/runs/{OTHER}")
        assert conflict.status_code == 409
        assert "running" in conflict.json()["error"]["message"]

    with client.websocket_connect("/ws/live") as live:
        assert live.receive_json()["type"] == "hello"
        assert client.delete(f"/api/runs/{RUN}").status_code == 204
        message = live.receive_json()
        while message["type"] == "run":  # OTHER's trainer leaving may be pushed first
            message = live.receive_json()
        assert message == {"type": "run_deleted", "run_id": RUN}
    assert client.get(f"/api/runs/{RUN}").status_code == 404
    assert client.delete(f"/api/runs/{RUN}").status_code == 404
    assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == [OTHER]

    db = sqlite3.connect(tmp_path / "t.db")
    counts = {
        table: db.execute(f"SELECT count(*) FROM {table} WHERE {col}").fetchone()[0]
        for table, col in [
            ("runs", f"id = '{RUN}'"),
            ("series", f"run_id = '{RUN}'"),
            ("events", f"run_id = '{RUN}'"),
            ("commands", f"run_id = '{RUN}'"),
            ("points", "series_id NOT IN (SELECT id FROM series)"),
            ("tiers", "series_id NOT IN (SELECT id FROM series)"),
        ]
    }
    assert counts == dict.fromkeys(counts, 0)
    assert db.execute("SELECT count(*) FROM points").fetchone()[0] == 1  # OTHER's point
    db.close()

    # The writer forgot the run: the same id starts afresh from seq 1.
    stream(client, RUN, start(name="again"), batch(2, 1, loss=3.0))
    again = client.get(f"/api/runs/{RUN}/metrics", params={"scope": "batch"}).json()
    assert again["series"]["loss"]["value"] == [3.0]
    assert client.get(f"/api/runs/{RUN}").json()["run"]["name"] == "again"


def test_json_export_has_every_stored_value_at_full_resolution(client: TestClient) -> None:
    n = 3000
    finished_run(client, n=n)
    answer = client.get(f"/api/runs/{RUN}/export.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["content-disposition"].startswith("attachment")
    doc = strict_json(answer.text)
    assert doc["run"]["id"] == RUN and doc["run"]["status"] == "finished"
    kinds = [e["kind"] for e in doc["events"]]
    assert kinds == ["train_begin", "lr_change", "early_stop", "train_end"]
    assert doc["commands"] == []
    loss = doc["series"]["batch"]["loss"]
    assert loss["step"] == list(range(1, n + 1))  # more than max_points: nothing dropped
    assert loss["value"][:6] == [0.5, "NaN", "Infinity", "-Infinity", 0.25, 1e-9]
    assert loss["epoch"][:2] == [0.25, 0.5] and loss["t"][:2] == [2.0, 3.0]
    assert doc["series"]["epoch"]["val_loss"]["value"] == ["NaN"]
    assert doc["series"]["epoch"]["learning_rate"] == {
        "step": [n], "epoch": [0], "t": [50.0], "value": [0.01]
    }  # fmt: skip
    assert sorted(doc["series"]) == ["batch", "epoch"]
    assert client.get(f"/api/runs/{OTHER}/export.json").status_code == 404


def test_json_export_of_a_run_without_points(client: TestClient) -> None:
    stream(client, RUN, start(), end(2))
    doc = strict_json(client.get(f"/api/runs/{RUN}/export.json").text)
    assert doc["series"] == {} and doc["run"]["id"] == RUN


def test_html_report_is_a_standalone_download(client: TestClient) -> None:
    finished_run(client)
    client.patch(f"/api/runs/{RUN}", json={"name": "</script><script>window.bad=1</script>"})
    answer = client.get(f"/api/runs/{RUN}/report.html")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-disposition"].startswith("attachment")
    page = answer.text
    assert page.startswith("<html>") or page.lstrip().lower().startswith("<!doctype html")
    assert "/static/" not in page and "cdn" not in page.split("plotly.js v")[0].lower()
    assert len(page) > 1_000_000  # plotly.js is inside
    assert "<script>window.bad=1" not in page  # the name is data, not markup
    assert "val_loss" in page and "learning_rate" in page
    assert client.get(f"/api/runs/{OTHER}/report.html").status_code == 404


def test_non_finite_numbers_in_the_json_export_are_strings() -> None:
    from server.routes.api import _strict

    assert _strict({"a": [math.nan, math.inf, -math.inf, 1.5]}) == {
        "a": ["NaN", "Infinity", "-Infinity", 1.5]
    }
