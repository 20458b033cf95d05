"""Wandering: a training-only motion that teaches the demo model's features to describe *how* things move.

The demo's ten classes each move one simple way, so a model trained on them alone learns ten answers, and its
window embedding says little beyond them: a label taught on it later (issue 24) has little to tell apart. A
wandering actor follows a random path instead: it heads somewhere at its own speed, its heading turns at its
own rate and jumps at its own interval by its own spread, and it bounces off the stage's edges. Across
actors this covers slow and fast, straight and curved, smooth and jerky paths; the training regresses
plain measures of each window's motion (:mod:`workers.training.motion_targets`), not classes, so no taught
action (:mod:`streamer.synthetic.new_actions`) is ever named or drawn in training.

A leaf like ``new_actions``: the scenes import it, and it draws nothing. Never drawn by a seed's video.
"""

from __future__ import annotations

import math

import numpy as np

from streamer.synthetic.new_actions import unit_noise

WANDERING = "wandering"
_MOST_STEPS = 2000  # a path is integrated step by step; segments last seconds, so this is never reached


def sample_wander(rng: np.random.Generator) -> dict[str, float]:
    """One segment's path parameters, shared by its actors (each gets its own key and heading):
    ``speed`` stage units/s, ``period`` seconds between heading jumps, ``spread`` of a jump (1: any
    direction), ``turn`` radians/s of steady turning (zero for a third of segments)."""
    return {
        "speed": float(math.exp(rng.uniform(math.log(0.08), math.log(1.6)))),
        "period": float(math.exp(rng.uniform(math.log(1 / 30), math.log(2.0)))),
        "spread": float(rng.uniform(0.0, 1.0)),
        "turn": 0.0 if rng.uniform() < 1 / 3 else float(rng.uniform(-9.0, 9.0)),
    }


def wander_position(x: float, y: float, size: float, speed: float, period: float, spread: float, turn: float,
                    key: int, t: float) -> tuple[float, float]:
    """Centre of an actor that set off from ``(x, y)``, ``t`` seconds into its segment: the path integrated
    piece by piece (each piece of ``period`` seconds turns steadily), folded back into the stage."""
    heading = math.pi * unit_noise(-1, key)
    px, py, done, step = x, y, 0.0, 0
    while done < t - 1e-9 and step < _MOST_STEPS:
        piece = min(period, t - done)
        if abs(turn) < 1e-6:
            px += speed * piece * math.cos(heading)
            py += speed * piece * math.sin(heading)
        else:
            end = heading + turn * piece
            px += speed / turn * (math.sin(end) - math.sin(heading))
            py += speed / turn * (math.cos(heading) - math.cos(end))
        heading += turn * piece + math.pi * spread * unit_noise(step, key)
        done += piece
        step += 1
    low, high = size / 2, 1 - size / 2
    return _fold(px, low, high), _fold(py, low, high)


def _fold(value: float, low: float, high: float) -> float:
    """``value`` reflected back and forth into ``[low, high]`` (an actor bouncing off the stage's edges)."""
    width = high - low
    if width <= 0:
        return (low + high) / 2
    u = (value - low) % (2 * width)
    return low + (u if u <= width else 2 * width - u)
