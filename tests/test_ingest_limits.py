"""Whatever `/ws/train` accepts, every route can serve (issue 10, item 2).

The documented record limits (docs/http_api.md, "Record limits") are enforced
at ingest: a record past them gets an `error` naming it at once and is
acknowledged, never silence and never a dropped socket; a frame that is not
JSON closes with 1008. Then Hypothesis throws generated frames at the
in-process server and every route (runs, the run, events, metrics of both
scopes, commands, both exports, the report, the live push) must answer 200
with strict JSON.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import WebSocketTestSession

from server import Settings, create_app
from server.protocol import MAX_DEPTH, Close, Msg, dumps, has_surrogate, json_problem, loads
from tests.conftest import TOKEN, local_client

REPLY_TIMEOUT = 10.0  # seconds; the server answers in milliseconds, a hang fails fast
INF = "\x00inf\x00"  # marks in generated data, written as 1e999 / -1e999 in the frame
NEG_INF = "\x00-inf\x00"


def receive(ws: WebSocketTestSession, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """The next message from the server, or TimeoutError: silence fails the test.

    `WebSocketTestSession.receive` waits forever; this is the same call with a deadline.
    """

    async def get() -> Any:
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    message: dict[str, Any] = ws.portal.call(get)
    return message


def frame_text(obj: Any) -> str:
    """`obj` as a frame: lone surrogates escaped (`\\udcff`, valid JSON), INF marks as 1e999."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text.replace('"\\u0000inf\\u0000"', "1e999").replace('"\\u0000-inf\\u0000"', "-1e999")


def strict(text: str) -> Any:
    """Parse as strict JSON (no bare NaN/Infinity) that is valid UTF-8."""
    text.encode("utf-8")  # raises on a lone surrogate
    return loads(text)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = tmp_path_factory.mktemp("limits") / "t.db"
    app = create_app(Settings(db=db, token=TOKEN))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(app, headers=headers, raise_server_exceptions=False) as client:
        yield client


