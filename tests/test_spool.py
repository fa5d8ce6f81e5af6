"""server.spool: the on-disk file of records the server has not acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.spool import Spool, default_spool_dir

RUN = "0123456789abcdef0123456789abcdef"


def recs(first: int, last: int) -> list[dict[str, object]]:
    return [
        {"seq": s, "type": "batch", "t": float(s), "logs": {"loss": "NaN"}}
        for s in range(first, last + 1)
    ]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / f"{RUN}.jsonl"


def test_a_new_spool_is_empty_and_makes_no_file(path: Path) -> None:
    spool = Spool(path, header={"run_id": RUN})
    assert len(spool) == 0
    assert spool.first_seq is None and spool.last_seq is None
    assert spool.read_after(0, 10) == []
    spool.append([])
    assert not path.exists()


def test_append_writes_header_then_records_and_reopens_the_same(path: Path) -> None:
    spool = Spool(path, header={"run_id": RUN, "url": "http://h:1"})
    spool.append(recs(1, 3))
    spool.append(recs(4, 5))
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"fitdeck_spool": 1, "run_id": RUN, "url": "http://h:1"}
    assert len(lines) == 6
    again = Spool(path)
    assert (again.first_seq, again.last_seq, len(again)) == (1, 5, 5)
    assert again.read_header() == {"fitdeck_spool": 1, "run_id": RUN, "url": "http://h:1"}
    assert again.read_after(0, 100) == recs(1, 5)


def test_read_after_returns_only_later_records_up_to_limit(path: Path) -> None:
    spool = Spool(path)
    spool.append(recs(1, 10))
    assert [r["seq"] for r in spool.read_after(3, 4)] == [4, 5, 6, 7]
    assert [r["seq"] for r in spool.read_after(8, 100)] == [9, 10]
    assert spool.read_after(10, 100) == []
    assert spool.read_after(99, 100) == []


def test_read_after_continues_from_its_cursor(path: Path) -> None:
    """Reading on from where the last read stopped gives the next records, in order."""
    spool = Spool(path)
    spool.append(recs(1, 25))
    seen: list[int] = []
    after = 0
    while chunk := spool.read_after(after, 7):
        seen += [r["seq"] for r in chunk]
        after = chunk[-1]["seq"]
    assert seen == list(range(1, 26))


def test_cursor_is_not_used_for_a_different_starting_seq(path: Path) -> None:
    """A resend after a reconnect reads from an earlier seq than the cursor's."""
    spool = Spool(path)
    spool.append(recs(1, 10))
    assert spool.read_after(0, 5)[-1]["seq"] == 5
    assert [r["seq"] for r in spool.read_after(2, 3)] == [3, 4, 5]
    assert [r["seq"] for r in spool.read_after(5, 3)] == [6, 7, 8]


def test_cursor_sees_records_appended_after_it(path: Path) -> None:
    spool = Spool(path)
    spool.append(recs(1, 3))
    assert spool.read_after(0, 10)[-1]["seq"] == 3
    spool.append(recs(4, 6))
    assert [r["seq"] for r in spool.read_after(3, 10)] == [4, 5, 6]


def test_drop_through_keeps_the_file_until_everything_is_acknowledged(path: Path) -> None:
    spool = Spool(path)
    spool.append(recs(1, 5))
    spool.drop_through(4)
    assert path.exists()
    assert [r["seq"] for r in spool.read_after(4, 10)] == [5]
    spool.drop_through(5)
    assert not path.exists()
    assert len(spool) == 0 and spool.last_seq is None
    assert spool.read_after(0, 10) == []


def test_drop_through_beyond_the_end_and_on_an_empty_spool(path: Path) -> None:
    spool = Spool(path)
    spool.drop_through(100)  # nothing to drop: no error
    spool.append(recs(1, 2))
    spool.drop_through(100)
    assert not path.exists()


