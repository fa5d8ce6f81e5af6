"""Knobs: the values of a running fit that a `set` command may change.

A knob has a name (`optimizer.momentum`, `early_stopping.patience`,
`user.dropout`, see docs/http_api.md, Knobs), a type (`float`, `int` or
`bool`), a way to read it, a way to write it and the range it accepts. They
are found once, when training begins (`discover`), from the model's
optimizer, the other callbacks of the same `fit` and the user's own
`LiveMonitor(knobs=...)`; the batch hooks never look at them.

The optimizer's hyperparameters other than the learning rate are plain Python
floats that a compiled train step has baked in: after setting one, the train
function is rebuilt (`model.make_train_function(force=True)`), so the next
step retraces with the new value. The learning rate is a variable and needs no
retrace (a `set` of `optimizer.learning_rate` goes through Set LR).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from server.protocol import MAX_NAME, encode_number

__all__ = ["Knob", "callback_names", "discover", "knob_values", "snake_case"]

Check = Callable[[Any], "str | None"]


@dataclass
class Knob:
    """One adjustable value."""

    name: str
    type: str
    """`float`, `int` or `bool` (server.protocol.KNOB_TYPES)."""
    get: Callable[[], Any]
    put: Callable[[Any], None]
    check: Check | None = None
    """The reason a value of the right type is out of range, else None."""
    nullable: bool = False
    after: Callable[[], None] | None = None
    """Run after a change (the optimizer's: rebuild the train function)."""

    def read(self) -> Any:
        """The current value as JSON: a float, int, bool or None."""
        value = self.get()
        if value is None:
            return None
        if self.type == "bool":
            return bool(value)
        if self.type == "int":
            return int(value)
        number = float(keras.ops.convert_to_numpy(value))
        return encode_number(number)  # NaN and ±Infinity as strict JSON strings

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """`value` in this knob's type, or the reason it cannot be."""
        if value is None:
            return (None, None) if self.nullable else (None, f"{self.name} cannot be null")
        if self.type == "bool":
            if isinstance(value, bool):
                return value, None
        elif isinstance(value, bool):
            pass
        elif self.type == "int":
            if isinstance(value, int):
                return value, None
            if isinstance(value, float) and value.is_integer():
                return int(value), None
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                return float(value), None
            return None, f"{self.name} must be finite, got {value!r}"
        return None, f"{self.name} takes {_word(self.type)}, got {value!r}"


def _word(kind: str) -> str:
    return {"float": "a number", "int": "an int", "bool": "true or false"}[kind]


def _at_least(low: float, *, strict: bool = False) -> Check:
    def check(v: Any) -> str | None:
        bad = v is not None and (v <= low if strict else v < low)
        return f"must be {'>' if strict else '>='} {low:g}, got {v!r}" if bad else None

    return check


def _fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}"