class Trainer:
    """A hand-made `/ws/train` client: hello, then frames, reading every reply."""

    def __init__(self, client: TestClient, run_id: str | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex
        self.cm = client.websocket_connect("/ws/train")
        self.ws = self.cm.__enter__()
        self.ws.send_text(dumps(Msg.hello(self.run_id)))
        welcome = strict(receive(self.ws)["text"])
        assert welcome["type"] == "welcome"
        self.seq = itertools.count(welcome["last_seq"] + 1)

    def send(self, text: str) -> list[dict[str, Any]]:
        """Send one frame; the replies up to its ack (or its one error, or the close)."""
        self.ws.send_text(text)
        replies: list[dict[str, Any]] = []
        while True:
            message = receive(self.ws)
            if message["type"] == "websocket.close":
                replies.append({"type": "close", "code": message["code"],
                                "reason": message.get("reason", "")})  # fmt: skip
                return replies
            reply = strict(message["text"])
            replies.append(reply)
            if reply["type"] == "ack":
                return replies
            frame = json.loads(text) if text.startswith("{") else None
            records = frame.get("records") if isinstance(frame, dict) else None
            if reply["type"] == "error" and not (
                isinstance(frame, dict)
                and frame.get("type") == "records"
                and isinstance(records, list)
            ):
                return replies  # a frame that is not a list of records: one error, no ack

    def records(self, *records: dict[str, Any]) -> list[dict[str, Any]]:
        numbered = [{"seq": next(self.seq), **r} for r in records]
        return self.send(frame_text(Msg.records(numbered)))

    def close(self) -> None:
        self.cm.__exit__(None, None, None)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_start(**fields: Any) -> dict[str, Any]:
    return {"type": "run_start", "t": 1.0, "name": "r", "project": None, "params": {},
            "meta": {}, **fields}  # fmt: skip


def batch(step: int, **logs: Any) -> dict[str, Any]:
    return {"type": "batch", "t": 1.0 + step, "step": step, "epoch": step / 10, "logs": logs}


def nested(depth: int) -> Any:
    out: Any = {}
    for _ in range(depth - 1):
        out = {"a": out}
    return out


# -- every route, strict ---------------------------------------------------------------


def assert_every_route_serves(client: TestClient, run_id: str) -> None:
    """Every route that shows a run answers 200 with strict JSON (or a sound download)."""
    runs = client.get("/api/runs")
    assert runs.status_code == 200, runs.text
    listed = {r["id"] for r in strict(runs.text)["runs"]}
    run = client.get(f"/api/runs/{run_id}")
    if run_id not in listed:
        assert run.status_code == 404
        return
    assert run.status_code == 200, run.text
    strict(run.text)
    for path in (
        f"/api/runs/{run_id}/events",
        f"/api/runs/{run_id}/metrics?scope=epoch",
        f"/api/runs/{run_id}/metrics?scope=batch",
        f"/api/runs/{run_id}/commands",
        f"/api/runs/{run_id}/export.json",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        strict(response.text)
    csv = client.get(f"/api/runs/{run_id}/export.csv")
    assert csv.status_code == 200 and csv.text.startswith("scope,key,step,epoch,t,value")
    report = client.get(f"/api/runs/{run_id}/report.html")
    assert report.status_code == 200 and report.content.decode("utf-8").startswith("<!")


def assert_live_push_serves(client: TestClient, run_id: str) -> None:
    """`/ws/live` subscribed to the run: its messages are strict JSON, up to a marker."""
    marker = uuid.uuid4().hex
    with client.websocket_connect("/ws/live") as live:
        assert strict(receive(live)["text"])["type"] == "hello"
        live.send_text(dumps(Msg.subscribe([run_id])))
        while strict(receive(live)["text"])["type"] != "subscribed":
            pass
        if client.get(f"/api/runs/{run_id}").status_code != 200:
            return
        assert client.patch(f"/api/runs/{run_id}", json={"name": marker}).status_code == 200
        while True:  # every push up to the rename, each strict
            message = strict(receive(live)["text"])
            if message["type"] == "run" and message["run"]["name"] == marker:
                break


# -- the cases of the issue, one by one ---------------------------------------------------

LONE = "runs/\udcff"  # what os.fsdecode makes of the byte 0xff


@pytest.mark.parametrize(
    ("records", "refused", "named"),
    [
        ([run_start(params={"path": LONE})], 1, "surrogate"),
        ([run_start(meta={LONE: 1})], 1, "surrogate"),
        ([run_start(params=nested(500))], 1, f"deeper than {MAX_DEPTH}"),
        ([run_start(params={"lr": INF})], 1, "Infinity"),
        ([run_start(), {"type": "event", "t": 2.0, "kind": "k", "data": {"v": NEG_INF}}], 2,
         "Infinity"),
        ([run_start(), {"type": "run_end", "t": 2.0, "status": "failed",
                        "error": {"type": "E", "message": LONE}}], 2, "surrogate"),
        ([run_start(), batch(1, **{LONE: 0.5})], 2, "surrogate"),
        ([run_start(), batch(1, loss=10**400)], 2, "not a number"),
        ([run_start(params={"n": 10**400})], 1, "beyond 64 bits"),
        ([run_start(), {**batch(1, loss=0.5), "step": 10**400}], 2, "'step'"),
        ([batch(1, loss=0.5)], 1, "not its run_start"),
    ],
    ids=["surrogate-in-params", "surrogate-key-in-meta", "500-deep-params", "1e999-in-params",
         "-1e999-in-event-data", "surrogate-in-error", "surrogate-metric-key",
         "400-digit-metric", "400-digit-int-in-params", "400-digit-step", "before-run-start"],
)  # fmt: skip
def test_a_record_past_the_limits_gets_an_immediate_error_naming_it_and_an_ack(
    app_client: TestClient, records: list[dict[str, Any]], refused: int, named: str
) -> None:
    # Another run streams beside the bad one.
    with Trainer(app_client) as neighbour, Trainer(app_client) as trainer:
        assert neighbour.records(run_start(), batch(1, loss=0.25))[-1]["type"] == "ack"
        replies = trainer.records(*records)
        *errors, ack = replies
        assert ack == {"type": "ack", "seq": len(records)}
        assert len(errors) == 1 and errors[0]["type"] == "error"
        message = errors[0]["message"]
        assert f"record {refused}" in message.lower() and named in message, message
        assert not has_surrogate(message) and len(message) < 400
        # The connection stays open and usable, and nothing else was harmed.
        assert trainer.records(batch(9, loss=1.0))[-1]["type"] == "ack"
        assert neighbour.records(batch(2, loss=0.125))[-1]["type"] == "ack"
        assert_every_route_serves(app_client, trainer.run_id)
        assert_every_route_serves(app_client, neighbour.run_id)
        series = app_client.get(
            f"/api/runs/{neighbour.run_id}/metrics", params={"scope": "batch", "key": "loss"}
        ).json()["series"]["loss"]
        assert series["value"] == [0.25, 0.125]


def test_the_good_records_of_a_frame_with_a_bad_one_are_stored(app_client: TestClient) -> None:
    with Trainer(app_client) as trainer:
        replies = trainer.records(run_start(), batch(1, loss=1.0), batch(2, **{LONE: 1.0}),
                                  batch(3, loss=3.0))  # fmt: skip
    assert [r["type"] for r in replies] == ["error", "ack"]
    assert replies[-1]["seq"] == 4 and "Record 3" in replies[0]["message"]
    series = app_client.get(
        f"/api/runs/{trainer.run_id}/metrics", params={"scope": "batch", "key": "loss"}
    ).json()["series"]["loss"]
    assert series["step"] == [1, 3]


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "records", "records": [{"seq": 1, "t": NaN}]}',
        "not json",
        "[" * 5000 + "]" * 5000,
        '{"type": "records", "records": [{"seq": ' + "9" * 5000 + "}]}",
    ],
    ids=["bare-nan", "not-json", "5000-deep", "5000-digit-int"],
)
def test_a_frame_that_is_not_strict_json_closes_with_1008(
    app_client: TestClient, text: str
) -> None:
    with Trainer(app_client) as trainer:
        [reply] = trainer.send(text)
    assert reply["type"] == "close" and reply["code"] == Close.POLICY
    assert "JSON" in reply["reason"]
    assert_every_route_serves(app_client, trainer.run_id)


