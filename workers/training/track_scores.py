"""Scoring a tracked run's event log against a multi-actor video's labels (``--actors K``, contract 4).

A prediction line of a track is matched to the actor whose true box at the line's ``frame_index``
overlaps the track's ``box`` most, if that IoU is at least ``MATCH_IOU``; it is right when its top-1
is that actor's label at that frame (an unmatched line is wrong: it names no actor). An actor
segment of at least ``MIN_SEGMENT_S`` that involves motion (every label but ``still``) is *recalled*
when a start line with its label, on a track that overlaps the actor then, falls within it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MATCH_IOU = 0.3
MIN_SEGMENT_S = 2.0
STILL = "still"


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class Truth:
    """Each actor's label and box at every frame, from the labels file."""

    def __init__(self, labels: list[dict]) -> None:
        self.segments = [s for s in labels if "actor" in s and "boxes" in s]
        if not self.segments:
            raise ValueError("these labels name no actors; render the video with --actors K")
        self.at: dict[int, list[tuple[int, str, list[float]]]] = {}
        for seg in self.segments:
            for k, box in enumerate(seg["boxes"]):
                self.at.setdefault(seg["start_frame"] + k, []).append((seg["actor"], seg["label"], box))

    def match(self, frame: int, box) -> tuple[int, str, float] | None:
        """(actor, its label, IoU) of the actor overlapping ``box`` most at ``frame``, if IoU ≥ MATCH_IOU."""
        best = max(((a, label, iou(box, b)) for a, label, b in self.at.get(frame, ())), key=lambda t: t[2],
                   default=None)
        return best if best is not None and best[2] >= MATCH_IOU else None


@dataclass
class TrackScores:
    predictions: int = 0
    right: int = 0
    unmatched: int = 0
    segments: int = 0  # actor segments of MIN_SEGMENT_S or more that involve motion
    recalled: int = 0
    per_label: dict[str, list[int]] = field(default_factory=dict)  # label → [predictions, right]
    missed: list[dict] = field(default_factory=list)  # segments without their start event

    @property
    def accuracy(self) -> float:
        return self.right / self.predictions if self.predictions else 0.0

    @property
    def recall(self) -> float:
        return self.recalled / self.segments if self.segments else 0.0

    def summary(self) -> str:
        per = ", ".join(f"{label.replace('_', ' ')} {r}/{n}" for label, (n, r) in sorted(self.per_label.items()))
        return (f"track predictions right: {self.right}/{self.predictions} ({self.accuracy:.1%}; {self.unmatched} "
                f"on no actor); segments of {MIN_SEGMENT_S:g} s or more with motion started: "
                f"{self.recalled}/{self.segments} ({self.recall:.1%}); per true label: {per}")


def score(lines: list[dict], labels: list[dict], fps: float = 30.0, stream: str | None = None) -> TrackScores:
    """Score the track lines (of ``stream``, or of every stream) against the labels."""
    truth, out = Truth(labels), TrackScores()
    mine = [line for line in lines if "track" in line and (stream is None or line.get("stream") == stream)]
    for line in mine:
        if line.get("kind") != "prediction":
            continue
        out.predictions += 1
        found = truth.match(line["frame_index"], line["box"])
        if found is None:
            out.unmatched += 1
            continue
        _, label, _ = found
        right = line["top"][0][0] == label
        out.right += right
        counts = out.per_label.setdefault(label, [0, 0])
        counts[0], counts[1] = counts[0] + 1, counts[1] + right
    starts = [line for line in mine if line.get("kind") == "start"]
    for seg in truth.segments:
        if seg["label"] == STILL or (seg["end_frame"] - seg["start_frame"] + 1) < MIN_SEGMENT_S * fps:
            continue
        out.segments += 1
        for line in starts:
            if line["label"] != seg["label"] or not seg["start_frame"] <= line["frame_index"] <= seg["end_frame"]:
                continue
            found = truth.match(line["frame_index"], line["box"])
            if found is not None and found[0] == seg["actor"]:
                out.recalled += 1
                break
        else:
            out.missed.append({k: seg[k] for k in ("actor", "label", "start_frame", "end_frame")})
    return out


def read_labels(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def read_lines(path: Path) -> list[dict]:
    """An event log's JSON lines (skipping filler lines)."""
    return [json.loads(text) for text in Path(path).read_text().splitlines() if text.strip()]
