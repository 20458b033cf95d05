"""Video sources: webcam, RTSP camera, file and the synthetic demo, behind one small interface.

Every frame leaves here stamped with its source frame index and capture time.
Live sources (webcam, RTSP) are read by a thread of their own, so a dead or
stalled camera can never block the caller for longer than ``read_timeout_s``;
when one is lost it is reopened with capped exponential backoff, and the loss
and the return are reported as events. Files and the synthetic stream are read
in the caller's thread, paced to their frame rate unless ``realtime`` is off.

RTSP is read with PyAV (per-open options and an open/read timeout that also
covers a server that accepts but never answers); webcams and files with OpenCV.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np
from loguru import logger

from streamer.errors import ConfigError, SourceError

DEFAULT_FPS = 30.0
FIRST_BACKOFF_S = 0.25
# FFmpeg probes an RTSP stream for ~1 s before the first frame; a tiny probe is
# enough because the SDP already names the codec and size (first frame in ~0.1 s).
RTSP_OPTIONS = {"rtsp_transport": "tcp", "probesize": "32", "analyzeduration": "1000000"}


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
    bgr: np.ndarray  # (H, W, 3) uint8
    segment: int = 0


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
    """

    spec: str
    realtime: bool = True
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect: bool = True
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "read_timeout_s", "backoff_max_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"source {name}={value!r} must be a positive number of seconds")


# ---------------------------------------------------------------- specs