def test_append_after_a_full_drop_starts_a_new_file_with_a_header(path: Path) -> None:
    spool = Spool(path, header={"run_id": RUN})
    spool.append(recs(1, 3))
    spool.read_after(0, 10)  # leaves a cursor into the old file
    spool.drop_through(3)
    spool.append(recs(4, 5))
    assert json.loads(path.read_text().splitlines()[0])["run_id"] == RUN
    assert (spool.first_seq, spool.last_seq) == (4, 5)
    assert [r["seq"] for r in spool.read_after(3, 10)] == [4, 5]


def test_a_torn_last_line_is_skipped(path: Path) -> None:
    """A crash mid-write leaves half a line: the records before it are still read."""
    spool = Spool(path)
    spool.append(recs(1, 3))
    with path.open("a") as f:
        f.write('{"seq": 4, "type": "bat')
    again = Spool(path)
    assert (again.first_seq, again.last_seq) == (1, 3)
    assert [r["seq"] for r in again.read_after(0, 10)] == [1, 2, 3]


def test_records_appended_after_a_torn_line_are_kept(path: Path) -> None:
    spool = Spool(path)
    spool.append(recs(1, 3))
    with path.open("a") as f:
        f.write('{"seq": 4, "type": "bat')
    again = Spool(path)
    again.append(recs(4, 5))
    assert [r["seq"] for r in Spool(path).read_after(0, 10)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "content", ['{"fitdeck_spool": 1, "run_id": "x"}\n', "", '{"fitdeck_spool"']
)
def test_a_file_without_records_is_removed_on_open(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(content)
    spool = Spool(path)
    assert not path.exists()
    assert len(spool) == 0


def test_read_header_of_a_headerless_file_is_empty(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"seq": 1, "type": "event"}) + "\n")
    assert Spool(path).read_header() == {}


def test_append_writes_a_raw_nan_as_the_string(path: Path) -> None:
    """Spooled records are the wire's strict JSON: a raw NaN becomes the string "NaN"."""
    Spool(path).append([{"seq": 1, "logs": {"loss": float("nan")}}])
    assert '"loss": "NaN"' in path.read_text()


@settings(deadline=None, database=None, max_examples=40)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    limit=st.integers(1, 10),
    acks=st.lists(st.integers(0, 80), max_size=4),
)
def test_reads_in_any_chunking_give_every_record_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], limit: int, acks: list[int]
) -> None:
    path = tmp_path_factory.mktemp("h") / f"{RUN}.jsonl"
    spool = Spool(path)
    seq = 0
    for n in sizes:
        spool.append(recs(seq + 1, seq + n))
        seq += n
    for ack in sorted(acks):
        spool.drop_through(ack)
    after, seen = (0, [])
    while chunk := spool.read_after(after, limit):
        assert len(chunk) <= limit
        seen += [r["seq"] for r in chunk]
        after = chunk[-1]["seq"]
    expected = [] if acks and max(acks) >= seq else list(range(1, seq + 1))
    assert seen == expected
    assert path.exists() == bool(expected)


# -- where spool files go ----------------------------------------------------------


def test_default_spool_dir_honours_fitdeck_spool_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FITDECK_SPOOL_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_spool_dir() == tmp_path / "mine"


def test_default_spool_dir_uses_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FITDECK_SPOOL_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_spool_dir() == tmp_path / "xdg" / "fitdeck" / "spool"


def test_default_spool_dir_falls_back_to_home_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FITDECK_SPOOL_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_spool_dir() == tmp_path / ".cache" / "fitdeck" / "spool"


def test_a_record_json_cannot_write_is_spooled_as_text(path: Path) -> None:
    """An object or a raw NaN in a record must not stop the spool (nor the stream)."""
    spool = Spool(path)
    spool.append([{"seq": 1, "type": "event", "data": {"o": object(), "n": float("nan")}}])
    [record] = Spool(path).read_after(0, 10)
    assert record["data"]["n"] == "NaN" and record["data"]["o"].startswith("<object")
