"""Request bodies and parameters go through the models in `server.models` (in-process).

Every refusal is a 400 (404 for a run id that cannot exist) in the documented
shape `{"error": {"status": …, "message": …}}`, its message naming the field and
the value received; never the framework's 422, never a 500.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, get_args

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from server import Settings, create_app, models
from server.protocol import COMMAND_KINDS, MAX_INT, MAX_NAME, SCOPES
from tests.conftest import TOKEN, local_client

RUN = "0123456789abcdef0123456789abcdef"  # running, then disconnected: takes commands
ENDED = "fedcba9876543210fedcba9876543210"  # finished: commands answer 409
UNKNOWN = "f" * 32
Answer = Any  # TestClient's response: httpx's or httpx2's, as Starlette's version has it
MALFORMED = ["nope", "0123456789ABCDEF0123456789ABCDEF", RUN[:-1], RUN + "0", "g" * 32]


def _start(ws: Any, run_id: str, *records: dict[str, Any]) -> None:
    ws.send_text(json.dumps({"type": "hello", "protocol": 1, "run_id": run_id}))
    assert ws.receive_json()["type"] == "welcome"
    start = {"seq": 1, "type": "run_start", "t": 1.0, "name": "r", "project": "p",
             "params": {}, "meta": {"epochs": 1}}  # fmt: skip
    ws.send_text(json.dumps({"type": "records", "records": [start, *records]}))
    assert ws.receive_json()["type"] == "ack"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module (Hypothesis reuses it), with an open and an ended run."""
    db = tmp_path_factory.mktemp("models") / "t.db"
    app = create_app(Settings(db=db, token=TOKEN))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(app, headers=headers, raise_server_exceptions=False) as client:
        with client.websocket_connect("/ws/train") as ws:
            _start(ws, RUN)
        with client.websocket_connect("/ws/train") as ws:
            end = {"seq": 2, "type": "run_end", "t": 2.0, "status": "finished", "error": None}
            _start(ws, ENDED, end)
        yield client


