"""Labelled synthetic action video: the demo source and the demo model's training data.

Each segment is one "shot" (a fresh background and objects, a hard cut between
shots) in which 1–4 *actors* all do the segment's action (moving actors wrap
around the stage) and 0–2 distractors stand still. One frame shows only shapes on a texture; the class can be told
only from how the actors change over time.

The action happens inside the centre square of the frame (the "stage", side =
the short side), because the model sees a short-side resize plus centre crop;
outside the stage there is only background. Any width/height works; the
default is 320×240 at 30 fps.

Rendering is a pure function of ``(segment, frame_index, width, height)``: any
frame of any segment can be drawn without drawing the ones before it, and the
same seed always gives the same pixels.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from streamer.errors import USAGE_ERROR, UsageParser

CLASSES: list[str] = [
    "moving_left",
    "moving_right",
    "moving_up",
    "moving_down",
    "rotating_clockwise",
    "rotating_anticlockwise",
    "growing",
    "shrinking",
    "blinking",
    "still",
]

# Every class's mirror image, flipped either way (workers.views.FLIP_VIEWS), is a class too
# (left↔right, up↔down, clockwise↔anticlockwise), so a model of these classes may average over flips.

SHAPES = ("square", "triangle", "pentagon", "star", "cross", "ellipse", "arrow", "circle")
_MOVES = {"moving_left": (-1, 0), "moving_right": (1, 0), "moving_up": (0, -1), "moving_down": (0, 1)}
_SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: positions to 1/16 px, so slow motion is smooth
_SUBPIXEL = 1 << _SUBPIXEL_BITS
_WRAP = 1.3  # moving actors wrap around over this many stage units


@dataclass(frozen=True)
class Actor:
    """One object; its motion is a function of the segment's action and of time.

    Positions and sizes are in stage units (0..1 across the centre square);
    ``size`` is the object's diameter.
    """

    shape: str
    color: tuple[int, int, int]
    marker_color: tuple[int, int, int]
    x: float
    y: float
    size: float
    angle: float  # degrees
    speed: float  # stage units/s (moving), degrees/s (rotating), diameter units/s (growing, shrinking)
    period: float  # seconds per on/off cycle (blinking)
    phase: float  # 0..1 offset of the blink cycle


@dataclass(frozen=True)
class Segment:
    """One shot: ``label`` holds from ``start_frame`` to ``end_frame``, both inclusive."""

    label: str
    start_frame: int
    end_frame: int
    fps: float
    background: tuple[int, int, int]
    texture: int  # 0 flat gradient, 1 stripes, 2 checker, 3 blobs
    texture_seed: int
    texture_scale: float
    texture_angle: float
    noise: float  # std of per-frame pixel noise, 0..255 units
    noise_seed: int
    actors: tuple[Actor, ...]
    distractors: tuple[Actor, ...]

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


# ---------------------------------------------------------------- scene sampling


def _contrasting_color(rng: np.random.Generator, against: tuple[int, int, int]) -> tuple[int, int, int]:
    """A saturated colour far from ``against`` (L1 ≥ 200), so the object is always visible."""
    for _ in range(100):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if sum(abs(a - b) for a, b in zip(color, against)) >= 200:
            return color
    return tuple(255 - c for c in against)


def _place(rng: np.random.Generator, taken: list[tuple[float, float, float]], size: float,
           lo: float = 0.15, hi: float = 0.85) -> tuple[float, float]:
    """A position whose disc does not overlap the discs already ``taken`` (best effort)."""
    best, best_gap = (0.5, 0.5), -1.0
    for _ in range(30):
        x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        gap = min((math.hypot(x - tx, y - ty) - (size + ts) / 2 for tx, ty, ts in taken), default=1.0)
        if gap > 0.02:
            return x, y
        if gap > best_gap:
            best, best_gap = (x, y), gap
    return best


def _sample_actors(rng: np.random.Generator, label: str, duration: float, background: tuple[int, int, int],
                   count: int | None = None) -> tuple[tuple[Actor, ...], list[tuple[float, float, float]]]:
    """Actors for one segment; their parameters make the motion clear at 30 fps and ~1 s windows."""
    # Several actors doing the same action make the motion a large part of the picture.
    choices = [1, 2, 2, 3] if label in ("growing", "shrinking") else [1, 2, 3, 3, 4]
    count = int(rng.choice(choices)) if count is None else count
    actors: list[Actor] = []
    taken: list[tuple[float, float, float]] = []
    if label in _MOVES:
        # Actors travel together, as a group, 0.3–0.5 stage/s (several pixels per sampled
        # frame at any model size), leaving one side and coming back on the other.
        speed = float(rng.uniform(0.3, 0.5))
        lanes = rng.permutation(np.linspace(0.2, 0.8, 4))[:count]
    for i in range(count):
        shape = str(rng.choice(SHAPES))
        color = _contrasting_color(rng, background)
        marker = _contrasting_color(rng, color)
        angle = float(rng.uniform(0, 360))
        size, speed_i, period, phase = float(rng.uniform(0.18, 0.32)), 0.0, 1.0, float(rng.uniform())
        if label in _MOVES:
            size = float(rng.uniform(0.18, 0.28))
            along = float(rng.uniform(0, 1))
            lane = float(lanes[i] + rng.uniform(-0.05, 0.05))
            dx, dy = _MOVES[label]
            x, y = (along, lane) if dx else (lane, along)
            speed_i = speed
        elif label.startswith("rotating"):
            size = float(rng.uniform(0.24, 0.4))
            speed_i = float(rng.uniform(90, 200))
            x, y = _place(rng, taken, size)
        elif label in ("growing", "shrinking"):
            # Diameter goes ~0.06 ↔ 0.35–0.7 linearly over the segment.
            small = float(rng.uniform(0.04, 0.08))
            big = float(rng.uniform(0.6, 0.7) if count == 1 else rng.uniform(0.35, 0.5))
            speed_i = (big - small) / duration
            size = small if label == "growing" else big
            x, y = _place(rng, taken, big, 0.3, 0.7) if count == 1 else _place(rng, taken, big)
        else:  # blinking, still
            x, y = _place(rng, taken, size)
            period = float(rng.uniform(0.4, 1.0))
        taken.append((x, y, size if label not in ("growing", "shrinking") else 0.5))
        actors.append(Actor(shape, color, marker, x, y, size, angle, speed_i, period, phase))
    return tuple(actors), taken


def sample_segment(rng: np.random.Generator, start_frame: int, fps: float, label: str | None = None,
                   easy: bool = False, count: int | None = None) -> Segment:
    """Draw one random segment starting at ``start_frame`` (label random unless given).

    ``easy`` (a training curriculum): the same scene on a plain gradient, without noise or distractors.
    ``count``: that many actors (random, 1-4, unless given) and then no distractors (one actor of a
    multi-actor video, :mod:`streamer.synthetic.actors`).
    """
    label = label if label is not None else str(rng.choice(CLASSES))
    if label in ("growing", "shrinking"):
        duration = float(rng.uniform(3.5, 5.0))  # bounded: the size must stay in the stage
    else:
        duration = float(rng.uniform(4.0, 8.0))
    num_frames = max(2, round(duration * fps))
    duration = num_frames / fps
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    actors, taken = _sample_actors(rng, label, duration, background, count)
    distractors = []
    for _ in range(int(rng.choice([0, 0, 0, 1, 2])) if count is None else 0):
        size = float(rng.uniform(0.1, 0.2))
        if label in _MOVES:  # along the stage edge parallel to the travel, out of the actors' way
            x, y = float(rng.uniform(0.1, 0.9)), float(rng.choice([0.06, 0.94]))
            if label in ("moving_up", "moving_down"):
                x, y = y, x
        else:
            x, y = _place(rng, taken, size)
        taken.append((x, y, size))
        color = _contrasting_color(rng, background)
        distractors.append(Actor(str(rng.choice(SHAPES)), color, _contrasting_color(rng, color),
                                 x, y, size, float(rng.uniform(0, 360)), 0.0, 1.0, 0.0))
    segment = Segment(
        label=label, start_frame=start_frame, end_frame=start_frame + num_frames - 1, fps=fps,
        background=background, texture=int(rng.integers(0, 4)), texture_seed=int(rng.integers(2**31)),
        texture_scale=float(rng.uniform(3, 12)), texture_angle=float(rng.uniform(0, 180)),
        noise=float(rng.choice([0.0, rng.uniform(2, 12)])), noise_seed=int(rng.integers(2**31)),
        actors=actors, distractors=tuple(distractors),
    )
    return replace(segment, texture=0, noise=0.0, distractors=()) if easy else segment


def segments(seed: int, fps: float = 30.0) -> Iterator[Segment]:
    """The endless, deterministic sequence of segments for ``seed``."""
    start, index = 0, 0
    while True:
        segment = sample_segment(np.random.default_rng([seed, index]), start, fps)
        yield segment
        start, index = segment.end_frame + 1, index + 1


def segments_for(seed: int, num_frames: int, fps: float = 30.0) -> list[Segment]:
    """The segments covering frames ``0 .. num_frames-1``, the last one cut to end there."""
    out: list[Segment] = []
    for segment in segments(seed, fps):
        if segment.start_frame >= num_frames:
            break
        out.append(segment)
    last = out[-1]
    if last.end_frame >= num_frames:
        # Cut, not rescaled: frames keep the pixels they have in the endless stream.
        out[-1] = replace(last, end_frame=num_frames - 1)
    return out


# ---------------------------------------------------------------- rendering


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


def actor_state(actor: Actor, label: str, t: float) -> tuple[float, float, float, float, bool]:
    """(x, y, diameter, angle°, visible) of an actor ``t`` seconds into its segment."""
    x, y, size, angle, visible = actor.x, actor.y, actor.size, actor.angle, True
    if label in _MOVES:
        # Wrap on a 1.3-wide torus: an actor fully leaves the stage before it comes back.
        dx, dy = _MOVES[label]
        x = (x + dx * actor.speed * t + 0.15) % _WRAP - 0.15
        y = (y + dy * actor.speed * t + 0.15) % _WRAP - 0.15
    elif label == "rotating_clockwise":
        angle += actor.speed * t  # image y points down, so +angle turns clockwise on screen
    elif label == "rotating_anticlockwise":
        angle -= actor.speed * t
    elif label == "growing":
        size += actor.speed * t
    elif label == "shrinking":
        size = max(0.02, size - actor.speed * t)
    elif label == "blinking":
        visible = ((t / actor.period + actor.phase) % 1.0) < 0.5
    return x, y, size, angle, visible


@lru_cache(maxsize=8)  # a few segments at a time: bounded memory in a months-long stream
def _background(segment: Segment, width: int, height: int) -> np.ndarray:
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


def _placed_outline(actor: Actor, state: tuple[float, float, float, float, bool], side: int, ox: float,
                    oy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The actor's outline in pixels (N, 2), its rotation matrix and its centre."""
    x, y, size, angle, _ = state
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    centre = np.array([ox + x * side, oy + y * side])
    return _OUTLINES[actor.shape] @ rot.T * (size * side) + centre, rot, centre


