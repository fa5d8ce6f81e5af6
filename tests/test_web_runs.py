"""The runs page and the compare page at scale, in headless Chromium.

Each test has a server of its own: many runs are written into its SQLite file
directly (as bench figures 8 and 9 do), the live ones stream through `/ws/train`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.scale import write_series_runs
from tests.browser import Dashboard, open_dashboard
from tests.conftest import ServerProcess
from tests.test_runs_paging import add_runs
from tests.test_web_dashboard import Trainer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def board(
    chromium: Any, make_server: Callable[..., ServerProcess]
) -> Iterator[tuple[Dashboard, ServerProcess]]:
    server = make_server(token=secrets.token_hex(16))
    add_runs(server.db_path, 250, t0=time.time() - 1000)
    with open_dashboard(chromium, server) as dashboard:
        yield dashboard, server


def names(board: Dashboard) -> list[str]:
    texts: list[str] = board.page.locator("#runs-body .run-link").all_text_contents()
    return texts


def test_runs_page_pages_filters_on_the_server_and_follows_live_runs(
    board: tuple[Dashboard, ServerProcess],
) -> None:
    dashboard, server = board
    page = dashboard.page
    rows = page.locator("#runs-body tr")
    expect(rows).to_have_count(100)  # the first page only
    count = page.locator("#runs-count")
    expect(count).to_contain_text(re.compile(r"^250 runs \(100 shown\) · database \d"))
    assert names(dashboard)[:2] == ["run-0249", "run-0248"]  # newest first

    # More rows as the list scrolls to its end, then the last ones by the button.
    page.locator("#runs-more").scroll_into_view_if_needed()
    expect(rows).to_have_count(200)
    page.click("#runs-more")
    expect(rows).to_have_count(250)
    expect(page.locator("#runs-more")).to_be_hidden()
    assert names(dashboard) == [f"run-{i:04d}" for i in range(249, -1, -1)]  # each once
    assert page.locator("#runs-body td.size").first.text_content() == "0 B"

    # Filters go to the server: a regex on the name, then a status besides it.
    page.fill("#runs-filter", "^run-00[0-4]")
    expect(count).to_contain_text(re.compile(r"^50 of 250 runs"))
    expect(rows).to_have_count(50)
    page.select_option("#runs-status", "failed")
    expect(rows).to_have_count(10)
    assert set(page.locator("#runs-body .badge").all_text_contents()) == {"failed"}
    asked = [u for u in dashboard.requests if "/api/runs?" in u]
    assert any("q=%5Erun-00%5B0-4%5D" in u and "status=failed" in u for u in asked), asked
    page.select_option("#runs-status", "")

    # Sort by name on the server: a page of 100 of the 250, in order.
    page.fill("#runs-filter", "")
    page.click("th[data-sort='name'] button")
    expect(rows).to_have_count(100)
    assert names(dashboard)[:3] == ["run-0000", "run-0001", "run-0002"]
    page.click("th[data-sort='started'] button")  # newest first again
    expect(page.locator("#runs-body .run-link").first).to_have_text("run-0249")

    # Live: a new run sorts first, so it appears at the top and counts; a run
    # that does not match the filter stays off the page.
    page.fill("#runs-filter", "live-")
    expect(rows).to_have_count(0)
    other = Trainer(server).start("unrelated", "p", time.time())
    new = Trainer(server).start("live-new", "p", time.time())
    row = page.locator(f'tr[data-run-id="{new.run_id}"]')
    row.locator(".badge", has_text="running").wait_for()
    expect(count).to_contain_text(re.compile(r"^1 of "))
    assert page.locator(f'tr[data-run-id="{other.run_id}"]').count() == 0
    new.end(time.time())
    row.locator(".badge", has_text="finished").wait_for()  # updated in place
    for trainer in (new, other):
        trainer.close()


def test_bulk_delete_names_the_count_and_keeps_running_runs(
    board: tuple[Dashboard, ServerProcess],
) -> None:
    dashboard, server = board
    page = dashboard.page
    button = page.locator("#runs-delete-matching")
    expect(page.locator("#runs-body tr")).to_have_count(100)
    assert button.is_disabled()  # no filter: nothing to name

    page.fill("#runs-filter", "^run-00")  # 100 runs, 20 of them running
    expect(page.locator("#runs-count")).to_contain_text(re.compile(r"^100 of 250"))
    button.click()
    dialog = page.locator("#bulk-delete-dialog")
    expect(dialog).to_be_visible()
    text = page.locator("#bulk-delete-text")
    expect(text).to_contain_text("80 runs")
    expect(text).to_contain_text("20 running runs are kept")
    page.keyboard.press("Escape")  # cancelled: nothing deleted
    expect(dialog).to_be_hidden()
    assert server.client.get("/api/runs", params={"q": "^run-00"}).json()["total"] == 100

    button.click()
    page.click("#confirm-bulk-delete")
    expect(dialog).to_be_hidden()
    expect(page.locator("#runs-body tr")).to_have_count(20)
    assert set(page.locator("#runs-body .badge").all_text_contents()) == {"running"}
    assert server.client.get("/api/runs").json()["total"] == 170
    expect(page.locator("#runs-count")).to_contain_text(re.compile(r"^20 of 170 runs"))


def test_compare_fetches_every_run_in_one_request_per_scope(
    chromium: Any, make_server: Callable[..., ServerProcess]
) -> None:
    server = make_server(token=secrets.token_hex(16))
    server.stop()
    ids = write_series_runs(server.db_path, 3, 50_000)
    server.start()
    with open_dashboard(chromium, server) as dashboard:
        page = dashboard.page
        for run_id in ids:
            page.locator(f'tr[data-run-id="{run_id}"] input.pick').check()
        page.click("#compare-button")
        chart = '#compare-charts .chart[data-key="loss"]'
        page.wait_for_selector(f"{chart}[data-points]")
        page.click("#compare-scope button[data-scope='batch']")
        page.wait_for_function(
            "sel => { const el = document.querySelector(sel);"
            " return el && Number(el.dataset.points) > 3000; }",
            arg=chart,
        )
        raw = dashboard.traces("loss", role="raw")
        assert [t["label"] for t in raw] == [
            "trial-00 · loss",
            "trial-01 · loss",
            "trial-02 · loss",
        ]
        many = [u for u in dashboard.requests if "/api/metrics?" in u]
        assert len(many) == 2  # one per scope, for the three runs
        assert all(u.count("run_id=") == 3 for u in many)
        assert not dashboard.metric_requests()  # no request per run
        for run_id, trace in zip(ids, raw, strict=True):
            assert len(trace["x"]) <= 2000  # downsampled, not 50,000 points
            full = server.series(run_id, "batch", "loss", max_points=20_000)
            stored_max = max(v for v in full["value"] if isinstance(v, float))
            assert max(trace["y"]) == pytest.approx(stored_max)  # the extremes kept
