"""Stock `keras.callbacks.RemoteMonitor` against fitdeck: epoch posts become a live run;
unknown paths answer the documented error shape, 401 before 404 without the token."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.routes.remote_monitor import PATH, RemoteRuns
from tests.conftest import TOKEN, ServerProcess, make_data, make_model

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post_form(client: Any, logs: dict[str, Any], query: str = "") -> Any:
    return client.post(PATH + query, data={"data": json.dumps(logs)})


def runs_by_name(client: Any) -> dict[str, dict[str, Any]]:
    return {run["name"]: run for run in client.get("/api/runs").json()["runs"]}


# -- unknown paths -----------------------------------------------------------------


def test_unknown_path_without_token_is_401_in_the_error_shape(client: Any) -> None:
    for method, path in (("GET", "/nowhere"), ("POST", "/publish/x"), ("GET", "/api/nope")):
        answer = client.request(method, path, headers={"Authorization": ""})
        assert answer.status_code == 401, (method, path)
        assert answer.json()["error"]["status"] == 401
        assert "token" in answer.json()["error"]["message"]


def test_unknown_path_with_token_is_404_in_the_error_shape(client: Any) -> None:
    answer = client.get("/nowhere/at/all")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {"status": 404, "message": "No such path: GET /nowhere/at/all."}
    }
    wrong_method = client.put("/api/runs")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["status"] == 405
    assert "GET" in wrong_method.headers["allow"]


def test_missing_dashboard_file_is_404_without_token(client: Any) -> None:
    """The sign-in page's files are open, so a missing one is simply not there."""
    answer = client.get("/static/js/nope.js", headers={"Authorization": ""})
    assert answer.status_code == 404
    assert answer.json()["error"]["status"] == 404


def test_epoch_post_without_token_is_401(client: Any) -> None:
    answer = client.post(PATH, data={"data": '{"epoch": 0}'}, headers={"Authorization": ""})
    assert answer.status_code == 401
    assert client.get("/api/runs").json()["runs"] == []


# -- posts to runs -------------------------------------------------------------------


def test_form_posts_with_growing_epochs_are_one_run(client: Any) -> None:
    ids = {
        post_form(client, {"epoch": e, "loss": 1.0 / (e + 1)}).json()["run_id"] for e in range(3)
    }
    assert len(ids) == 1
    (run,) = client.get("/api/runs").json()["runs"]
    assert run["status"] == "running" and run["name"].startswith("remote-monitor-")
    loss = client.get(f"/api/runs/{run['id']}/metrics", params={"key": "loss"}).json()
    assert loss["series"]["loss"]["value"] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert loss["series"]["loss"]["epoch"] == [0, 1, 2]
    meta = client.get(f"/api/runs/{run['id']}").json()["run"]["meta"]
    assert meta["source"] == "RemoteMonitor"


def test_epoch_zero_again_starts_a_new_run_and_finishes_the_last(client: Any) -> None:
    first = post_form(client, {"epoch": 0, "loss": 1.0}).json()["run_id"]
    post_form(client, {"epoch": 1, "loss": 0.5})
    second = post_form(client, {"epoch": 0, "loss": 0.9}).json()
    assert second["new_run"] and second["run_id"] != first
    assert client.get(f"/api/runs/{first}").json()["run"]["status"] == "finished"
    assert client.get(f"/api/runs/{second['run_id']}").json()["run"]["status"] == "running"


def test_run_query_parameter_names_a_run_of_its_own(client: Any) -> None:
    a = client.post(PATH + "?run=alpha&project=p", json={"epoch": 0, "loss": 1.0}).json()
    b = client.post(PATH + "?run=beta", json={"epoch": 0, "loss": 2.0}).json()
    a2 = client.post(PATH + "?run=alpha", json={"epoch": 1, "loss": 0.5}).json()
    assert a["run_id"] == a2["run_id"] != b["run_id"]
    runs = runs_by_name(client)
    assert runs["alpha"]["project"] == "p" and runs["alpha"]["epoch"] == 1
    assert runs["beta"]["status"] == "running"