def redact(spec: str) -> str:
    """The spec with any ``user:password@`` removed, safe for logs and messages."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", spec)


def parse_source(spec: str) -> str:
    """Check a source spec and return its kind: "webcam", "rtsp", "file" or "synthetic".

    Raises:
        SourceError: naming the spec and what to use instead.
    """
    text = spec.strip()
    if not text:
        raise SourceError("empty source; use a webcam index (0), /dev/videoN, rtsp://…, a video file or synthetic:")
    if text == "synthetic" or text.startswith("synthetic:"):
        seed = text.partition(":")[2]
        if seed and not re.fullmatch(r"\d+", seed):
            raise SourceError(f"source {text!r}: the seed must be a non-negative integer, e.g. synthetic:7")
        return "synthetic"
    if text.isdigit():
        return "webcam"
    if text.startswith("/dev/video"):
        if not os.path.exists(text):
            raise SourceError(f"no webcam at {text}; list the cameras with `ls /dev/video*`")
        return "webcam"
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if scheme:
        if scheme.group(1).lower() not in ("rtsp", "rtsps"):
            raise SourceError(
                f"source {redact(text)!r}: {scheme.group(1)}:// is not supported; "
                "use rtsp://, a video file, a webcam index or synthetic:"
            )
        if not urlsplit(text).hostname:
            raise SourceError(f"source {redact(text)!r} has no host; use rtsp://HOST[:PORT]/PATH")
        return "rtsp"
    path = Path(text)
    if not path.exists():
        raise SourceError(f"video file {text} does not exist; check the path")
    if not path.is_file():
        raise SourceError(f"source {text} is not a regular file; give a video file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"video file {text} is not readable; check its permissions")
    return "file"


def _source_name(spec: str, kind: str) -> str:
    text = spec.strip()
    if kind == "rtsp":
        url = urlsplit(text)
        return f"{url.hostname}{':' + str(url.port) if url.port else ''}{url.path}"
    if kind == "file":
        return Path(text).name
    if kind == "webcam":
        return f"webcam{text}" if text.isdigit() else Path(text).name
    return text if ":" in text else "synthetic"


# ---------------------------------------------------------------- readers (one open stream each)


class _Reader(Protocol):
    """One opened stream: ``grab`` returns the next BGR frame or None when the stream is over."""

    fps: float
    why: str  # why the last grab returned None

    def grab(self) -> np.ndarray | None: ...
    def close(self) -> None: ...


def quiet_opencv() -> None:
    """Keep OpenCV's and FFmpeg's console chatter ("moov atom not found", "can't be used to capture
    by name") off the user's terminal: each failure reaches them as one line of ours instead.
    Setting ``OPENCV_FFMPEG_LOGLEVEL`` or ``OPENCV_LOG_LEVEL`` in the environment brings it back."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; FFmpeg reads it when a capture opens
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class _CvReader:
    """Webcam or file through OpenCV's VideoCapture."""

    def __init__(self, target: int | str, failure: str, api: int = cv2.CAP_ANY) -> None:
        self.why = ""
        self.frames_read = 0
        quiet_opencv()
        self._cap = cv2.VideoCapture(target, api)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(failure)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else DEFAULT_FPS
        self.declared_frames = int(max(0, self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def grab(self) -> np.ndarray | None:
        try:
            ok, bgr = self._cap.read()
        except cv2.error as exc:
            ok, bgr, self.why = False, None, f"decode error: {str(exc).splitlines()[0]}"
        if not ok or bgr is None:
            self.why = self.why or "no frame (end of the stream, or the device is gone)"
            return None
        self.frames_read += 1
        return bgr

    def close(self) -> None:
        self._cap.release()


class _RtspReader:
    """An RTSP stream through PyAV, with open and read timeouts enforced by FFmpeg's interrupt."""

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float) -> None:
        import av

        self.why = ""
        self._exit_error, self._av_error = av.error.ExitError, av.error.FFmpegError
        self._read_timeout_s = read_timeout_s
        self._label = redact(url)
        try:
            # FFmpeg's interrupt first cuts a stalled read short (a partial packet comes
            # back) and only fails the second time: half the read timeout makes the
            # failure, or the frame watchdog in _decode, land within read_timeout_s.
            self._container = av.open(url, options=RTSP_OPTIONS, timeout=(open_timeout_s, read_timeout_s / 2))
        except Exception as exc:  # av raises OSError subclasses and its own FFmpegError
            raise SourceError(
                f"cannot open RTSP stream {self._label}: {_why(exc, url)}; check the URL and the camera"
            ) from None
        try:
            self._stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise SourceError(f"RTSP stream {self._label} has no video track; check the camera's path") from None
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_FPS
        self._last_frame = time.monotonic()
        self._frames = self._decode()

    def _decode(self):
        """Decoded frames; raises TimeoutError when packets come but no frame for the read timeout."""
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except self._av_error:
                # A damaged packet, or one a stalled read cut short: skip it. A stream
                # that never decodes again is caught by the watchdog below.
                frames = []
            for frame in frames:
                self._last_frame = time.monotonic()
                yield frame.to_ndarray(format="bgr24")
            if time.monotonic() - self._last_frame >= 0.95 * self._read_timeout_s:
                raise TimeoutError(f"no frame decoded for {self._read_timeout_s:g} s")

    def grab(self) -> np.ndarray | None:
        try:
            return next(self._frames)
        except StopIteration:
            self.why = "stream ended (camera closed the connection)"
        except Exception as exc:
            # ExitError is FFmpeg giving up when the read timeout interrupted it.
            if isinstance(exc, (TimeoutError, self._exit_error)):
                self.why = f"no data for {self._read_timeout_s:g} s (stalled)"
            else:
                self.why = _why(exc, "")
        return None

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a broken connection may fail; nothing is left to release
            pass


def _why(exc: BaseException, url: str) -> str:
    """A one-line reason from an exception, with the URL (and its password) left out."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.replace(url, "").strip(" :'") if url else text.splitlines()[0]


class _SyntheticReader:
    """The demo generator (``streamer.synthetic``), imported only when used."""

    def __init__(self, seed: int) -> None:
        from streamer.synthetic import SyntheticStream

        self._stream = SyntheticStream(seed=seed)
        self.fps = float(self._stream.fps)
        self.why = ""

    def grab(self) -> np.ndarray | None:
        bgr, _label = self._stream.next_frame()
        return bgr

    def close(self) -> None:
        pass


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

    def __init__(self, config: SourceConfig, kind: str, reader: _Reader) -> None:
        self.config, self.kind = config, kind
        self.name = _source_name(config.spec, kind)
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

    def __init__(self, config: SourceConfig, kind: str, reader: _Reader) -> None:
        super().__init__(config, kind, reader)
        self._reader = reader
        self._index = 0
        self._anchor: tuple[float, int] | None = None  # (monotonic time, index) that pacing counts from

    def read(self) -> Frame | None:
        if self.state is SourceState.ENDED:
            return None
        bgr = self._reader.grab()
        if bgr is None:
            self._end_of_file()
            return None
        if self.config.realtime:
            self._wait_until_due()
        frame = Frame(self._index, time.time(), bgr)
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
            self._emit("source_lost", f"{self.name} ended after {self._index} of {declared} frames "
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

    def __init__(self, config: SourceConfig, kind: str, reader: _Reader, opener: Callable[[], _Reader]) -> None:
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

    def _run(self, reader: _Reader) -> None:
        try:
            self._read_forever(reader)
        except Exception:  # a bug, not a camera fault: say so once and end the source
            logger.exception("{}: source reader thread failed", self.name)
            self._emit("source_lost", f"{self.name}: reader thread failed; see the log")
            self._set_state(SourceState.ENDED)

    def _read_forever(self, reader: _Reader) -> None:
        index, segment = 0, 0
        while not self._stop.is_set():
            try:
                bgr = reader.grab()
            except Exception as exc:  # e.g. a cv2.error from a device that vanished mid-read
                bgr, reader.why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if bgr is not None:
                self._push(Frame(index, time.time(), bgr, segment))
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

    def _reopen(self) -> _Reader | None:
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
        self._emit("source_lost", detail)

    def _report_restored(self, detail: str) -> None:
        with self._ready:
            if not self._lost_reported:
                return
            self._lost_reported = False
        self._emit("source_restored", detail)

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
        seed = spec.partition(":")[2]
        return _PacedSource(config, kind, _SyntheticReader(int(seed) if seed else 0))
    if kind == "file":
        failure = f"cannot decode video file {spec}; is it a complete video FFmpeg can read?"
        return _PacedSource(config, kind, _CvReader(spec, failure, cv2.CAP_FFMPEG))
    if kind == "webcam":
        target: int | str = int(spec) if spec.isdigit() else spec

        def opener() -> _Reader:
            return _CvReader(target, f"cannot open webcam {spec}; is it plugged in and free? (ls /dev/video*)")
    else:

        def opener() -> _Reader:
            return _RtspReader(spec, config.open_timeout_s, config.read_timeout_s)

    return _LiveSource(config, kind, opener(), opener)