def actor_extent(actor: Actor, state: tuple[float, float, float, float, bool], side: int, ox: float,
                 oy: float) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] in pixels around the actor's outline (where it is, even while blinked off)."""
    pts, _, _ = _placed_outline(actor, state, side, ox, oy)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _draw_actor(image: np.ndarray, actor: Actor, state: tuple[float, float, float, float, bool],
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
    image = _background(segment, width, height).copy()
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    t = (frame_index - segment.start_frame) / segment.fps
    for actor in segment.distractors:
        _draw_actor(image, actor, actor_state(actor, "still", 0.0), side, ox, oy)
    for actor in segment.actors:
        _draw_actor(image, actor, actor_state(actor, segment.label, t), side, ox, oy)
    if segment.noise > 0:
        rng = np.random.default_rng([segment.noise_seed, frame_index])
        noise = rng.standard_normal(image.shape, dtype=np.float32) * segment.noise
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image


def render_clip(segs: list[Segment], frame_indices: list[int], width: int, height: int) -> list[np.ndarray]:
    """BGR frames at the given stream indices, each drawn on its own (no frames in between)."""
    return [render_frame(segment_at(segs, i), i, width, height) for i in frame_indices]


def segment_at(segs: list[Segment], frame_index: int) -> Segment:
    """The segment of a sorted, contiguous list that holds ``frame_index``."""
    lo, hi = 0, len(segs) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if segs[mid].start_frame <= frame_index:
            lo = mid
        else:
            hi = mid - 1
    return segs[lo]


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


# ---------------------------------------------------------------- files


def labels_path(video: Path) -> Path:
    """``clip.mp4`` → ``clip.labels.json``."""
    return video.with_suffix(".labels.json")


def write_video(out: Path, seconds: float, seed: int, fps: float = 30.0, width: int = 320, height: int = 240) -> list[dict]:
    """Render ``seconds`` of the stream to an H.264 mp4 and its labels json; return the labels.

    Labels: a list of ``{"start_frame", "end_frame", "label"}``, ``end_frame`` inclusive.
    """
    num_frames = max(1, round(seconds * fps))
    segs = segments_for(seed, num_frames, fps)
    from streamer.video.writer import encode_video  # only the file writer needs PyAV

    encode_video(out, (render_frame(segment_at(segs, i), i, width, height) for i in range(num_frames)), fps, width, height)
    labels = [{"start_frame": s.start_frame, "end_frame": s.end_frame, "label": s.label} for s in segs]
    labels_path(out).write_text(json.dumps(labels, indent=1) + "\n")
    return labels


def read_labels(path: Path) -> list[dict]:
    """Read a labels json written by :func:`write_video` (``end_frame`` inclusive)."""
    return json.loads(Path(path).read_text())


def frame_labels(labels: list[dict], num_frames: int) -> list[str | None]:
    """Per-frame label list from segments (None where no segment covers a frame)."""
    out: list[str | None] = [None] * num_frames
    for seg in labels:
        for i in range(max(0, seg["start_frame"]), min(num_frames, seg["end_frame"] + 1)):
            out[i] = seg["label"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(prog="python -m streamer.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output .mp4; labels go to OUT.labels.json")
    parser.add_argument("--seconds", type=float, required=True, help="length of the video in seconds")
    parser.add_argument("--seed", type=int, required=True, help="same seed, same video and labels (≥ 0)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, help="default 320, or 640 with --actors")
    parser.add_argument("--height", type=int, help="default 240, or 480 with --actors")
    parser.add_argument("--actors", type=int, default=0, metavar="K",
                        help="K ≥ 2 actors side by side, each doing its own actions; labels name each actor's boxes")
    args = parser.parse_args(argv)
    args.width = args.width or (640 if args.actors else 320)
    args.height = args.height or (480 if args.actors else 240)
    if args.seconds <= 0 or args.fps <= 0 or args.width < 16 or args.height < 16 or args.seed < 0:
        parser.error(f"need --seconds > 0, --fps > 0, --width/--height ≥ 16, --seed ≥ 0; got "
                     f"{args.seconds}, {args.fps}, {args.width}x{args.height}, {args.seed}")
    if args.out.suffix.lower() != ".mp4":
        parser.error(f"--out must end in .mp4, got {args.out}")
    if args.actors and not 2 <= args.actors <= 8:
        parser.error(f"--actors must be from 2 to 8, got {args.actors}")
    try:
        if args.actors:
            from streamer.synthetic import actors as synthetic_actors
            labels = synthetic_actors.write_video(args.out, args.seconds, args.seed, args.actors, args.fps,
                                                  args.width, args.height)
        else:
            labels = write_video(args.out, args.seconds, args.seed, args.fps, args.width, args.height)
    except OSError as err:  # PyAV's errors are OSErrors too
        print(f"error: cannot write {args.out} ({err.strerror or err}); pick a writable path", file=sys.stderr)
        return USAGE_ERROR
    print(f"wrote {args.out} and {labels_path(args.out)} ({len(labels)} segments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
