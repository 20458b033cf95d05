"""Actions the shipped demo model was never trained on (issue 24, taught actions), so that teaching a new
label from a few clips can be measured without a camera. They appear only when asked for
(``--new-actions``, ``--only LABEL``, :func:`streamer.synthetic.files.make_teaching_clips`); the demo's own
classes and every existing seed's pixels are unchanged.

- ``bouncing``: the shape bobs up and down about its place, a full cycle every 0.5-0.9 s;
- ``orbiting``: its centre goes round a small circle (either way) every 0.8-1.4 s, the shape not turning;
- ``shaking``: it jumps left and right about its place at random, anew every 1/30 s.

Like the demo's classes, one frame shows only shapes on a texture: only the motion tells them apart. Each is
its own mirror image (no left/right, up/down or clockwise in its name), so flip views leave it as it is.
This module is a leaf (the scenes import it): parameters and positions are plain numbers.
"""

from __future__ import annotations

import math

import numpy as np

NEW_ACTIONS: tuple[str, ...] = ("bouncing", "orbiting", "shaking")
_JITTER_RATE = 30.0  # shaking jumps to a new offset this many times a second, whatever the fps
_MASK64 = (1 << 64) - 1


def sample_motion(rng: np.random.Generator, label: str) -> tuple[float, float, float]:
    """``(size, amplitude, period)`` of one actor, in stage units and seconds; the amplitude of an orbit is
    signed (its sense). Large enough to see at the demo model's 48 px, over its ~1 s window."""
    if label == "bouncing":
        return float(rng.uniform(0.16, 0.26)), float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.5, 0.9))
    if label == "orbiting":
        radius = float(rng.uniform(0.1, 0.16)) * float(rng.choice([-1.0, 1.0]))
        return float(rng.uniform(0.14, 0.22)), radius, float(rng.uniform(0.8, 1.4))
    if label == "shaking":
        return float(rng.uniform(0.18, 0.3)), float(rng.uniform(0.06, 0.1)), 1.0
    raise ValueError(f"not a new action: {label!r}")


def footprint(size: float, amplitude: float) -> float:
    """Diameter of the disc an actor sweeps (its size plus its travel either side)."""
    return size + 2 * abs(amplitude)


def unit_noise(step: int, key: int) -> float:
    """A number in [-1, 1) that is a pure function of ``(step, key)`` (splitmix64: the same on any machine)."""
    z = (step * 0x9E3779B97F4A7C15 + key * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / float(1 << 52) - 1.0


def position(label: str, x: float, y: float, amplitude: float, period: float, phase: float,
             t: float) -> tuple[float, float]:
    """Centre ``(x, y)`` of an actor placed at ``(x, y)``, ``t`` seconds into its segment."""
    if label == "bouncing":
        return x, y + amplitude * math.sin(2 * math.pi * (t / period + phase))
    if label == "orbiting":
        turn = 2 * math.pi * (math.copysign(t / period, amplitude) + phase)
        return x + abs(amplitude) * math.cos(turn), y + abs(amplitude) * math.sin(turn)
    if label == "shaking":
        step = math.floor(t * _JITTER_RATE + 1e-6)
        return x + amplitude * unit_noise(step, int(phase * (1 << 30))), y
    raise ValueError(f"not a new action: {label!r}")
