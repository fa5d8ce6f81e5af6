"""server.protocol: the NaN/±Infinity codec, strict frames, builders, URLs, ids, close codes."""

from __future__ import annotations

import contextlib
import json
import math
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import CloseCode

from server.protocol import (
    HELLO_ROLES,
    MAX_DEPTH,
    MESSAGE_TYPES,
    NONFINITE,
    RECORD_TYPES,
    RUN_ID,
    Close,
    FrameError,
    Msg,
    Rec,
    decode_number,
    dumps,
    encode_number,
    encode_records,
    encode_value,
    json_problem,
    jsonable,
    loads,
    train_ws_url,
)

FAST = settings(deadline=None, database=None, max_examples=60)
RUN = "0123456789abcdef0123456789abcdef"


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


# -- the codec -------------------------------------------------------------------


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_survives_encode_dumps_loads_decode(x: float) -> None:
    wire = dumps({"v": encode_number(x)})
    assert same_float(decode_number(loads(wire)["v"]), x)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_encode_number_gives_strict_json(x: float) -> None:
    """Never a raw float the strict encoder would refuse, and strings only for non-finite."""
    encoded = encode_number(x)
    json.dumps(encoded, allow_nan=False)
    assert isinstance(encoded, str) == (not math.isfinite(x))


def test_encode_number_none_is_nan() -> None:
    """SQLite keeps NaN as NULL; it goes back out as the string "NaN"."""
    assert encode_number(None) == "NaN"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.float64(-2.25), -2.25),
        (np.int64(7), 7.0),
        (np.float16("nan"), "NaN"),
        (np.float32("inf"), "Infinity"),
        (np.float64("-inf"), "-Infinity"),
        (np.array(3.0), 3.0),
        (np.array(np.nan, dtype=np.float32), "NaN"),
        (2, 2.0),
        (0.1, 0.1),
    ],
)
def test_encode_value_on_numeric_scalars(value: object, expected: float | str) -> None:
    assert encode_value(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, "abc", "", object(), [1.0], {"a": 1.0}, np.array([1.0, 2.0]), np.array([1.0]), 1 + 2j],
    ids=["None", "text", "empty", "object", "list", "dict", "array2", "array1", "complex"],
)
def test_encode_value_is_none_for_non_numbers(value: object) -> None:
    assert encode_value(value) is None


@pytest.mark.parametrize("value", ["1.5", "nan", "inf", b"2"])
def test_encode_value_is_none_for_numeric_strings(value: object) -> None:
    assert encode_value(value) is None


def test_encode_value_on_an_int_too_large_for_a_float() -> None:
    assert encode_value(10**400) == "Infinity"
    assert encode_value(-(10**400)) == "-Infinity"


def test_decode_number_refuses_an_int_too_large_for_a_float() -> None:
    assert decode_number(10**400) is None
    assert decode_number(2**70) == float(2**70)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (2.5, 2.5), ("NaN", math.nan), ("Infinity", math.inf), ("-Infinity", -math.inf)],
)
def test_decode_number_accepts_numbers_and_the_three_strings(
    value: object, expected: float
) -> None:
    assert same_float(decode_number(value), expected)


@pytest.mark.parametrize(
    "value", [True, False, None, "nan", "inf", "1.5", "", [], {}, "-NaN", "+Infinity"]
)
def test_decode_number_refuses_everything_else(value: object) -> None:
    assert decode_number(value) is None


def test_nonfinite_names_are_the_three_strict_json_spellings() -> None:
    assert set(NONFINITE) == {"NaN", "Infinity", "-Infinity"}


# -- strict frames -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dumps_refuses_raw_nonfinite(bad: float) -> None:
    with pytest.raises(ValueError):
        dumps({"records": [{"logs": {"loss": bad}}]})


def test_dumps_is_compact() -> None:
    assert dumps({"a": [1, 2], "b": "x"}) == '{"a":[1,2],"b":"x"}'


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"v": -Infinity}', "[1, NaN]"])
def test_loads_refuses_bare_nonfinite_and_says_to_send_the_string(text: str) -> None:
    with pytest.raises(FrameError, match=r'send the string "-?(NaN|Infinity)"'):
        loads(text)


