"""`GET /api/metrics`: one metric of many runs in one request, each series downsampled."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.test_web_api import batch, end, start, stream

A, B, GONE = "a" * 32, "b" * 32, "c" * 32


def two_runs(client: TestClient, n: int = 50) -> None:
    for run_id, scale in ((A, 1.0), (B, 2.0)):
        records = [batch(i + 2, i + 1, loss=scale / (i + 1), acc=0.5) for i in range(n)]
        stream(client, run_id, start(name=f"run-{run_id[0]}"), *records, end(n + 2))


def test_one_request_has_the_metric_of_every_run_asked_in_order(client: TestClient) -> None:
    two_runs(client)
    resp = client.get(
        "/api/metrics", params={"run_id": [B, GONE, A], "key": "loss", "scope": "batch"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert list(body["runs"]) == [B, A] and body["missing"] == [GONE]
    assert body["scope"] == "batch"
    b = body["runs"][B]
    assert b["run"]["name"] == "run-b" and b["run"]["status"] == "finished"
    assert list(b["series"]) == ["loss"]  # only the key asked for
    assert b["series"]["loss"]["value"][:2] == [2.0, 1.0]
    assert b["series"]["loss"]["step"] == list(range(1, 51))
    assert body["runs"][A]["series"]["loss"]["value"][0] == 1.0
    # The same series as the one-run route gives.
    one = client.get(f"/api/runs/{A}/metrics", params={"scope": "batch", "key": "loss"}).json()
    assert one["series"]["loss"] == body["runs"][A]["series"]["loss"]


def test_each_series_is_downsampled_to_max_points(client: TestClient) -> None:
    two_runs(client, n=600)
    body = client.get(
        "/api/metrics",
        params={"run_id": [A, B], "scope": "batch", "max_points": 40},
    ).json()
    for run_id in (A, B):
        series = body["runs"][run_id]["series"]
        assert set(series) == {"loss", "acc"}  # all keys when none is named
        assert series["loss"]["downsampled"] is True
        assert 2 <= len(series["loss"]["step"]) <= 40
        assert max(series["loss"]["value"]) == (1.0 if run_id == A else 2.0)  # the max kept


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"run_id": "not-a-run"},
        {"run_id": [A] * 51},
        {"run_id": A, "scope": "minute"},
        {"run_id": A, "max_points": 1},
        {"run_id": A, "max_points": 20_001},
        {"run_id": A, "start": -1},
    ],
)
def test_bad_parameters_are_a_documented_400(client: TestClient, params: dict[str, Any]) -> None:
    resp = client.get("/api/metrics", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["status"] == 400


def test_unknown_runs_are_listed_as_missing_not_an_error(client: TestClient) -> None:
    body = client.get("/api/metrics", params={"run_id": GONE}).json()
    assert body == {"scope": "epoch", "runs": {}, "missing": [GONE]}
