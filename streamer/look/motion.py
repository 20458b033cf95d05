"""Finding what moves: background subtraction on a small copy of each frame, for the tracker (``track = "motion"``).

MOG2 (background subtraction), not frame differencing: the difference of two frames of a flat-coloured
object moving v pixels is two v-wide strips at its edges, not the object; MOG2 models every pixel's
background, so a moving object shows up whole. Its learning rate is fixed (MOG2's own starts fast and
absorbs whatever moves in the first seconds) so that a still object fades into the background after about
``ABSORB_S`` seconds. A frame mostly "moving" (lights, exposure, a bumped camera) gives no detections and
is learnt at once. Three steps make a blob an actor's box: the masks of the last ``MOTION_HISTORY_S`` are
joined (a turning or blinking actor shows whole, not in fragments), a mover's trail is cut off, and the
box grows over the rest of its object (:func:`_grown`: motion may show only a turning disc's marker).
A blob that shows the ground where something *was* (a ghost: it stood there while the background was
learnt, then left) is flagged, so that it starts no track.

:class:`Detector` is what the capture calls: a user's person detector (ONNX, OpenVINO) can take the
motion detector's place behind it.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import cv2
import numpy as np

from streamer.config.look import TrackingConfig
from streamer.video.frames import Picture, display_image, is_array

ABSORB_S = 3.0  # a still object stays foreground about this long (MOG2 absorbs in ~history / 10 frames)
MAX_FOREGROUND = 0.5  # more of the frame moving is a global change (lights, exposure, the first frame)
GHOST_LEVELS = 10.0  # a pixel this far (beyond 2.5 std) from the colours around its blob is foreign to the ground
GHOST_FOREIGN = 0.2  # a blob with fewer foreign pixels than this shows the ground: a ghost, not an actor
MOTION_HISTORY_S = 0.15  # a blob is where anything moved over this long: a rotating or blinking actor shows whole
TRAIL_TOUCH = 2  # small pixels: what moves now "lies at an end" of its blob this close to it


class Detector(Protocol):
    """What finds actors in a frame; the motion detector now, a user's ONNX/OpenVINO person detector later."""

    def detect(self, small_bgr: np.ndarray, scale: float) -> np.ndarray:
        """small_bgr: (h, w, 3) uint8 BGR copy of the frame, w = detect_width (or the frame's own width if
        smaller); scale: source pixels per small pixel. Returns (N, 4) float64 boxes [x0, y0, x1, y1] in
        SOURCE pixels."""
        ...


def small_copy(picture: Picture, detect_width: int) -> tuple[np.ndarray, float]:
    """The BGR copy a detector works on (``detect_width`` wide, aspect kept, never enlarged; a decoder frame
    is converted and shrunk in one pass) and its scale: source pixels per small pixel."""
    small = display_image(picture, detect_width)
    width = picture.shape[1] if is_array(picture) else picture.width
    return small, width / small.shape[1]