def test_loads_reads_overflowing_numbers_as_infinity() -> None:
    assert loads("1e999") == math.inf
    assert loads('{"v": -1e999}') == {"v": -math.inf}


@pytest.mark.parametrize("text", ['{"a": 1}', b'{"a": 1}', bytearray(b'{"a": 1}')])
def test_loads_takes_text_and_bytes(text: str | bytes) -> None:
    assert loads(text) == {"a": 1}


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "[1,]", "{'a': 1}", "\ufeff{}", b"\xff\xfe", "1" * 5000, "[" * 100_000, "nul"],
    ids=[
        "empty",
        "blank",
        "open",
        "trailing-comma",
        "quotes",
        "bom",
        "bad-utf8",
        "huge-int",
        "deep",
        "nul",
    ],
)
def test_loads_refuses_garbage_with_frame_error(text: str | bytes) -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        loads(text)


def test_frame_error_is_a_value_error() -> None:
    """Callers that catch ValueError keep working."""
    assert issubclass(FrameError, ValueError)


@FAST
@given(st.text())
def test_loads_on_any_text_returns_or_raises_frame_error(text: str) -> None:
    with contextlib.suppress(FrameError):
        loads(text)


@FAST
@given(st.binary())
def test_loads_on_any_bytes_returns_or_raises_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        loads(data)


JSON_CHARS = st.sampled_from(list('{}[]:,"\\ 0123456789.eE+-truefalsnNaIiy\n\t'))


