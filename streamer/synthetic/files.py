"""Labelled demo files (contract 4): an H.264 mp4 and, beside it, ``OUT.labels.json``, a list of
``{"start_frame", "end_frame", "label"}`` segments (``end_frame`` inclusive); and folders of short clips
to teach a new label from (contract 9), with the actions the demo model never saw.

The mp4 is written here, not by :mod:`streamer.video.writer`: it must be the same file for the same
seed (no B-frames, one thread), and the video layer reads this package (the ``synthetic:`` source),
so this package may not import it back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import av
import cv2
import numpy as np

from streamer.synthetic.drawing import render_frame
from streamer.synthetic.scenes import ALL_ACTIONS, CLASSES, Segment, segment_at, segments_for

TEACH_STREAM = 0x7EAC  # rng([seed, TEACH_STREAM, ...]): teaching clips never share a demo video's draws


def encode_video(out: Path, frames: Iterator[np.ndarray], fps: float, width: int, height: int) -> None:
    """Write BGR frames as a near-lossless, deterministic H.264 mp4 (the same seed gives the same file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sides
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17", "preset": "veryfast", "bf": "0"}  # deterministic, near-lossless
        stream.thread_type, stream.codec_context.thread_count = "NONE", 1  # frame-identical output per seed
        for frame in frames:
            if frame.shape[:2] != (stream.height, stream.width):
                frame = cv2.copyMakeBorder(frame, 0, stream.height - height, 0, stream.width - width, cv2.BORDER_REPLICATE)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def labels_path(video: Path) -> Path:
    """``clip.mp4`` → ``clip.labels.json``."""
    return video.with_suffix(".labels.json")


def write_video(out: Path, seconds: float, seed: int, fps: float = 30.0, width: int = 320, height: int = 240,
                choices: Sequence[str] = CLASSES) -> list[dict]:
    """Render ``seconds`` of the stream to an H.264 mp4 and its labels json; return the labels.

    Labels: a list of ``{"start_frame", "end_frame", "label"}``, ``end_frame`` inclusive. ``choices``: the
    labels its shots draw from (the demo's classes; with the new actions too; or one label throughout).
    """
    num_frames = max(1, round(seconds * fps))
    segs = segments_for(seed, num_frames, fps, choices)
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


def _write_clips(folder: Path, name: str, labels: list[str | tuple[str, str]], key: tuple[int, ...],
                 seconds: float, seed: int, fps: float, width: int, height: int) -> list[Path]:
    """Clip ``i`` does ``labels[i]`` throughout, drawn from ``rng([seed, *key, i, ...])``; for a pair of labels,
    twice as long: a shot of the first, a cut, a shot of the second. Video only: the folder names the label."""
    if seconds <= 0 or seed < 0 or fps <= 0 or min(width, height) < 16:
        raise ValueError(f"clips need seconds > 0, seed >= 0, fps > 0 and sides >= 16, got {seconds}, {seed}, "
                         f"{fps}, {width}x{height}")
    shot_frames = max(1, round(seconds * fps))
    paths = []
    for i, label in enumerate(labels):
        if isinstance(label, str):
            num_frames = shot_frames
            segs = segments_for(seed, num_frames, fps, [label], (*key, i))
        else:  # two shots of ``seconds`` each, as the demo's own video cuts from one to the next
            num_frames = 2 * shot_frames
            segs = [_shot(seed, shot, shot_frames, fps, (*key, i, k), k * shot_frames) for k, shot in enumerate(label)]
        path = Path(folder) / f"{name}-s{seed}-{i:03d}.mp4"
        encode_video(path, (render_frame(segment_at(segs, f), f, width, height) for f in range(num_frames)),
                     fps, width, height)
        paths.append(path)
    return paths


def _shot(seed: int, label: str, frames: int, fps: float, key: tuple[int, ...], start: int) -> Segment:
    """One shot of ``label``, ``frames`` long from frame ``start``: the first scene ``rng([seed, *key])`` draws
    for it, stretched over the whole shot (a clip cuts between shots where it says, not where the plan would)."""
    return replace(segments_for(seed, frames, fps, [label], key)[0], start_frame=start, end_frame=start + frames - 1)


def make_teaching_clips(folder: Path, label: str, count: int, seconds: float = 2.0, seed: int = 0,
                        fps: float = 30.0, width: int = 320, height: int = 240) -> list[Path]:
    """Write ``count`` clips of ``label`` doing it throughout to ``FOLDER/<label>/`` (what
    ``python -m workers.teach --clips FOLDER`` learns a label from); return their paths.

    ``label``: a new action (:data:`streamer.synthetic.new_actions.NEW_ACTIONS`) or a demo class. Each
    label and seed draws its own scenes, so other seeds give held-out clips of the same action.
    """
    if label not in ALL_ACTIONS:
        raise ValueError(f"no synthetic action {label!r}; pick one of {', '.join(ALL_ACTIONS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    key = (TEACH_STREAM, ALL_ACTIONS.index(label))
    return _write_clips(Path(folder) / label, label, [label] * count, key, seconds, seed, fps, width, height)


def make_none_clips(folder: Path, count: int, seconds: float = 2.0, seed: int = 0, fps: float = 30.0,
                    width: int = 320, height: int = 240, cuts: int = 0) -> list[Path]:
    """Write ``count`` clips of the demo's own actions to ``FOLDER/none/`` (the "nothing new" examples);
    clip ``i`` does ``CLASSES[i % 10]``, so ten clips show each once. ``cuts`` more clips are ordinary footage
    of the demo camera across one of its cuts: clip ``j`` shows ``CLASSES[j % 10]`` for ``seconds``, then
    ``CLASSES[(j + 3) % 10]`` for as long (windows over a cut are the camera's ordinary windows too, and look
    like no one action). Return their paths."""
    if count < 1 or cuts < 0:
        raise ValueError(f"count must be at least 1 and cuts at least 0, got {count}, {cuts}")
    labels: list[str | tuple[str, str]] = [CLASSES[i % len(CLASSES)] for i in range(count)]
    labels += [(CLASSES[j % len(CLASSES)], CLASSES[(j + 3) % len(CLASSES)]) for j in range(cuts)]
    return _write_clips(Path(folder) / "none", "none", labels, (TEACH_STREAM, len(ALL_ACTIONS)), seconds, seed,
                        fps, width, height)


def write_plan(out: Path, plan: Sequence[tuple[str, float]], seed: int = 0, fps: float = 30.0, width: int = 320,
               height: int = 240) -> list[dict]:
    """A video of the shots ``plan`` lists, ``(label, seconds)`` in order (each drawn as one shot of a clip of
    it alone), and its labels json; return the labels. For tests and benchmarks that need an action at set
    times (a taught one now, and again later)."""
    segs, start = [], 0
    for i, (label, seconds) in enumerate(plan):
        if label not in ALL_ACTIONS or seconds <= 0:
            raise ValueError(f"a plan lists (action, seconds > 0) pairs; got ({label!r}, {seconds})")
        frames = max(1, round(seconds * fps))
        segs.append(_shot(seed, label, frames, fps, (TEACH_STREAM, 0x91A, i), start))
        start += frames
    encode_video(out, (render_frame(segment_at(segs, i), i, width, height) for i in range(start)), fps, width, height)
    labels = [{"start_frame": s.start_frame, "end_frame": s.end_frame, "label": s.label} for s in segs]
    labels_path(out).write_text(json.dumps(labels, indent=1) + "\n")
    return labels
