"""The event log (contract 3 in DESIGN.md): JSON lines appended so that none is ever torn or held back.

:class:`EventLog` appends each line with a single ``write`` on an ``O_APPEND`` descriptor, placed so
that it never crosses a page boundary: a crash, even SIGKILL, never leaves a half line, and a written
line is never held back in a buffer.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections import deque
from typing import Any

from streamer.errors import ConfigError
from streamer.kinds import LineKind


def encode_line(obj: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8, newline-terminated; NaN/inf refused (they are not JSON)."""
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


PAGE = mmap.PAGESIZE
TAIL_BYTES = 4 << 20  # how far back a restarted dispatcher looks for actions left under way
_PAD = encode_line({"kind": LineKind.PAD})  # the shortest filler line: {"kind":"pad"}


class EventLog:
    """Appends JSON lines to a file (and optionally stdout), each with one ``os.write``.

    Why page boundaries matter: the kernel copies a write into the file page by
    page and stops between pages when the process gets SIGKILL, so a line that
    spans two pages can be cut in half. So a line that does not fit in what is
    left of the current page starts on the next one: the line before it is
    padded with trailing spaces (still valid JSON), or, if that line is already
    written, a ``{"kind": "pad"}`` filler line (a kind readers skip) fills the
    gap. Lines longer than a page cannot be protected; opening a log cuts a torn
    last line left by any earlier writer. Several processes may append to one
    file (alignment is then best effort).

    Args:
        path: the JSONL file (created with its folder); None writes no file.
        stdout: also print every line to stdout.
    """

    def __init__(self, path: str | os.PathLike | None, stdout: bool = False) -> None:
        self.path = None if path is None else os.fspath(path)
        self.stdout = stdout
        self.lines = 0
        self._fd: int | None = None
        self._recent: deque[int] = deque(maxlen=32)  # lengths of the last lines, to guess the next
        if self.path is None:
            return
        try:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"event log {self.path}: cannot open for appending ({exc.strerror}); "
                              "pick a writable path") from None
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (a writer killed mid-write) back to the last whole line."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            pos = size
            while pos > 0:
                step = min(pos, 65536)
                f.seek(pos - step)
                chunk = f.read(step)
                if pos == size and chunk.endswith(b"\n"):
                    return
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    os.truncate(self.path, pos - step + cut + 1)
                    return
                pos -= step
        os.truncate(self.path, 0)

    def _pieces(self, line: bytes) -> list[bytes]:
        """What to write for ``line`` so that it lies within one page (see the class docstring)."""
        if len(line) > PAGE:
            return [line]
        self._recent.append(len(line))
        expected = sorted(self._recent)[len(self._recent) * 9 // 10]  # a longer next line gets a filler
        room = PAGE - os.fstat(self._fd).st_size % PAGE
        pieces = []
        if len(line) > room and room >= len(_PAD):  # room < len(_PAD) only after a foreign writer
            pieces.append(_PAD[:-2] + b" " * (room - len(_PAD)) + _PAD[-2:])
            room = PAGE
        left = room - len(line)
        if 0 < left < max(len(_PAD), expected):  # the next line would not fit: end the page here
            line = line[:-1] + b" " * left + b"\n"
        pieces.append(line)
        return pieces

    def write(self, obj: dict[str, Any]) -> None:
        """Append ``obj`` as one line, in one system call."""
        data = encode_line(obj)
        if self._fd is not None:
            for piece in self._pieces(data):
                written = os.write(self._fd, piece)
                while written < len(piece):  # only on a full disk; keep the line whole if we can
                    written += os.write(self._fd, piece[written:])
        if self.stdout:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
        self.lines += 1

    def tail(self, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
        """The whole JSON objects among the file's last ``max_bytes`` (what a restarted writer needs to know of
        what the one before it left; lines that are not JSON objects are skipped)."""
        if self.path is None or not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
        lines = data.split(b"\n")[1 if size > max_bytes else 0:]  # the first may be a part of a line
        out = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def close(self) -> None:
        """Flush to disk and close; further writes go nowhere."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