@FAST
@given(st.lists(JSON_CHARS, max_size=40).map("".join))
def test_loads_on_json_like_noise_returns_or_raises_frame_error(text: str) -> None:
    """Noise made of JSON's own characters gets further into the parsers than random text."""
    with contextlib.suppress(FrameError):
        loads(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@FAST
@given(json_values)
def test_dumps_then_loads_is_identity_on_strict_json(value: object) -> None:
    assert loads(dumps(value)) == value


# -- builders --------------------------------------------------------------------------

MSG_CALLS = {
    "hello": lambda: Msg.hello(RUN),
    "records": lambda: Msg.records([{"seq": 1, "type": "batch"}]),
    "welcome": lambda: Msg.welcome(RUN, 0),
    "ack": lambda: Msg.ack(5),
    "command": lambda: Msg.command({"id": 1, "kind": "set_lr", "lr": 0.1, "status": "pending"}),
    "commit": lambda: Msg.commit(1, 12),
    "error": lambda: Msg.error("no"),
    "storage_error": lambda: Msg.storage_error("database is locked"),
    "subscribe": lambda: Msg.subscribe(iter([RUN])),
    "live_hello": lambda: Msg.live_hello(1.5),
    "storage": lambda: Msg.storage("database or disk is full"),
    "subscribed": lambda: Msg.subscribed({RUN}),
    "run": lambda: Msg.run({"id": RUN}),
    "run_deleted": lambda: Msg.run_deleted(RUN),
    "metrics": lambda: Msg.metrics(RUN, "batch", [{"step": 1, "logs": {"loss": "NaN"}}]),
    "event": lambda: Msg.event(RUN, {"kind": "x"}),
}
REC_CALLS = {
    "run_start": lambda: Rec.run_start(1.0, "run", None, {"epochs": 2}, {"steps_per_epoch": 3}),
    "metrics": lambda: Rec.metrics("batch", 1.0, 3, 0.5, {"loss": "NaN", "acc": 0.5}),
    "lr": lambda: Rec.lr(1.0, 3, 0.5, np.float32("nan"), None, "schedule", command_id=4),
    "command": lambda: Rec.command(1.0, 4, "applied", epoch=0, batch=1, step=2),
    "event": lambda: Rec.event(1.0, "note", {"x": 1}),
    "state": lambda: Rec.state(1.0, {"user.x": {"value": 1, "type": "int"}}, [], step=3),
    "run_end": lambda: Rec.run_end(1.0, "failed", {"type": "E", "message": "m"}),
}


def _public_static(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if isinstance(v, staticmethod)}


def test_every_builder_is_exercised_here() -> None:
    """A new builder fails this test until it is added to the tables below."""
    assert _public_static(Msg) == set(MSG_CALLS)
    assert _public_static(Rec) == set(REC_CALLS)


@pytest.mark.parametrize("name", sorted(MSG_CALLS))
def test_message_builder_type_is_known_and_survives_dumps(name: str) -> None:
    message = MSG_CALLS[name]()
    assert message["type"] in MESSAGE_TYPES
    assert loads(dumps(message)) == message


@pytest.mark.parametrize("name", sorted(REC_CALLS))
def test_record_builder_type_is_known_and_survives_dumps(name: str) -> None:
    record = REC_CALLS[name]()
    assert record["type"] in RECORD_TYPES
    assert loads(dumps(record)) == record


def test_command_to_trainer_carries_only_wire_fields() -> None:
    command = {"id": 1, "kind": "stop", "lr": None, "status": "pending", "reason": "x"}
    assert Msg.command(command) == {
        "type": "command",
        "command": {"id": 1, "kind": "stop", "lr": None},
    }
    to_browser = Msg.command(command, RUN)
    assert to_browser["run_id"] == RUN and to_browser["command"] == command
    assert to_browser["command"] is not command


def test_hello_names_an_uploader_only_when_asked() -> None:
    assert "role" not in Msg.hello(RUN)
    assert Msg.hello(RUN, role="sync")["role"] == "sync"
    assert "sync" in HELLO_ROLES


def test_storage_health_has_one_shape_in_hello_and_in_its_message() -> None:
    assert Msg.live_hello(1.0)["storage"] == {"status": "ok", "reason": None}
    degraded = {"status": "degraded", "reason": "database is locked"}
    assert Msg.live_hello(1.0, "database is locked")["storage"] == degraded
    assert Msg.storage("database is locked") == {"type": "storage", "storage": degraded}
    assert Msg.storage(None)["storage"]["status"] == "ok"


def test_lr_record_encodes_nonfinite_and_keeps_first_reading_previous_none() -> None:
    record = Rec.lr(1.0, 0, 0.0, math.inf, None, "optimizer")
    assert record["lr"] == "Infinity"
    assert record["previous"] is None
    assert "command_id" not in record


def test_subscribed_lists_runs_sorted() -> None:
    assert Msg.subscribed({"b" * 32, "a" * 32})["run_ids"] == ["a" * 32, "b" * 32]


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/train"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/ws/train"),
        ("https://deck.example.org", "wss://deck.example.org/ws/train"),
        ("HTTPS://deck.example.org", "wss://deck.example.org/ws/train"),
        ("ws://h:1", "ws://h:1/ws/train"),
        ("wss://h", "wss://h/ws/train"),
        ("http://h:8000/fitdeck", "ws://h:8000/fitdeck/ws/train"),
        ("https://h/a/b/", "wss://h/a/b/ws/train"),
        ("http://h:8000/?x=1#frag", "ws://h:8000/ws/train"),
        ("http://[::1]:8000", "ws://[::1]:8000/ws/train"),
    ],
)
def test_train_ws_url(url: str, expected: str) -> None:
    assert train_ws_url(url) == expected


@pytest.mark.parametrize(
    "url", ["ftp://h", "localhost:8000", "127.0.0.1:8000", "http://", "http:///x", "", "h"]
)
def test_train_ws_url_refuses_what_is_not_an_http_address(url: str) -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        train_ws_url(url)


# -- run ids and close codes --------------------------------------------------------------


def test_run_id_matches_uuid4_hex() -> None:
    assert RUN_ID.fullmatch(uuid.uuid4().hex)


@pytest.mark.parametrize(
    "bad",
    ["0" * 31, "0" * 33, "A" * 32, str(uuid.uuid4()), "g" * 32, "0" * 32 + "\n", " " + "0" * 31],
)
def test_run_id_refuses_look_alikes(bad: str) -> None:
    assert RUN_ID.fullmatch(bad) is None


@FAST
@given(st.text(max_size=40))
def test_run_id_is_exactly_32_lowercase_hex(text: str) -> None:
    expected = len(text) == 32 and all(c in "0123456789abcdef" for c in text)
    assert bool(RUN_ID.fullmatch(text)) == expected


