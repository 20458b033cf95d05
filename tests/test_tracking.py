"""Motion detector and tracker on rendered frames: squares moving on known paths over a textured, noisy background.

Every scene starts with a few empty frames (MOG2 learns its background from the first one), then draws
flat squares whose true boxes the test knows, and runs the real MotionDetector and Tracker on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.look.motion import MotionDetector, small_copy
from streamer.config.look import TrackingConfig
from streamer.look.tracking import (
    Box,
    Tracker,
    TrackUpdate,
    window_box,
)

Square = tuple[float, float, int, tuple[int, int, int]]  # x0, y0, side, BGR colour
Scene = Callable[[int], Sequence[Square]]


class Camera:
    """A fixed textured background plus sensor noise (precomputed, so rendering stays cheap)."""

    def __init__(self, width: int, height: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        texture = rng.integers(40, 220, (height, width, 3), dtype=np.uint8)
        self.background = cv2.GaussianBlur(texture, (0, 0), 1.5)
        noise = rng.normal(0, 2.0, (6, height, width, 3))
        self.up = np.clip(noise, 0, 255).astype(np.uint8)
        self.down = np.clip(-noise, 0, 255).astype(np.uint8)

    def frame(self, index: int, squares: Sequence[Square]) -> np.ndarray:
        out = self.background.copy()
        for x, y, side, colour in squares:
            x0, y0 = round(x), round(y)
            cv2.rectangle(out, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
        k = index % len(self.up)
        return cv2.subtract(cv2.add(out, self.up[k]), self.down[k])


def truth(square: Square) -> np.ndarray:
    x, y, side, _ = square
    return np.array([round(x), round(y), round(x) + side, round(y) + side], np.float64)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class Run:
    """What a scene gave, frame by frame; tracks are live objects, so their state is copied as it was then."""

    tracker: Tracker
    updates: list[TrackUpdate] = field(default_factory=list)
    detections: list[np.ndarray] = field(default_factory=list)
    boxes: list[dict[int, Box]] = field(default_factory=list)  # id -> its box at that frame
    last_seen: list[dict[int, int]] = field(default_factory=list)

    def ids(self, index: int) -> list[int]:
        return sorted(self.boxes[index])

    def closest(self, index: int, square: Square) -> int:
        """The id of the active track whose box at ``index`` overlaps the square's true box most."""
        return max(self.boxes[index], key=lambda i: iou(self.boxes[index][i], truth(square)))


def run(config: TrackingConfig, scene: Scene, frames: int, size: tuple[int, int] = (320, 240),
        history: int = 64) -> Run:
    """Render, detect and track ``frames`` frames the way the capture does."""
    camera, detector = Camera(*size), MotionDetector(config)
    out = Run(Tracker(config, history))
    for i in range(frames):
        small, scale = small_copy(camera.frame(i, scene(i)), config.detect_width)
        found = detector.detect(small, scale)
        update = out.tracker.update(i, found)
        out.detections.append(found)
        out.updates.append(update)
        out.boxes.append({t.id: t.box_at(i) for t in update.active})
        out.last_seen.append({t.id: t.last_seen for t in update.active})
    return out


# ---------------------------------------------------------------- one moving square


def test_a_moving_square_is_one_track_confirmed_after_min_hits_and_boxed_within_pixels() -> None:
    config = TrackingConfig(min_hits=3)
    start = 5

    def scene(i: int) -> list[Square]:
        return [] if i < start else [(40 + 6 * (i - start), 60 + 4 * (i - start), 60, (30, 200, 240))]

    got = run(config, scene, 60, size=(640, 480), history=16)  # detected at half size
    first = next(i for i, u in enumerate(got.updates) if u.active)
    assert first == start + config.min_hits - 1, "confirmed at its min_hits-th detection, not before or later"
    assert all(got.ids(i) == [1] for i in range(first, 60)), "one track, id 1, every frame from confirmation"
    overlaps = [iou(got.boxes[i][1], truth(scene(i)[0])) for i in range(first, 60)]
    assert sum(o >= 0.7 for o in overlaps) >= 0.9 * len(overlaps), f"boxes off the square: {overlaps}"
    track = got.updates[-1].active[0]
    assert track.first_index == start and track.last_seen == 59
    assert sorted(track.boxes) == list(range(44, 60)), "boxes kept for the last `history` frames only"
    assert track.covers(range(52, 60, 2)) and not track.covers([40, 50])
    assert got.tracker.skipped_total == 0


# ---------------------------------------------------------------- crossings


