"""What happens in the synthetic demo: the action classes, the shapes that act them out, and the
labelled shots (segments) a seed draws, each a pure function of its random numbers.

Each segment is one "shot" (a fresh background and objects, a hard cut between
shots) in which 1–4 *actors* all do the segment's action (moving actors wrap
around the stage) and 0–2 distractors stand still. One frame shows only shapes on a texture; the class can be told
only from how the actors change over time (:func:`actor_state`).

The action happens inside the centre square of the frame (the "stage", side =
the short side), because the model sees a short-side resize plus centre crop;
outside the stage there is only background. Positions here are in stage units;
:mod:`streamer.synthetic.drawing` turns a segment into pixels at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from streamer.synthetic.new_actions import NEW_ACTIONS, footprint, position, sample_motion
from streamer.synthetic.wandering import WANDERING, sample_wander, wander_position

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

# Actions the demo model never saw (streamer.synthetic.new_actions), drawn only when asked for: every
# existing seed draws from CLASSES alone, so its pixels and labels stay as they were.
ALL_ACTIONS: list[str] = CLASSES + list(NEW_ACTIONS)

# Every class's mirror image, flipped either way (workers.flips.FLIP_VIEWS), is a class too
# (left↔right, up↔down, clockwise↔anticlockwise), so a model of these classes may average over flips.

SHAPES = ("square", "triangle", "pentagon", "star", "cross", "ellipse", "arrow", "circle")
_MOVES = {"moving_left": (-1, 0), "moving_right": (1, 0), "moving_up": (0, -1), "moving_down": (0, 1)}
WRAP = 1.3  # moving actors wrap around over this many stage units


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
    speed: float  # stage units/s (moving), degrees/s (rotating), diameter units/s (growing, shrinking),
    #               travel in stage units (new actions; an orbit's radius, signed by its sense)
    period: float  # seconds per on/off cycle (blinking), per bob or orbit (new actions)
    phase: float  # 0..1 offset of the blink, bob or orbit cycle (of the jitter's draws when shaking, wandering)
    turn: float = 0.0  # radians/s of steady turning (wandering, training only: streamer.synthetic.wandering)
    spread: float = 0.0  # how far a wandering actor's heading may jump, 0..1 of half a turn


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


ActorState = tuple[float, float, float, float, bool]  # (x, y, diameter, angle°, visible), see actor_state


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
    choices = [1, 2, 2, 3] if label in ("growing", "shrinking", WANDERING, *NEW_ACTIONS) else [1, 2, 3, 3, 4]
    count = int(rng.choice(choices)) if count is None else count
    actors: list[Actor] = []
    taken: list[tuple[float, float, float]] = []
    if label in _MOVES:
        # Actors travel together, as a group, 0.3–0.5 stage/s (several pixels per sampled
        # frame at any model size), leaving one side and coming back on the other.
        speed = float(rng.uniform(0.3, 0.5))
        lanes = rng.permutation(np.linspace(0.2, 0.8, 4))[:count]
    wander = sample_wander(rng) if label == WANDERING else {}
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
        elif label in NEW_ACTIONS:  # placed so that its whole travel stays on the stage
            size, speed_i, period = sample_motion(rng, label)
            reach = footprint(size, speed_i)
            x, y = _place(rng, taken, reach, reach / 2, 1 - reach / 2)
        elif label == WANDERING:  # the whole segment's path parameters, each actor its own key and heading
            size = float(rng.uniform(0.14, 0.26))
            x, y = _place(rng, taken, size)
            speed_i, period = wander["speed"], wander["period"]
        else:  # blinking, still
            x, y = _place(rng, taken, size)
            period = float(rng.uniform(0.4, 1.0))
        if label in NEW_ACTIONS:
            taken.append((x, y, reach))
        else:
            taken.append((x, y, size if label not in ("growing", "shrinking") else 0.5))
        actors.append(Actor(shape, color, marker, x, y, size, angle, speed_i, period, phase,
                            wander.get("turn", 0.0), wander.get("spread", 0.0)))
    return tuple(actors), taken


def sample_segment(rng: np.random.Generator, start_frame: int, fps: float, label: str | None = None,
                   easy: bool = False, count: int | None = None, choices: Sequence[str] = CLASSES) -> Segment:
    """Draw one random segment starting at ``start_frame`` (label random from ``choices`` unless given).

    ``easy`` (a training curriculum): the same scene on a plain gradient, without noise or distractors.
    ``count``: that many actors (random, 1-4, unless given) and then no distractors (one actor of a
    multi-actor video, :mod:`streamer.synthetic.actors`).
    """
    label = label if label is not None else str(rng.choice(choices))
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


def segments(seed: int, fps: float = 30.0, choices: Sequence[str] = CLASSES,
             key: Sequence[int] = ()) -> Iterator[Segment]:
    """The endless, deterministic sequence of segments for ``seed``.

    ``choices``: the labels its shots draw from (one label: every shot does it, in a new scene).
    ``key``: more numbers for the random draws, another sequence per key (teaching clips).
    """
    start, index = 0, 0
    only = choices[0] if len(choices) == 1 else None
    while True:
        rng = np.random.default_rng([seed, *key, index])
        segment = sample_segment(rng, start, fps, label=only, choices=choices)
        yield segment
        start, index = segment.end_frame + 1, index + 1


def segments_for(seed: int, num_frames: int, fps: float = 30.0, choices: Sequence[str] = CLASSES,
                 key: Sequence[int] = ()) -> list[Segment]:
    """The segments covering frames ``0 .. num_frames-1``, the last one cut to end there."""
    out: list[Segment] = []
    for segment in segments(seed, fps, choices, key):
        if segment.start_frame >= num_frames:
            break
        out.append(segment)
    last = out[-1]
    if last.end_frame >= num_frames:
        # Cut, not rescaled: frames keep the pixels they have in the endless stream.
        out[-1] = replace(last, end_frame=num_frames - 1)
    return out


def actor_state(actor: Actor, label: str, t: float) -> ActorState:
    """(x, y, diameter, angle°, visible) of an actor ``t`` seconds into its segment."""
    x, y, size, angle, visible = actor.x, actor.y, actor.size, actor.angle, True
    if label in _MOVES:
        # Wrap on a 1.3-wide torus: an actor fully leaves the stage before it comes back.
        dx, dy = _MOVES[label]
        x = (x + dx * actor.speed * t + 0.15) % WRAP - 0.15
        y = (y + dy * actor.speed * t + 0.15) % WRAP - 0.15
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
    elif label in NEW_ACTIONS:
        x, y = position(label, x, y, actor.speed, actor.period, actor.phase, t)
    elif label == WANDERING:
        x, y = wander_position(x, y, size, actor.speed, actor.period, actor.spread, actor.turn,
                               int(actor.phase * (1 << 30)), t)
    return x, y, size, angle, visible


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

