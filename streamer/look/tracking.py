"""Actors in a live stream: a SORT-like tracker over the detector's boxes (:mod:`streamer.look.motion`), so each
actor gets its own windows.

A still actor fades into the motion detector's background unevenly, from where it was covered longest, so
a still track holds its box while its detections shrink inside it; then it is kept ``keep_still_s``
longer, frozen there (a predicted box would drift away from a still actor), while :class:`Presence` sees
that its place still shows it.

Coasting through merges: two actors that cross make one blob. Matching it to either track would give
that track the pair's size and a wrong velocity, and the other track nothing, so identities would swap
on separation. A detection that covers the predicted boxes of two or more tracks therefore updates none
of them: they move on their predictions, kept inside the blob, and re-associate by IoU when it splits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from streamer.config.look import TrackingConfig
from streamer.errors import ConfigError

Box = tuple[float, float, float, float]
GHOST_QUIET_S = 0.25  # a track whose only motion has been ghosts this long gets no windows (while it may still be
                      # a blinking light in its dark phase)
OWN_IOU = 0.3  # a detection this much over a track's box is the track's own (for its ghost count)
GHOST_S = 0.9  # a track whose only motion has been ghosts this long holds an empty place
COAST_S = 0.3  # a track without any detection moves on its prediction this long, then freezes
HOLD_AFTER_S = 1.0  # a track whose box kept still this long is a still actor: fading detections do not shrink it
COVER = 0.5  # a predicted box lying this much inside a detection is part of it (for merges)
TOUCH = 1.25  # a coasting track re-acquires a detection this near: 1 is boxes touching (normalized centre distance)


@dataclass
class Track:
    """One actor: its id once confirmed and its box at each of the last ``history`` frames."""

    id: int
    first_index: int
    last_seen: int
    boxes: dict[int, Box] = field(default_factory=dict)
    last_active: int = -1  # last frame with motion on it: matched, in a merged blob, or a part of it moving

    def box_at(self, index: int) -> Box | None:
        return self.boxes.get(index)

    def covers(self, indices: Sequence[int]) -> bool:
        """Whether a window over these frames can be cropped around this track."""
        return all(i in self.boxes for i in indices)


@dataclass(frozen=True)
class TrackUpdate:
    active: tuple[Track, ...]  # confirmed tracks alive after this frame (each has a box at this frame's index)
    ended: tuple[int, ...]  # ids of confirmed tracks ended at this frame
    skipped: int  # detections at this frame not tracked because max_tracks were active


_F = np.eye(8) + np.eye(8, k=4)  # constant velocity over one frame on (cx, cy, w, h) and their velocities
_H = np.eye(4, 8)


def _state(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0, 0, 0, 0], np.float64)


def _box(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[:2] - x[2:4] / 2, x[:2] + x[2:4] / 2])


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection areas (len(a), len(b)) and each box's own area."""
    wx = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    wy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(wx, 0, None) * np.clip(wy, 0, None), _area(a), _area(b)


class _Filter:
    """A track's constant-velocity Kalman filter, its noise scaled by the box's size, and its bookkeeping."""

    def __init__(self, track: Track, box: np.ndarray) -> None:
        self.track, self.hits, self.frozen = track, 1, False
        self.last_support = track.first_index  # last frame matched, inside a merged blob, or holding a part of it
        self.support_box = box  # the box then
        self.still_box, self.still_since = box, track.first_index  # the box it keeps to (each edge within tolerance)
        self.reset(box)

    def reset(self, box: np.ndarray) -> None:
        self.x = _state(box)
        s = self.size()
        self.P = np.diag([(0.1 * s) ** 2] * 4 + [(0.5 * s) ** 2] * 4)

    def size(self) -> float:
        return max(1.0, float(self.x[2] + self.x[3]) / 2)

    def predict(self) -> None:
        if not self.frozen:
            s = self.size()
            self.x = _F @ self.x
            self.x[2:4] = np.maximum(self.x[2:4], 1.0)
            self.P = _F @ self.P @ _F.T + np.diag([(0.05 * s) ** 2] * 4 + [(0.01 * s) ** 2] * 4)

    def observe(self, det: np.ndarray, index: int, hold_after: int) -> None:
        """A matched detection. One inside the box of a track that has kept to it for ``hold_after`` frames holds
        that box: a still actor fades into the background unevenly (from where it was covered longest), and its
        box must not shrink with it; a shrinking actor's box never keeps still that long, and follows it."""
        tol, s = 0.03 * self.size() + 0.5, self.size()
        if self.frozen:  # it moves again: its old velocity means nothing
            self.frozen = False
            self.reset(det)
            self.still_box, self.still_since = det, index
        elif (index - self.still_since >= hold_after and (det[:2] >= self.still_box[:2] - tol).all()
              and (det[2:] <= self.still_box[2:] + tol).all()):
            self.x = _state(self.support_box)
        else:
            S = _H @ self.P @ _H.T + np.eye(4) * (0.05 * s) ** 2
            K = self.P @ _H.T @ np.linalg.inv(S)
            self.x = self.x + K @ (_state(det)[:4] - self.x[:4])
            self.P = (np.eye(8) - K @ _H) @ self.P
            if (np.abs(det - self.still_box) > tol).any():
                self.still_box, self.still_since = det, index
        self.hits += 1
        self.track.last_seen = index
        self.support(index)

    def support(self, index: int) -> None:
        self.last_support, self.support_box = index, _box(self.x)
        self.track.last_active = index

    def freeze(self) -> None:
        self.frozen, self.x = True, _state(self.support_box)


