"""Strict JSON with NaN and ±Infinity carried as the strings "NaN", "Infinity", "-Infinity"."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["NONFINITE", "decode_number", "dumps", "encode_number"]

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_number(value: float | None) -> float | str | None:
    """A float as a strict-JSON value; `None` (how SQLite keeps NaN) is NaN."""
    if value is None:
        return "NaN"
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_number(value: object) -> float | None:
    """A metric value received as JSON; `None` when it is not a number at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return NONFINITE.get(value)
    return None


def dumps(obj: Any) -> str:
    """Compact strict JSON; raises `ValueError` on a raw NaN that slipped through."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
