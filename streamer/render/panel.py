"""What one stream looks like annotated: its newest frame with the label panel, as the overlay and the web draw it.

Both stages keep a :class:`StreamView` per stream, fed from the messages they receive, and
call :func:`annotated` to draw it, so the window, the annotated video and the browser show
the same picture.
"""

import collections
from typing import Sequence

import cv2
import numpy as np

from streamer.render.draw import draw_boxes, draw_panel, panel_size, placeholder

SMOOTHING = 3  # results averaged for the panel, so labels do not flicker
MAX_TRACKS_KEPT = 64  # tracked actors whose recent labels a view remembers
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
        self.tracks: tuple = ()  # (track, box in the frame's pixels) of the newest frame's tracked actors
        self.track_tops: dict[int, collections.deque] = {}  # track → its recent top-k lists

    def add_frame(self, image: np.ndarray, index: int, ts: float, now: float, tracks: tuple = ()) -> None:
        self.frame, self.frame_index, self.frame_ts, self.tracks = image, index, ts, tracks
        self.arrivals.append(now)

    def add_top(self, top: Sequence[tuple[str, float]], latency_ms: float, track: int | None = None) -> None:
        pairs = tuple((str(label), float(prob)) for label, prob in top)
        self.latency_ms = latency_ms
        if track is None:
            self.recent.append(pairs)
            return
        self.track_tops.setdefault(track, collections.deque(maxlen=SMOOTHING)).append(pairs)
        if len(self.track_tops) > MAX_TRACKS_KEPT:  # forget the tracks longest gone
            shown = {t for t, _ in self.tracks}
            for old in [t for t in self.track_tops if t not in shown][:len(self.track_tops) - MAX_TRACKS_KEPT]:
                del self.track_tops[old]

    def boxes(self) -> list[tuple[int, tuple, str, float]]:
        """(track, box, smoothed best label, its score) of each tracked actor in the newest frame that has
        a prediction yet."""
        out = []
        for track, box in self.tracks:
            recent = self.track_tops.get(track)
            if recent:
                label, score = _mean_top(recent, 1)[0]
                out.append((track, box, label, score))
        return out

    def top(self) -> list[tuple[str, float]]:
        """Labels of the mean of the last few results' top-k, best first; for tracked actors, one row each
        (``#3 moving left``)."""
        if self.tracks and not self.recent:
            rows = sorted(self.boxes(), key=lambda row: -row[3])
            return [(f"#{track} {label}", score) for track, _, label, score in rows][: self.top_k]
        return _mean_top(self.recent, self.top_k)

    def fps(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        return (len(self.arrivals) - 1) / max(1e-6, self.arrivals[-1] - self.arrivals[0])


def _mean_top(recent, k: int) -> list[tuple[str, float]]:
    scores: dict[str, float] = collections.defaultdict(float)
    for top in recent:
        for label, prob in top:
            scores[label] += prob / len(recent)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


def annotated(name: str, frame: np.ndarray | None, top: Sequence[tuple[str, float]], fps: float,
              latency_ms: float | None, status: str | None, boxes: Sequence = ()) -> np.ndarray:
    """``frame`` (BGR; None: a placeholder) no narrower than MIN_WIDTH, with each tracked actor's box and
    label (``boxes``: from :meth:`StreamView.boxes`) and the label panel drawn on it."""
    scale = 1.0
    if frame is None:
        frame, boxes = placeholder(640, 360, f"{name}: waiting for frames"), ()
    elif frame.shape[1] < MIN_WIDTH:
        scale = MIN_WIDTH / frame.shape[1]
        frame = cv2.resize(frame, (MIN_WIDTH, round(frame.shape[0] * scale)), interpolation=cv2.INTER_LINEAR)
    if boxes:
        panel = panel_size(frame.shape[0], frame.shape[1], len(top) + (1 if status else 0))
        frame = draw_boxes(frame, [(track, tuple(v * scale for v in box), label, score)
                                   for track, box, label, score in boxes], panel)
    return draw_panel(frame, name, top, fps, latency_ms, status)


def annotate_view(name: str, view: StreamView) -> np.ndarray:
    return annotated(name, view.frame, view.top(), view.fps(), view.latency_ms, view.status, view.boxes())
