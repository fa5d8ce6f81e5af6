"""server.records.validate_records: every refusal, the fast path against the slow one, fuzzing."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import records as records_mod
from server.errors import BadRequest
from server.protocol import MAX_DEPTH, MAX_INT, MAX_NAME, MAX_REASON, Rec, dumps, has_surrogate
from server.records import validate_records

MAX_KEYS = 8
FAST = settings(deadline=None, database=None, max_examples=100)


def one(rec: Any, max_keys: int = MAX_KEYS) -> tuple[dict[str, Any] | None, str | None]:
    """The record's cleaned form, or the message refusing it."""
    good, errors, _ = validate_records([rec], max_keys)
    assert len(good) + len(errors) == 1
    return (good[0], None) if good else (None, errors[0])


def numbered(record: dict[str, Any], seq: int = 5) -> dict[str, Any]:
    return {**record, "seq": seq}


GOOD = {
    "run_start": numbered(Rec.run_start(1.0, "run", "proj", {"epochs": 3}, {"steps": 10})),
    "batch": numbered(Rec.metrics("batch", 1.5, 3, 0.25, {"loss": 0.5, "acc": 1.0})),
    "epoch": numbered(Rec.metrics("epoch", 2.5, 8, 1, {"val_loss": 0.25})),
    "lr": numbered(Rec.lr(3.0, 8, 1.0, 0.01, 0.1, "command", command_id=2)),
    "command": numbered(Rec.command(4.0, 2, "applied", "ok", epoch=1, batch=0, step=8)),
    "event": numbered(Rec.event(5.0, "early_stop", {"by": "callback"}, step=8, epoch=1.0)),
    "run_end": numbered(Rec.run_end(6.0, "failed", {"type": "ValueError", "message": "m"})),
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_good_record_passes_unchanged(kind: str) -> None:
    record = GOOD[kind]
    cleaned, error = one(copy.deepcopy(record))
    assert error is None
    assert cleaned == record
    assert dumps(cleaned)


def test_optional_fields_come_back_as_none() -> None:
    lr, _ = one(numbered(Rec.lr(1.0, 0, 0.0, 0.1, None, "initial")))
    assert lr is not None and lr["previous"] is None and lr["command_id"] is None
    event, _ = one({"seq": 1, "type": "event", "t": 1.0, "kind": "note"})
    assert event == {"seq": 1, "type": "event", "t": 1.0, "kind": "note", "step": None,
                     "epoch": None, "data": {}}  # fmt: skip
    start, _ = one({"seq": 1, "type": "run_start", "t": 1.0, "name": "r"})
    assert start is not None and (start["project"], start["params"], start["meta"]) == (
        None,
        {},
        {},
    )


def test_metric_values_are_decoded_to_floats() -> None:
    logs = {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 2, "e": 0.5}
    cleaned, _ = one({"seq": 1, "type": "batch", "t": 1.0, "step": 0, "epoch": 0.0, "logs": logs})
    assert cleaned is not None
    out = cleaned["logs"]
    assert math.isnan(out["a"]) and out["b"] == math.inf and out["c"] == -math.inf
    assert out["d"] == 2.0 and type(out["d"]) is float and out["e"] == 0.5


def test_numbers_in_any_accepted_spelling_become_floats_on_the_slow_path() -> None:
    cleaned, _ = one({"seq": 1, "type": "epoch", "t": 7, "step": 2, "epoch": 1, "logs": {}})
    assert cleaned == {"seq": 1, "type": "epoch", "t": 7.0, "step": 2, "epoch": 1.0, "logs": {}}
    assert type(cleaned["t"]) is float


def test_a_command_reason_is_stringified_and_truncated() -> None:
    rec = numbered(Rec.command(1.0, 2, "rejected", "x" * (MAX_REASON + 50)))
    cleaned, _ = one(rec)
    assert cleaned is not None and cleaned["reason"] == "x" * MAX_REASON
    cleaned, _ = one({**rec, "reason": 42})
    assert cleaned is not None and cleaned["reason"] == "42"


# -- every refusal ---------------------------------------------------------------------

B = GOOD["batch"]
L, C, E, S = GOOD["lr"], GOOD["command"], GOOD["event"], GOOD["run_start"]
NUM = "must be a finite number, got"
INT = "must be an integer from 0 to 2**63-1, got"
TXT = f"must be a string of at most {MAX_NAME} characters."
SEQ = "A record needs a positive integer 'seq', got"


def without(rec: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != key}


REFUSALS: list[tuple[str, Any, str]] = [
    ("not-object", "batch", "A record must be an object, got str."),
    ("list", [1], "A record must be an object, got list."),
    ("no-seq", {"type": "batch"}, f"{SEQ} None."),
    ("seq-0", {**B, "seq": 0}, f"{SEQ} 0."),
    ("seq-negative", {**B, "seq": -3}, f"{SEQ} -3."),
    ("seq-bool", {**B, "seq": True}, f"{SEQ} True."),
    ("seq-float", {**B, "seq": 5.0}, f"{SEQ} 5.0."),
    ("seq-string", {**B, "seq": "5"}, f"{SEQ} '5'."),
    ("seq-huge", {**B, "seq": MAX_INT + 1}, f"{SEQ} {MAX_INT + 1}."),
    ("type", {**B, "type": "bogus"}, "Record 5: unknown type 'bogus'."),
    ("no-type", {"seq": 5}, "Record 5: unknown type None."),
    ("t-nan", {**B, "t": "NaN"}, f"Record 5: 't' {NUM} 'NaN'."),
    ("t-inf", {**B, "t": math.inf}, f"Record 5: 't' {NUM} inf."),
    ("t-missing", without(B, "t"), f"Record 5: 't' {NUM} None."),
    ("t-bool", {**B, "t": True}, f"Record 5: 't' {NUM} True."),
    ("t-text", {**B, "t": "1.5"}, f"Record 5: 't' {NUM} '1.5'."),
    ("step-negative", {**B, "step": -1}, f"Record 5: 'step' {INT} -1."),
    ("step-float", {**B, "step": 3.0}, f"Record 5: 'step' {INT} 3.0."),
    ("step-bool", {**B, "step": False}, f"Record 5: 'step' {INT} False."),
    ("step-huge", {**B, "step": MAX_INT + 1}, f"Record 5: 'step' {INT} {MAX_INT + 1}."),
    ("epoch-inf", {**B, "epoch": "Infinity"}, f"Record 5: 'epoch' {NUM} 'Infinity'."),
    ("epoch-missing", without(B, "epoch"), f"Record 5: 'epoch' {NUM} None."),
    ("logs-list", {**B, "logs": [1.0]}, "Record 5: 'logs' must be an object of metric values."),
    ("logs-missing", without(B, "logs"), "Record 5: 'logs' must be an object"),
    ("logs-many", {**B, "logs": {str(i): 1.0 for i in range(MAX_KEYS + 1)}},
     f"Record 5: {MAX_KEYS + 1} metrics in one record; the limit is {MAX_KEYS}."),
    ("logs-long-name", {**B, "logs": {"m" * (MAX_NAME + 1): 1.0}},
     f"Record 5: metric name longer than {MAX_NAME} characters: '{'m' * 40}'…"),
    ("logs-bool", {**B, "logs": {"loss": 0.5, "acc": True}},
     "Record 5: metric 'acc' has value True, not a number."),
    ("logs-text", {**B, "logs": {"acc": "high"}},
     "Record 5: metric 'acc' has value 'high', not a number."),
    ("logs-null", {**B, "logs": {"acc": None}},
     "Record 5: metric 'acc' has value None, not a number."),
    ("logs-nested", {**B, "logs": {"acc": [0.5]}},
     "Record 5: metric 'acc' has value [0.5], not a number."),
    ("lr-nan", {**L, "lr": "NaN"}, f"Record 5: 'lr' {NUM} 'NaN'."),
    ("lr-previous", {**L, "previous": "x"}, f"Record 5: 'previous' {NUM} 'x'."),
    ("lr-source", {**L, "source": 3}, f"Record 5: 'source' {TXT}"),
    ("lr-source-long", {**L, "source": "s" * (MAX_NAME + 1)}, f"Record 5: 'source' {TXT}"),
    ("lr-command-id", {**L, "command_id": -2}, f"Record 5: 'command_id' {INT} -2."),
    ("lr-step", {**L, "step": None}, f"Record 5: 'step' {INT} None."),
    ("command-id", {**C, "id": "2"}, f"Record 5: 'id' {INT} '2'."),
    ("command-pending", {**C, "status": "pending"}, "Record 5: unknown command status 'pending'."),
    ("command-status", {**C, "status": "done"}, "Record 5: unknown command status 'done'."),
    ("command-batch", {**C, "batch": -1}, f"Record 5: 'batch' {INT} -1."),
    ("event-kind", {**E, "kind": None}, f"Record 5: 'kind' {TXT}"),
    ("event-kind-long", {**E, "kind": "k" * (MAX_NAME + 1)}, f"Record 5: 'kind' {TXT}"),
    ("event-data", {**E, "data": [1]}, "Record 5: 'data' must be an object."),
    ("event-epoch", {**E, "epoch": "NaN"}, f"Record 5: 'epoch' {NUM} 'NaN'."),
    ("start-name", {**S, "name": None}, f"Record 5: 'name' {TXT}"),
    ("start-project", {**S, "project": 1}, f"Record 5: 'project' {TXT}"),
    ("start-params", {**S, "params": [1]}, "Record 5: 'params' must be an object."),
    ("start-meta", {**S, "meta": "m"}, "Record 5: 'meta' must be an object."),
    ("end-status", {**GOOD["run_end"], "status": "running"},
     "Record 5: run_end status must be one of ['failed', 'finished', 'stopped']."),
    ("end-error", {**GOOD["run_end"], "error": "boom"},
     "Record 5: 'error' must be an object or null."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("record", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_names_the_record_field_and_value(record: Any, message: str) -> None:
    cleaned, error = one(copy.deepcopy(record))
    assert cleaned is None
    assert error is not None and error.startswith(message)


def test_a_batch_of_mixed_records_keeps_the_good_ones_in_order() -> None:
    batch = [GOOD["batch"] | {"seq": 1}, {"seq": 2, "type": "bogus"}, GOOD["epoch"] | {"seq": 3}]
    good, errors, top = validate_records(batch, MAX_KEYS)
    assert [r["seq"] for r in good] == [1, 3]
    assert errors == ["Record 2: unknown type 'bogus'."]
    assert top == 3


def test_refused_records_count_toward_the_ack() -> None:
    """Resending a refused record cannot help, so it is acknowledged with the rest."""
    _, errors, top = validate_records([GOOD["batch"] | {"seq": 4}, {"seq": 9, "type": "x"}], 8)
    assert len(errors) == 1 and top == 9


@pytest.mark.parametrize("seq", [True, 0, -1, 5.0, "9", None, MAX_INT + 1])
def test_records_without_a_valid_seq_do_not_count_toward_the_ack(seq: Any) -> None:
    _, errors, top = validate_records([GOOD["batch"] | {"seq": 2}, {"seq": seq, "type": "x"}], 8)
    assert len(errors) == 1 and top == 2


def test_an_empty_list_is_fine() -> None:
    assert validate_records([], MAX_KEYS) == ([], [], 0)


@pytest.mark.parametrize("raw", [None, {}, "records", 5, {"records": []}, (GOOD["batch"],)])
def test_anything_but_a_list_is_a_bad_request(raw: Any) -> None:
    with pytest.raises(BadRequest, match="'records' must be a list"):
        validate_records(raw, MAX_KEYS)


# -- the fast path and the slow path agree ----------------------------------------------------


def slow_path(rec: dict[str, Any], max_keys: int) -> tuple[dict[str, Any] | None, str | None]:
    """What `_validate` does for a batch/epoch record when the fast test does not hold."""
    try:
        out = {"seq": rec["seq"], "type": rec["type"], "t": records_mod._number(rec, "t")}
        out["step"] = records_mod._int(rec, "step")
        out["epoch"] = records_mod._number(rec, "epoch")
        out["logs"] = records_mod._logs(rec, max_keys)
    except BadRequest as exc:
        return None, exc.message
    return out, None


def canonical(value: Any) -> Any:
    """NaN equal to itself, int equal to the float of it."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


finite_ish = st.floats(allow_nan=True, allow_infinity=True, width=64)
ints = st.integers(min_value=-(2**65), max_value=2**65)
numbers = finite_ish | ints | st.sampled_from(["NaN", "Infinity", "-Infinity"])
odd = st.sampled_from([True, False, None, "x", "", [], {}, [1.0]])
log_values = st.floats() | ints | st.sampled_from(["NaN", "Infinity", "-Infinity"]) | odd
metric_records = st.fixed_dictionaries(
    {
        "seq": st.integers(1, MAX_INT),
        "type": st.sampled_from(["batch", "epoch"]),
        "t": st.one_of(st.floats(width=64), ints, odd),
        "step": st.one_of(ints, st.floats(), st.booleans()),
        "epoch": st.one_of(numbers, odd),
        "logs": st.one_of(
            st.dictionaries(st.text(max_size=6), log_values, max_size=MAX_KEYS + 1),
            st.dictionaries(st.text(max_size=6), st.floats(), max_size=4),
            odd,
        ),
    }
)


@FAST
@given(metric_records)
def test_fast_and_slow_paths_agree_on_batch_and_epoch_records(rec: dict[str, Any]) -> None:
    fast_good, fast_error = one(copy.deepcopy(rec))
    slow_good, slow_error = slow_path(copy.deepcopy(rec), MAX_KEYS)
    assert fast_error == slow_error
    assert canonical(fast_good) == canonical(slow_good)


@FAST
@given(
    t=st.floats(min_value=0, max_value=2e9),
    step=st.integers(0, MAX_INT),
    epoch=st.floats(min_value=0, max_value=1e6) | st.integers(0, 10**6),
    logs=st.dictionaries(st.text(max_size=MAX_NAME), st.floats(), max_size=MAX_KEYS),
)
def test_any_plain_metric_record_passes_as_sent(
    t: float, step: int, epoch: float, logs: dict[str, float]
) -> None:
    rec = {"seq": 1, "type": "batch", "t": t, "step": step, "epoch": epoch, "logs": dict(logs)}
    cleaned, error = one(rec)
    assert error is None
    assert canonical(cleaned) == canonical({**rec, "logs": logs})


# -- arbitrary input ------------------------------------------------------------------------

# What `server.protocol.loads` can hand over: any int (digits), ±Infinity (from 1e999),
# text with lone surrogates (from "\udcff" escapes).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**400])
    | st.floats(allow_nan=False)
    | st.text(st.characters() | st.sampled_from(["\udcff", "\ud800"]), max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["NaN", "Infinity", "-Infinity", "finished", "applied", "pending", "x"]),
)
record_like = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"seq": st.one_of(st.integers(-2, 2**64), json_values),
         "type": st.one_of(st.sampled_from(["run_start", "batch", "epoch", "lr", "command",
                                            "event", "run_end", "bogus"]), json_values)},
        optional={k: field_values for k in ("t", "step", "epoch", "logs", "lr", "previous",
                  "source", "command_id", "id", "status", "reason", "batch", "kind", "data",
                  "name", "project", "params", "meta", "error")},
    ),
)  # fmt: skip


@settings(deadline=None, database=None, max_examples=50)
@given(st.one_of(json_values, st.lists(record_like, max_size=4)))
def test_arbitrary_json_is_refused_with_bad_request_or_yields_strict_json(raw: Any) -> None:
    try:
        good, errors, top = validate_records(raw, MAX_KEYS)
    except BadRequest:
        assert not isinstance(raw, list)
        return
    assert len(good) + len(errors) == len(raw)
    assert all(isinstance(e, str) for e in errors)
    for rec in good:
        assert 1 <= rec["seq"] <= top
        dumps({k: v for k, v in rec.items() if k != "logs"}).encode("utf-8")
        assert all(isinstance(v, float) for v in rec.get("logs", {}).values())
        assert not any(has_surrogate(k) for k in rec.get("logs", {}))


@pytest.mark.parametrize("field", ["t", "epoch", "logs"])
def test_an_integer_too_large_for_a_float_is_refused(field: str) -> None:
    big = 10**400
    rec = copy.deepcopy(B)
    if field == "logs":
        rec["logs"] = {"loss": big}
    else:
        rec[field] = big
    cleaned, error = one(rec)
    assert cleaned is None and error is not None


@pytest.mark.parametrize(
    "record",
    [
        {**GOOD["event"], "data": {"v": math.inf}},
        {**GOOD["run_start"], "params": {"lr": [1.0, -math.inf]}},
        {**GOOD["run_end"], "error": {"type": "E", "value": math.inf}},
    ],
    ids=["event-data", "run-start-params", "run-end-error"],
)
def test_a_free_form_object_holding_infinity_is_refused_by_name(
    record: dict[str, Any],
) -> None:
    cleaned, error = one(record)
    assert cleaned is None and error is not None
    assert error.startswith("Record 5: ") and "Infinity" in error


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep (the object itself is level 1)."""
    out: dict[str, Any] = {}
    for _ in range(depth - 1):
        out = {"a": out}
    return out


LONE = "bad-\udcff-name"  # what os.fsdecode makes of the byte 0xff


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({**GOOD["run_start"], "params": nested(MAX_DEPTH + 1)}, "deeper than 32"),
        ({**GOOD["run_start"], "meta": nested(500)}, "deeper than 32"),
        ({**GOOD["event"], "data": {"list": [[nested(MAX_DEPTH)]]}}, "deeper than 32"),
        ({**GOOD["run_start"], "params": {"path": LONE}}, "surrogate"),
        ({**GOOD["run_start"], "params": {LONE: 1}}, "surrogate"),
        ({**GOOD["run_start"], "name": LONE}, "surrogate"),
        ({**GOOD["run_start"], "project": LONE}, "surrogate"),
        ({**GOOD["event"], "kind": LONE}, "surrogate"),
        ({**GOOD["lr"], "source": LONE}, "surrogate"),
        ({**GOOD["run_end"], "error": {"type": "E", "message": LONE}}, "surrogate"),
        ({**GOOD["batch"], "logs": {LONE: 1.0}}, "surrogate"),
        ({**GOOD["epoch"], "logs": {"ok": 1.0, LONE: "NaN"}}, "surrogate"),
        ({**GOOD["run_start"], "params": {"big": 2**63}}, "beyond 64 bits"),
        ({**GOOD["run_start"], "params": {"big": -(2**63) - 1}}, "beyond 64 bits"),
        ({**GOOD["event"], "data": {"n": 10**400}}, "beyond 64 bits"),
        ({**GOOD["batch"], "step": 10**400}, "'step'"),
        ({**GOOD["batch"], "seq": 10**400}, "'seq'"),
        ({**GOOD["lr"], "lr": 10**400}, "'lr'"),
    ],
)
def test_records_past_the_documented_limits_are_refused_by_name(
    record: dict[str, Any], named: str
) -> None:
    cleaned, error = one(record)
    assert cleaned is None and error is not None
    assert named in error
    assert not has_surrogate(error)  # the message itself can be sent
    assert len(error) < 400


@pytest.mark.parametrize(
    "record",
    [
        {**GOOD["run_start"], "params": nested(MAX_DEPTH)},
        {**GOOD["run_start"], "params": {"lo": -(2**63), "hi": 2**63 - 1, "s": "\u00e9\U0001f600"}},
        {**GOOD["event"], "data": {"v": "Infinity", "w": [1.5, None, True]}},
    ],
    ids=["at-the-depth-limit", "edge-ints-and-unicode", "strings-and-scalars"],
)
def test_records_at_the_limits_pass_unchanged(record: dict[str, Any]) -> None:
    cleaned, error = one(copy.deepcopy(record))
    assert error is None and cleaned == record


def test_a_command_reason_with_a_lone_surrogate_is_kept_escaped() -> None:
    cleaned, _ = one({**GOOD["command"], "reason": LONE})
    assert cleaned is not None and cleaned["reason"] == "bad-\\udcff-name"