# -- generated frames ------------------------------------------------------------------

texts = st.text(st.characters() | st.sampled_from(["\udcff", "\ud800"]), max_size=8)
names = st.one_of(st.sampled_from(["loss", "acc", "val_loss", "learning_rate"]), texts)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", INF, NEG_INF, 10**400, 2**63, -(2**63)]),
    st.integers(-(2**70), 2**70),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
free_form = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
deep = st.integers(MAX_DEPTH - 1, MAX_DEPTH + 3).map(nested)
objects = st.one_of(st.dictionaries(texts, free_form, max_size=4), deep, free_form)
steps = st.one_of(st.integers(0, 50), st.sampled_from([-1, 2**63, 10**400]), numbers)
finite = st.floats(0, 1e6)

record = st.one_of(
    st.fixed_dictionaries({"type": st.just("run_start"), "t": finite, "name": names,
                           "project": st.none() | names, "params": objects, "meta": objects}),
    st.fixed_dictionaries({"type": st.sampled_from(["batch", "epoch"]), "t": finite,
                           "step": steps, "epoch": st.one_of(finite, numbers),
                           "logs": st.dictionaries(names, numbers | scalars, max_size=4)}),
    st.fixed_dictionaries({"type": st.just("lr"), "t": finite, "step": steps, "epoch": finite,
                           "lr": numbers, "previous": st.none() | numbers, "source": names}),
    st.fixed_dictionaries({"type": st.just("event"), "t": finite, "kind": names,
                           "step": st.none() | steps, "epoch": st.none() | finite,
                           "data": objects}),
    st.fixed_dictionaries({"type": st.just("command"), "t": finite, "id": st.integers(1, 3),
                           "status": st.sampled_from(["delivered", "applied", "rejected", "x"]),
                           "reason": st.none() | texts | free_form}),
    st.fixed_dictionaries({"type": st.just("run_end"), "t": finite,
                           "status": st.sampled_from(["finished", "stopped", "failed", "x"]),
                           "error": st.none() | objects}),
    free_form,  # not a record at all
)  # fmt: skip
# The run's first record: a sound name, so that most runs exist and the routes have
# something to serve; its params and meta hold anything (the refused ones make no run).
starts = st.builds(
    run_start,
    name=st.sampled_from(["r", "ré", "=HYPERLINK()", "<b>x</b>"]),
    params=st.dictionaries(texts, free_form, max_size=3),
    meta=st.dictionaries(texts, free_form, max_size=3) | deep,
)
frames = st.lists(
    st.one_of(
        st.lists(record, min_size=1, max_size=5),  # a records frame
        st.just("bogus-frame"),  # {"type": "bogus"}: one error, the connection stays
        free_form.map(lambda v: ("not-a-list", v)),  # {"type": "records", "records": v}
    ),
    min_size=1,
    max_size=4,
)


