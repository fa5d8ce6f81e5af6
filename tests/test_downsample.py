"""Min/max downsampling over tiers: every bucket's extremes and NaN survive."""

from __future__ import annotations

import random

import pytest

from server import downsample
from server.downsample import Point


def points(values: list[float | None], start: int = 0) -> list[Point]:
    return [Point(start + i, None, None, v) for i, v in enumerate(values)]


def tiers_of(pts: list[Point]) -> dict[int, dict[int, list[Point | None]]]:
    """Levels built the way the writer builds them: each from the one below."""
    out: dict[int, dict[int, list[Point | None]]] = {}
    level_points = pts
    for level in range(1, downsample.LEVELS + 1):
        out[level] = downsample.summarise(level_points, downsample.SHIFT * level)
        level_points = [p for agg in out[level].values() for p in agg if p is not None]
    return out


def query(pts: list[Point], lo: int, hi: int, max_points: int, level: int) -> list[Point]:
    tiers = tiers_of(pts)

    def raw(a: int, b: int) -> list[Point]:
        return [p for p in pts if a <= p.step <= b]

    def tier(lvl: int, b0: int, b1: int) -> list[Point]:
        return [p for b, agg in tiers[lvl].items() if b0 <= b <= b1 for p in agg if p is not None]

    candidates = downsample.collect(raw, tier, lo, hi, level)
    align = 1 << (downsample.SHIFT * level)
    return downsample.bucket_min_max(candidates, lo, hi, max_points, align)


def test_every_bucket_keeps_its_min_max_and_first_nan() -> None:
    rng = random.Random(0)
    values: list[float | None] = [rng.gauss(0, 1) for _ in range(10_000)]
    for i in (17, 5000, 9999):
        values[i] = None
    pts = points(values)
    out = downsample.bucket_min_max(pts, 0, 9999, max_points=303)
    assert len(out) <= 303
    width = 100  # 10,000 steps over the 100 buckets that 303 points allow
    assert downsample.n_buckets(303) == 100
    for b in range(100):
        chunk = pts[b * width : (b + 1) * width]
        finite = [p.value for p in chunk if p.value is not None]
        kept = [p for p in out if b * width <= p.step < (b + 1) * width]
        assert min(finite) in [p.value for p in kept]
        assert max(finite) in [p.value for p in kept]
        if any(p.value is None for p in chunk):
            assert any(p.value is None for p in kept)
    assert [p.step for p in out] == sorted(p.step for p in out)


@pytest.mark.slow
def test_tiers_give_the_same_extremes_as_the_raw_points() -> None:
    rng = random.Random(1)
    pts = points([rng.uniform(-1, 1) for _ in range(300_000)], start=1)
    pts[123_456] = pts[123_456]._replace(value=50.0)
    pts[7] = pts[7]._replace(value=None)
    lo, hi = 1000, 299_000  # ragged edges at every level
    level = downsample.choose_level(hi - lo + 1, 600)
    assert level >= 1  # the query does not read raw points
    align = 1 << (downsample.SHIFT * level)
    from_raw = downsample.bucket_min_max(
        [p for p in pts if lo <= p.step <= hi], lo, hi, max_points=600, align=align
    )
    from_tiers = query(pts, lo, hi, 600, level)
    assert len(from_tiers) <= 600
    assert from_tiers == from_raw  # exactly the raw buckets' extremes
    assert 50.0 in [p.value for p in from_tiers]
    # NaN outside the range stays outside
    assert all(p.value is not None for p in from_tiers)


def test_level_choice_bounds_the_rows_read() -> None:
    assert downsample.choose_level(3_000, 2000) == 0  # 5-step output buckets: raw points
    assert downsample.choose_level(10_000, 2000) == 1  # 16-step buckets: 16-step tiers
    assert downsample.choose_level(1_000_000, 2000) == 2  # 1,503-step buckets: 256-step tiers
    for span in (10**4, 10**6, 10**8, 10**9):
        level = downsample.choose_level(span, 2000)
        rows = span >> (downsample.SHIFT * level)
        assert rows <= 16 * downsample.n_buckets(2000) or level == downsample.LEVELS


def test_collect_reads_finer_levels_only_at_the_edges() -> None:
    reads: list[tuple[str, int, int]] = []

    def raw(a: int, b: int) -> list[Point]:
        reads.append(("raw", a, b))
        return []

    def tier(level: int, b0: int, b1: int) -> list[Point]:
        reads.append((f"L{level}", b0, b1))
        return []

    downsample.collect(raw, tier, 10, 100_000, 2)
    raw_rows = sum(b - a + 1 for kind, a, b in reads if kind == "raw")
    assert raw_rows < 2 * 16  # only the ragged ends
    assert ("L2", 1, 389) in reads  # whole 256-step buckets in the middle


def test_the_writer_folds_rows_into_the_same_tiers_as_the_reference() -> None:
    from server.ingest import _tier_row, tier_rows

    rng = random.Random(2)
    rows = []
    for step in range(1, 5000):
        for sid in (7, 9):
            value = None if rng.random() < 0.01 else float(rng.randint(-50, 50))  # with ties
            rows.append((sid, step, step / 100, 1000.0 + step, value))
    expected = set()
    for sid in (7, 9):
        pts = [Point(*r[1:]) for r in rows if r[0] == sid]
        for level, aggs in tiers_of(pts).items():
            expected |= {_tier_row(sid, level, b, *agg) for b, agg in aggs.items()}
    assert set(tier_rows(rows)) == expected
