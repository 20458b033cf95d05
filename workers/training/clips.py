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
from streamer.video.frames import to_model_frame
from workers.model import Preprocess
from workers.training import actor_clips, data

TRAIN_STREAM = 0x7EA1  # synthetic training scenes come from rng([TRAIN_STREAM, seed, n]); test videos never do


def synthetic_clips(seed: int, pre: Preprocess, cut_p: float, per_scene: int = 6,
                    easy_p=lambda: 0.0) -> Iterator[tuple[np.ndarray, int]]:
    """Endless ``(clip uint8 (T, size, size, 3), class)`` from fresh random scene pairs.

    Each scene pair is a segment and the one before it; a clip ends inside the second
    and is labelled by it. With probability ``cut_p`` the clip is made to straddle the
    cut, so the model learns what the pipeline scores: the label of a window's last frame.
    ``easy_p()`` is the current share of plain, noise-free scenes (the curriculum).
    """
    counter = 0
    while True:
        rng = np.random.default_rng([TRAIN_STREAM, seed, counter])
        counter += 1
        fps = 30.0 if rng.uniform() < 0.8 else 25.0
        easy = bool(rng.uniform() < easy_p())
        first = sample_segment(rng, 0, fps, easy=easy)
        second = sample_segment(rng, first.end_frame + 1, fps, easy=easy)
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
            yield np.stack(frames), CLASSES.index(second.label)


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
                 actor_p: float = 0.0) -> None:
        super().__init__()
        self.source, self.pairs, self.seed, self.pre, self.cut_p = source, pairs, seed, pre, cut_p
        self.actor_p = actor_p  # share of synthetic clips cut around one actor of a multi-actor scene
        self.easy = mp.Value("d", 0.0, lock=False)  # shared with worker processes; the loop sets it

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = self.seed * 1000 + (info.id if info else 0)
        clips = synthetic_clips(seed, self.pre, self.cut_p, easy_p=lambda: self.easy.value) \
            if self.source == "synthetic" else \
            video_clips(self.pairs, seed, self.pre)
        if self.source == "synthetic" and self.actor_p > 0:
            clips = _mixed(clips, actor_clips.actor_clips(seed, self.pre, self.cut_p / 2), self.actor_p, seed)
        for clip, label in clips:
            yield torch.from_numpy(clip), label


def _mixed(whole: Iterator, around_actors: Iterator, actor_p: float, seed: int) -> Iterator:
    """Clips from ``around_actors`` with probability ``actor_p``, else from ``whole``."""
    rng = np.random.default_rng([TRAIN_STREAM, seed, 0xA])
    while True:
        yield next(around_actors if rng.uniform() < actor_p else whole)
