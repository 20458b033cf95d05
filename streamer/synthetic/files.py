"""Labelled demo files (contract 4): an H.264 mp4 and, beside it, ``OUT.labels.json``, a list of
``{"start_frame", "end_frame", "label"}`` segments (``end_frame`` inclusive).

The mp4 is written here, not by :mod:`streamer.video.writer`: it must be the same file for the same
seed (no B-frames, one thread), and the video layer reads this package (the ``synthetic:`` source),
so this package may not import it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from streamer.synthetic.drawing import render_frame
from streamer.synthetic.scenes import segment_at, segments_for


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


def write_video(out: Path, seconds: float, seed: int, fps: float = 30.0, width: int = 320, height: int = 240) -> list[dict]:
    """Render ``seconds`` of the stream to an H.264 mp4 and its labels json; return the labels.

    Labels: a list of ``{"start_frame", "end_frame", "label"}``, ``end_frame`` inclusive.
    """
    num_frames = max(1, round(seconds * fps))
    segs = segments_for(seed, num_frames, fps)
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