class Tracker:
    """SORT-like tracks of one stream: IoU association on Kalman predictions, coasting through merges.

    Args:
        config: the stream's tracking settings.
        history: frames of boxes each track keeps (a window's span is enough).
    """

    def __init__(self, config: TrackingConfig, history: int) -> None:
        if type(history) is not int or history < 1:
            raise ConfigError(f"track history = {history!r}: must be a positive integer of frames")
        self.config, self.history = config, history
        self.keep = max(1, config.frames(config.keep_still_s))
        self.coast = min(self.keep, max(2, config.frames(COAST_S)))
        self.hold_after = config.frames(HOLD_AFTER_S)  # still this long, a shrinking detection is the actor fading
        self.skipped_total = 0
        self._filters: list[_Filter] = []
        self._next_id = 1
        self._last_index: int | None = None

    def update(self, index: int, detections: np.ndarray, may_start: np.ndarray | None = None) -> TrackUpdate:
        """Follow the actors to frame ``index`` given its detections ((N, 4) source-pixel boxes); a detection
        whose ``may_start`` is False (a ghost, :meth:`MotionDetector.detect`) keeps a track but starts none."""
        if self._last_index is not None and index <= self._last_index:
            raise ValueError(f"frame index {index} after {self._last_index}: indices must increase")
        dets = np.asarray(detections, np.float64).reshape(-1, 4)
        starts = np.ones(len(dets), bool) if may_start is None else np.asarray(may_start, bool).reshape(-1)
        sized = (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
        dets, starts = dets[sized], starts[sized]
        steps = 1 if self._last_index is None else min(index - self._last_index, self.keep + 1)
        self._last_index, filters = index, self._filters
        for f in filters:
            for _ in range(steps):
                f.predict()
        preds = np.array([_box(f.x) for f in filters]).reshape(-1, 4)
        inter, pred_area, det_area = _overlaps(preds, dets)
        free_t, free_d = set(range(len(filters))), set(range(len(dets)))
        for ti, dj in self._merges(inter, pred_area):  # coast on the prediction, kept inside the blob
            f, (x0, y0, x1, y1) = filters[ti], dets[dj]
            f.x[0], f.x[1] = np.clip(f.x[0], x0, x1), np.clip(f.x[1], y0, y1)
            f.support(index)
            free_t.discard(ti)
            free_d.discard(dj)
        iou = inter / np.maximum(pred_area[:, None] + det_area[None, :] - inter, 1e-9)
        pairs = self._assign(free_t, free_d, 1 - iou, 1 - self.config.iou_gate)
        coasting = {ti for ti in free_t if filters[ti].last_support < index - steps}  # stopped, occluded, missed
        pairs += self._assign(coasting, free_d, self._distances(preds, dets), TOUCH)
        for ti, dj in pairs:
            filters[ti].observe(dets[dj], index, self.hold_after)
            if not filters[ti].track.id and filters[ti].hits >= self.config.min_hits:
                filters[ti].track.id, self._next_id = self._next_id, self._next_id + 1
        inside = inter / np.maximum(det_area[None, :], 1e-9)
        for dj in [dj for dj in sorted(free_d) if len(filters) and inside[:, dj].max() >= COVER]:
            free_d.discard(dj)  # a part of a track's box (a hand, a fading actor) is no new actor, and keeps it
            f = filters[int(inside[:, dj].argmax())]
            if f.track.id and f.last_support < index:
                f.support(index)
        ended, kept = [], []
        for f in filters:
            missed = index - f.last_support
            if not f.track.id and missed >= 2:
                continue  # a tentative track that missed twice in a row was noise
            if f.track.id and missed >= self.keep:
                ended.append(f.track.id)
                continue
            if missed > self.coast and not f.frozen:
                f.freeze()
            kept.append(f)
        skipped = self._start(index, dets, sorted((dj for dj in free_d if starts[dj]), key=lambda dj: -det_area[dj]),
                              kept)
        self._filters = kept
        for f in kept:
            boxes = f.track.boxes  # oldest first: indices only increase
            boxes[index] = tuple(float(v) for v in _box(f.x))
            while next(iter(boxes)) <= index - self.history:
                del boxes[next(iter(boxes))]
        active = tuple(sorted((f.track for f in kept if f.track.id), key=lambda t: t.id))
        return TrackUpdate(active, tuple(ended), skipped)

    def drop(self, track_id: int) -> None:
        """End one confirmed track now (its actor is seen to be gone); the caller reports it."""
        self._filters = [f for f in self._filters if f.track.id != track_id]

    def end_all(self) -> tuple[int, ...]:
        """The source ended or was lost: end every track; return the confirmed ones' ids."""
        ended = tuple(sorted(f.track.id for f in self._filters if f.track.id))
        self._filters, self._last_index = [], None
        return ended

    def _merges(self, inter: np.ndarray, pred_area: np.ndarray) -> list[tuple[int, int]]:
        """(track, detection) for moving confirmed tracks whose predictions lie mostly inside one same detection."""
        if not inter.size:
            return []
        cover = inter / np.maximum(pred_area[:, None], 1e-9)
        best = cover.argmax(axis=1)
        owners: dict[int, list[int]] = {}
        for ti, f in enumerate(self._filters):
            if f.track.id and not f.frozen and cover[ti, best[ti]] >= COVER:
                owners.setdefault(int(best[ti]), []).append(ti)
        return [(ti, dj) for dj, tis in owners.items() if len(tis) >= 2 for ti in tis]

    @staticmethod
    def _distances(preds: np.ndarray, dets: np.ndarray) -> np.ndarray:
        """Centre distance over half the summed sizes, per axis, the larger: 1 when boxes just touch."""
        pc, dc = (preds[:, :2] + preds[:, 2:]) / 2, (dets[:, :2] + dets[:, 2:]) / 2
        half = ((preds[:, 2:] - preds[:, :2])[:, None] + (dets[:, 2:] - dets[:, :2])[None]) / 2
        return (np.abs(pc[:, None] - dc[None]) / np.maximum(half, 1e-9)).max(axis=2)

    @staticmethod
    def _assign(rows: set[int], cols: set[int], cost: np.ndarray, gate: float) -> list[tuple[int, int]]:
        """Least-cost pairs within the gate; their rows and columns are taken out of the sets."""
        if not rows or not cols:
            return []
        r, c = sorted(rows), sorted(cols)
        sub = cost[np.ix_(r, c)]
        pairs = [(r[i], c[j]) for i, j in zip(*linear_sum_assignment(sub)) if sub[i, j] <= gate]
        for ti, dj in pairs:
            rows.discard(ti)
            cols.discard(dj)
        return pairs

    def _start(self, index: int, dets: np.ndarray, free: list[int], kept: list[_Filter]) -> int:
        """Tentative tracks for unmatched detections (largest first) up to max_tracks; return how many were not."""
        room = max(0, self.config.max_tracks - len(kept))
        kept.extend(_Filter(Track(0, index, index), dets[dj]) for dj in free[:room])
        skipped = max(0, len(free) - room)
        self.skipped_total += skipped
        return skipped


class Presence:
    """Whether a track without detections is a still actor or an empty place.

    Motion finds an actor only while it moves; one that stops is kept (``keep_still_s``), frozen where
    it was last seen. One that left (a person walking out of view, behind something, a cut) leaves
    the same silence, and its track would go on being cropped and labelled over empty background.
    So each track's box is remembered as it looked when last detected (a small grey patch), and a
    frozen track whose box no longer looks like that is ended at once. A track whose motion has
    been only ghosts (:meth:`streamer.look.motion.MotionDetector._foreign`) for ``GHOST_S`` is ended too: the place it holds
    shows the ground (longer than a blinking light is dark).
    """

    PATCH = 12  # side of the grey patches compared
    EVERY = 4  # frames between checks of a frozen track

    CHANGED = 35.0  # grey levels a patch cell must differ by to count as changed
    GONE = 0.08  # share of changed cells that means the actor has gone

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.looks: dict[int, np.ndarray] = {}
        self.ghostly: dict[int, int] = {}  # track id → frames in a row its motion has been only ghosts
        self.ghost_frames = max(1, tracker.config.frames(GHOST_S))
        self.quiet_frames = max(1, tracker.config.frames(GHOST_QUIET_S))

    def _patch(self, grey: np.ndarray, box: Box, scale: float) -> np.ndarray | None:
        h, w = grey.shape
        x0, y0 = max(0, int(box[0] / scale)), max(0, int(box[1] / scale))
        x1, y1 = min(w, int(math.ceil(box[2] / scale))), min(h, int(math.ceil(box[3] / scale)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        return cv2.resize(grey[y0:y1, x0:x1], (self.PATCH, self.PATCH), interpolation=cv2.INTER_AREA).astype(np.float32)

    def doubtful(self, track_id: int) -> bool:
        """Whether a track's motion has lately been only ghosts: too doubtful to label (no windows)."""
        return self.ghostly.get(track_id, 0) >= self.quiet_frames

    def gone(self, index: int, small_bgr: np.ndarray, scale: float, active: Sequence[Track],
             detections: np.ndarray = np.zeros((0, 4)), ghosts: np.ndarray | None = None) -> list[int]:
        """Ids of tracks whose place no longer shows their actor; those tracks are dropped."""
        grey = small_bgr if small_bgr.ndim == 2 else cv2.cvtColor(small_bgr, cv2.COLOR_BGR2GRAY)
        out = []
        for track in active:
            box = track.box_at(index)
            if ghosts is not None and len(detections):
                inter, area, det_area = _overlaps(np.asarray([box], np.float64), detections)
                mine = inter[0] / np.maximum(area[0] + det_area - inter[0], 1e-9) >= OWN_IOU
                if mine.any():
                    self.ghostly[track.id] = self.ghostly.get(track.id, 0) + 1 if ghosts[mine].all() else 0
                if self.ghostly.get(track.id, 0) >= self.ghost_frames:
                    self.tracker.drop(track.id)
                    out.append(track.id)
                    continue
            if track.last_seen == index:
                patch = self._patch(grey, box, scale)
                if patch is not None:
                    self.looks[track.id] = patch
                continue
            look = self.looks.get(track.id)
            if look is None or index - track.last_seen <= self.tracker.coast or index % self.EVERY:
                continue
            patch = self._patch(grey, box, scale)
            if patch is not None and float((np.abs(patch - look) > self.CHANGED).mean()) > self.GONE:
                self.tracker.drop(track.id)
                out.append(track.id)
        alive = {a.id for a in active} - set(out)
        for kept in (self.looks, self.ghostly):
            for track_id in [t for t in kept if t not in alive]:
                del kept[track_id]
        return out


def window_box(boxes: Sequence[Box], frame_width: int, frame_height: int,
               margin: float = 0.15, min_side: float = 0.0) -> tuple[int, int, int, int]:
    """The one fixed square crop for a window: the union of the track's boxes over the window's frames,
    enlarged by ``margin`` of its size on each side, made square (side = the longer side, at least
    ``min_side``), centred on the union, then shifted to lie inside the frame. A square larger than the
    frame's short side is clamped to the frame (and stops being square only then). Integer pixels
    [x0, y0, x1, y1], x1/y1 exclusive."""
    if len(boxes) == 0:
        raise ValueError("window_box needs at least one box")
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    x1, y1 = b[:, 2].max(), b[:, 3].max()
    side = max((x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin), min_side, 1.0)
    side = math.floor(side + 0.5)

    def place(centre: float, limit: int) -> tuple[int, int]:
        if side >= limit:
            return 0, limit
        lo = min(max(math.floor(centre - side / 2 + 0.5), 0), limit - side)
        return lo, lo + side

    (left, right), (top, bottom) = place((x0 + x1) / 2, frame_width), place((y0 + y1) / 2, frame_height)
    return left, top, right, bottom
