"""The action store (contract 8) on real SQLite files: schema versions, the writer's catch-up from a real event
log after a real SIGKILL, queries and cursor pages, feedback, retention, and a store that is locked."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamer.config.sinks import StoreConfig
from streamer.errors import ConfigError
from streamer.stages.dispatcher.event_log import EventLog
from streamer.store import queries
from streamer.store.schema import VERSION, check_store, connect, migrate
from streamer.store.writer import StoreWriter, apply, retain

REPO = Path(__file__).resolve().parents[1]


def start(i: int, stream: str = "cam0", label: str = "waving", ts: float | None = None, **extra) -> dict:
    return {"kind": "start", "id": f"a{i:06d}", "stream": stream, "label": label, "frame_index": 10 * i,
            "frame_ts": 1000.0 + i if ts is None else ts, "score": 0.7, **extra}


def end(i: int, ts: float | None = None, **extra) -> dict:
    return {"kind": "end", "id": f"a{i:06d}", "stream": "cam0", "label": "waving", "frame_index": 10 * i + 5,
            "frame_ts": (1000.0 + i if ts is None else ts) + 0.5, "score": 0.3, "peak": 0.9, **extra}


def fill(path: Path, lines: list[dict]) -> sqlite3.Connection:
    conn = connect(str(path), create=True)
    conn.execute("BEGIN")
    for line in lines:
        apply(conn, line)
    conn.execute("COMMIT")
    return conn


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_record_runs_from_its_start_to_its_end_and_applying_twice_changes_nothing(tmp_path) -> None:
    lines = [start(1, track=4), end(1, clip="/clips/cam0/a000001.mp4")]
    conn = fill(tmp_path / "s.db", lines + lines)
    (action,), after = queries.list_actions(conn, queries.ActionQuery())
    assert after is None
    assert action == {"id": "a000001", "stream": "cam0", "label": "waving", "start_ts": 1001.0, "end_ts": 1001.5,
                      "start_frame": 10, "end_frame": 15, "score": 0.9, "track": 4, "clip": "/clips/cam0/a000001.mp4"}
    assert queries.get_action(conn, "a000001") == action and queries.get_action(conn, "nope") is None


def test_filters_and_cursor_pages_walk_every_action_once_newest_first(tmp_path) -> None:
    lines = [start(i, stream=f"cam{i % 3}", label=("waving", "falling")[i % 2]) for i in range(250)]
    conn = fill(tmp_path / "s.db", lines)
    seen, cursor = [], None
    while True:
        page, cursor = queries.list_actions(conn, queries.ActionQuery(limit=60, before=cursor))
        seen += [a["id"] for a in page]
        if cursor is None:
            break
    assert seen == [f"a{i:06d}" for i in reversed(range(250))]
    page, _ = queries.list_actions(conn, queries.ActionQuery(stream="cam1", label="falling", since=1100, until=1200,
                                                            limit=500))
    assert [a["id"] for a in page] == [f"a{i:06d}" for i in reversed(range(100, 200)) if i % 3 == 1 and i % 2]
    assert queries.list_actions(conn, queries.ActionQuery(before="unknown")) == ([], None)


def test_feedback_is_kept_with_its_action_and_filters_the_unreviewed(tmp_path) -> None:
    conn = fill(tmp_path / "s.db", [start(1), start(2), start(3)])
    assert queries.set_feedback(conn, "a000002", "wrong", "falling")["feedback"]["label"] == "falling"
    assert queries.set_feedback(conn, "a000003", "right", None)["feedback"]["verdict"] == "right"
    assert queries.set_feedback(conn, "missing", "right", None) is None
    with pytest.raises(ValueError):
        queries.set_feedback(conn, "a000001", "maybe", None)
    page, _ = queries.list_actions(conn, queries.ActionQuery(unreviewed=True))
    assert [a["id"] for a in page] == ["a000001"]
    conn.close()
    again = connect(str(tmp_path / "s.db"))
    assert queries.get_action(again, "a000002")["feedback"] == {"verdict": "wrong", "label": "falling",
                                                                "ts": pytest.approx(time.time(), abs=60)}


def test_an_older_store_is_upgraded_in_place_and_keeps_its_actions(tmp_path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, 0, upto=1)  # the store as version 1 left it: no feedback table
    conn.execute("BEGIN")
    apply(conn, start(1))
    conn.execute("COMMIT")
    conn.close()
    upgraded = connect(str(path))
    assert upgraded.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert queries.set_feedback(upgraded, "a000001", "right", None)["id"] == "a000001"


@pytest.mark.parametrize("make,says", [
    (lambda p: p.write_bytes(b"not a database at all" * 100), "not a SQLite database"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE photos (x)"), "a SQLite database of something else"),
    (lambda p: sqlite3.connect(p).execute(f"PRAGMA user_version = {VERSION + 1}"), "made by a newer"),
])
def test_a_file_that_is_not_a_store_of_ours_is_refused_in_one_line(tmp_path, make, says) -> None:
    path = tmp_path / "x.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=says) as err:
        check_store(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    if says != "made by a newer":
        return  # the command line's refusal once, below
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--store", str(path), "--headless", "--duration", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == before  # refused, not rewritten


def test_retention_forgets_by_age_then_by_size(tmp_path) -> None:
    now = time.time()
    lines = [line for i in range(3000) for line in (start(i, ts=now - 3000 + i), end(i, ts=now - 3000 + i))]
    lines += [start(5000, ts=now - 40 * 86400), end(5000, ts=now - 40 * 86400)]
    conn = fill(tmp_path / "s.db", lines)
    queries.set_feedback(conn, "a005000", "right", None)
    assert retain(conn, StoreConfig(path=str(tmp_path / "s.db"), keep_days=30), now) == 1
    assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = os.path.getsize(tmp_path / "s.db")
    gone = retain(conn, StoreConfig(path=str(tmp_path / "s.db"), max_bytes=size_before // 4), now)
    left = [a["id"] for a in queries.list_actions(conn, queries.ActionQuery(limit=500))[0]]
    assert 0 < gone < 3000 and left[0] == "a002999"  # the oldest went first
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(tmp_path / "s.db") < size_before / 2


def test_a_locked_store_delays_the_lines_and_loses_none(tmp_path) -> None:
    path = tmp_path / "s.db"
    fill(path, []).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    writer = StoreWriter(StoreConfig(path=str(path)), None).start()
    began = time.perf_counter()
    for i in range(200):
        writer.put(start(i))
        writer.put({"kind": "prediction"})  # not an action line: not kept
    assert time.perf_counter() - began < 0.05, "put() waited for the store"
    time.sleep(3.0)
    assert writer.written == 0 and len(writer.waiting) == 200
    blocker.execute("ROLLBACK")
    wait_until(lambda: writer.written == 200, timeout=10)
    writer.close()
    assert connect(str(path)).execute("SELECT count(*) FROM actions").fetchone()[0] == 200


KILLED_DISPATCHER = textwrap.dedent("""
    import sys, time
    from streamer.config.sinks import StoreConfig
    from streamer.stages.dispatcher.event_log import EventLog
    from streamer.store.writer import StoreWriter
    log = EventLog(sys.argv[1])
    writer = StoreWriter(StoreConfig(path=sys.argv[2]), sys.argv[1]).start()
    first = int(sys.argv[3])
    for i in range(first, first + 100000):  # as the dispatcher does: the log line, then the store's
        for line in ({"kind": "start", "id": f"r{i}", "stream": "cam0", "label": "waving", "frame_index": i,
                      "frame_ts": 1000.0 + i, "score": 0.8},
                     {"kind": "prediction", "stream": "cam0", "frame_index": i, "frame_ts": 1000.0 + i,
                      "top": [["waving", 0.8]], "latency_ms": 1.0},
                     {"kind": "end", "id": f"r{i}", "stream": "cam0", "label": "waving", "frame_index": i + 1,
                      "frame_ts": 1001.0 + i, "score": 0.2, "peak": 0.9}):
            log.write(line)
            writer.put(line)
        if i == first + 300:
            print("running", flush=True)
        time.sleep(0.0005)
