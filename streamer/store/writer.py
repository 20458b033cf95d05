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
from streamer.store import taught
from streamer.store.schema import connect
from workers.adapter import Adapter

MAX_WAITING = 100_000  # lines held while the store cannot be written
MAX_WINDOWS_WAITING = 20_000  # window embeddings held meanwhile (the oldest go: they are only examples)
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

    It also keeps the windows' embeddings that results carry (``[teach]``), and watches the adapters table:
    :attr:`adapter` is the newest version there, which the dispatcher hands to the workers.

    Args:
        config: the store's file and retention.
        log_path: the dispatcher's event log (None: no catch-up; a crash may then lose the newest lines).
        start_adapter: the adapter the pipeline was started with (``--adapter``): put in force if the store's
            newest is another.
    """

    def __init__(self, config: StoreConfig, log_path: str | None,
                 start_adapter: tuple[str, Adapter] | None = None) -> None:
        self.config = config
        self.start_adapter = start_adapter
        self.windows: collections.deque[tuple] = collections.deque(maxlen=MAX_WINDOWS_WAITING)
        self.adapter: taught.Version | None = None  # the newest adapter version, once read
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

    def put_window(self, stream: str, track: int | None, frame_ts: float, frame_index: int,
                   embedding: bytes) -> None:
        """Keep a window's embedding to teach from (``[teach] keep_h``); never blocks."""
        if self.config.keep_windows_h:
            self.windows.append((stream, track, frame_ts, frame_index, embedding))

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
                    self._start_with(conn)
                self._write_waiting(conn)
                self._watch_adapters(conn)
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

    def _start_with(self, conn: sqlite3.Connection) -> None:
        """``--adapter``'s adapter in force, unless it is already the newest version."""
        if self.start_adapter is None:
            return
        path, adapter = self.start_adapter
        now = taught.latest(conn)
        if now is None or now.adapter is None or now.adapter.key != adapter.key:
            with _transaction(conn):
                taught.add_version(conn, adapter, f"loaded from {path} at start")

    def _watch_adapters(self, conn: sqlite3.Connection) -> None:
        """The newest adapter version, when another stage (the web stage's teaching) added one."""
        if taught.newest_number(conn) != (self.adapter.version if self.adapter else 0):
            self.adapter = taught.latest(conn)

    def _write_waiting(self, conn: sqlite3.Connection) -> None:
        if self.windows:
            rows = [self.windows.popleft() for _ in range(len(self.windows))]
            with _transaction(conn):
                taught.put_windows(conn, rows)
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
        gone += taught.retain_windows(conn, config.keep_windows_h, config.windows_max_bytes, now)
    if gone:
        conn.executescript("PRAGMA incremental_vacuum;")  # stepped to the end (execute() frees one page a call)
    return gone


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]