def test_close_codes_are_the_websockets_codes() -> None:
    assert Close.NORMAL == CloseCode.NORMAL_CLOSURE == 1000
    assert Close.UNSUPPORTED == CloseCode.UNSUPPORTED_DATA == 1003
    assert Close.POLICY == CloseCode.POLICY_VIOLATION == 1008
    assert Close.TOO_BIG == CloseCode.MESSAGE_TOO_BIG == 1009
    assert Close.TRY_AGAIN_LATER == CloseCode.TRY_AGAIN_LATER == 1013
    assert 4000 <= Close.PAGE_LEFT <= 4999  # private use


def test_refusals_are_the_closes_a_retry_cannot_fix() -> None:
    assert {Close.UNSUPPORTED, Close.POLICY, Close.TOO_BIG} == Close.REFUSALS
    assert Close.TRY_AGAIN_LATER not in Close.REFUSALS
    assert Close.NORMAL not in Close.REFUSALS
    assert int(CloseCode.INTERNAL_ERROR) not in Close.REFUSALS


# -- free-form objects ---------------------------------------------------------------------


def test_jsonable_makes_text_of_what_the_server_cannot_keep_and_says_what() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    deep: list[object] = []
    inner = deep
    for _ in range(MAX_DEPTH + 5):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    value = {
        "big": 2**70,
        "neg": -(2**63) - 1,
        "edge": 2**63 - 1,
        "path": "/data/\udcff",
        "\udcfe": 1,
        "np": np.float32(0.5),
        "npi": np.int64(3),
        "arr": np.array([1, 2]),
        "obj": Thing(),
        "nan": float("nan"),
        "deep": deep,
        3: "int key",
    }
    clean, problems = jsonable(value, "params")
    assert clean["big"] == str(2**70) and clean["neg"] == str(-(2**63) - 1)
    assert clean["edge"] == 2**63 - 1
    assert clean["path"] == "/data/\\udcff" and clean["\\udcfe"] == 1
    assert clean["np"] == 0.5 and clean["npi"] == 3 and type(clean["npi"]) is int
    assert clean["arr"] == "[1 2]" and clean["obj"] == "thing" and clean["nan"] == "NaN"
    assert clean["3"] == "int key"
    assert json_problem(clean, "params") is None
    dumps(clean).encode("utf-8")
    assert any("params['big']" in p and "64 bits" in p for p in problems)
    assert any("params['path']" in p and "surrogate" in p for p in problems)
    assert any("params['obj']" in p and "Thing" in p for p in problems)
    assert any("deeper than 32" in p for p in problems)
    assert not any("'np'" in p or "'nan'" in p or "'edge'" in p for p in problems)


def test_jsonable_never_raises_on_hostile_objects() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    cyclic: list[object] = []
    cyclic.append(cyclic)
    clean, problems = jsonable({"h": Hostile(), "c": cyclic, "huge": 10**5000})
    assert clean["h"] == "<Hostile>" and clean["huge"] == "<int of 16610 bits>"
    assert json_problem(clean, "v") is None and len(problems) == 3


@pytest.mark.parametrize(
    "record",
    [
        {"seq": 1, "type": "run_start", "params": {"big": 2**70}},
        {"seq": 1, "type": "event", "data": {"s": "\udcff"}},
        {"seq": 1, "type": "batch", "logs": {"\udcff": 1.0}},
        {"seq": 1, "type": "event", "data": {"o": object()}},
    ],
    ids=["int-beyond-64-bits", "surrogate", "surrogate-key", "object"],
)
def test_encode_records_writes_what_orjson_refuses(record: dict[str, object]) -> None:
    frame = loads(encode_records([record]))
    assert frame["type"] == "records" and frame["records"][0]["seq"] == 1
    assert json_problem(frame, "frame") is None


def test_encode_records_clean_also_makes_text_of_uint64() -> None:
    record = {"seq": 1, "type": "run_start", "params": {"u": 2**63 + 5}}
    assert loads(encode_records([record]))["records"][0]["params"]["u"] == 2**63 + 5
    assert loads(encode_records([record], clean=True))["records"][0]["params"]["u"] == str(
        2**63 + 5
    )
