"""The synthetic demo's pixels: a frame of a segment, drawn at any size, and the endless stream of them.

Rendering is a pure function of ``(segment, frame_index, width, height)``: any
frame of any segment can be drawn without drawing the ones before it, and the
same seed always gives the same pixels. Any width/height works; the action stays
in the centre square (the stage); the default is 320×240 at 30 fps.
The multi-actor video (:mod:`streamer.synthetic.actors`) draws with the same
:func:`background` and :func:`draw_actor`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

from streamer.synthetic.scenes import SHAPES, Actor, ActorState, Segment, actor_state, segment_at, segments

_SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: positions to 1/16 px, so slow motion is smooth
_SUBPIXEL = 1 << _SUBPIXEL_BITS


def _shape_points(shape: str) -> np.ndarray:
    """Unit-diameter outline (N, 2) centred on 0, pointing 'up' at angle 0."""
    if shape == "square":
        pts = [(-0.4, -0.4), (0.4, -0.4), (0.4, 0.4), (-0.4, 0.4)]
    elif shape == "cross":
        a, b = 0.5, 0.17
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    elif shape == "arrow":
        pts = [(0, -0.5), (0.35, -0.1), (0.14, -0.1), (0.14, 0.5), (-0.14, 0.5), (-0.14, -0.1), (-0.35, -0.1)]
    elif shape == "star":
        pts = [((0.5 if k % 2 == 0 else 0.22) * math.sin(k * math.pi / 5),
                -(0.5 if k % 2 == 0 else 0.22) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif shape == "ellipse":
        pts = [(0.3 * math.sin(t), -0.5 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif shape == "circle":
        pts = [(0.5 * math.sin(t), -0.5 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    else:  # regular polygons
        n = {"triangle": 3, "pentagon": 5}[shape]
        pts = [(0.5 * math.sin(2 * math.pi * k / n), -0.5 * math.cos(2 * math.pi * k / n)) for k in range(n)]
    return np.asarray(pts, dtype=np.float64)


_OUTLINES = {name: _shape_points(name) for name in SHAPES}


@lru_cache(maxsize=8)  # a few segments at a time: bounded memory in a months-long stream
def background(segment: Segment, width: int, height: int) -> np.ndarray:
    """Static textured background (BGR uint8) for a segment at one resolution."""
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    u = (np.arange(width, dtype=np.float32) - ox) / side  # stage units
    v = (np.arange(height, dtype=np.float32) - oy) / side
    uu, vv = np.meshgrid(u, v)
    theta = math.radians(segment.texture_angle)
    along = uu * math.cos(theta) + vv * math.sin(theta)
    if segment.texture == 0:
        pattern = along - 0.5
    elif segment.texture == 1:
        pattern = 0.5 * np.sin(2 * math.pi * segment.texture_scale * along)
    elif segment.texture == 2:
        across = -uu * math.sin(theta) + vv * math.cos(theta)
        pattern = 0.5 * np.sign(np.sin(math.pi * segment.texture_scale * along) *
                                np.sin(math.pi * segment.texture_scale * across))
    else:
        grid = np.random.default_rng(segment.texture_seed).uniform(-0.5, 0.5, (8, 8)).astype(np.float32)
        cells = np.clip((uu + 0.5) / 2 * 7, 0, 7), np.clip((vv + 0.5) / 2 * 7, 0, 7)  # covers -0.5..1.5
        pattern = cv2.remap(grid, cells[0].astype(np.float32), cells[1].astype(np.float32), cv2.INTER_CUBIC)
    tint = np.random.default_rng(segment.texture_seed + 1).uniform(-1, 1, 3).astype(np.float32)
    image = np.asarray(segment.background, np.float32) + 60.0 * pattern[..., None] * (0.5 + 0.5 * np.abs(tint))
    out = np.clip(image, 0, 255).astype(np.uint8)
    out.flags.writeable = False
    return out


def _placed_outline(actor: Actor, state: ActorState, side: int, ox: float,
                    oy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The actor's outline in pixels (N, 2), its rotation matrix and its centre."""
    x, y, size, angle, _ = state
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    centre = np.array([ox + x * side, oy + y * side])
    return _OUTLINES[actor.shape] @ rot.T * (size * side) + centre, rot, centre