def _factor(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must be in (0, 1) (ReduceLROnPlateau), got {v!r}"


OPTIMIZER_KNOBS: Mapping[str, Check] = {
    "learning_rate": _at_least(0, strict=True),
    "momentum": _fraction,
    "weight_decay": _at_least(0),
    "beta_1": _fraction,
    "beta_2": _fraction,
    "epsilon": _at_least(0, strict=True),
    "rho": _fraction,
    "clipnorm": _at_least(0, strict=True),
    "clipvalue": _at_least(0, strict=True),
    "global_clipnorm": _at_least(0, strict=True),
}
"""The optimizer's float hyperparameters, listed when the optimizer has them set."""

CALLBACK_KNOBS: Mapping[str, Mapping[str, tuple[str, Check | None, bool]]] = {
    "EarlyStopping": {
        "patience": ("int", _at_least(0), False),
        "min_delta": ("float", _at_least(0), False),
        "baseline": ("float", None, True),
    },
    "ReduceLROnPlateau": {
        "factor": ("float", _factor, False),
        "patience": ("int", _at_least(0), False),
        "cooldown": ("int", _at_least(0), False),
        "min_lr": ("float", _at_least(0), False),
    },
    "ModelCheckpoint": {"save_best_only": ("bool", None, False)},
}
"""Per Keras callback class: attribute → (type, range check, may be null)."""

_SPECIAL_NAMES = {"TerminateOnNaN": "terminate_on_nan"}


def snake_case(class_name: str) -> str:
    """`ReduceLROnPlateau` → `reduce_lr_on_plateau`."""
    if class_name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[class_name]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", class_name).lower()


def callback_names(callbacks: Iterable[Any]) -> list[tuple[str, Any]]:
    """Each callback with its knob prefix: the class in snake case, `_2` for a second."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        base = snake_case(type(cb).__name__)
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}_{seen[base]}", cb))
    return out


def _keras_class(cb: Any) -> str | None:
    """The Keras class `cb` is (or derives from) among those with knobs."""
    for name in CALLBACK_KNOBS:
        cls = getattr(keras.callbacks, name, None)
        if cls is not None and isinstance(cb, cls):
            return name
    return None


def _optimizer_knobs(model: Any, optimizer: Any, scheduled: bool) -> list[Knob]:
    knobs = []

    def retrace() -> None:
        model.make_train_function(force=True)

    for attr, check in OPTIMIZER_KNOBS.items():
        if attr == "learning_rate":
            if scheduled:
                continue
            value = getattr(optimizer, "learning_rate", None)
        else:
            value = getattr(optimizer, attr, None)
        if isinstance(value, bool) or value is None:
            continue
        if attr == "momentum" and not value:  # no momentum slots were built
            continue
        try:
            float(keras.ops.convert_to_numpy(value))
        except Exception:
            continue

        def get(attr: str = attr) -> Any:
            return getattr(optimizer, attr)

        def put(v: Any, attr: str = attr) -> None:
            setattr(optimizer, attr, v)

        after = None if attr == "learning_rate" else retrace
        knobs.append(Knob(f"optimizer.{attr}", "float", get, put, check, after=after))
    return knobs


def _min_delta_put(cb: Any) -> Callable[[Any], None]:
    """EarlyStopping keeps `min_delta` negated in "min" mode: keep its sign."""

    def put(v: Any) -> None:
        negative = cb.min_delta < 0 or getattr(cb, "monitor_op", None) is keras.ops.less
        cb.min_delta = -abs(v) if negative else abs(v)

    return put


def _callback_knobs(prefix: str, cb: Any, cls: str) -> list[Knob]:
    knobs = []
    for attr, (kind, check, nullable) in CALLBACK_KNOBS[cls].items():
        if not hasattr(cb, attr):
            continue

        def get(attr: str = attr) -> Any:
            value = getattr(cb, attr)
            return abs(value) if attr == "min_delta" and value is not None else value

        def put(v: Any, attr: str = attr) -> None:
            setattr(cb, attr, v)

        setter = _min_delta_put(cb) if cls == "EarlyStopping" and attr == "min_delta" else put
        knobs.append(Knob(f"{prefix}.{attr}", kind, get, setter, check, nullable))
    return knobs


def _user_knob(name: str, spec: Any) -> Knob:
    """A `keras.Variable`, or a `(get, set)` pair of functions.

    Raises:
        ValueError: `spec` is neither, or its value is not a number or bool.
    """
    if hasattr(spec, "assign") and hasattr(spec, "dtype"):
        dtype = str(spec.dtype)
        kind = "bool" if dtype == "bool" else "int" if "int" in dtype else "float"
        get: Callable[[], Any] = spec.numpy if hasattr(spec, "numpy") else lambda: spec.value
        return Knob(f"user.{name}", kind, get, spec.assign)
    if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[0]) and callable(spec[1]):
        getter, setter = spec
        value = getter()
        if isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, int):
            kind = "int"
        elif isinstance(value, float) or hasattr(value, "item"):
            kind = "float"
        else:
            raise ValueError(
                f"knobs[{name!r}]: its getter must return a number or a bool. Received {value!r}."
            )
        return Knob(f"user.{name}", kind, getter, setter)
    raise ValueError(
        f"knobs[{name!r}] must be a keras.Variable or a (get, set) pair of functions."
        f" Received {type(spec).__name__}."
    )


def user_knobs(specs: Mapping[str, Any]) -> list[Knob]:
    """`LiveMonitor(knobs=...)`, checked when the monitor is made.

    Raises:
        ValueError: a name that is not an identifier, or a spec `_user_knob` refuses.
    """
    out = []
    for name, spec in specs.items():
        if not isinstance(name, str) or not name.isidentifier() or len(name) > MAX_NAME - 5:
            raise ValueError(f"knob names must be identifiers. Received {name!r}.")
        out.append(_user_knob(name, spec))
    return out


def discover(
    model: Any, callbacks: Iterable[tuple[str, Any]], user: Iterable[Knob], scheduled: bool
) -> dict[str, Knob]:
    """Every knob of this fit, by name. `scheduled`: the LR comes from a schedule."""
    knobs: list[Knob] = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        knobs.extend(_optimizer_knobs(model, optimizer, scheduled))
    for prefix, cb in callbacks:
        cls = _keras_class(cb)
        if cls is not None:
            knobs.extend(_callback_knobs(prefix, cb, cls))
    knobs.extend(user)
    return {k.name: k for k in knobs}


def knob_values(knobs: Mapping[str, Knob]) -> dict[str, dict[str, Any]]:
    """`{name: {"value": …, "type": …}}`, as `GET /api/runs/{run_id}` shows them."""
    out = {}
    for name, knob in knobs.items():
        try:
            value = knob.read()
        except Exception as exc:  # a user getter that fails: shown, not raised
            value = f"unreadable: {type(exc).__name__}"
        out[name] = {"value": value, "type": knob.type}
    return out
