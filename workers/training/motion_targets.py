"""What a window's motion looks like, in plain numbers: the side task that keeps the demo model's embedding
descriptive (``--describe-motion``).

Trained on its ten classes alone, the demo model's class token collapses to ten answers, and a label taught
on it (issue 24) cannot be told from them. With this side task a linear layer on the same normalised class
token must also say, for each window of a synthetic scene, how fast its actors go along each axis, how far
they get, how jerky and how curved their paths are, how often they reverse, how fast they turn, grow and
blink. The numbers are measured from the scene's own geometry (:func:`streamer.synthetic.scenes.actor_state`)
at the window's frames, averaged over its actors, and none of them changes under a horizontal or vertical
flip, like the flip views the pipeline averages.
"""

from __future__ import annotations

import math

import numpy as np

from streamer.synthetic.scenes import WRAP, Segment, actor_state, segment_at

MOTION_MEASURES = (
    "speed_x", "speed_y", "travel_x", "travel_y", "jerk_x", "jerk_y", "reversals_x", "reversals_y",
    "curving", "turning", "growing", "blinking",
)
# Divisors that bring each measure to about one at its usual largest (stage units and degrees a step).
_SCALE = np.array([0.1, 0.1, 0.4, 0.4, 0.1, 0.1, 1.0, 1.0, 1.0, 20.0, 0.02, 1.0], dtype=np.float32)
_STILL = 1e-4  # steps shorter than this (stage units) have no direction


def describe_window(segs: list[Segment], indices: list[int]) -> np.ndarray | None:
    """The window's :data:`MOTION_MEASURES`, scaled; None when its frames do not lie in one shot (no one
    motion to describe)."""
    seg = segment_at(segs, indices[0])
    if segment_at(segs, indices[-1]) is not seg or not seg.actors:
        return None
    times = [(i - seg.start_frame) / seg.fps for i in indices]
    per_actor = [_measures(np.array([actor_state(actor, seg.label, t) for t in times], dtype=np.float64),
                           seg.label.startswith("moving")) for actor in seg.actors]
    return (np.mean(per_actor, axis=0) / _SCALE).astype(np.float32)


def _measures(states: np.ndarray, wraps: bool) -> np.ndarray:
    """One actor's measures from its ``(x, y, diameter, angle, visible)`` at each frame of the window."""
    steps = np.diff(states[:, :2], axis=0)
    if wraps:  # the shortest way round the torus, not the jump back
        steps = (steps + WRAP / 2) % WRAP - WRAP / 2
    change = np.diff(steps, axis=0)
    moving = np.linalg.norm(steps, axis=1) > _STILL
    return np.array([
        *np.abs(steps).mean(axis=0),
        *np.abs(steps.sum(axis=0)),
        *np.abs(change).mean(axis=0),
        *(_reversals(steps[:, k]) for k in (0, 1)),
        _curving(steps, moving),
        np.abs(np.diff(states[:, 3])).mean(),
        np.diff(states[:, 2]).mean(),
        np.abs(np.diff(states[:, 4])).mean(),
    ])


def _reversals(along: np.ndarray) -> float:
    """Share of consecutive steps along one axis that go opposite ways."""
    signs = np.sign(along[np.abs(along) > _STILL])
    return float((signs[1:] != signs[:-1]).mean()) if len(signs) > 1 else 0.0


def _curving(steps: np.ndarray, moving: np.ndarray) -> float:
    """Mean angle between consecutive moving steps, as a share of half a turn."""
    angles = [abs(math.remainder(math.atan2(b[1], b[0]) - math.atan2(a[1], a[0]), 2 * math.pi)) / math.pi
              for a, b, ok_a, ok_b in zip(steps[:-1], steps[1:], moving[:-1], moving[1:]) if ok_a and ok_b]
    return float(np.mean(angles)) if angles else 0.0
