"""What the store keeps for taught actions (schema 3): recent windows' embeddings per stream, to teach from, and
every adapter the workers were handed, newest last, so that a restarted dispatcher hands on the same one and an
operator can go back to an earlier one.

The newest row of ``adapters`` is the one in force; forgetting a label or going back adds a row (the history is
never rewritten). A row without a body means the checkpoint's labels alone.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from streamer.errors import CheckpointError
from workers.adapter import Adapter, adapter_bytes, parse_adapter

ROW_OVERHEAD = 48  # bytes a window's row costs beside its embedding (stream, times, index entries)


@dataclass(frozen=True)
class Version:
    """One adapter the workers were handed: its number, when, its labels, what made it and the adapter."""

    version: int
    ts: float
    labels: tuple[str, ...]
    note: str
    adapter: Adapter | None

    def record(self) -> dict:
        return {"version": self.version, "ts": self.ts, "labels": list(self.labels), "note": self.note,
                "checks": self.adapter.checks if self.adapter is not None else {}}


def put_windows(conn: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    """``(stream, track, frame_ts, frame_index, embedding bytes)`` rows, inside the caller's transaction."""
    conn.executemany("INSERT INTO windows (stream, track, frame_ts, frame_index, embedding) VALUES (?, ?, ?, ?, ?)",
                     rows)


def retain_windows(conn: sqlite3.Connection, keep_h: float, max_bytes: int, now: float) -> int:
    """Forget windows older than ``keep_h`` hours, then the oldest while they take more than ``max_bytes``."""
    gone = conn.execute("DELETE FROM windows WHERE frame_ts < ?", (now - keep_h * 3600,)).rowcount
    row = conn.execute("SELECT count(*), length(embedding) FROM windows").fetchone()
    if max_bytes and row[0] and row[0] * (row[1] + ROW_OVERHEAD) > max_bytes:
        excess = row[0] - int(0.9 * max_bytes / (row[1] + ROW_OVERHEAD))
        gone += conn.execute("DELETE FROM windows WHERE rowid IN (SELECT rowid FROM windows ORDER BY frame_ts "
                             "LIMIT ?)", (excess,)).rowcount
    return gone


def windows_of(conn: sqlite3.Connection, stream: str, start_ts: float, end_ts: float, track: int | None = None,
               width: int = 0) -> np.ndarray:
    """The embeddings of a stream's (or one actor's) windows ending within ``[start_ts, end_ts]``: ``(N, views,
    width)`` float32."""
    where = "track IS NULL" if track is None else "track = ?"
    rows = conn.execute(f"SELECT embedding FROM windows WHERE stream = ? AND {where} AND frame_ts BETWEEN ? AND ? "
                        "ORDER BY frame_ts", (stream, *(() if track is None else (track,)), start_ts, end_ts))
    return _stack([row[0] for row in rows], width)


def windows_by_actor(conn: sqlite3.Connection, stream: str, start_ts: float, end_ts: float) -> dict[int | None, int]:
    """How many windows a stream kept within ``[start_ts, end_ts]``, by tracked actor (None: the whole frame)."""
    rows = conn.execute("SELECT track, count(*) FROM windows WHERE stream = ? AND frame_ts BETWEEN ? AND ? "
                        "GROUP BY track ORDER BY track", (stream, start_ts, end_ts))
    return {track: count for track, count in rows}


def streams(conn: sqlite3.Connection) -> list[str]:
    """The streams with windows kept."""
    return [row[0] for row in conn.execute("SELECT DISTINCT stream FROM windows ORDER BY stream")]


def sample_windows(conn: sqlite3.Connection, streams: Iterable[str], count: int, width: int,
                   away_from: list[tuple[str, float, float]] = ()) -> np.ndarray:
    """Up to ``count`` windows of ``streams`` spread over the time kept, none within the ``(stream, start, end)``
    spans of ``away_from``: ordinary windows of those cameras, the negatives of a teaching."""
    streams = sorted(set(streams))
    if not streams:
        return np.zeros((0, 1, width), np.float32)
    marks = ",".join("?" * len(streams))
    total = conn.execute(f"SELECT count(*) FROM windows WHERE stream IN ({marks})", streams).fetchone()[0]
    step = max(1, total // max(1, count))
    rows = conn.execute(f"SELECT stream, frame_ts, embedding FROM windows WHERE stream IN ({marks}) AND "
                        f"rowid % ? = 0 ORDER BY rowid DESC LIMIT ?", (*streams, step, 2 * count)).fetchall()
    kept = [blob for stream, ts, blob in rows
            if not any(s == stream and a - 1.0 <= ts <= b + 1.0 for s, a, b in away_from)]
    return _stack(kept[:count], width)


def _stack(blobs: list[bytes], width: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 1, max(1, width)), np.float32)
    arrays = [np.frombuffer(blob, np.float16) for blob in blobs]
    views = len(arrays[0]) // width
    arrays = [a for a in arrays if len(a) == views * width]  # a window kept under another model: left out
    return np.stack(arrays).reshape(len(arrays), views, width).astype(np.float32)


def latest(conn: sqlite3.Connection) -> Version | None:
    """The adapter in force (the newest row), None before any was handed on."""
    row = conn.execute("SELECT version, ts, labels, note, body FROM adapters ORDER BY version DESC LIMIT 1").fetchone()
    return _version(row) if row else None


def newest_number(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(version), 0) FROM adapters").fetchone()[0]


def get_version(conn: sqlite3.Connection, version: int) -> Version | None:
    row = conn.execute("SELECT version, ts, labels, note, body FROM adapters WHERE version = ?", (version,)).fetchone()
    return _version(row) if row else None


def versions(conn: sqlite3.Connection, limit: int = 50) -> list[Version]:
    rows = conn.execute("SELECT version, ts, labels, note, NULL FROM adapters ORDER BY version DESC LIMIT ?", (limit,))
    return [_version(row) for row in rows]


def add_version(conn: sqlite3.Connection, adapter: Adapter | None, note: str) -> int:
    """Put ``adapter`` (None: no taught labels) in force; returns its version number."""
    labels = list(adapter.labels) if adapter is not None else []
    body = adapter_bytes(adapter) if adapter is not None and adapter.labels else None
    cursor = conn.execute("INSERT INTO adapters (ts, labels, body, note) VALUES (?, ?, ?, ?)",
                          (time.time(), json.dumps(labels), body, note))
    return cursor.lastrowid


def _version(row: tuple) -> Version:
    number, ts, labels, note, body = row
    try:
        adapter = parse_adapter(body, f"adapter version {number}") if body else None
    except CheckpointError:
        adapter = None
    return Version(number, ts, tuple(json.loads(labels)), note, adapter)
