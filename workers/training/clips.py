"""Endless training clips, sampled exactly like the pipeline's windows (``num_frames`` frames every
``frame_interval`` source frames, through the same ``to_model_frame``): synthetic scene pairs rendered
on the fly, random windows of labelled video files, and clips cut around one actor of a multi-actor
scene (:mod:`workers.training.actor_clips`)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from streamer.synthetic.drawing import render_clip
from streamer.synthetic.scenes import CLASSES, sample_segment
from streamer.synthetic.wandering import WANDERING
from streamer.video.frames import to_model_frame
from workers.model import Preprocess
from workers.training import actor_clips, data
from workers.training.motion_targets import MOTION_MEASURES, describe_window

TRAIN_STREAM = 0x7EA1  # synthetic training scenes come from rng([TRAIN_STREAM, seed, n]); test videos never do
NO_CLASS = -100  # a wandering clip's class: cross-entropy skips it, the motion measures do not


def synthetic_clips(seed: int, pre: Preprocess, cut_p: float, per_scene: int = 6,
                    easy_p=lambda: 0.0, wander_p: float = 0.0, describe: bool = False) -> Iterator[tuple]:
    """Endless ``(clip uint8 (T, size, size, 3), class)`` from fresh random scene pairs.

    Each scene pair is a segment and the one before it; a clip ends inside the second
    and is labelled by it. With probability ``cut_p`` the clip is made to straddle the
    cut, so the model learns what the pipeline scores: the label of a window's last frame.
    ``easy_p()`` is the current share of plain, noise-free scenes (the curriculum).
    ``describe``: each item also carries its window's motion measures (None across a cut), and
    ``wander_p`` of the scene pairs end in a wandering shot (class :data:`NO_CLASS`).
    """
    counter = 0
    while True:
        rng = np.random.default_rng([TRAIN_STREAM, seed, counter])
        counter += 1
        fps = 30.0 if rng.uniform() < 0.8 else 25.0
        easy = bool(rng.uniform() < easy_p())
        first = sample_segment(rng, 0, fps, easy=easy)
        wander = wander_p > 0 and rng.uniform() < wander_p
        second = sample_segment(rng, first.end_frame + 1, fps, easy=easy, label=WANDERING if wander else None)
        segs = [first, second]
        short = int(rng.integers(pre.size, 3 * pre.size + 1))
        aspect = float(rng.choice([1.0, 4 / 3, 16 / 9]))
        width, height = (round(short * aspect), short) if rng.uniform() < 0.8 else (short, round(short * aspect))
        for _ in range(per_scene):
            if rng.uniform() < cut_p:
                end = second.start_frame + int(rng.integers(0, pre.span - 1))
            else:
                end = int(rng.integers(second.start_frame, second.end_frame + 1))
            indices = data.window_indices(end, pre)
            frames = [to_model_frame(f, pre.size) for f in render_clip(segs, indices, width, height)]
            label = NO_CLASS if wander else CLASSES.index(second.label)
            yield (np.stack(frames), label, describe_window(segs, indices)) if describe else (np.stack(frames), label)


def video_clips(pairs: list[tuple[Path, int]], seed: int, pre: Preprocess) -> Iterator[tuple[np.ndarray, int]]:
    """Endless random windows of labelled video files (decoded once, kept as model frames)."""
    cache: dict[Path, np.ndarray] = {}
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    while True:
        for i in rng.permutation(len(pairs)):
            path, label = pairs[i]
            if path not in cache:
                cache[path] = np.stack(data.read_frames(path, pre.size))
            frames = cache[path]
            end = int(rng.integers(min(pre.span - 1, len(frames) - 1), len(frames)))
            clip = frames[data.window_indices(end, pre)]
            yield augment(clip, rng), label


def augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same random brightness/contrast and a small shifted crop for every frame of a clip (order kept)."""
    size = clip.shape[1]
    pad = max(1, size // 16)
    padded = np.pad(clip, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, 2)
    out = padded[:, dy:dy + size, dx:dx + size].astype(np.float32)
    out = (out - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)
    return np.clip(out, 0, 255).astype(np.uint8)


class ClipStream(torch.utils.data.IterableDataset):
    """Endless clips; each DataLoader worker draws from its own seed."""

    def __init__(self, source: str, pairs: list[tuple[Path, int]], seed: int, pre: Preprocess, cut_p: float,
                 actor_p: float = 0.0, wander_p: float = 0.0, describe: bool = False) -> None:
        super().__init__()
        self.source, self.pairs, self.seed, self.pre, self.cut_p = source, pairs, seed, pre, cut_p
        self.actor_p = actor_p  # share of synthetic clips cut around one actor of a multi-actor scene
        # describe: items are (clip, class, motion measures, has measures); wander_p: share of wandering scenes
        self.wander_p, self.describe = wander_p, describe
        self.easy = mp.Value("d", 0.0, lock=False)  # shared with worker processes; the loop sets it

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = self.seed * 1000 + (info.id if info else 0)
        clips = synthetic_clips(seed, self.pre, self.cut_p, easy_p=lambda: self.easy.value,
                                wander_p=self.wander_p, describe=self.describe) \
            if self.source == "synthetic" else \
            video_clips(self.pairs, seed, self.pre)
        if self.source == "synthetic" and self.actor_p > 0:
            clips = _mixed(clips, actor_clips.actor_clips(seed, self.pre, self.cut_p / 2), self.actor_p, seed)
        for clip, label, *measures in clips:
            if not self.describe:
                yield torch.from_numpy(clip), label
                continue
            known = bool(measures) and measures[0] is not None  # actor crops and cut-straddling clips: none
            values = measures[0] if known else np.zeros(len(MOTION_MEASURES), np.float32)
            yield torch.from_numpy(clip), label, torch.from_numpy(values), known


def _mixed(whole: Iterator, around_actors: Iterator, actor_p: float, seed: int) -> Iterator:
    """Clips from ``around_actors`` with probability ``actor_p``, else from ``whole``."""
    rng = np.random.default_rng([TRAIN_STREAM, seed, 0xA])
    while True:
        yield next(around_actors if rng.uniform() < actor_p else whole)
