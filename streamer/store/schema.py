"""The store's file: one SQLite database in WAL mode, its schema version in ``PRAGMA user_version``.

Each entry of :data:`MIGRATIONS` takes a file from the version before it to its own; a file is upgraded in
place when it is opened for writing, and one of a newer version than this code knows is refused with a line
that says what to do (never rewritten by older code).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from streamer.errors import ConfigError

MIGRATIONS = (
    # 1: the actions, and how far the store has read each event log
    """
    CREATE TABLE actions (
        id TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        track INTEGER,
        label TEXT NOT NULL,
        start_ts REAL NOT NULL,
        start_frame INTEGER NOT NULL,
        end_ts REAL,
        end_frame INTEGER,
        score REAL NOT NULL,
        clip TEXT,
        brief INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX actions_by_time ON actions (start_ts, id);
    CREATE INDEX actions_by_stream ON actions (stream, start_ts, id);
    CREATE TABLE log_read (log TEXT PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # 2: an operator's verdicts, and the label filter's index
    """
    CREATE TABLE feedback (
        action_id TEXT PRIMARY KEY,
        verdict TEXT NOT NULL CHECK (verdict IN ('right', 'wrong')),
        label TEXT,
        ts REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX actions_by_label ON actions (label, start_ts, id);
    """,
    # 3: taught actions: recent windows' embeddings to teach from, and every adapter the workers were handed
    """
    CREATE TABLE windows (
        stream TEXT NOT NULL,
        track INTEGER,
        frame_ts REAL NOT NULL,
        frame_index INTEGER NOT NULL,
        embedding BLOB NOT NULL
    );
    CREATE INDEX windows_by_stream ON windows (stream, frame_ts);
    CREATE INDEX windows_by_time ON windows (frame_ts);
    CREATE TABLE adapters (
        version INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        labels TEXT NOT NULL,
        body BLOB,
        note TEXT NOT NULL
    );
    """,
)
VERSION = len(MIGRATIONS)
BUSY_MS = 2000  # how long a connection waits for the other writer (the web stage's feedback, a reader's checkpoint)


def connect(path: str, *, create: bool = False) -> sqlite3.Connection:
    """A connection to the store at ``path`` (made, with its folder, when ``create``), upgraded to
    :data:`VERSION` if it is older. Raises ConfigError (one line) for a file that is not a store of ours or
    is newer than this code; sqlite3.Error for a disk that fails under it."""
    if create:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    conn = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        version = _version(conn, path)
        if version == 0:  # before anything is written, even the WAL header: lets retention give space back
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut may lose the newest commits, never the file
        if version < VERSION:
            migrate(conn, version)
    except BaseException:
        conn.close()
        raise
    return conn


def _version(conn: sqlite3.Connection, path: str) -> int:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"action store {path}: not a SQLite database ({err}); point [store] path (--store) at "
                          "a new file or at a store this pipeline made") from None
    if version > VERSION:
        raise ConfigError(f"action store {path}: made by a newer timesformer-stream (schema {version}, this one "
                          f"knows up to {VERSION}); upgrade timesformer-stream or use another file")
    if version == 0 and tables:
        raise ConfigError(f"action store {path}: a SQLite database of something else (tables: "
                          f"{', '.join(sorted(tables)[:5])}); point [store] path (--store) at a new file")
    return version


def migrate(conn: sqlite3.Connection, version: int, upto: int = VERSION) -> None:
    """Take the file from ``version`` to ``upto``, each step in one transaction (a crash leaves a whole version)."""
    for number in range(version + 1, upto + 1):
        conn.execute("BEGIN IMMEDIATE")  # statements one by one: executescript would commit half a step
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:  # another process took this step
                conn.execute("ROLLBACK")
                continue
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def check_store(path: str) -> None:
    """Before any stage starts: a store that exists is one this code can use (ConfigError otherwise)."""
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise ConfigError(f"action store {path}: is a folder; name a file in it")
    conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    try:
        _version(conn, path)
    finally:
        conn.close()
