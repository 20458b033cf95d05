"""The action store (contract 8): what writing an action costs the dispatcher, and how fast the history answers
over a year of actions at 20 cameras.

    python bench/store.py                 # writes its BENCHMARKS.md section
    python bench/store.py --days 30 --no-write

Write: a real StoreWriter thread takes start and end lines as the dispatcher hands them over; measured are the
dispatcher's side (``put``) against the event log line it writes anyway, and the thread's own time per action.
Query: a store of ``--cameras`` × ``--per-day`` × ``--days`` generated actions (10 labels, a tenth tracked, 5 %
with feedback); each query of the web stage's API runs ``--repeats`` times with random parameters, through the
same ``streamer.store.queries`` functions as ``/api/actions``, and again on a copy without the indexes (what a
table scan costs: the alternative).
"""

from __future__ import annotations

import argparse
import datetime
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import cpu_name, publish  # noqa: E402
from streamer.config.sinks import StoreConfig  # noqa: E402
from streamer.stages.dispatcher.event_log import EventLog  # noqa: E402
from streamer.store import queries  # noqa: E402
from streamer.store.schema import connect  # noqa: E402
from streamer.store.writer import StoreWriter  # noqa: E402

HEADING = "Action store: write cost and queries over a year"
LABELS = ("moving_left", "moving_right", "moving_up", "moving_down", "rotating_clockwise", "rotating_anticlockwise",
          "growing", "shrinking", "blinking", "still")
DAY = 86400.0


def action_lines(i: int, ts: float) -> tuple[dict, dict]:
    start = {"kind": "start", "stream": f"cam{i % 20}", "label": LABELS[i % 10], "frame_index": 30 * i,
             "frame_ts": ts, "score": 0.8, "id": f"{int(ts * 1000)}-{i:06x}"}
    end = {**start, "kind": "end", "frame_index": 30 * i + 150, "frame_ts": ts + 5.0, "score": 0.3, "peak": 0.95}
    return start, end


def measure_writes(folder: Path, actions: int) -> dict:
    """The dispatcher's cost per action line (put vs the event log write) and the writer thread's per action."""
    log = EventLog(folder / "events.jsonl")
    writer = StoreWriter(StoreConfig(path=str(folder / "w.db")), None).start()
    lines = [line for i in range(actions) for line in action_lines(i, 1.8e9 + i)]
    began = time.perf_counter()
    for line in lines:
        log.write(line)
    log_us = (time.perf_counter() - began) / len(lines) * 1e6
    began = time.perf_counter()
    for line in lines:
        writer.put(line)
    put_us = (time.perf_counter() - began) / len(lines) * 1e6
    while writer.written < len(lines):
        time.sleep(0.001)
    thread_us = (time.perf_counter() - began) / actions * 1e6
    writer.close()
    log.close()
    # the thread's worst case: one action at a time, each line its own transaction (a quiet pipeline)
    single = StoreWriter(StoreConfig(path=str(folder / "s.db")), None).start()
    began = time.perf_counter()
    for i in range(200):
        for line in action_lines(i, 1.8e9 + i):
            single.put(line)
            while single.waiting or single.written < 2 * i + (line["kind"] == "end") + 1:
                time.sleep(0.0001)
    single_us = (time.perf_counter() - began) / 200 * 1e6
    single.close()
    return {"log_us": log_us, "put_us": put_us, "thread_us": thread_us, "single_us": single_us}


