"""What the web stage asks of the store (contract 8): pages of actions by filter, one action, a verdict on one.

Pages go newest first by ``(start_ts, id)`` and continue with a cursor (``before``: the last id of the page
before), so a page stays the same while new actions arrive; every filter is served by an index.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

COLUMNS = ("a.id, a.stream, a.track, a.label, a.start_ts, a.end_ts, a.start_frame, a.end_frame, a.score, a.clip, "
           "a.brief, f.verdict, f.label, f.ts")
FROM = "FROM actions a LEFT JOIN feedback f ON f.action_id = a.id"
MAX_PAGE = 500
VERDICTS = ("right", "wrong")


@dataclass(frozen=True)
class ActionQuery:
    """Filters of ``GET /api/actions`` (every one optional) and the page wanted."""

    stream: str | None = None
    label: str | None = None
    since: float | None = None  # start_ts ≥ since
    until: float | None = None  # start_ts < until
    unreviewed: bool = False    # only actions without a verdict
    before: str | None = None   # the cursor: the last id of the page before
    limit: int = 50


def action_record(row: tuple) -> dict[str, Any]:
    """A row as the API gives it: ``track``, ``clip`` and ``feedback`` only where they apply."""
    (action_id, stream, track, label, start_ts, end_ts, start_frame, end_frame, score, clip, brief,
     verdict, right_label, verdict_ts) = row
    record = {"id": action_id, "stream": stream, "label": label, "start_ts": start_ts, "end_ts": end_ts,
              "start_frame": start_frame, "end_frame": end_frame, "score": round(score, 6)}
    if track is not None:
        record["track"] = track
    if clip:
        record["clip"] = clip
    if brief:
        record["brief"] = True
    if verdict is not None:
        record["feedback"] = {"verdict": verdict, "ts": verdict_ts, **({"label": right_label} if right_label else {})}
    return record


def list_actions(conn: sqlite3.Connection, query: ActionQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of actions, newest first, and the cursor of the next page (None: this is the last).
    An unknown cursor gives an empty page."""
    where, args = [], []
    for column, value in (("a.stream = ?", query.stream), ("a.label = ?", query.label),
                          ("a.start_ts >= ?", query.since), ("a.start_ts < ?", query.until)):
        if value is not None:
            where.append(column)
            args.append(value)
    if query.unreviewed:
        where.append("f.verdict IS NULL")
    if query.before is not None:
        row = conn.execute("SELECT start_ts FROM actions WHERE id = ?", (query.before,)).fetchone()
        if row is None:
            return [], None
        where.append("(a.start_ts, a.id) < (?, ?)")
        args += [row[0], query.before]
    limit = max(1, min(query.limit, MAX_PAGE))
    sql = (f"SELECT {COLUMNS} {FROM} {'WHERE ' + ' AND '.join(where) if where else ''} "
           "ORDER BY a.start_ts DESC, a.id DESC LIMIT ?")
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    records = [action_record(row) for row in rows[:limit]]
    return records, records[-1]["id"] if len(rows) > limit else None


def get_action(conn: sqlite3.Connection, action_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {COLUMNS} {FROM} WHERE a.id = ?", (action_id,)).fetchone()
    return None if row is None else action_record(row)


def set_feedback(conn: sqlite3.Connection, action_id: str, verdict: str, label: str | None) -> dict[str, Any] | None:
    """Keep an operator's verdict on an action (the latest one counts); the action as it is now, None if the
    store has no such action."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM actions WHERE id = ?", (action_id,)).fetchone() is None:
            conn.execute("ROLLBACK")
            return None
        conn.execute("INSERT OR REPLACE INTO feedback (action_id, verdict, label, ts) VALUES (?, ?, ?, ?)",
                     (action_id, verdict, label or None, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return get_action(conn, action_id)