def _frame(spec: Any, seq: Iterator[int], start: dict[str, Any] | None) -> str:
    if spec == "bogus-frame":
        return frame_text({"type": "bogus"})
    if isinstance(spec, tuple):
        return frame_text({"type": "records", "records": spec[1]})
    head = [start] if start is not None else []  # most runs exist: routes show them
    records = [{"seq": next(seq), **r} if isinstance(r, dict) else r for r in [*head, *spec]]
    return frame_text(Msg.records(records))


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(frames=frames, start=starts | st.none())
def test_whatever_ingest_accepts_every_route_can_serve(
    app_client: TestClient, frames: list[Any], start: dict[str, Any] | None
) -> None:
    with Trainer(app_client) as trainer:
        seq = itertools.count(1)
        for i, spec in enumerate(frames):
            replies = trainer.send(_frame(spec, seq, start if i == 0 else None))
            kinds = [r["type"] for r in replies]
            assert set(kinds) <= {"error", "ack"}, replies  # never a close, never silence
            for reply in replies:
                if reply["type"] == "error":
                    assert isinstance(reply["message"], str) and reply["message"]
        assert_every_route_serves(app_client, trainer.run_id)
        assert_live_push_serves(app_client, trainer.run_id)
    assert_every_route_serves(app_client, trainer.run_id)  # and once its trainer is gone


def test_the_limits_in_the_docs_are_the_protocols() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "http_api.md").read_text()
    assert f"`MAX_DEPTH` = {MAX_DEPTH} levels" in docs
    assert re.search(r"`MIN_INT` … `MAX_INT`", docs)
    assert not math.isfinite(json.loads("1e999"))  # why 1e999 is named there


def test_a_run_stored_before_the_limits_existed_is_served_too(tmp_path: Path) -> None:
    """Old databases may hold what ingest now refuses: the routes serve it as text."""
    db = tmp_path / "old.db"
    app = create_app(Settings(db=db, token=TOKEN))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with local_client(app, headers=headers, raise_server_exceptions=False) as client:
        with Trainer(client) as trainer:
            trainer.records(run_start(), {"type": "event", "t": 2.0, "kind": "k", "data": {}})
        # What an older fitdeck let in, written as it wrote it (json.dumps, ASCII escapes).
        deep = "[" * 500 + "]" * 500
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE runs SET params = ?, meta = ?, error = ? WHERE id = ?",
                (json.dumps({"path": "/data/\udcff"}), json.dumps({"deep": json.loads(deep)}),
                 json.dumps({"type": "E", "message": "\udcff"}), trainer.run_id),
            )  # fmt: skip
            conn.execute(
                "UPDATE events SET data = ? WHERE run_id = ?",
                (json.dumps({"\udcfe": 1}), trainer.run_id),
            )
        assert_every_route_serves(client, trainer.run_id)
        run = client.get(f"/api/runs/{trainer.run_id}").json()["run"]
        assert run["params"] == {"path": "/data/\\udcff"}
        assert json_problem(run["meta"], "meta") is None  # the deep part came back as text