def generate(path: Path, cameras: int, per_day: int, days: int, seed: int = 1) -> tuple[int, float]:
    """A store of ``days`` of actions; returns (actions, the newest start)."""
    rng = random.Random(seed)
    conn = connect(str(path), create=True)
    now = time.time()
    first = now - days * DAY
    total = cameras * per_day * days
    conn.execute("BEGIN")
    rows, feedback = [], []
    for i in range(total):
        ts = first + (i / total) * days * DAY
        track = rng.randrange(1, 500) if rng.random() < 0.1 else None
        rows.append((f"{int(ts * 1000)}-{i:06x}", f"cam{rng.randrange(cameras)}", track, rng.choice(LABELS), ts,
                     i * 4, ts + rng.uniform(1, 30), i * 4 + 120, rng.uniform(0.6, 1.0), None, 0))
        if rng.random() < 0.05:
            feedback.append((rows[-1][0], rng.choice(("right", "wrong")), None, ts + 60))
        if len(rows) == 100_000:
            conn.executemany("INSERT INTO actions VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            rows = []
    conn.executemany("INSERT INTO actions VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO feedback VALUES (?,?,?,?)", feedback)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return total, now


def query_cases(cameras: int, newest: float, days: int, rng: random.Random) -> dict:
    """Each case: a function of a connection that runs one API call with random parameters."""
    def day_start():
        return newest - rng.randrange(1, days) * DAY

    def deep_cursor(conn):  # the 20th page of 50 of a stream: what scrolling the review list does
        query = queries.ActionQuery(stream=f"cam{rng.randrange(cameras)}")
        for _ in range(20):
            _, after = queries.list_actions(conn, query)
            query = queries.ActionQuery(stream=query.stream, before=after)

    def one(conn):
        (row,) = conn.execute("SELECT id FROM actions WHERE start_ts >= ? LIMIT 1", (day_start(),)).fetchall()
        queries.get_action(conn, row[0])

    return {
        "newest 50 (the live list)": lambda conn: queries.list_actions(conn, queries.ActionQuery()),
        "one stream, newest 50": lambda conn: queries.list_actions(
            conn, queries.ActionQuery(stream=f"cam{rng.randrange(cameras)}")),
        "one label, newest 50": lambda conn: queries.list_actions(conn, queries.ActionQuery(label=rng.choice(LABELS))),
        "stream + label + a day, 500": lambda conn: queries.list_actions(conn, queries.ActionQuery(
            stream=f"cam{rng.randrange(cameras)}", label=rng.choice(LABELS), since=(t := day_start()), until=t + DAY,
            limit=500)),
        "a day of one stream, 500 (the timeline)": lambda conn: queries.list_actions(conn, queries.ActionQuery(
            stream=f"cam{rng.randrange(cameras)}", since=(t := day_start()), until=t + DAY, limit=500)),
        "not yet reviewed, newest 50": lambda conn: queries.list_actions(conn, queries.ActionQuery(unreviewed=True)),
        "20 pages deep (cursor), 20 queries": deep_cursor,
        "one action by id (an id of a random day looked up first)": one,
    }


def time_queries(path: Path, cameras: int, newest: float, days: int, repeats: int) -> dict[str, list[float]]:
    out = {"opening the file (each request does)": []}
    for _ in range(repeats):
        began = time.perf_counter()
        connect(str(path)).close()
        out["opening the file (each request does)"].append((time.perf_counter() - began) * 1000)
    conn = connect(str(path))
    for name, case in query_cases(cameras, newest, days, random.Random(7)).items():
        case(conn)  # warm the page cache: a running server has it warm
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            case(conn)
            times.append((time.perf_counter() - began) * 1000)
        out[name] = times
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--per-day", type=int, default=300, help="actions a camera a day")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write-actions", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        writes = measure_writes(folder, args.write_actions)
        print(writes, flush=True)
        began = time.perf_counter()
        total, newest = generate(folder / "year.db", args.cameras, args.per_day, args.days)
        made_s = time.perf_counter() - began
        size_mb = (folder / "year.db").stat().st_size / 1e6
        print(f"{total} actions in {made_s:.0f} s, {size_mb:.0f} MB", flush=True)
        indexed = time_queries(folder / "year.db", args.cameras, newest, args.days, args.repeats)
        bare = folder / "bare.db"
        shutil.copy(folder / "year.db", bare)
        conn = sqlite3.connect(bare)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall():
            conn.execute(f"DROP INDEX {name}")
        conn.commit()
        conn.close()
        scans = time_queries(bare, args.cameras, newest, args.days, max(3, args.repeats // 10))
    rows = "\n".join(f"| {name} | {pct(t, 0.5):.2f} | {pct(t, 0.99):.2f} | {pct(scans[name], 0.5):.0f} |"
                     for name, t in indexed.items())
    text = f"""`python bench/store.py{'' if args.days == 365 else f' --days {args.days}'}` on {cpu_name()}, \
{datetime.date.today()}; Python's sqlite3 {sqlite3.sqlite_version}, WAL, synchronous=NORMAL.

**Writing.** The dispatcher hands each start and end line to the store's thread (`put`: {writes['put_us']:.1f} µs a \
line, against {writes['log_us']:.1f} µs for the event-log line it writes anyway). The thread writes an action (start \
and end) in {writes['thread_us']:.0f} µs when lines come in bursts ({args.write_actions} actions, batched \
transactions), off the dispatcher's loop; one line at a time (a quiet pipeline) takes {writes['single_us'] / 2:.0f} µs \
from hand-over to commit.

**Querying** {total:,} actions ({args.cameras} cameras × {args.per_day} a day × {args.days} days, {size_mb:.0f} MB; \
generated in {made_s:.0f} s), each `/api/actions` query {args.repeats} times with random cameras, labels and days, \
through `streamer.store.queries` (ms; the page cache warm, as in a running web stage). The last column is the same \
query on a copy without the indexes.

| query | p50 ms | p99 ms | without indexes, p50 ms |
|---|---:|---:|---:|
{rows}
"""
    publish(HEADING, text, not args.no_write)


if __name__ == "__main__":
    main()