def _crossing(kind: str) -> Scene:
    """Square A (white) and B (black) start 220 px apart and cross in the middle around frame 40."""
    def scene(i: int) -> list[Square]:
        if i < 3:
            return []
        k = i - 3
        dy = 0.0 if kind == "row" else 1.5 * k
        dy_b = 0.0 if kind == "row" else 150 - 1.5 * k
        return [(30 + 3 * k, 40 + dy, 40, (250, 250, 250)), (250 - 3 * k, 40 + dy_b, 40, (15, 15, 15))]
    return scene


@pytest.mark.parametrize("kind", ["row", "diagonals"])
def test_two_crossing_squares_keep_their_ids(kind: str) -> None:
    config = TrackingConfig(fps=10, keep_still_s=2.0)
    scene = _crossing(kind)
    got = run(config, scene, 75)
    assert any(len(d) == 1 for d in got.detections[30:50]), "the squares never merged into one blob"
    before, after = 20, 70  # A is left of B, then right of it
    a_id, b_id = got.closest(before, scene(before)[0]), got.closest(before, scene(before)[1])
    assert a_id != b_id and got.ids(before) == [1, 2]
    assert got.closest(after, scene(after)[0]) == a_id, "A's id went to B at the crossing"
    assert got.closest(after, scene(after)[1]) == b_id
    assert {i for boxes in got.boxes for i in boxes} == {1, 2}, "a crossing started a new track"
    for i in (after - 5, after):  # and the boxes are back on the squares, not on the merged blob
        for square in scene(i):
            assert max(iou(box, truth(square)) for box in got.boxes[i].values()) >= 0.6


# ---------------------------------------------------------------- still actors


def _stop_and_go(stop: int, go: int | None) -> Scene:
    """A square moving right from frame 3, still from ``stop`` until ``go`` (None: for ever)."""
    def scene(i: int) -> list[Square]:
        if i < 3:
            return []
        moving = min(i, stop) - 3 + (0 if go is None else max(0, i - go))
        return [(20 + 4 * moving, 100, 40, (240, 240, 240))]
    return scene


def test_a_still_actor_is_kept_keep_still_s_then_ended_exactly_once() -> None:
    config = TrackingConfig(fps=10, keep_still_s=2.0)  # 20 frames
    stop = 20
    scene = _stop_and_go(stop, None)
    got = run(config, scene, 90)
    ended = [(i, e) for i, u in enumerate(got.updates) for e in u.ended]
    assert len(ended) == 1 and ended[0][1] == 1, f"ended {ended}"
    end = ended[0][0]
    last_detected = max(i for i, d in enumerate(got.detections) if len(d))
    assert last_detected > stop + 5, "MOG2 absorbed the still square at once"
    assert end == last_detected + 20, "kept keep_still_s (20 frames) after its last detection, then ended"
    assert all(got.ids(i) == [1] for i in range(5, end)) and not any(got.boxes[end:])
    for i in range(stop, end):  # the still square's box stays on it: no drift, not shrunk as it fades
        assert iou(got.boxes[i][1], truth(scene(i)[0])) >= 0.8, f"frame {i}"
    assert got.tracker.end_all() == ()


def test_a_still_actor_that_moves_again_before_keep_still_s_keeps_its_id() -> None:
    config = TrackingConfig(fps=10, keep_still_s=2.0)
    stop, go = 20, 62  # MOG2 absorbs it after ~3 s (30 frames); it moves again ~1 s later
    scene = _stop_and_go(stop, go)
    got = run(config, scene, 90)
    assert not any(len(d) for d in got.detections[go - 4:go]), "the detector never lost the still square"
    assert got.last_seen[go - 1][1] < go - 4
    assert {i for boxes in got.boxes for i in boxes} == {1} and not any(u.ended for u in got.updates)
    assert got.last_seen[-1] == {1: 89}
    assert all(iou(got.boxes[i][1], truth(scene(i)[0])) >= 0.5 for i in range(go + 10, 90)), "box back on it"
    assert got.tracker.end_all() == (1,) and got.tracker.end_all() == ()


# ---------------------------------------------------------------- the cap


def test_beyond_max_tracks_the_largest_detections_are_tracked_and_the_rest_counted() -> None:
    config = TrackingConfig(max_tracks=2)
    lanes = ((5, 30), (50, 50), (115, 36), (170, 44))  # top and side of each square; the largest: lanes 1 and 3

    def scene(i: int) -> list[Square]:
        return [] if i < 3 else [(10 + 3 * (i - 3), top, side, (250, 250, 250)) for top, side in lanes]

    got = run(config, scene, 30)
    assert all(len(u.active) <= 2 for u in got.updates)
    assert all(len(d) == 4 for d in got.detections[3:]), "every square detected"
    assert [u.skipped for u in got.updates[3:]] == [2] * 27
    assert got.tracker.skipped_total == sum(u.skipped for u in got.updates) == 54
    assert sorted(round(box[2] - box[0]) for box in got.boxes[29].values()) == [44, 50]