def actor_extent(actor: Actor, state: ActorState, side: int, ox: float,
                 oy: float) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] in pixels around the actor's outline (where it is, even while blinked off)."""
    pts, _, _ = _placed_outline(actor, state, side, ox, oy)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def draw_actor(image: np.ndarray, actor: Actor, state: ActorState,
                side: int, ox: float, oy: float) -> None:
    x, y, size, angle, visible = state
    if not visible or size <= 0:
        return
    pts, rot, centre = _placed_outline(actor, state, side, ox, oy)
    cv2.fillPoly(image, [np.round(pts * _SUBPIXEL).astype(np.int32)], actor.color[::-1], cv2.LINE_AA, _SUBPIXEL_BITS)
    # An off-centre marker makes every shape's rotation visible (even a circle's).
    marker = np.array([0.0, -0.25]) @ rot.T * (size * side) + centre
    radius = max(1.0, 0.12 * size * side)
    cv2.circle(image, tuple(int(c) for c in np.round(marker * _SUBPIXEL)), int(round(radius * _SUBPIXEL)),
               actor.marker_color[::-1], -1, cv2.LINE_AA, _SUBPIXEL_BITS)


def render_frame(segment: Segment, frame_index: int, width: int, height: int) -> np.ndarray:
    """BGR uint8 (height, width, 3) frame ``frame_index`` (a stream index inside ``segment``)."""
    image = background(segment, width, height).copy()
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    t = (frame_index - segment.start_frame) / segment.fps
    for actor in segment.distractors:
        draw_actor(image, actor, actor_state(actor, "still", 0.0), side, ox, oy)
    for actor in segment.actors:
        draw_actor(image, actor, actor_state(actor, segment.label, t), side, ox, oy)
    if segment.noise > 0:
        rng = np.random.default_rng([segment.noise_seed, frame_index])
        noise = rng.standard_normal(image.shape, dtype=np.float32) * segment.noise
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image


def render_clip(segs: list[Segment], frame_indices: list[int], width: int, height: int) -> list[np.ndarray]:
    """BGR frames at the given stream indices, each drawn on its own (no frames in between)."""
    return [render_frame(segment_at(segs, i), i, width, height) for i in frame_indices]


# ---------------------------------------------------------------- live stream


class SyntheticStream:
    """An endless labelled frame stream: the ``synthetic:`` demo source.

    Args:
        seed: the same seed gives the same frames and labels.
        width, height: frame size in pixels; the action stays in the centre square.
        fps: nominal frame rate; motion is defined in seconds, so it looks the same at any fps.

    ``next_frame()`` returns ``(bgr uint8 (height, width, 3), label)`` and advances
    ``frame_index``; ``segment`` is the segment of the frame returned last.
    """

    def __init__(self, seed: int = 0, width: int = 320, height: int = 240, fps: float = 30.0) -> None:
        if width < 16 or height < 16 or fps <= 0:
            raise ValueError(f"synthetic stream needs width, height ≥ 16 and fps > 0, got {width}x{height}@{fps}")
        self.seed, self.width, self.height, self.fps = seed, width, height, fps
        self.frame_index = 0
        self._segments = segments(seed, fps)
        self.segment = next(self._segments)

    def next_frame(self) -> tuple[np.ndarray, str]:
        while self.frame_index > self.segment.end_frame:
            self.segment = next(self._segments)
        frame = render_frame(self.segment, self.frame_index, self.width, self.height)
        self.frame_index += 1
        return frame, self.segment.label

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        while True:
            yield self.next_frame()

