"""Video sources: webcam, RTSP camera, file and the synthetic demo, behind one small interface.

Every frame leaves here stamped with its source frame index and capture time.
Live sources (webcam, RTSP) are read by a thread of their own, so a dead or
stalled camera can never block the caller for longer than ``read_timeout_s``;
when one is lost it is reopened with capped exponential backoff, and the loss
and the return are reported as events. Files and the synthetic stream are read
in the caller's thread, paced to their frame rate unless ``realtime`` is off.

A spec is checked and named by :mod:`streamer.video.specs` (no decoder needed); the readers
themselves (PyAV for RTSP and files, OpenCV for webcams) are in :mod:`streamer.video.readers`; a frame leaves here as a *picture* (see :mod:`streamer.video.frames`)
that capture converts only if a window or a viewer needs it.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import numpy as np
from loguru import logger

from streamer.errors import ConfigError, SourceError
from streamer.kinds import LineKind
from streamer.video.frames import Picture, bgr_of
from streamer.video.readers import AvReader, CvReader, Reader, SyntheticReader, hwaccel_choices
from streamer.video.specs import parse_source, source_name, synthetic_seed

FIRST_BACKOFF_S = 0.25


class SourceLost(SourceError):
    """A live source gave no frame for ``read_timeout_s`` and is reconnecting; read again."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame as it left the source.

    ``index`` counts source frames from 0 and keeps counting across reconnects;
    ``segment`` counts reconnects, so a change tells the reader there is a gap
    before this frame (a window must not span it).
    """

    index: int
    ts: float  # capture time, Unix seconds
    picture: Picture  # a BGR array, or a decoder frame not yet converted (streamer.video.frames)
    segment: int = 0

    @property
    def bgr(self) -> np.ndarray:
        """The whole frame as (H, W, 3) uint8 BGR (converted now if it is still a decoder frame)."""
        return bgr_of(self.picture)


class SourceState(Enum):
    """Where a source is; ``read`` gives frames in LIVE, raises SourceLost in LOST, None in ENDED."""

    LIVE = "live"  # frames flowing
    LOST = "lost"  # a live source failed; reopening with backoff
    ENDED = "ended"  # end of file, closed, or lost with reconnect off: no more frames


@dataclass(frozen=True)
class SourceConfig:
    """How to open and read one source.

    Args:
        spec: ``"0"`` or ``"/dev/video0"`` (webcam), ``"rtsp://…"``, a file path,
            ``"synthetic:"`` or ``"synthetic:SEED"``.
        realtime: pace a file at its own fps; False reads as fast as the caller takes it.
        open_timeout_s: longest wait for a live source to open.
        read_timeout_s: longest wait for a frame; also the longest ``read`` blocks.
        reconnect: reopen a lost live source; False ends the source instead.
        backoff_max_s: cap of the reconnect backoff (0.25 s doubling).
        hwaccel: decode files and RTSP on a hardware device (``"auto"``, ``"cuda"``, ``"vaapi"``...)
            where one works here, else in software; ``"none"`` (the default) decodes in software.
    """

    spec: str
    realtime: bool = True
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect: bool = True
    backoff_max_s: float = 2.0
    hwaccel: str = "none"

    def __post_init__(self) -> None:
        if self.hwaccel not in hwaccel_choices():
            raise ConfigError(f"hwaccel {self.hwaccel!r} is not one of {', '.join(hwaccel_choices())}")
        for name in ("open_timeout_s", "read_timeout_s", "backoff_max_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"source {name}={value!r} must be a positive number of seconds")


# ---------------------------------------------------------------- sources


class VideoSource:
    """What capture reads: ``read()`` frames, drain ``events()``, ``close()`` once.

    A reading loop::

        with open_source(SourceConfig(spec)) as source:
            while not stop.is_set():
                try:
                    frame = source.read()      # blocks at most read_timeout_s
                except SourceLost:
                    frame = False              # live source down; it is reconnecting
                for kind, detail in source.events():
                    ...                        # log / emit source_lost, source_restored
                if frame is None:
                    break                      # ended: end of file, or lost with reconnect off
                if frame:
                    ...                        # a new frame.segment means a gap before it
    """

    def __init__(self, config: SourceConfig, kind: str, reader: Reader) -> None:
        self.config, self.kind = config, kind
        self.name = source_name(config.spec, kind)
        self.fps = reader.fps
        self.state = SourceState.LIVE
        self._events: list[tuple[str, str]] = []
        self._events_lock = threading.Lock()

    def read(self) -> Frame | None:
        """The next frame; None once the source has ended for good."""
        raise NotImplementedError

    def events(self) -> list[tuple[str, str]]:
        """``("source_lost" | "source_restored", detail)`` pairs since the last call, oldest first."""
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Release the device or connection; later reads return None."""
        raise NotImplementedError

    def _emit(self, kind: str, detail: str) -> None:
        with self._events_lock:
            self._events.append((kind, detail))

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PacedSource(VideoSource):
    """File or synthetic: read in the caller's thread, each frame held until its due time."""

    def __init__(self, config: SourceConfig, kind: str, reader: Reader) -> None:
        super().__init__(config, kind, reader)
        self._reader = reader
        self._index = 0
        self._anchor: tuple[float, int] | None = None  # (monotonic time, index) that pacing counts from

    def read(self) -> Frame | None:
        if self.state is SourceState.ENDED:
            return None
        picture = self._reader.grab()
        if picture is None:
            self._end_of_file()
            return None
        if self.config.realtime:
            self._wait_until_due()
        frame = Frame(self._index, time.time(), picture)
        self._index += 1
        return frame

    def _wait_until_due(self) -> None:
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (now, self._index)
        due = self._anchor[0] + (self._index - self._anchor[1]) / self.fps
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.5:
            self._anchor = (now, self._index)  # the caller fell behind: resume pacing, don't burst

    def _end_of_file(self) -> None:
        declared = getattr(self._reader, "declared_frames", 0)
        if declared and self._index + max(2, declared // 50) < declared:
            self._emit(LineKind.SOURCE_LOST, f"{self.name} ended after {self._index} of {declared} frames "
                                      f"({self._reader.why}); is the file truncated?")
        self.close()

    def close(self) -> None:
        if self.state is not SourceState.ENDED:
            self.state = SourceState.ENDED
            self._reader.close()


class _LiveSource(VideoSource):
    """Webcam or RTSP: a reader thread fills a short queue and reopens the source when it is lost.

    The queue holds about one second of frames; when the caller falls behind the
    oldest frame is dropped (counted in ``dropped``), so what it reads stays fresh.
    """

    def __init__(self, config: SourceConfig, kind: str, reader: Reader, opener: Callable[[], Reader]) -> None:
        super().__init__(config, kind, reader)
        self.dropped = 0
        self._opener = opener
        self._queue: collections.deque = collections.deque(maxlen=max(2, round(self.fps)))
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._lost_reported = False  # one source_lost per outage, whoever notices it first
        self._thread = threading.Thread(target=self._run, args=(reader,), name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def read(self) -> Frame | None:
        deadline = time.monotonic() + self.config.read_timeout_s
        with self._ready:
            while not self._queue:
                if self.state is SourceState.ENDED:
                    return None
                if self.state is SourceState.LOST and self._events:
                    # The reader thread has reported the loss: let the caller pass it on now,
                    # not when the read timeout runs out (the camera may be back by then).
                    raise SourceLost(f"{self.name} lost; reconnecting")
                left = deadline - time.monotonic()
                if left <= 0:
                    # A device whose read blocks (a webcam unplugged mid-read) never returns to the
                    # reader thread: the outage is reported from here, and over when frames come again.
                    detail = f"no frame from {self.name} for {self.config.read_timeout_s:g} s (stalled)"
                    self._report_lost(detail)
                    raise SourceLost(f"{detail}; reconnecting")
                self._ready.wait(left)
            return self._queue.popleft()

    def close(self) -> None:
        self._stop.set()
        with self._ready:
            self.state = SourceState.ENDED
            self._queue.clear()
            self._ready.notify_all()
        # The thread may sit in a read for up to read_timeout_s; it is a daemon and
        # closes its connection itself when that read returns.
        self._thread.join(timeout=1.0)

    # -- reader thread

    def _run(self, reader: Reader) -> None:
        try:
            self._read_forever(reader)
        except Exception:  # a bug, not a camera fault: say so once and end the source
            logger.exception("{}: source reader thread failed", self.name)
            self._emit(LineKind.SOURCE_LOST, f"{self.name}: reader thread failed; see the log")
            self._set_state(SourceState.ENDED)

    def _read_forever(self, reader: Reader) -> None:
        index, segment = 0, 0
        while not self._stop.is_set():
            try:
                picture = reader.grab()
            except Exception as exc:  # e.g. a cv2.error from a device that vanished mid-read
                picture, reader.why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if picture is not None:
                self._push(Frame(index, time.time(), picture, segment))
                index += 1
                continue
            reader.close()
            if self._stop.is_set():
                return
            self._report_lost(f"{self.name}: {reader.why}")
            if not self.config.reconnect:
                self._set_state(SourceState.ENDED)
                return
            self._set_state(SourceState.LOST)
            reader = self._reopen()
            if reader is None:
                return
            segment += 1
            self._report_restored(f"{self.name}: reading again from frame {index}")
            self._set_state(SourceState.LIVE)
        reader.close()

    def _reopen(self) -> Reader | None:
        """Reopen with 0.25 s doubling backoff capped at backoff_max_s; None when closed meanwhile."""
        delay = FIRST_BACKOFF_S
        while not self._stop.wait(delay):
            try:
                reader = self._opener()
            except Exception as exc:  # SourceError, or anything the backend raises while the camera is down
                logger.debug("{}: reconnect failed ({}); next try in {:.2f} s", self.name, exc, delay)
                delay = min(2 * delay, self.config.backoff_max_s)
                continue
            if self._stop.is_set():
                reader.close()
                return None
            return reader
        return None

    def _report_lost(self, detail: str) -> None:
        with self._ready:
            if self._lost_reported:
                return
            self._lost_reported = True
        self._emit(LineKind.SOURCE_LOST, detail)

    def _report_restored(self, detail: str) -> None:
        with self._ready:
            if not self._lost_reported:
                return
            self._lost_reported = False
        self._emit(LineKind.SOURCE_RESTORED, detail)

    def _push(self, frame: Frame) -> None:
        if self._lost_reported:  # a stall reported by read() is over
            self._report_restored(f"{self.name}: frames again from frame {frame.index}")
        with self._ready:
            if self.state is SourceState.ENDED:
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(frame)
            self._ready.notify()

    def _set_state(self, state: SourceState) -> None:
        with self._ready:
            if self.state is not SourceState.ENDED:  # close() may have ended it meanwhile
                self.state = state
            self._ready.notify_all()


def open_source(config: SourceConfig) -> VideoSource:
    """Open the source ``config.spec`` names.

    Raises:
        SourceError: the spec is invalid or the first open fails (one line, value named).
    """
    kind = parse_source(config.spec)
    spec = config.spec.strip()
    if kind == "synthetic":
        return _PacedSource(config, kind, SyntheticReader(synthetic_seed(spec)))
    if kind == "file":
        return _PacedSource(config, kind, AvReader.file(spec, config.hwaccel))
    if kind == "webcam":
        target: int | str = int(spec) if spec.isdigit() else spec

        def opener() -> Reader:
            return CvReader(target, f"cannot open webcam {spec}; is it plugged in and free? (ls /dev/video*)")
    else:

        def opener() -> Reader:
            return AvReader.rtsp(spec, config.open_timeout_s, config.read_timeout_s, config.hwaccel)

    return _LiveSource(config, kind, opener(), opener)
