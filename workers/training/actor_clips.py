"""Training and scoring clips cut around one actor, as the tracked pipeline cuts them.

A tracked actor's window is one fixed square (:func:`streamer.look.tracking.window_box`) around its boxes over
the window's frames, cut from full-resolution frames and resized to the model's input. The demo model
was trained on whole frames, where an actor is a fifth of the picture; around one actor it is most of
it. ``workers.train --actor-p P`` mixes such clips into training: multi-actor scenes
(:mod:`streamer.synthetic.actors`), a random actor, its true boxes jittered the way a motion
detector's are (a few pixels, a box a little large or small), and a random margin.

A turning disc is the hardest actor to read from its crop: its body stands still and only its marker
goes round, an arc that a part of a window shows as a short straight move. Scenes draw one in 40
segments; ``TURNING_DISC_P`` of the clips recast their segment as one, so that the model learns it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np

from streamer.synthetic.scenes import CLASSES, Segment, sample_segment, segment_at
from streamer.look.tracking import window_box
from streamer.look.windowing import TRACK_MARGIN
from streamer.video.frames import to_model_frame
from streamer.synthetic.actors import ActorVideo
from workers.training import data

ACTOR_TRAIN_STREAM = 0xAC7E  # rng([ACTOR_TRAIN_STREAM, seed, n]): scenes no test video uses
SCENE_FRAMES = 900  # each training scene is 30 s long; clips come from anywhere in it
TURNING_DISC_P = 0.1  # share of clips whose segment is recast as a turning disc



def jittered(box: tuple[float, float, float, float], rng: np.random.Generator, amount: float) -> tuple:
    """``box`` moved and resized by up to ``amount`` of its size (a detector's box is never exact)."""
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    d = rng.uniform(-amount, amount, 4) * np.array([w, h, w, h])
    return x0 + d[0], y0 + d[1], max(x0 + d[0] + 1, x1 + d[2]), max(y0 + d[1] + 1, y1 + d[3])


def actor_window(video: ActorVideo, actor: int, end: int, pre, rng: np.random.Generator | None = None) -> np.ndarray | None:
    """(T, size, size, 3) RGB clip of ``actor`` ending at frame ``end``, or None when it is off its stage then.

    ``rng`` None: the exact boxes and the pipeline's margin (scoring); else jittered (training).
    """
    indices = data.window_indices(end, pre)
    boxes = [video.box(actor, i) for i in indices]
    if boxes[-1][2] - boxes[-1][0] < 2 or boxes[-1][3] - boxes[-1][1] < 2:
        return None
    margin = TRACK_MARGIN
    if rng is not None:
        amount = float(rng.uniform(0.0, 0.15))
        boxes = [jittered(b, rng, amount) for b in boxes]
        margin = float(rng.uniform(0.08, 0.3))
    crop = window_box(boxes, video.width, video.height, margin)
    return np.stack([to_model_frame(video.render(i, crop), pre.size) for i in indices])


def turning_disc(video: ActorVideo, actor: int, seg: Segment, rng: np.random.Generator) -> ActorVideo:
    """``video`` with ``actor``'s segment ``seg`` recast as a disc turning one way or the other."""
    label = str(rng.choice(["rotating_clockwise", "rotating_anticlockwise"]))
    drawn = sample_segment(rng, seg.start_frame, video.fps, label=label, count=1)
    disc = replace(drawn, end_frame=seg.end_frame, actors=(replace(drawn.actors[0], shape="circle"),))
    segments = list(video.segments)
    segments[actor] = [disc if s is seg else s for s in segments[actor]]
    recast = replace(video)  # a new scene object: its cached segments are set here, the rest drawn as before
    recast.__dict__["segments"] = segments
    return recast


def actor_clips(seed: int, pre, cut_p: float, per_scene: int = 12) -> Iterator[tuple[np.ndarray, int]]:
    """Endless ``(clip, class)`` around one actor of a fresh multi-actor scene, labelled by its last frame."""
    counter = 0
    while True:
        rng = np.random.default_rng([ACTOR_TRAIN_STREAM, seed, counter])
        counter += 1
        short = int(rng.integers(240, 721))
        width, height = (round(short * float(rng.choice([4 / 3, 16 / 9]))), short)
        video = ActorVideo(int(rng.integers(10**6, 2**31)), int(rng.integers(2, 5)), SCENE_FRAMES,
                           30.0 if rng.uniform() < 0.8 else 25.0, width, height)
        made = 0
        for _ in range(per_scene * 3):
            if made == per_scene:
                break
            actor = int(rng.integers(video.count))
            seg = video.segments[actor][int(rng.integers(len(video.segments[actor])))]
            if rng.uniform() < cut_p and seg.start_frame > 0:
                end = seg.start_frame + int(rng.integers(0, pre.span - 1))
            else:
                end = int(rng.integers(min(seg.start_frame + pre.span - 1, seg.end_frame), seg.end_frame + 1))
            end = min(end, seg.end_frame)
            scene = video
            if rng.uniform() < TURNING_DISC_P:
                scene = turning_disc(video, actor, seg, rng)
                seg = segment_at(scene.segments[actor], end)
            clip = actor_window(scene, actor, end, pre, rng)
            if clip is None:
                continue
            made += 1
            yield clip, CLASSES.index(seg.label)