def error_of(response: Answer, status: int) -> str:
    """The message of an error answer, after checking its status and exact shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert body["error"] == {"status": status, "message": body["error"]["message"]}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def clean(message: str) -> str:
    """`message`, checked for words only the framework would use."""
    for leak in ("pydantic", "https://", "errors.", "ValidationError", "422", "Unprocessable"):
        assert leak not in message, message
    return message


def post_raw(api: TestClient, body: bytes, run_id: str = RUN) -> Answer:
    return api.post(
        f"/api/runs/{run_id}/commands", content=body, headers={"Content-Type": "application/json"}
    )


def patch_raw(api: TestClient, body: bytes, run_id: str = RUN) -> Answer:
    return api.patch(
        f"/api/runs/{run_id}", content=body, headers={"Content-Type": "application/json"}
    )


# -- POST /api/runs/{run_id}/commands ------------------------------------------------


def bad(where: str, problem: str, received: str) -> str:
    """The documented message of a refused value."""
    return f"Bad value for {where}: {problem}. Received {received}."


KINDS = "Input should be 'stop', 'set_lr', 'checkpoint', 'pause', 'resume' or 'set'"
NUMBER = "Input should be a valid number"
REQUIRED = "Field required"
UNEXPECTED = "Unexpected field"
STRING = "Input should be a valid string"
INTEGER = "Input should be a valid integer, unable to parse string as an integer"
COMMAND_OBJECT = 'Input should be a JSON object such as {"kind": "stop"}'
RENAME_OBJECT = 'Input should be a JSON object such as {"name": "baseline-2"}'

COMMAND_REFUSALS: list[tuple[Any, str]] = [
    ({"kind": "reboot"}, bad("body.kind", KINDS, '"reboot"')),
    ({"kind": 5}, bad("body.kind", KINDS, "5")),
    ({"kind": None}, bad("body.kind", KINDS, "null")),
    ({"kind": "STOP"}, bad("body.kind", KINDS, '"STOP"')),
    ({}, bad("body.kind", REQUIRED, "{}")),
    ({"lr": 0.1}, bad("body.kind", REQUIRED, '{"lr": 0.1}')),
    ({"kind": "set_lr"}, bad("body.lr", REQUIRED, '{"kind": "set_lr"}')),
    ({"kind": "set_lr", "lr": 0}, bad("body.lr", "Input should be greater than 0", "0")),
    ({"kind": "set_lr", "lr": -1e-3}, bad("body.lr", "Input should be greater than 0", "-0.001")),
    ({"kind": "set_lr", "lr": True}, bad("body.lr", NUMBER, "true")),
    ({"kind": "set_lr", "lr": False}, bad("body.lr", NUMBER, "false")),
    ({"kind": "set_lr", "lr": None}, bad("body.lr", NUMBER, "null")),
    ({"kind": "set_lr", "lr": "0.1"}, bad("body.lr", NUMBER, '"0.1"')),
    ({"kind": "set_lr", "lr": "NaN"}, bad("body.lr", NUMBER, '"NaN"')),
    ({"kind": "set_lr", "lr": "Infinity"}, bad("body.lr", NUMBER, '"Infinity"')),
    ({"kind": "set_lr", "lr": [0.1]}, bad("body.lr", NUMBER, "[0.1]")),
    ({"kind": "set_lr", "lr": 10**400}, bad("body.lr", NUMBER, "1" + "0" * 98 + "…")),
    ({"kind": "stop", "lr": None}, bad("body.lr", UNEXPECTED, "null")),
    ({"kind": "set_lr", "lr": 0.1, "reason": "x"}, bad("body.reason", UNEXPECTED, '"x"')),
    ([1, 2], bad("body", COMMAND_OBJECT, "[1, 2]")),
    ("stop", bad("body", COMMAND_OBJECT, '"stop"')),
    (None, bad("body", COMMAND_OBJECT, "null")),
]


@pytest.mark.parametrize(("body", "message"), COMMAND_REFUSALS)
def test_bad_command_bodies_are_refused_naming_the_field_and_value(
    api: TestClient, body: Any, message: str
) -> None:
    answer = api.post(f"/api/runs/{RUN}/commands", content=json.dumps(body))
    assert clean(error_of(answer, 400)) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"kind": "set_lr", "lr": NaN}', 'bare NaN is not JSON; send the string "NaN" instead'),
        (b'{"kind": "set_lr", "lr": Infinity}', "bare Infinity is not JSON"),
        (b'{"kind": "set_lr", "lr": -Infinity}', "bare -Infinity is not JSON"),
        (b"{kind: stop}", "Expecting property name enclosed in double quotes"),
        (b'{"kind": "stop"', "Expecting ',' delimiter"),
        (b"\xff\xfe", "Expecting value"),
    ],
)
def test_bodies_that_are_not_strict_json_are_refused(
    api: TestClient, raw: bytes, message: str
) -> None:
    text = clean(error_of(post_raw(api, raw), 400))
    assert text.startswith("The body is not valid JSON: ") and message in text


def test_an_empty_body_is_not_a_command(api: TestClient) -> None:
    assert clean(error_of(post_raw(api, b""), 400)) == (
        'Bad value for body: Input should be a JSON object such as {"kind": "stop"}. Received null.'
    )


def test_an_overflowing_learning_rate_is_not_finite(api: TestClient) -> None:
    message = error_of(post_raw(api, b'{"kind": "set_lr", "lr": 1e400}'), 400)
    assert message == bad("body.lr", "Input should be a finite number", "Infinity")


def test_unpaired_surrogates_are_refused_and_shown_escaped(api: TestClient) -> None:
    kind = error_of(post_raw(api, b'{"kind": "\\ud800"}'), 400)
    assert kind == bad("body.kind", KINDS, '"\\ud800"')  # escaped, so UTF-8 can carry it
    error_of(post_raw(api, b'{"kind": "stop", "\\ud800": 1}'), 400)
    error_of(patch_raw(api, b'{"name": "a\\ud800"}'), 400)
    assert api.get(f"/api/runs/{RUN}").json()["run"]["name"] != "a\ud800"


def test_valid_commands_are_accepted_whatever_the_content_type(api: TestClient) -> None:
    whole = api.post(f"/api/runs/{RUN}/commands", json={"kind": "set_lr", "lr": 1})
    assert whole.status_code == 202
    command = whole.json()["command"]
    assert command["kind"] == "set_lr" and command["lr"] == 1.0 and command["status"] == "pending"
    tiny = post_raw(api, b'{"kind": "set_lr", "lr": 5e-324}')
    assert tiny.status_code == 202 and tiny.json()["command"]["lr"] == 5e-324
    # `curl -d` sends a form content type; the body is still read as JSON.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    stop = api.post(f"/api/runs/{RUN}/commands", content=b'{"kind": "stop"}', headers=form)
    assert stop.status_code == 202 and stop.json()["command"]["lr"] is None


def test_commands_to_unknown_malformed_or_ended_runs(api: TestClient) -> None:
    stop = json.dumps({"kind": "stop"}).encode()
    for run_id in [UNKNOWN, *MALFORMED]:
        message = error_of(post_raw(api, stop, run_id), 404)
        assert message == f"No run with id {run_id!r}."
    # A bad body is told first, as before, whatever the run.
    assert "body.kind" in error_of(post_raw(api, b"{}", "nope"), 400)
    assert "already finished" in error_of(post_raw(api, stop, ENDED), 409)


# -- PATCH /api/runs/{run_id} --------------------------------------------------------

TOO_SHORT = "String should have at least 1 character"
TOO_LONG = f"String should have at most {MAX_NAME} characters"

RENAME_REFUSALS: list[tuple[Any, str]] = [
    ({"name": ""}, bad("body.name", TOO_SHORT, '""')),
    ({"name": "   "}, bad("body.name", TOO_SHORT, '"   "')),
    ({"name": "x" * (MAX_NAME + 1)}, bad("body.name", TOO_LONG, '"' + "x" * 98 + "…")),
    ({"name": 5}, bad("body.name", STRING, "5")),
    ({"name": None}, bad("body.name", STRING, "null")),
    ({"name": True}, bad("body.name", STRING, "true")),
    ({"name": ["a"]}, bad("body.name", STRING, '["a"]')),
    ({}, bad("body.name", REQUIRED, "{}")),
    ({"title": "a"}, bad("body.name", REQUIRED, '{"title": "a"}')),
    ({"name": "a", "project": "b"}, bad("body.project", UNEXPECTED, '"b"')),
    ([1], bad("body", RENAME_OBJECT, "[1]")),
    ("a", bad("body", RENAME_OBJECT, '"a"')),
]


@pytest.mark.parametrize(("body", "message"), RENAME_REFUSALS)
def test_bad_rename_bodies_are_refused_naming_the_field_and_value(
    api: TestClient, body: Any, message: str
) -> None:
    answer = api.patch(f"/api/runs/{RUN}", content=json.dumps(body))
    assert clean(error_of(answer, 400)) == message


def test_rename_bodies_must_be_strict_json(api: TestClient) -> None:
    nan = clean(error_of(patch_raw(api, b'{"name": NaN}'), 400))
    assert nan.startswith("The body is not valid JSON: bare NaN is not JSON")
    assert error_of(patch_raw(api, b""), 400).startswith("Bad value for body: Input should be")


def test_names_are_trimmed_and_may_be_max_name_long(api: TestClient) -> None:
    trimmed = api.patch(f"/api/runs/{RUN}", json={"name": "  spaced  "})
    assert trimmed.status_code == 200 and trimmed.json()["run"]["name"] == "spaced"
    longest = api.patch(f"/api/runs/{RUN}", json={"name": " " + "n" * MAX_NAME + " "})
    assert longest.status_code == 200 and longest.json()["run"]["name"] == "n" * MAX_NAME
    for run_id in [UNKNOWN, *MALFORMED]:
        assert error_of(patch_raw(api, b'{"name": "a"}', run_id), 404).startswith("No run with id")


# -- GET /api/runs/{run_id}/metrics and run ids -------------------------------------

SCOPE = "Input should be 'epoch' or 'batch'"
AT_LEAST = "Input should be greater than or equal to {}".format
AT_MOST = "Input should be less than or equal to {}".format

METRICS_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"scope": "minute"}, bad("query.scope", SCOPE, '"minute"')),
    ({"scope": ""}, bad("query.scope", SCOPE, '""')),
    ({"max_points": 1}, bad("query.max_points", AT_LEAST(2), '"1"')),
    ({"max_points": 20001}, bad("query.max_points", AT_MOST(20000), '"20001"')),
    ({"max_points": "many"}, bad("query.max_points", INTEGER, '"many"')),
    ({"max_points": "2.5"}, bad("query.max_points", INTEGER, '"2.5"')),
    ({"start": -1}, bad("query.start", AT_LEAST(0), '"-1"')),
    ({"end": -1}, bad("query.end", AT_LEAST(0), '"-1"')),
    ({"start": MAX_INT + 1}, bad("query.start", AT_MOST(MAX_INT), f'"{MAX_INT + 1}"')),
    ({"end": "soon"}, bad("query.end", INTEGER, '"soon"')),
]


@pytest.mark.parametrize(("params", "message"), METRICS_REFUSALS)
def test_bad_metrics_queries_are_refused_naming_the_parameter(
    api: TestClient, params: dict[str, Any], message: str
) -> None:
    answer = api.get(f"/api/runs/{RUN}/metrics", params=params)
    assert clean(error_of(answer, 400)) == message


def test_good_metrics_queries_pass(api: TestClient) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"scope": "batch", "max_points": 2},
        {"scope": "epoch", "max_points": 20000, "start": 0, "end": MAX_INT},
        {"key": ["loss", "val_loss"]},
    ]
    for params in cases:
        answer = api.get(f"/api/runs/{RUN}/metrics", params=params)
        assert answer.status_code == 200, answer.text
        assert answer.json()["scope"] == params.get("scope", "epoch")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/metrics"),
        ("GET", "/events"),
        ("GET", "/commands"),
        ("GET", "/export.csv"),
        ("GET", "/export.json"),
        ("GET", "/report.html"),
    ],
)
def test_run_ids_that_cannot_exist_are_unknown_runs(
    api: TestClient, method: str, suffix: str
) -> None:
    for run_id in [UNKNOWN, *MALFORMED]:
        answer = api.request(method, f"/api/runs/{run_id}{suffix}")
        assert error_of(answer, 404) == f"No run with id {run_id!r}."


def test_a_bad_query_is_told_before_a_malformed_run_id(api: TestClient) -> None:
    answer = api.get("/api/runs/nope/metrics", params={"scope": "minute"})
    assert error_of(answer, 400).startswith("Bad value for query.scope:")


# -- the models themselves -----------------------------------------------------------


def test_models_agree_with_the_protocol() -> None:
    assert get_args(models.Scope) == SCOPES
    members = get_args(get_args(models.Command)[0])
    tags = tuple(get_args(m.model_fields["kind"].annotation)[0] for m in members)
    assert tags == COMMAND_KINDS


def test_storable_refuses_unpaired_surrogates() -> None:
    adapter: TypeAdapter[str] = TypeAdapter(Annotated[str, models.Storable])
    assert adapter.validate_python("ok ✓") == "ok ✓"
    with pytest.raises(ValidationError, match="unpaired surrogates"):
        adapter.validate_python("a\ud800")


def test_openapi_shows_the_models_and_the_error_shape(tmp_path: Path) -> None:
    schema = create_app(Settings(db=tmp_path / "d.db", auth=False)).openapi()
    paths = schema["paths"]
    post = paths["/api/runs/{run_id}/commands"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert [m["title"] for m in body["oneOf"]] == [
        "StopCommand",
        "SetLrCommand",
        "CheckpointCommand",
        "PauseCommand",
        "ResumeCommand",
        "SetCommand",
    ]
    lr = body["oneOf"][1]["properties"]["lr"]
    assert lr["type"] == "number" and lr["exclusiveMinimum"] == 0
    assert "$defs" not in json.dumps(post)
    rename = paths["/api/runs/{run_id}"]["patch"]["requestBody"]["content"]["application/json"]
    name = rename["schema"]["properties"]["name"]
    assert (name["minLength"], name["maxLength"]) == (1, MAX_NAME)
    query = {
        p["name"]: p["schema"] for p in paths["/api/runs/{run_id}/metrics"]["get"]["parameters"]
    }
    assert query["scope"]["enum"] == list(SCOPES)
    assert (query["max_points"]["minimum"], query["max_points"]["maximum"]) == (2, 20000)
    assert query["run_id"]["pattern"] == "^[0-9a-f]{32}$"
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorDetail")
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)


# -- any JSON at all -----------------------------------------------------------------

NUMBERS = st.integers() | st.floats()  # NaN and ±Infinity included: written bare
SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
NEAR_COMMANDS = st.fixed_dictionaries(
    {"kind": st.sampled_from([*COMMAND_KINDS, "pause", ""]) | JSON},
    optional={
        "lr": JSON | st.sampled_from(["NaN", "Infinity", "-Infinity", "0.1", 1e-3, 1e308]),
        "checkpoint": JSON,
    },
)
NEAR_RENAMES = st.fixed_dictionaries(
    {"name": st.text(max_size=MAX_NAME + 5) | JSON}, optional={"project": JSON}
)
RUN_IDS = st.sampled_from([RUN, ENDED, UNKNOWN]) | st.text(
    string.ascii_letters + string.digits, min_size=1, max_size=40
)
BODIES = (NEAR_COMMANDS.map(json.dumps) | NEAR_RENAMES.map(json.dumps) | JSON.map(json.dumps)).map(
    str.encode
) | st.binary(max_size=40)


def answered_as_documented(response: Answer, ok: int) -> None:
    assert response.status_code in (ok, 400, 404, 409), (response.status_code, response.text)
    if response.status_code != ok:
        error_of(response, response.status_code)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, run_id=RUN_IDS)
def test_any_command_body_is_answered_as_documented(
    api: TestClient, body: bytes, run_id: str
) -> None:
    answered_as_documented(post_raw(api, body, run_id), 202)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, run_id=RUN_IDS)
def test_any_rename_body_is_answered_as_documented(
    api: TestClient, body: bytes, run_id: str
) -> None:
    answered_as_documented(patch_raw(api, body, run_id), 200)
