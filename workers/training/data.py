"""Labelled windows from videos: what training, evaluation and int8 calibration read.

A window here is cut exactly as capture cuts it (``WindowSpec``: num_frames every frame_interval,
one every hop) from frames made by ``to_model_frame``, so a training clip, an evaluation window and a
pipeline window are the same pixels. Sources: the synthetic generator, a folder with one subfolder of
videos per class, a list file, or one rendered video with its ``.labels.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamer.synthetic.drawing import render_frame
from streamer.synthetic.files import frame_labels, labels_path, read_labels
from streamer.synthetic.scenes import segment_at, segments_for
from streamer.errors import ConfigError, SourceError
from streamer.video.frames import to_model_frame
from streamer.video.readers import quiet_opencv
from workers.sampling import window_span
from workers.model import Preprocess

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut from a stream of frames (the pipeline's capture settings)."""

    num_frames: int
    frame_interval: int
    hop: int

    @property
    def span(self) -> int:
        """Source frames from a window's first frame to its last, inclusive."""
        return window_span(self.num_frames, self.frame_interval)


def window_ends(num_video_frames: int, spec: WindowSpec) -> list[int]:
    """Last-frame indices of the pipeline's windows over a video of ``num_video_frames`` frames.

    A clip shorter than one window still yields one window (its frames clamped to the clip).
    """
    first = spec.span - 1
    if num_video_frames <= first:
        return [num_video_frames - 1] if num_video_frames > 0 else []
    return list(range(first, num_video_frames, spec.hop))


def window_indices(end: int, spec: WindowSpec | Preprocess) -> list[int]:
    """Source indices of the window ending at ``end``, oldest first, clamped at 0.

    Training cuts its clips with this too (from the checkpoint's ``Preprocess``, which has the
    same two fields), so a training clip and a pipeline window are the same frames.
    """
    return [max(0, end - (spec.num_frames - 1 - k) * spec.frame_interval) for k in range(spec.num_frames)]


@dataclass
class WindowSet:
    """Windows ready for the model and their true class indices."""

    frames: np.ndarray  # (N, T, size, size, 3) uint8 RGB
    targets: np.ndarray  # (N,) int64
    ends: np.ndarray  # (N,) last-frame index of each window in its video
    whole: np.ndarray  # (N,) bool: every frame the window spans has its label (no action change inside)


def windows_from_frames(frames: list[np.ndarray], labels: list[int], spec: WindowSpec) -> WindowSet:
    """Cut windows from a video's model frames (each already through ``to_model_frame``)."""
    ends = window_ends(len(frames), spec)
    stack = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
    windows = np.stack([stack[window_indices(e, spec)] for e in ends]) if ends else np.zeros((0, spec.num_frames) + stack.shape[1:], np.uint8)
    whole = [len(set(labels[max(0, e - spec.span + 1):e + 1])) == 1 for e in ends]
    return WindowSet(windows, np.asarray([labels[e] for e in ends], np.int64), np.asarray(ends, np.int64),
                     np.asarray(whole, bool))


def synthetic_windows(seed: int, seconds: float, size: int, spec: WindowSpec, classes: list[str],
                      width: int = 320, height: int = 240, fps: float = 30.0) -> WindowSet:
    """Windows of the synthetic video ``seed`` rendered in memory (the same pixels as the live source)."""
    num = max(1, round(seconds * fps))
    segs = segments_for(seed, num, fps)
    needed = sorted({i for e in window_ends(num, spec) for i in window_indices(e, spec)})
    frames: list[np.ndarray] = [np.zeros((size, size, 3), np.uint8)] * num  # only the needed ones are drawn
    for i in needed:
        frames[i] = to_model_frame(render_frame(segment_at(segs, i), i, width, height), size)
    per_frame = [classes.index(label) for label in frame_labels(
        [{"start_frame": s.start_frame, "end_frame": s.end_frame, "label": s.label} for s in segs], num)]
    return windows_from_frames(frames, per_frame, spec)


def read_frames(path: Path, size: int) -> list[np.ndarray]:
    """Every frame of a video file, through ``to_model_frame``."""
    quiet_opencv()
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"{path}: cannot open this video; check the path and that OpenCV can decode it")
    frames = []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(to_model_frame(bgr, size))
    finally:
        capture.release()
    if not frames:
        raise SourceError(f"{path}: no frames could be decoded; the file is empty or damaged")
    return frames


def labelled_videos(data: Path) -> list[tuple[Path, str]]:
    """``(video, label)`` pairs from a class-per-folder tree or a ``path label`` list file."""
    if data.is_dir():
        pairs = [(video, folder.name) for folder in sorted(p for p in data.iterdir() if p.is_dir())
                 for video in sorted(folder.iterdir()) if video.suffix.lower() in VIDEO_SUFFIXES]
        if not pairs:
            raise ConfigError(f"{data}: no videos found; expected one sub-folder per class holding video files")
        return pairs
    if not data.is_file():
        raise ConfigError(f"{data}: no such file or folder; pass a class-per-folder tree or a 'path label' list file")
    pairs = []
    for number, line in enumerate(data.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ConfigError(f"{data}:{number}: expected 'path label', got {line!r}")
        path = Path(parts[0])
        pairs.append((path if path.is_absolute() else data.parent / path, parts[1]))
    if not pairs:
        raise ConfigError(f"{data}: the list file holds no 'path label' lines")
    return pairs


def class_names(pairs: list[tuple[Path, str]]) -> list[str]:
    """Sorted distinct labels (a list file may give integer indices instead: kept as text)."""
    return sorted({label for _, label in pairs}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def dataset_windows(data: Path, size: int, spec: WindowSpec, classes: list[str]) -> WindowSet:
    """Windows of a folder, a list file, or one rendered ``.mp4`` with its ``.labels.json``."""
    if data.suffix.lower() in VIDEO_SUFFIXES:
        labels_file = labels_path(data)
        if not labels_file.is_file():
            raise ConfigError(f"{data}: a single video needs its labels beside it in {labels_file.name}")
        frames = read_frames(data, size)
        names = frame_labels(read_labels(labels_file), len(frames))
        return windows_from_frames(frames, [_class_index(n, classes, data) for n in names], spec)
    sets = []
    for video, label in labelled_videos(data):
        frames = read_frames(video, size)
        sets.append(windows_from_frames(frames, [_class_index(label, classes, video)] * len(frames), spec))
    return concat(sets)


def _class_index(label: str | None, classes: list[str], where: Path) -> int:
    if label in classes:
        return classes.index(label)
    if label is not None and label.isdigit() and int(label) < len(classes):
        return int(label)
    raise ConfigError(f"{where}: label {label!r} is not one of the model's {len(classes)} classes")


def concat(sets: list[WindowSet]) -> WindowSet:
    return WindowSet(*(np.concatenate([getattr(s, name) for s in sets]) for name in ("frames", "targets", "ends", "whole")))
