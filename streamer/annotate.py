"""What one stream looks like annotated: its newest frame with the label panel, as the overlay and the web draw it.

Both stages keep a :class:`StreamView` per stream, fed from the messages they receive, and
call :func:`annotated` to draw it, so the window, the annotated video and the browser show
the same picture.
"""

import collections
from typing import Sequence

import cv2
import numpy as np

from streamer.overlay_draw import draw_panel, placeholder

SMOOTHING = 3  # results averaged for the panel, so labels do not flicker
MIN_WIDTH = 640  # small sources are enlarged so the label panel leaves most of the picture visible


class StreamView:
    """What a viewing stage knows of one stream: newest frame, recent top-k lists, latency, status."""

    def __init__(self, top_k: int) -> None:
        self.frame: np.ndarray | None = None
        self.frame_index = -1
        self.frame_ts = 0.0
        self.arrivals: collections.deque[float] = collections.deque(maxlen=30)
        self.recent: collections.deque[Sequence[tuple[str, float]]] = collections.deque(maxlen=SMOOTHING)
        self.latency_ms: float | None = None
        self.status: str | None = None
        self.top_k = top_k

    def add_frame(self, image: np.ndarray, index: int, ts: float, now: float) -> None:
        self.frame, self.frame_index, self.frame_ts = image, index, ts
        self.arrivals.append(now)

    def add_top(self, top: Sequence[tuple[str, float]], latency_ms: float) -> None:
        self.recent.append(tuple((str(label), float(prob)) for label, prob in top))
        self.latency_ms = latency_ms

    def top(self) -> list[tuple[str, float]]:
        """Labels of the mean of the last few results' top-k, best first."""
        scores: dict[str, float] = collections.defaultdict(float)
        for top in self.recent:
            for label, prob in top:
                scores[label] += prob / len(self.recent)
        return sorted(scores.items(), key=lambda kv: -kv[1])[: self.top_k]

    def fps(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        return (len(self.arrivals) - 1) / max(1e-6, self.arrivals[-1] - self.arrivals[0])


def annotated(name: str, frame: np.ndarray | None, top: Sequence[tuple[str, float]], fps: float,
              latency_ms: float | None, status: str | None) -> np.ndarray:
    """``frame`` (BGR; None: a placeholder) no narrower than MIN_WIDTH, with the label panel drawn on it."""
    if frame is None:
        frame = placeholder(640, 360, f"{name}: waiting for frames")
    elif frame.shape[1] < MIN_WIDTH:
        scale = MIN_WIDTH / frame.shape[1]
        frame = cv2.resize(frame, (MIN_WIDTH, round(frame.shape[0] * scale)), interpolation=cv2.INTER_LINEAR)
    return draw_panel(frame, name, top, fps, latency_ms, status)


def annotate_view(name: str, view: StreamView) -> np.ndarray:
    return annotated(name, view.frame, view.top(), view.fps(), view.latency_ms, view.status)
