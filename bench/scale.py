"""Figures 8 and 9: the dashboard at scale, in headless Chromium.

8. The runs page over 100,000 runs: time to its first rows, and to a filter's
   rows (plain text and a regular expression), as the page itself measures
   them (`performance.now()`).
9. The compare page over 20 runs of 1,000,000 batch points each: from opening
   it to every run's curve drawn.

The data is written straight into a SQLite file made by the server's own
schema (`server.schema.migrate`), seconds instead of the hours a websocket
would take: runs as rows; one 1,000,000-point series with its tiers
(`server.ingest.tier_rows`), copied by SQL into every other run.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.common import Row, Server, median

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STATUSES = ("finished",) * 6 + ("failed", "stopped", "disconnected")

__all__ = ["compare_page", "runs_page", "write_runs", "write_series_runs"]


def _open(db: Path) -> sqlite3.Connection:
    from server import schema

    conn = sqlite3.connect(db, isolation_level=None)
    schema.migrate(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def write_runs(db: Path, n: int, *, seed: int = 0) -> None:
    """`n` ended runs of a sweep: "sweep-0042-trial-17", 20 projects, a few params."""
    rng = random.Random(seed)
    t0 = time.time() - n * 60
    rows = []
    for i in range(n):
        created = t0 + i * 60 + rng.random()
        status = STATUSES[rng.randrange(len(STATUSES))]
        ended = None if status == "disconnected" else created + rng.randint(30, 3000)
        params = json.dumps({"lr": 10 ** rng.uniform(-4, -1), "units": rng.choice([32, 64])})
        metrics = json.dumps({"loss": rng.random(), "accuracy": rng.random()})
        epoch = rng.randint(0, 19)
        rows.append((uuid.uuid4().hex, f"sweep-{i // 100:04d}-trial-{i % 100:02d}",
                     f"project-{i % 20:02d}", status, created, ended or created + 10, ended,
                     params, epoch, (epoch + 1) * 100, metrics))  # fmt: skip
    with closing(_open(db)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO runs (id, name, project, status, created_at, updated_at, ended_at,"
            " params, epoch, step, last_metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")


def write_series_runs(db: Path, runs: int, points: int, *, per_epoch: int = 1000) -> list[str]:
    """`runs` finished runs with a `loss` of `points` batches (and one per epoch) each."""
    import numpy as np

    from server.ingest import tier_rows

    rng = np.random.default_rng(0)
    step = np.arange(1, points + 1)
    loss = 2.0 * np.exp(-step / (points / 4)) + 0.05 * rng.standard_normal(points) + 0.2
    t0 = time.time() - 86400
    batch = list(zip([1] * points, step.tolist(), (step / per_epoch).tolist(),
                     (t0 + step * 0.01).tolist(), loss.tolist(), strict=True))  # fmt: skip
    epochs = list(range(max(1, points // per_epoch)))
    ids = [uuid.uuid4().hex for _ in range(runs)]
    with closing(_open(db)) as conn:
        conn.execute("BEGIN")
        for k, run_id in enumerate(ids):
            conn.execute(
                "INSERT INTO runs (id, name, project, status, created_at, updated_at, ended_at,"
                " params, epoch, step) VALUES (?, ?, 'compare', 'finished', ?, ?, ?, ?, ?, ?)",
                (run_id, f"trial-{k:02d}", t0 + k, t0 + points * 0.01, t0 + points * 0.01,
                 json.dumps({"lr": 0.001 * (k + 1)}), epochs[-1], points),
            )  # fmt: skip
            batch_sid = 2 * k + 1
            conn.execute("INSERT INTO series VALUES (?, ?, 'batch', 'loss')", (batch_sid, run_id))
            conn.execute(
                "INSERT INTO series VALUES (?, ?, 'epoch', 'loss')", (batch_sid + 1, run_id)
            )
            scale = 1 + 0.05 * k  # each run its own curve; min and max stay where they were
            if k == 0:
                conn.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", batch)
                conn.executemany(
                    "INSERT INTO tiers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tier_rows(batch),  # type: ignore[arg-type]
                )
            else:
                conn.execute(
                    "INSERT INTO points SELECT ?, step, epoch, t, value * ? FROM points"
                    " WHERE series_id = 1",
                    (batch_sid, scale),
                )
                conn.execute(
                    "INSERT INTO tiers SELECT ?, level, bucket, min_step, min_epoch, min_t,"
                    " min_v * ?, max_step, max_epoch, max_t, max_v * ?, nan_step, nan_epoch, nan_t"
                    " FROM tiers WHERE series_id = 1",
                    (batch_sid, scale, scale),
                )
            conn.executemany(
                "INSERT INTO points VALUES (?, ?, ?, ?, ?)",
                [(batch_sid + 1, (e + 1) * per_epoch, e, t0 + (e + 1) * per_epoch * 0.01,
                  float(loss[min(points - 1, (e + 1) * per_epoch - 1)]) * scale)
                 for e in epochs],
            )  # fmt: skip
        conn.execute("COMMIT")
    return ids


# -- the browser --------------------------------------------------------------------

FIRST_ROWS = """
window.__firstRows = null;
new MutationObserver((_, observer) => {
  const body = document.querySelector("#runs-body");
  if (body && body.children.length && window.__firstRows === null) {
    window.__firstRows = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""

FILTER = """async ([q, want]) => {
  const input = document.querySelector("#runs-filter");
  const t0 = performance.now();
  input.value = q;
  input.dispatchEvent(new Event("input", { bubbles: true }));
  const view = window.fitdeck.runsView;
  while (!(view.loaded && view.filter().q === q && view.total === want
           && document.querySelectorAll("#runs-body tr").length === Math.min(want, 100))) {
    await new Promise((r) => requestAnimationFrame(r));
    if (performance.now() - t0 > 30000) throw new Error(`filter ${q} never showed ${want} runs`);
  }
  return performance.now() - t0;
}"""


def _browser() -> Any:
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    return p, browser


def runs_page(n_runs: int, repeats: int, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    db = workdir / "runs-page.db"
    t0 = time.perf_counter()
    write_runs(db, n_runs)
    made = time.perf_counter() - t0
    filters = {"text": "trial-42", "regex": r"^sweep-00[0-4]7-trial-[0-9]3$"}
    first: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in filters}
    with Server(db) as server:
        want = {
            name: server.client.get("/api/runs", params={"q": q, "limit": 1}).json()["total"]
            for name, q in filters.items()
        }
        p, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script(FIRST_ROWS)
            page.goto(server.url + "/")  # warm: the browser's cache, the server's pages
            page.wait_for_selector("#runs-body tr")
            for _ in range(repeats):
                page.goto(server.url + "/?r=" + uuid.uuid4().hex[:6])
                page.wait_for_function("() => window.__firstRows !== null", timeout=60_000)
                first.append(float(page.evaluate("window.__firstRows")))
                page.wait_for_function("() => window.fitdeck && window.fitdeck.runsView.loaded")
                for name, q in filters.items():
                    times[name].append(float(page.evaluate(FILTER, [q, want[name]])))
                    page.evaluate(FILTER, ["", n_runs])  # back to every run
        finally:
            browser.close()
            p.stop()
    budget_first, budget_filter = 1000.0, 300.0
    worst_filter = max(median(v) for v in times.values())
    rows = [
        Row("8", f"runs page, {n_runs:,} runs: first rows (Chromium)",
            f"{median(first):.0f} ms (max {max(first):.0f})", f"≤ {budget_first:.0f} ms",
            median(first) <= budget_first, {"ms": median(first)}),
        Row("8", f"runs page, {n_runs:,} runs: filter by name (text {want['text']:,} hits /"
            f" regex {want['regex']:,} hits)",
            f"{median(times['text']):.0f} / {median(times['regex']):.0f} ms",
            f"≤ {budget_filter:.0f} ms", worst_filter <= budget_filter, {"ms": worst_filter}),
    ]  # fmt: skip
    data = {"first_rows_ms": first, "filter_ms": times, "hits": want, "write_s": made}
    return rows, data


DRAWN = """([n, min]) => {
  const el = document.querySelector('#compare-charts .chart[data-key="loss"]');
  if (!el || el.dataset.old || !el.data) return false;
  const raw = el.data.filter((t) => t.meta && t.meta.role === "raw");
  return raw.length === n && Number(el.dataset.points || 0) >= min;
}"""


def compare_page(
    n_runs: int, n_points: int, repeats: int, workdir: Path
) -> tuple[list[Row], dict[str, Any]]:
    db = workdir / "compare.db"
    t0 = time.perf_counter()
    ids = write_series_runs(db, n_runs, n_points)
    made = time.perf_counter() - t0
    opened: list[float] = []
    batch: list[float] = []
    drawn_points = 0
    with Server(db) as server:
        p, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_selector("#runs-body tr")
            for r in range(repeats + 1):  # the first one warms up
                page.goto(server.url + "/#/")
                page.wait_for_selector("#runs-body tr")
                t_open = time.perf_counter()
                page.evaluate("ids => { location.hash = `#/compare/${ids.join(',')}`; }", ids)
                page.wait_for_function(DRAWN, arg=[n_runs, n_runs], timeout=60_000, polling="raf")
                t_batch = time.perf_counter()
                page.evaluate(  # the epoch chart goes; the batch one is a new element
                    """() => { document.querySelector('#compare-charts .chart[data-key="loss"]')
                              .dataset.old = "1"; }"""
                )
                page.click("#compare-scope button[data-scope='batch']")
                page.wait_for_function(
                    DRAWN, arg=[n_runs, n_runs * 100], timeout=60_000, polling="raf"
                )
                t_end = time.perf_counter()
                drawn_points = int(
                    page.get_attribute('#compare-charts .chart[data-key="loss"]', "data-points")
                    or 0
                )
                page.click("#compare-scope button[data-scope='epoch']")
                if r:
                    opened.append((t_batch - t_open) * 1000)
                    batch.append((t_end - t_batch) * 1000)
        finally:
            browser.close()
            p.stop()
    total = [a + b for a, b in zip(opened, batch, strict=True)]
    budget = 2000.0
    rows = [
        Row("9", f"compare {n_runs} runs x {n_points:,} points: open to every curve drawn",
            f"{median(total):.0f} ms (open + epoch charts {median(opened):.0f}, batch scope"
            f" {median(batch):.0f}; {drawn_points:,} points drawn)",
            f"≤ {budget:.0f} ms", median(total) <= budget, {"ms": median(total)}),
    ]  # fmt: skip
    data = {"open_ms": opened, "batch_ms": batch, "drawn_points": drawn_points, "write_s": made}
    return rows, data
