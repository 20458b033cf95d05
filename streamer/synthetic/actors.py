"""Multi-actor synthetic video: K actors side by side, each doing its own sequence of actions at once.

The frame is cut into K cells along its long side; each actor lives on the square *stage* in the
middle of its cell (drawn clipped to it, so actors never overlap, and one moving off its stage's
edge comes back at the other, as in the one-actor video). Each actor's life is a sequence of
one-actor segments (:func:`streamer.synthetic.scenes.sample_segment` with ``count=1``): a new shape, colour
and action at each of its own cuts, on one background shared by the whole video (a fixed camera).
The labels name each segment's actor and the actor's extent in every frame (contract 4), which is
what the tracked pipeline is scored against (:mod:`workers.training.track_scores`).

Rendering is a pure function of the seed and the frame index, like the one-actor video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from streamer.synthetic.drawing import actor_extent, background, draw_actor
from streamer.synthetic.files import encode_video, labels_path
from streamer.synthetic.scenes import CLASSES, Segment, actor_state, sample_segment, segment_at

ACTORS_STREAM = 0xAC7  # rng([seed, ACTORS_STREAM, ...]): never the one-actor video's or training's draws


@dataclass(frozen=True)
class ActorStage:
    """One actor's square of the frame: pixels ``x0 ≤ x < x0 + side``, ``y0 ≤ y < y0 + side``."""

    x0: int
    y0: int
    side: int

    def clip(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """The part of ``box`` on this stage (zero-sized at its edge when the actor is off it)."""
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        cx0, cy0 = min(max(box[0], self.x0), x1), min(max(box[1], self.y0), y1)
        return cx0, cy0, max(cx0, min(box[2], x1)), max(cy0, min(box[3], y1))


def actor_stages(count: int, width: int, height: int) -> list[ActorStage]:
    """``count`` cells along the long side, a centred square stage in each."""
    along, across = (width, height) if width >= height else (height, width)
    cell = along // count
    side = min(cell, across)
    out = []
    for k in range(count):
        a, b = k * cell + (cell - side) // 2, (across - side) // 2
        out.append(ActorStage(a, b, side) if width >= height else ActorStage(b, a, side))
    return out


@dataclass(frozen=True)
class ActorVideo:
    """The scene for one seed: a background and each actor's segments covering ``num_frames``."""

    seed: int
    count: int
    num_frames: int
    fps: float
    width: int
    height: int
    choices: tuple[str, ...] = tuple(CLASSES)  # the labels each actor's segments draw from (one: all do it)

    @cached_property
    def scene(self) -> Segment:
        """The background (and noise) of the whole video: the camera does not move."""
        return sample_segment(np.random.default_rng([self.seed, ACTORS_STREAM]), 0, self.fps)

    @cached_property
    def stages(self) -> list[ActorStage]:
        return actor_stages(self.count, self.width, self.height)

    @cached_property
    def segments(self) -> list[list[Segment]]:
        """Per actor, its segments in order, the last cut at the video's end."""
        out = []
        for actor in range(self.count):
            segs, start, n = [], 0, 0
            while start < self.num_frames:
                rng = np.random.default_rng([self.seed, ACTORS_STREAM, actor, n])
                only = self.choices[0] if len(self.choices) == 1 else None
                seg = sample_segment(rng, start, self.fps, label=only, count=1, choices=self.choices)
                if seg.end_frame >= self.num_frames:
                    seg = replace(seg, end_frame=self.num_frames - 1)
                segs.append(seg)
                start, n = seg.end_frame + 1, n + 1
            out.append(segs)
        return out

    def _state(self, actor: int, index: int):
        seg = segment_at(self.segments[actor], index)
        person = seg.actors[0]
        return seg, person, actor_state(person, seg.label, (index - seg.start_frame) / seg.fps)

    def render(self, index: int, part: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """BGR frame ``index``, or only its ``part`` ``(x0, y0, x1, y1)`` (training crops draw no more than
        they keep; a part's noise is its own draw, the same in distribution)."""
        x0, y0, x1, y1 = part or (0, 0, self.width, self.height)
        image = background(self.scene, self.width, self.height)[y0:y1, x0:x1].copy()
        for actor, stage in enumerate(self.stages):
            sx0, sy0 = max(stage.x0, x0), max(stage.y0, y0)
            sx1, sy1 = min(stage.x0 + stage.side, x1), min(stage.y0 + stage.side, y1)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            _, person, state = self._state(actor, index)
            on_stage = image[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]  # the stage's visible part: drawing clips to it
            draw_actor(on_stage, person, state, stage.side, stage.x0 - sx0, stage.y0 - sy0)
        if self.scene.noise > 0:
            rng = np.random.default_rng([self.scene.noise_seed, index] + ([x0, y0] if part else []))
            noise = rng.standard_normal(image.shape, dtype=np.float32) * self.scene.noise
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        return image

    def box(self, actor: int, index: int) -> tuple[float, float, float, float]:
        """The actor's extent at frame ``index`` in pixels, clipped to its stage."""
        _, person, state = self._state(actor, index)
        stage = self.stages[actor]
        x0, y0, x1, y1 = actor_extent(person, state, stage.side, stage.x0, stage.y0)
        return stage.clip((x0, y0, x1 + 1, y1 + 1))

    def labels(self) -> list[dict]:
        """Contract 4's segments, with ``actor`` and one box per frame, ordered by start frame."""
        out = []
        for actor, segs in enumerate(self.segments):
            for seg in segs:
                boxes = [[round(v, 1) for v in self.box(actor, i)] for i in range(seg.start_frame, seg.end_frame + 1)]
                out.append({"start_frame": seg.start_frame, "end_frame": seg.end_frame, "label": seg.label,
                            "actor": actor, "boxes": boxes})
        return sorted(out, key=lambda s: (s["start_frame"], s["actor"]))


def write_video(out: Path, seconds: float, seed: int, count: int, fps: float = 30.0, width: int = 640,
                height: int = 480, choices: tuple[str, ...] = tuple(CLASSES)) -> list[dict]:
    """Render the video and ``OUT.labels.json``; return the labels."""
    video = ActorVideo(seed, count, max(1, round(seconds * fps)), fps, width, height, tuple(choices))
    encode_video(out, (video.render(i) for i in range(video.num_frames)), fps, width, height)
    labels = video.labels()
    labels_path(out).write_text(json.dumps(labels) + "\n")
    return labels