# ---------------------------------------------------------------- tracker bookkeeping (no detector)


def test_tentative_blips_are_never_reported_and_ids_are_never_reused() -> None:
    tracker = Tracker(TrackingConfig(min_hits=3, keep_still_s=0.1), history=8)
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    blip = [tracker.update(i, box if i < 2 else np.zeros((0, 4))) for i in range(5)]  # 2 hits, then gone
    assert not any(u.active or u.ended for u in blip)
    real = [tracker.update(i, box + (i - 5)) for i in range(5, 10)]
    assert [[t.id for t in u.active] for u in real] == [[], [], [1], [1], [1]], "the blip took no id"
    assert tracker.end_all() == (1,)
    again = [tracker.update(i, box) for i in range(3)]  # a restarted source counts indices from 0 again
    assert [t.id for t in again[-1].active] == [2]
    with pytest.raises(ValueError, match="must increase"):
        tracker.update(2, box)


# ---------------------------------------------------------------- window_box


@pytest.mark.parametrize("boxes, kwargs, expected", [
    ([(100, 100, 140, 150), (120, 130, 160, 180)], {}, (78, 88, 182, 192)),  # union 60x80 -> side 104
    ([(0, 10, 40, 50)], {}, (0, 4, 52, 56)),  # near the left edge: shifted right, still square
    ([(600, 440, 640, 480)], {}, (588, 428, 640, 480)),  # the bottom-right corner
    ([(300, 200, 310, 210)], {"min_side": 64}, (273, 173, 337, 237)),
    ([(10, 20, 50, 40)], {"margin": 0.0}, (10, 10, 50, 50)),  # square around a wide box
    ([(100, 50, 400, 450)], {}, (0, 0, 520, 480)),  # taller than the frame: clamped, square no more
    ([(0, 0, 600, 400)], {}, (0, 0, 640, 480)),  # larger than the frame: the frame
])
def test_window_box_on_hand_computed_cases(boxes, kwargs, expected) -> None:
    assert window_box(boxes, 640, 480, **kwargs) == expected


