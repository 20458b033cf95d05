"""Window frames through shared memory, for captures and workers on one host.

Inline, a 224×224×8 window is 1.2 MB copied through two sockets (capture → dispatcher →
worker); each hop costs about half a millisecond more than a small message. When every
stage talks over ``ipc://`` (so they share a host), capture keeps its ring buffer in a
memory-mapped file under /dev/shm instead, and a window carries only the file's name and
the serial numbers of its frames. The worker copies the frames out itself.

A slot can be overwritten while a window naming it waits. The writer marks a slot as being
written (serial -1) before it copies pixels in and stamps the new serial after; the reader
checks the serials before and after its copy, so it either gets exactly the frames the
window named or knows they are gone (a stale window, dropped and counted). Capacity is
sized so that this only happens when a worker falls far behind.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from streamer.errors import ProtocolError
from streamer.transport.message_types import FrameRef

MAGIC = b"TSSFRMS1"
HEADER_BYTES = 64  # magic, then capacity, height, width as int64, then padding
SUFFIX = ".frames"
_NAME = re.compile(r"tss-[0-9a-f]{12}-[0-9a-f]{8}-[0-9]{1,10}\.frames")
# Map every page up front: touching them one by one later costs page faults on the live path.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
IDLE_CLOSE_S = 30.0  # a reader unmaps a file no window has named for this long (its capture is gone)


def store_dir() -> Path:
    """/dev/shm (memory, never written to disk) where it exists, else the temp folder."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def store_prefix(windows_endpoint: str) -> str:
    """The file-name prefix of one pipeline's stores: from its windows endpoint, so every stage agrees."""
    return f"tss-{hashlib.sha1(windows_endpoint.encode()).hexdigest()[:12]}-"


def remove_stores(prefix: str) -> None:
    """Delete every store of a pipeline (the supervisor calls it at stop: a killed capture leaves its file)."""
    for path in store_dir().glob(f"{prefix}*{SUFFIX}"):
        path.unlink(missing_ok=True)


def _layout(buf, capacity: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    serials = np.frombuffer(buf, np.int64, capacity, HEADER_BYTES)
    frames = np.frombuffer(buf, np.uint8, capacity * height * width * 3, HEADER_BYTES + 8 * capacity)
    return serials, frames.reshape(capacity, height, width, 3)


def _unmap(buf: mmap.mmap) -> None:
    try:
        buf.close()
    except BufferError:  # a view is still alive somewhere; the map closes when it goes
        pass


class FrameStore:
    """The writer: one capture's ring of frames in a shared file, named ``<prefix><stream hash>-<pid>.frames``.

    Raises OSError when the file cannot be made or its memory reserved (a full /dev/shm:
    capture then sends frames inline).
    """

    def __init__(self, prefix: str, stream: str, capacity: int, height: int, width: int) -> None:
        base = f"{prefix}{hashlib.sha1(stream.encode()).hexdigest()[:8]}-"
        folder = store_dir()
        for old in folder.glob(f"{base}*{SUFFIX}"):  # left by this stream's previous, killed capture
            old.unlink(missing_ok=True)
        self.name = f"{base}{os.getpid()}{SUFFIX}"
        self.path = folder / self.name
        size = HEADER_BYTES + capacity * (8 + height * width * 3)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):  # reserve now: a full tmpfs fails here, not with SIGBUS later
                os.posix_fallocate(fd, 0, size)
            else:  # macOS
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, flags=_MAP_FLAGS)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._map[:HEADER_BYTES] = MAGIC + np.array([capacity, height, width], np.int64).tobytes() + bytes(32)
        self.serials, self.frames = _layout(self._map, capacity, height, width)
        self.serials[:] = -1
        self.server = ""  # where workers on other hosts fetch these frames (streamer.transport.frameserver)

    def close(self) -> None:
        """Remove the file; readers that still map it keep their pages until they let go."""
        self.path.unlink(missing_ok=True)
        self.serials = self.frames = None
        _unmap(self._map)


class _Mapped:
    def __init__(self, path: Path) -> None:
        with open(path, "rb") as file:
            self.map = mmap.mmap(file.fileno(), 0, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        if len(self.map) < HEADER_BYTES or self.map[:8] != MAGIC:
            raise ProtocolError(f"frame store {path.name}: not a frame store file")
        capacity, height, width = np.frombuffer(self.map, np.int64, 3, 8)
        if len(self.map) != HEADER_BYTES + capacity * (8 + height * width * 3):
            raise ProtocolError(f"frame store {path.name}: size does not match its header")
        self.serials, self.frames = _layout(self.map, int(capacity), int(height), int(width))
        self.used = time.monotonic()


class FrameStoreReader:
    """The worker's side: maps the stores windows name (only this pipeline's) and copies frames out."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.folder = store_dir()
        self._open: dict[str, _Mapped] = {}

    def frames(self, ref: FrameRef) -> np.ndarray | None:
        """The window's (T, H, W, 3) frames, a fresh copy; None if any was overwritten since the window was cut.

        Raises ProtocolError for a name outside this pipeline's stores or a store of another shape.
        """
        if not ref.name.startswith(self.prefix) or not _NAME.fullmatch(ref.name):
            raise ProtocolError(f"window names frame store {ref.name[:80]!r}, not one of this pipeline's")
        store = self._open.get(ref.name)
        if store is None:
            try:
                store = self._open[ref.name] = _Mapped(self.folder / ref.name)
            except (OSError, ValueError) as err:
                raise ProtocolError(f"frame store {ref.name}: cannot map it ({err})") from None
        store.used = time.monotonic()
        if store.frames.shape[1:] != tuple(ref.shape[1:]):
            raise ProtocolError(f"frame store {ref.name} holds {store.frames.shape[1:]} frames, "
                                f"the window says {tuple(ref.shape[1:])}")
        wanted = np.asarray(ref.serials, np.int64)
        slots = wanted % len(store.serials)
        if not np.array_equal(store.serials[slots], wanted):
            return None
        frames = store.frames[slots]  # fancy indexing: a copy
        if not np.array_equal(store.serials[slots], wanted):  # overwritten while we copied
            return None
        return frames

    def close_idle(self) -> None:
        """Unmap stores no window has named for a while (their captures restarted or ended)."""
        now = time.monotonic()
        for name, store in list(self._open.items()):
            if now - store.used > IDLE_CLOSE_S:
                del self._open[name]
                store.serials = store.frames = None
                _unmap(store.map)
