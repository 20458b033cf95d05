"""Keeps the action store up to date, in a thread of the dispatcher's process that the pipeline never waits for.

The dispatcher hands each start and end line to :meth:`StoreWriter.put` (a deque append) as it writes it to the
event log; the thread writes them in batches, one transaction each. The event log stays the source of truth:
before anything else the thread reads what the dispatchers before this one appended since the store last read
the log (``log_read``), idempotently by action id, so a SIGKILL between a line and its record loses nothing and
writes nothing twice. A store that is locked, slow or on a full disk gets one warning; its lines wait in memory
(the oldest are dropped past :data:`MAX_WAITING`, still in the log for the next catch-up) and are written later.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import threading
import time
from typing import Any

from loguru import logger

from streamer.config.sinks import StoreConfig
from streamer.errors import ConfigError
from streamer.kinds import LineKind
from streamer.store.schema import connect

MAX_WAITING = 100_000  # lines held while the store cannot be written
BATCH = 1000  # lines a transaction
RETRY_S = 1.0
RETAIN_EVERY_S = 60.0
READ_CHUNK = 1 << 20
ACTION_KINDS = (b'"start"', b'"end"')  # lines without either are not parsed by the catch-up (most are predictions)


def apply(conn: sqlite3.Connection, line: dict[str, Any]) -> bool:
    """One start or end line into the store (inside the caller's transaction); False for a line it cannot use."""
    try:
        if line["kind"] == LineKind.START:
            conn.execute("INSERT OR IGNORE INTO actions (id, stream, track, label, start_ts, start_frame, score) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (str(line["id"]), str(line["stream"]), _int_or_none(line.get("track")), str(line["label"]),
                          float(line["frame_ts"]), int(line["frame_index"]), float(line["score"])))
        elif line["kind"] == LineKind.END:
            conn.execute("UPDATE actions SET end_ts = ?, end_frame = ?, score = MAX(score, ?), clip = ?, brief = ? "
                         "WHERE id = ?",
                         (float(line["frame_ts"]), int(line["frame_index"]), float(line.get("peak", line["score"])),
                          line.get("clip") if isinstance(line.get("clip"), str) else None,
                          int(line.get("brief") is True), str(line["id"])))
        else:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class StoreWriter:
    """The thread that writes actions into the store.

    Args:
        config: the store's file and retention.
        log_path: the dispatcher's event log (None: no catch-up; a crash may then lose the newest lines).
    """

    def __init__(self, config: StoreConfig, log_path: str | None) -> None:
        self.config = config
        self.log_path = os.path.abspath(log_path) if log_path else None
        # What the dispatchers before this one appended: read at the catch-up; this one's lines come by put().
        self.log_end = os.path.getsize(self.log_path) if self.log_path and os.path.exists(self.log_path) else 0
        self.waiting: collections.deque[dict[str, Any]] = collections.deque()
        self.written = self.dropped = 0
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="action-store", daemon=True)

    def start(self) -> StoreWriter:
        self._thread.start()
        return self

    def put(self, line: dict[str, Any]) -> None:
        """Hand over a line the dispatcher wrote (only start and end lines are kept); never blocks."""
        if line.get("kind") not in (LineKind.START, LineKind.END):
            return
        if len(self.waiting) >= MAX_WAITING:
            self.waiting.popleft()
            self.dropped += 1
        self.waiting.append(line)
        self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what waits (for at most ``timeout_s``), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        conn, failing, retain_due = None, False, 0.0
        while True:
            try:
                if conn is None:
                    conn = connect(self.config.path, create=True)
                    self._catch_up(conn)
                self._write_waiting(conn)
                if time.monotonic() >= retain_due:
                    retain(conn, self.config, time.time())
                    retain_due = time.monotonic() + RETAIN_EVERY_S
                if failing:
                    logger.info(f"action store {self.config.path}: writing again")
                failing = False
            except ConfigError as err:
                logger.error(f"{err}; the pipeline goes on without its action history")
                return
            except (sqlite3.Error, OSError) as err:
                if not failing:
                    logger.warning(f"action store {self.config.path}: cannot write ({err}); predictions go on and "
                                   "its lines wait to be written")
                failing = True
                if conn is not None:
                    conn.close()
                    conn = None
                if self._stopping.wait(RETRY_S) and not self.waiting:
                    return
                continue
            if self._stopping.is_set() and not self.waiting:
                conn.close()
                return
            self._wake.wait(0.5)
            self._wake.clear()

    def _write_waiting(self, conn: sqlite3.Connection) -> None:
        while self.waiting:
            batch = [self.waiting.popleft() for _ in range(min(BATCH, len(self.waiting)))]
            try:
                with _transaction(conn):
                    for line in batch:
                        apply(conn, line)
            except BaseException:
                self.waiting.extendleft(reversed(batch))  # written later, in the same order
                raise
            self.written += len(batch)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Apply what the event log holds that the store has not read; then close what no one will end (the
        actions still open now were left by a dispatcher that stopped without ending them and whose end the
        log does not hold: they end where they started, and a real end line that follows overwrites that)."""
        applied = 0
        if self.log_path is not None and self.log_end:
            row = conn.execute("SELECT offset FROM log_read WHERE log = ?", (self.log_path,)).fetchone()
            offset = row[0] if row and row[0] <= self.log_end else 0  # past the end: a new log by that name
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                while offset < self.log_end:
                    chunk = log.read(min(READ_CHUNK, self.log_end - offset))
                    whole = chunk[: chunk.rfind(b"\n") + 1] if offset + len(chunk) < self.log_end else chunk
                    if not whole:  # one line longer than a chunk: not an action line of ours
                        whole = chunk
                    with _transaction(conn):
                        applied += sum(apply(conn, line) for line in _action_lines(whole))
                        offset += len(whole)
                        conn.execute("INSERT OR REPLACE INTO log_read (log, offset) VALUES (?, ?)",
                                     (self.log_path, offset))
                    log.seek(offset)
        with _transaction(conn):
            conn.execute("UPDATE actions SET end_ts = start_ts, end_frame = start_frame WHERE end_ts IS NULL")
        if applied:
            logger.info(f"action store {self.config.path}: caught up {applied} action line(s) from the event log")


def _action_lines(data: bytes):
    for raw in data.split(b"\n"):
        if any(kind in raw for kind in ACTION_KINDS):
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def retain(conn: sqlite3.Connection, config: StoreConfig, now: float) -> int:
    """Forget ended actions older than ``keep_days``, then the oldest ones while the file holds more than
    ``max_bytes``; returns how many went. The space is given back to the file system."""
    gone = 0
    with _transaction(conn):
        if config.keep_days:
            gone += conn.execute("DELETE FROM actions WHERE end_ts IS NOT NULL AND start_ts < ?",
                                 (now - config.keep_days * 86400,)).rowcount
        while config.max_bytes and _used_bytes(conn) > config.max_bytes:
            count = conn.execute("SELECT count(*) FROM actions WHERE end_ts IS NOT NULL").fetchone()[0]
            if not count:
                break
            excess = 1 - config.max_bytes * 0.9 / _used_bytes(conn)
            gone += conn.execute("DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE end_ts IS NOT NULL "
                                 "ORDER BY start_ts LIMIT ?)", (max(1, int(count * excess)),)).rowcount
        if gone:
            conn.execute("DELETE FROM feedback WHERE action_id NOT IN (SELECT id FROM actions)")
    if gone:
        conn.executescript("PRAGMA incremental_vacuum;")  # stepped to the end (execute() frees one page a call)
    return gone


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]
