"""Min/max-preserving downsampling over multi-resolution summaries.

Points are stored at full resolution (level 0) and summarised in tiers: at
level L a bucket spans `16**L` steps and keeps its minimum point, its maximum
point and its first NaN point. A query reads the coarsest tier no wider than
an output bucket, plus finer tiers only at the two ragged edges of the range,
so the rows read depend on `max_points`, not on the run's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "LEVELS",
    "SHIFT",
    "Point",
    "TierAgg",
    "bucket_min_max",
    "choose_level",
    "collect",
    "n_buckets",
    "summarise",
]

SHIFT = 4
"""A tier bucket at level L spans `2 ** (SHIFT * L)` steps (16, 256, 4096, 65536, 1048576)."""
LEVELS = 5


class Point(NamedTuple):
    step: int
    epoch: float | None
    t: float | None
    value: float | None  # None is NaN (SQLite cannot store NaN)


TierAgg = list[Point | None]
"""[minimum point, maximum point, first NaN point] of one bucket."""


def _merge(agg: TierAgg, point: Point) -> None:
    v = point.value
    if v is None:
        nan = agg[2]
        if nan is None or point.step < nan.step:
            agg[2] = point
        return
    lo, hi = agg[0], agg[1]
    if lo is None or v < lo.value or (v == lo.value and point.step < lo.step):  # type: ignore[operator]
        agg[0] = point
    if hi is None or v > hi.value or (v == hi.value and point.step < hi.step):  # type: ignore[operator]
        agg[1] = point


def summarise(points: Iterable[Point], shift: int) -> dict[int, TierAgg]:
    """Bucket points by `step >> shift`: each bucket's min, max and first NaN."""
    out: dict[int, TierAgg] = {}
    for p in points:
        b = p.step >> shift
        agg = out.get(b)
        if agg is None:
            out[b] = agg = [None, None, None]
        _merge(agg, p)
    return out


def n_buckets(max_points: int) -> int:
    """Output buckets for `max_points`: up to 3 points each, one more for alignment."""
    return max(1, max_points // 3 - 1)


def choose_level(span: int, max_points: int) -> int:
    """The coarsest level whose buckets are no wider than an output bucket.

    Then every output bucket is made of whole tier buckets (see `bucket_min_max`),
    and at most `16 * n_buckets` tier rows are read, whatever the series' length.
    """
    width = math.ceil(span / n_buckets(max_points))
    level = 0
    while level < LEVELS and 1 << (SHIFT * (level + 1)) <= width:
        level += 1
    return level


RawFetch = Callable[[int, int], Sequence[Point]]
TierFetch = Callable[[int, int, int], Sequence[Point]]


def collect(raw: RawFetch, tiers: TierFetch, lo: int, hi: int, level: int) -> list[Point]:
    """Candidate points for [lo, hi]: whole buckets from `level`, edges from finer levels.

    `raw(lo, hi)` returns stored points with lo <= step <= hi; `tiers(level, b0, b1)`
    returns the min/max/NaN points of the level's buckets b0..b1.
    """
    if lo > hi:
        return []
    if level == 0:
        return list(raw(lo, hi))
    width = 1 << (SHIFT * level)
    first_full = -(-lo // width)  # first bucket starting at or after lo
    last_full = (hi + 1) // width - 1  # last bucket ending at or before hi
    if first_full > last_full:
        return collect(raw, tiers, lo, hi, level - 1)
    out = collect(raw, tiers, lo, first_full * width - 1, level - 1)
    out.extend(tiers(level, first_full, last_full))
    out.extend(collect(raw, tiers, (last_full + 1) * width, hi, level - 1))
    return out


def bucket_min_max(
    points: Iterable[Point], lo: int, hi: int, max_points: int, align: int = 1
) -> list[Point]:
    """At most `max_points` points: per equal-width bucket its min, max and first NaN.

    Buckets start at multiples of `align` (the tier width the points came from),
    so no tier bucket is split between two output buckets.
    """
    width = math.ceil((hi - lo + 1) / n_buckets(max_points))
    width = max(align, -(-width // align) * align)
    base = lo - lo % align
    buckets: dict[int, TierAgg] = {}
    for p in points:
        b = (p.step - base) // width
        agg = buckets.get(b)
        if agg is None:
            buckets[b] = agg = [None, None, None]
        _merge(agg, p)
    out: list[Point] = []
    for b in sorted(buckets):
        chosen = {p.step: p for p in buckets[b] if p is not None}
        out.extend(chosen[s] for s in sorted(chosen))
    return out