""")


def test_the_catch_up_after_sigkill_neither_loses_nor_doubles_an_action(tmp_path) -> None:
    """A writer killed at a random moment, three times over; each restart reads the log from where the store
    had got to: every action the log starts is in the store once, with the end the log gives it."""
    log, store = tmp_path / "events.jsonl", tmp_path / "actions.db"
    script = tmp_path / "dispatcher.py"
    script.write_text(KILLED_DISPATCHER)
    for run in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(log), str(store), str(run * 1_000_000)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.2 + 0.3 * run)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    EventLog(str(log)).close()  # as the next dispatcher opens it: a torn last line is cut
    writer = StoreWriter(StoreConfig(path=str(store)), str(log)).start()
    writer.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    started = {x["id"] for x in lines if x["kind"] == "start"}
    ended = {x["id"]: x for x in lines if x["kind"] == "end"}
    conn = connect(str(store))
    rows = conn.execute("SELECT id, end_ts, score FROM actions").fetchall()
    assert len(rows) == len({r[0] for r in rows}) == len(started) > 900
    assert {r[0] for r in rows} == started
    for action_id, end_ts, score in rows:
        if action_id in ended:
            assert end_ts == ended[action_id]["frame_ts"] and score == 0.9
        else:  # started just before a kill: ended where it began (no line will ever end it)
            assert end_ts is not None
    assert conn.execute("SELECT offset FROM log_read").fetchone()[0] == log.stat().st_size


def test_window_embeddings_are_kept_by_age_and_size_and_adapter_versions_only_grow(tmp_path) -> None:
    import numpy as np

    from streamer.store import taught
    from workers.adapter import Adapter

    conn = connect(str(tmp_path / "s.db"), create=True)
    now, width = time.time(), 8
    rows = [("cam", None, now - 7200 + i, i, np.full((3, width), i, np.float16).tobytes()) for i in range(100)]
    rows += [("cam", None, now - 60 + i, 1000 + i, np.full((3, width), 1, np.float16).tobytes()) for i in range(50)]
    taught.put_windows(conn, rows)
    assert taught.windows_of(conn, "cam", now - 7200, now - 7200 + 9, width=width).shape == (10, 3, width)
    assert taught.sample_windows(conn, ["cam"], 20, width, [("cam", now - 60, now)]).shape[0] <= 20
    assert taught.retain_windows(conn, 1.0, 0, now) == 100  # older than an hour
    assert taught.retain_windows(conn, 1.0, 20 * (3 * width * 2 + taught.ROW_OVERHEAD), now) >= 30  # over the cap
    assert conn.execute("SELECT count(*) FROM windows").fetchone()[0] <= 20
    adapter = Adapter(("waving",), np.ones((1, width)), np.zeros(1), "ab" * 32)
    first = taught.add_version(conn, adapter, "taught waving")
    second = taught.add_version(conn, None, "forgot waving")
    assert second > first and taught.latest(conn).adapter is None and taught.latest(conn).labels == ()
    assert taught.get_version(conn, first).adapter.key == adapter.key
    assert [v.version for v in taught.versions(conn)] == [second, first]
    conn.close()