def test_window_box_is_a_square_inside_the_frame_holding_the_union() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        x0, y0 = rng.uniform(-20, 600), rng.uniform(-20, 440)
        boxes = [(x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h)
                 for dx, dy, w, h in rng.uniform([0, 0, 2, 2], [30, 30, 120, 120], (3, 4))]
        a, b, c, d = window_box(boxes, 640, 480)
        assert 0 <= a < c <= 640 and 0 <= b < d <= 480
        if c - a < 480 and d - b < 480:
            assert c - a == d - b
            inside = np.clip(np.asarray(boxes), 0, [640, 480, 640, 480])
            assert a <= math.floor(inside[:, 0].min()) and c >= math.ceil(inside[:, 2].max()) - 1
            assert b <= math.floor(inside[:, 1].min()) and d >= math.ceil(inside[:, 3].max()) - 1


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("key, value", [
    ("max_tracks", 0), ("max_tracks", 2.5), ("max_tracks", True), ("keep_still_s", -1.0),
    ("min_area", 1.0), ("min_area", 0.0), ("iou_gate", 1.5), ("fps", 0), ("fps", float("nan")),
    ("detect_width", 8), ("min_hits", 0),
])
def test_tracking_config_rejects_bad_values_naming_them(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        TrackingConfig(**{key: value})
    assert key in str(err.value) and repr(value) in str(err.value) and "\n" not in str(err.value)


def test_tracker_rejects_an_empty_history() -> None:
    with pytest.raises(ConfigError, match="history"):
        Tracker(TrackingConfig(), 0)


# ---------------------------------------------------------------- shrinking, first-frame actors, vanishing


def _shrinking(first: int, side: int = 80, centre: tuple[int, int] = (160, 120)) -> Scene:
    """A square from frame ``first`` whose sides shrink by 2 px a frame about a fixed centre, down to 12 px."""
    def scene(i: int) -> list[Square]:
        if i < first:
            return []
        s = max(12, side - 2 * (i - first))
        return [(centre[0] - s / 2, centre[1] - s / 2, s, (240, 240, 240))]
    return scene


def test_a_shrinking_square_is_boxed_as_it_shrinks_not_held_at_its_first_size() -> None:
    """Its centre does not move, as a still actor's does not; but its box must follow it, not stay the size of
    its first detections (the hold is for an actor fading into the background after keeping still)."""
    scene = _shrinking(first=3)
    got = run(TrackingConfig(fps=30), scene, 30)
    for i in range(20, 30):  # side 46..28 px, from 80
        assert len(got.boxes[i]) == 1, f"frame {i}: {got.boxes[i]}"
        box = next(iter(got.boxes[i].values()))
        assert iou(box, truth(scene(i)[0])) >= 0.5, f"frame {i}: box {box} on a {scene(i)[0][2]} px square"


def test_an_actor_on_screen_from_the_first_frame_that_shrinks_is_tracked_not_taken_for_a_ghost() -> None:
    """The first frame is the first background, actor and all: shrinking, it uncovers ground around itself,
    which a place an actor left also shows. What it still covers is unlike that ground: not a ghost."""
    config = TrackingConfig(fps=30)
    scene = _shrinking(first=0)
    camera, detector, tracker = Camera(320, 240), MotionDetector(config), Tracker(config, 64)
    tracked = []
    for i in range(30):
        small, scale = small_copy(camera.frame(i, scene(i)), config.detect_width)
        found = detector.detect(small, scale)
        update = tracker.update(i, found, ~detector.ghosts)
        tracked.append([t.box_at(i) for t in update.active])
    assert all(len(boxes) == 1 for boxes in tracked[15:]), "one track on it within half a second"
    x0, y0, x1, y1 = truth(scene(29)[0])
    bx0, by0, bx1, by1 = tracked[-1][0]  # the square and the ground it uncovered (until MOG2 learns that ground)
    assert bx0 <= x0 + 2 and by0 <= y0 + 2 and bx1 >= x1 - 2 and by1 >= y1 - 2, "the box holds the square"


def test_a_vanished_actor_gets_no_more_windows_while_its_track_coasts() -> None:
    """At a cut or an exit the track coasts on for COAST_S (still shown), but its box then holds ground: a
    track gets windows only while it was seen within UNSEEN_S."""
    from streamer.look.windowing import UNSEEN_S, FrameView, TrackFeed
    from streamer.look.tracking import COAST_S

    fps, gone = 30.0, 60
    feed, camera = TrackFeed("s", TrackingConfig(fps=fps), 48, 8, 4, 4), Camera(640, 480)
    unseen_for, shown_unseen = [], []  # per window / per frame a track is shown: frames since it was last seen
    for i in range(gone + 20):
        view = FrameView(i, i / fps, camera.frame(i, [(40 + 4 * i, 200, 60, (30, 200, 240))] if 3 <= i < gone else []))
        _, sent = feed.push(view)
        last_active = {t.id: t.last_active for t in feed.active}
        unseen_for += [i - last_active[w.track] for w in sent]
        shown_unseen += [i - last_active[track] for track, _ in feed.display(view, 320)[1]]
    assert len(unseen_for) >= 8 and max(unseen_for) <= round(UNSEEN_S * fps), unseen_for
    assert COAST_S > UNSEEN_S and max(shown_unseen) > round(UNSEEN_S * fps), "still shown while it coasts"


def test_the_detectors_small_copy_of_a_decoder_frame_matches_that_of_its_array() -> None:
    """The track feed hands the detector small_copy of whatever the source decoded (a PyAV frame from files and
    cameras, an array from webcams): the same size and scale either way, and nearly the same pixels."""
    import av

    bgr = Camera(640, 480).frame(0, [(100, 120, 80, (30, 200, 240))])
    from_array, scale = small_copy(bgr, 320)
    from_decoder, decoder_scale = small_copy(av.VideoFrame.from_ndarray(bgr, format="bgr24"), 320)
    assert from_array.shape == from_decoder.shape == (240, 320, 3) and scale == decoder_scale == 2.0
    assert np.abs(from_array.astype(int) - from_decoder).mean() < 4
    same, one = small_copy(bgr, 1280)
    assert same is bgr and one == 1.0  # never enlarged


def test_a_blob_with_no_ground_left_around_its_box_is_not_called_a_ghost() -> None:
    """The ghost test reads the ground outside the blob's box; a blob spanning the picture leaves none to read,
    and what cannot be read is no evidence of a ghost."""
    image = np.full((40, 60, 3), 128, np.uint8)
    labels = np.zeros((40, 60), np.int32)
    labels[:, :] = 1  # the blob's box is the whole picture
    labels[10:30, 20:40] = 0  # a hole of ground (inside the box, so not read as the ground around it)
    stat = np.array([0, 0, 60, 40, int((labels == 1).sum())])
    assert MotionDetector._foreign(image, labels, 1, stat) == 1.0