class MotionDetector:
    """Moving blobs: MOG2 on the grey small copy, opened (noise) then closed (joins parts of one object)."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self._history = max(20, config.frames(ABSORB_S * 10))
        side = max(3, config.detect_width // 40) | 1  # 9 px at 320: joins a body split by a same-grey shirt
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        self._model = None
        self._shape: tuple[int, ...] = ()
        self.ghosts = np.zeros(0, bool)  # per box of the last detect(): a ghost (see _foreign), which starts no track
        self._recent: deque = deque(maxlen=max(1, config.frames(MOTION_HISTORY_S)))

    def detect(self, small_bgr: np.ndarray, scale: float) -> np.ndarray:
        grey = small_bgr if small_bgr.ndim == 2 else cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
        rate = 1 / self._history  # fixed: MOG2's own rate starts fast and absorbs what moves in early frames
        if self._model is None or grey.shape != self._shape:  # a new source size starts a new background
            self._model = cv2.createBackgroundSubtractorMOG2(self._history, 16, detectShadows=False)
            self._shape, rate = grey.shape, 1.0
        mask = self._model.apply(grey, learningRate=rate)
        if np.count_nonzero(mask) > MAX_FOREGROUND * mask.size:  # lights, exposure, a bumped camera: learn the
            self._model.apply(grey, learningRate=0.5)  # new look now, keeping the old (a close passer-by leaves)
            self.ghosts = np.zeros(0, bool)
            return np.zeros((0, 4))
        _, mask = cv2.threshold(mask, 127, 255, cv2.THRESH_BINARY)
        now = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        self._recent.append(now)
        mask = np.bitwise_or.reduce(np.stack(self._recent), axis=0) if len(self._recent) > 1 else now
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= self.config.min_area * mask.size]
        self.ghosts = np.array([self._foreign(small_bgr, labels, k, stats[k]) < GHOST_FOREIGN for k in keep], bool)
        boxes = [_grown(small_bgr, self._extent(labels, now, k, stats[k])) for k in keep]
        return np.array(boxes, np.float64).reshape(-1, 4) * scale

    @staticmethod
    def _extent(labels: np.ndarray, now: np.ndarray, k: int, stat: np.ndarray) -> tuple[int, int, int, int]:
        """A blob's box (a blob is where anything moved over MOTION_HISTORY_S), without a mover's trail: along
        an axis where what moves in this frame lies at one end of the blob, the blob's other end is its trail.
        A rotating or blinking actor moves all over its blob (or, while dark, not at all) and keeps all of it."""
        x, y, w, h = (int(v) for v in stat[:4])
        ys, xs = np.nonzero((labels[y:y + h, x:x + w] == k) & (now[y:y + h, x:x + w] > 0))
        if len(xs) == 0:
            return x, y, x + w, y + h
        box = [x, y, x + w, y + h]
        for axis, (lo, hi, size) in enumerate(((int(xs.min()), int(xs.max()) + 1, w), (int(ys.min()), int(ys.max()) + 1, h))):
            at_start, at_end = lo <= TRAIL_TOUCH, hi >= size - TRAIL_TOUCH
            if at_start != at_end:  # one end only: the rest is the trail
                box[axis], box[axis + 2] = box[axis] + lo, box[axis] + hi
        return tuple(box)

    @staticmethod
    def _foreign(small_bgr: np.ndarray, labels: np.ndarray, k: int, stat: np.ndarray) -> float:
        """How much of blob ``k``'s box (the blob and its holes, not other blobs) is unlike the ground outside
        it, per pixel of the blob (at most 1). A blob left where something *was* (it stood there while the
        background was learnt, then went) shows the ground: little, a ghost. An actor there from the first
        frame that shrinks or turns uncovers ground too, but its box still holds the actor."""
        x, y, w, h = (int(v) for v in stat[:4])
        pad = max(2, (w + h) // 8)
        H, W = labels.shape
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(W, x + w + pad), min(H, y + h + pad)
        area = labels[y0:y1, x0:x1]
        colour = small_bgr[y0:y1, x0:x1].reshape(-1, small_bgr.shape[2] if small_bgr.ndim == 3 else 1)
        box = np.zeros(area.shape, bool)
        box[y - y0:y - y0 + h, x - x0:x + w - x0] = True  # the blob's box: what it holds, holes too
        box = box.ravel()
        inside, ground = (area == k).ravel(), (area == 0).ravel()
        if (ground & ~box).sum() < 8 or inside.sum() < 4:  # too little ground to read around it: not a ghost
            return 1.0
        unlike = _unlike(colour[(inside | ground) & box], colour[ground & ~box]).sum()
        return min(1.0, float(unlike) / float(inside.sum()))


def _unlike(colours: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Per pixel of ``colours`` (..., channels): whether it is far (beyond 2.5 std and GHOST_LEVELS, in any
    channel) from the colours of ``ground`` (N, channels)."""
    ground = ground.astype(np.float32)
    return (np.abs(colours - ground.mean(axis=0)) > 2.5 * ground.std(axis=0) + GHOST_LEVELS).any(axis=-1)


GROW_REACH = 1.5  # a box grows into its object at most this many of its sides outwards


def _grown(small_bgr: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box grown over the rest of its object: motion may show only part of an actor (the marker of a
    turning disc, a waving arm), but the actor differs from the ground all over. The ground's colours are
    read off the border of a search area around the box; the connected region of other colours that
    touches the box is the object."""
    H, W = small_bgr.shape[:2]
    x0, y0, x1, y1 = box
    reach_x, reach_y = int(GROW_REACH * (x1 - x0)) + 2, int(GROW_REACH * (y1 - y0)) + 2
    sx0, sy0, sx1, sy1 = max(0, x0 - reach_x), max(0, y0 - reach_y), min(W, x1 + reach_x), min(H, y1 + reach_y)
    area = small_bgr[sy0:sy1, sx0:sx1].astype(np.float32)
    if area.ndim == 2:
        area = area[..., None]
    edge = np.concatenate([area[0], area[-1], area[:, 0], area[:, -1]])
    far = _unlike(area, edge).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(far, connectivity=8)
    inner = labels[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
    out = [x0, y0, x1, y1]
    for k in np.unique(inner[inner > 0]):
        cx, cy, cw, ch = (int(v) for v in stats[k, :4])
        if cx == 0 or cy == 0 or cx + cw == sx1 - sx0 or cy + ch == sy1 - sy0:
            continue  # reaches the search area's border: ground of another colour, not one object
        out = [min(out[0], sx0 + cx), min(out[1], sy0 + cy), max(out[2], sx0 + cx + cw), max(out[3], sy0 + cy + ch)]
    return tuple(out)