def test_nan_and_infinity_from_keras_json_are_kept(client: Any) -> None:
    # json.dumps, as RemoteMonitor calls it, writes bare NaN and Infinity.
    client.post(
        PATH, data={"data": json.dumps({"epoch": 0, "loss": float("nan"), "x": float("inf")})}
    )
    (run,) = client.get("/api/runs").json()["runs"]
    series = client.get(f"/api/runs/{run['id']}/metrics").json()["series"]
    assert series["loss"]["value"] == ["NaN"] and series["x"]["value"] == ["Infinity"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"data": "not json"}, "not valid JSON"),
        ({"data": "[1, 2]"}, "JSON object"),
        ({"data": '{"loss": 1.0}'}, "'epoch'"),
        ({"data": '{"epoch": -1}'}, "'epoch'"),
        ({"a": "{}", "b": "{}"}, "form field 'data'"),
    ],
)
def test_malformed_post_is_400_naming_the_problem(
    client: Any, body: dict[str, str], why: str
) -> None:
    answer = client.post(PATH, data=body)
    assert answer.status_code == 400
    assert why in answer.json()["error"]["message"]
    assert client.get("/api/runs").json()["runs"] == []


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.text(max_size=300),
            st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none(), st.booleans()),
            max_size=5,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_body_is_stored_or_refused_never_a_500(client: Any, body: bytes) -> None:
    answer = client.post(PATH, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["status"] == 400


def test_remote_runs_end_when_their_source_goes_quiet() -> None:
    runs = RemoteRuns(idle_seconds=10)
    run_id, new, ended = runs.route(("h", None), 0, 100.0)
    assert new and ended is None
    assert runs.route(("h", None), 1, 105.0) == (run_id, False, None)
    assert runs.idle(110.0) == []
    assert runs.idle(115.0) == [run_id]
    again, new, ended = runs.route(("h", None), 2, 116.0)
    assert new and again != run_id and ended is None  # already ended as idle


def test_a_quiet_source_s_run_is_finished_by_the_server(tmp_path: Path) -> None:
    from server import Settings, create_app
    from tests.conftest import local_client

    app = create_app(Settings(db=tmp_path / "t.db", token=TOKEN, disconnect_grace=0.2))
    app.state.remote_monitor.idle_seconds = 0.3
    with local_client(app, headers=AUTH) as c:
        run_id = post_form(c, {"epoch": 0, "loss": 1.0}).json()["run_id"]
        deadline = time.monotonic() + 10
        while c.get(f"/api/runs/{run_id}").json()["run"]["status"] != "finished":
            assert time.monotonic() < deadline, "the idle run was never finished"
            time.sleep(0.05)


# -- the real thing --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("send_as_json", [False, True])
def test_keras_remote_monitor_streams_a_real_fit(server: ServerProcess, send_as_json: bool) -> None:
    import keras

    x, y = make_data()
    model = make_model()
    name = f"rm-{send_as_json}-{time.time_ns()}"
    monitor = keras.callbacks.RemoteMonitor(
        root=server.url,
        path=PATH + f"?run={name}",
        headers={"Authorization": f"Bearer {server.token}"},
        send_as_json=send_as_json,
    )
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[monitor])
    run = runs_by_name(server.client)[name]
    assert run["status"] == "running" and run["epoch"] == 2
    loss = server.series(run["id"], "epoch", "loss")
    assert loss["value"] == pytest.approx(history.history["loss"])


@pytest.mark.slow
def test_keras_remote_monitor_with_only_root_and_token(server: ServerProcess) -> None:
    import keras

    x, y = make_data()
    before = {r["id"] for r in server.client.get("/api/runs").json()["runs"]}
    monitor = keras.callbacks.RemoteMonitor(
        root=server.url, headers={"Authorization": f"Bearer {server.token}"}
    )
    make_model().fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    new = [r for r in server.client.get("/api/runs").json()["runs"] if r["id"] not in before]
    assert len(new) == 1 and new[0]["name"].startswith("remote-monitor-127.0.0.1-")
    assert len(server.series(new[0]["id"], "epoch", "loss")["value"]) == 2
