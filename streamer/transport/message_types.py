"""The messages that travel between processes, as frozen dataclasses (their wire form is in
:mod:`streamer.transport.messages`, which re-exports them: import them from there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.transport.framestore import FrameRef



@dataclass(frozen=True, eq=False)
class Window:
    """``num_frames`` RGB model-size frames of one stream, oldest first.

    Args:
        stream: stream name.
        seq: per-stream window counter of the capture that made it.
        frame_indices: source frame index of each frame, strictly increasing.
        frame_ts: capture time (Unix seconds) of each frame.
        frames: (T, H, W, 3) uint8 RGB, or None when ``store`` says where they are.
        sent_ts: when capture sent it (Unix seconds), for queue timings.
        store: the frames' place in a shared-memory frame store (same-host workers read them
            there, see :mod:`streamer.transport.framestore`); None when the frames travel inline.
        track: the tracked actor the window was cut around (contract 7), None for a whole stream.
        box: that track's box ``[x0, y0, x1, y1]`` (source pixels) at the window's last frame.
        views: crops of each frame (``crop = "three"``: 3, stacked view after view, ``views·T`` frames);
            the worker averages their answers.
    """

    stream: str
    seq: int
    frame_indices: tuple[int, ...]
    frame_ts: tuple[float, ...]
    frames: np.ndarray | None
    sent_ts: float
    store: FrameRef | None = None
    track: int | None = None
    box: tuple[float, float, float, float] | None = None
    views: int = 1

    @property
    def key(self) -> tuple[str, int | None]:
        """What "only the newest window waits" is per: a stream, or one tracked actor of it."""
        return self.stream, self.track


@dataclass(frozen=True)
class WorkRequest:
    """A worker asks for up to ``max_batch`` windows; it doubles as its heartbeat."""

    worker: str
    max_batch: int


@dataclass(frozen=True, eq=False)
class Batch:
    """Windows for one worker, newest of several streams, in one message."""

    windows: tuple[Window, ...]


@dataclass(frozen=True, eq=False)
class Result:
    """A worker's prediction for one window.

    Args:
        stream, seq: of the window.
        frame_index, frame_ts: source index and capture time of the window's last frame.
        probs: (classes,) float32 softmax probabilities.
        top: ``(label, prob)`` pairs, best first.
        worker: name of the worker that ran it.
        timings: milliseconds per step (``queue_ms``, ``preprocess_ms``, ``forward_ms``, ...).
        track, box: of the window (a tracked actor), else None.
    """

    stream: str
    seq: int
    frame_index: int
    frame_ts: float
    probs: np.ndarray
    top: tuple[tuple[str, float], ...]
    worker: str
    timings: dict[str, float] = field(default_factory=dict)
    track: int | None = None
    box: tuple[float, float, float, float] | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.stream, self.track


@dataclass(frozen=True, eq=False)
class ResultBatch:
    """A worker's results for one batch, in one message."""

    results: tuple[Result, ...]


@dataclass(frozen=True, eq=False)
class DisplayFrame:
    """A frame to show (overlay, web) or record (clips): (H, W, 3) uint8 BGR, at most the display width;
    ``fps``: the source's own rate (0 if unknown), which times clips in offline runs too; ``tracks``:
    ``(track, box)`` of each tracked actor in this frame, the box in this image's pixels."""

    stream: str
    index: int
    ts: float
    image: np.ndarray
    fps: float = 0.0
    tracks: tuple[tuple[int, tuple[float, float, float, float]], ...] = ()


@dataclass(frozen=True)
class Status:
    """Something a user should hear about: ``source_lost``, ``source_restored``, ``worker_restarted``...;
    ``track_ended`` names its ``track``."""

    kind: str
    stream: str
    detail: str
    ts: float
    track: int | None = None


@dataclass(frozen=True)
class Credit:
    """Offline mode, dispatcher → capture: "I took ``n`` of your windows, send more"."""

    stream: str
    n: int


@dataclass(frozen=True)
class Heartbeat:
    """I am alive."""

    sender: str
    ts: float


@dataclass(frozen=True, eq=False)
class LogLine:
    """One event-log line (contract 3) as the dispatcher wrote it, for the stages that show or forward it."""

    line: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Stats:
    """Counters and gauges a stage reports once a second, for the web stage's metrics.

    Args:
        sender: the stage (``dispatcher``, ``capture <stream>``).
        ts: when they were read (Unix seconds).
        samples: ``(name, labels, value)``: a metric name without prefix, its labels, its value.
    """

    sender: str
    ts: float
    samples: tuple[tuple[str, dict[str, str], float], ...]


Message = (Window | WorkRequest | Batch | Result | ResultBatch | DisplayFrame | Status | Credit | Heartbeat
           | LogLine | Stats)
