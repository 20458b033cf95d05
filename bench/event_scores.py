"""Recorded predictions replayed through :class:`ActionTracker`, and its events scored against the true segments.

A recording is one video's prediction lines (every label's probability, so any event config can be replayed
without the model). The scores are the ones issue 23 asks for: starts per true segment (a label starting
twice within one of its segments is the flicker users see), segments of 2 s or more found, false starts, and
onset delay (segment start to the first start of its label in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.config.stages import EventConfig
from streamer.kinds import LineKind
from streamer.stages.dispatcher.tracker import ActionTracker
from streamer.transport.messages import Result
from workers.training import track_scores

MIN_SEGMENT_S = track_scores.MIN_SEGMENT_S
STILL = track_scores.STILL


@dataclass
class Recording:
    """One video's predictions in event-log order (track -1: an untracked stream), its labels and its fps."""

    stream: str
    fps: float
    labels: list[str]  # the model's, in probability order
    truth: list[dict]  # the labels file (contract 4)
    frame_index: np.ndarray
    frame_ts: np.ndarray
    track: np.ndarray
    box: np.ndarray  # (N, 4), NaN where untracked
    probs: np.ndarray  # (N, classes)
    ended: frozenset[int] = frozenset()  # tracks whose capture said they ended

    @property
    def tracked(self) -> bool:
        return bool((self.track >= 0).any())


def replay(rec: Recording, config: EventConfig) -> list[dict]:
    """The start and end lines the dispatcher would write for ``rec`` under ``config`` (offline: the clock is
    the media time, frame_index / fps), each with ``"written"``: the frame of the result that wrote it. An
    ended track ends after its last prediction, as the dispatcher closes it once its windows are back; the
    rest end at the stop (``reset_all``)."""
    tracker, events = ActionTracker(config, rec.labels), []
    last = {int(t): int(np.flatnonzero(rec.track == t)[-1]) for t in np.unique(rec.track)}
    for i in range(len(rec.frame_index)):
        track, frame = int(rec.track[i]), int(rec.frame_index[i])
        result = Result(rec.stream, i, frame, float(rec.frame_ts[i]), rec.probs[i], (), "replay", {},
                        None if track < 0 else track, None if track < 0 else tuple(map(float, rec.box[i])))
        new = tracker.update(result, clock=frame / rec.fps)[1]
        if track >= 0 and track in rec.ended and last[track] == i:
            new += tracker.end_track(rec.stream, track)
        events += [{**line, "written": frame} for line in new]
    return events + [{**line, "written": int(rec.frame_index[-1])} for line in tracker.reset_all()]


CAUSES = ("score dipped", "another label took over", "new track")


@dataclass
class Scores:
    """Counts over one or more videos; ``+`` pools them."""

    segments: int = 0  # true segments (per actor on tracked videos)
    long_segments: int = 0  # of them, 2 s or more (on tracked videos: with motion), the ones to be found
    found: int = 0
    starts: int = 0  # every start line
    false_starts: int = 0  # naming a label that is not the truth at its frame (or on no actor)
    twice: int = 0  # segments in which their label started more than once
    starts_in_segments: list[int] = field(default_factory=list)  # per segment, starts of its label in it
    onsets: list[float] = field(default_factory=list)  # seconds, per found long segment
    end_lags: list[float] = field(default_factory=list)  # seconds from a found segment's end to its end line
    restarts: dict[str, int] = field(default_factory=dict)  # extra starts within a segment, by cause
    missed: list[tuple[str, float]] = field(default_factory=list)  # long segments not found: label, its peak score
    twice_by_label: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: "Scores") -> "Scores":
        out = Scores()
        for name, value in vars(self).items():
            mine, theirs = value, getattr(other, name)
            setattr(out, name, {k: mine.get(k, 0) + theirs.get(k, 0) for k in {*mine, *theirs}}
                    if isinstance(value, dict) else mine + theirs)
        return out

    @property
    def found_rate(self) -> float:
        return self.found / self.long_segments if self.long_segments else 0.0

    def onset(self, q: float) -> float:
        return float(np.percentile(self.onsets, q)) if self.onsets else float("nan")

    def end_lag(self, q: float) -> float:
        return float(np.percentile(self.end_lags, q)) if self.end_lags else float("nan")

    @property
    def mean_starts(self) -> float:
        return float(np.mean(self.starts_in_segments)) if self.starts_in_segments else 0.0

    @property
    def max_starts(self) -> int:
        return max(self.starts_in_segments, default=0)


@dataclass
class _Start:
    label: str
    frame: int
    track: int  # -1 untracked
    actor: int | None  # the actor its box overlaps (tracked); None untracked, or on no actor


@dataclass
class _Action:
    track: int
    label: str
    start: int
    end: int
    written: int  # frame of the result that wrote its end line


class _Video:
    """One video's truth and replayed events, in the terms the scores ask about."""

    def __init__(self, rec: Recording, events: list[dict]) -> None:
        self.rec, self.events = rec, events
        self.truth = track_scores.Truth(rec.truth) if rec.tracked else None
        self.segments = self.truth.segments if self.truth else [{**s, "actor": None} for s in rec.truth]
        self.starts = [_Start(e["label"], e["frame_index"], e.get("track", -1),
                              self.actor_at(e["frame_index"], e.get("box")))
                       for e in events if e["kind"] == LineKind.START]
        self.actions = _actions(events)

    def actor_at(self, frame: int, box) -> int | None:
        matched = self.truth.match(frame, box) if self.truth else None
        return matched[0] if matched else None

    def true_label(self, frame: int, box) -> str | None:
        """The truth at a start: the segment's label, or (tracked) its box's actor's; None on no actor."""
        if self.truth:
            matched = self.truth.match(frame, box)
            return matched[1] if matched else None
        return next((s["label"] for s in self.rec.truth if s["start_frame"] <= frame <= s["end_frame"]), None)

    def track_actor(self, track: int, first: int, last: int) -> int | None:
        """The actor a track is on at its first prediction in frames first..last (None untracked or on none)."""
        rec = self.rec
        at = np.flatnonzero((rec.track == track) & (rec.frame_index >= first) & (rec.frame_index <= last))
        return self.actor_at(int(rec.frame_index[at[0]]), rec.box[at[0]].tolist()) if len(at) else None

    def cause(self, a: _Start, b: _Start) -> str:
        """Why ``b`` started its label again after ``a`` within one segment."""
        if a.track != b.track:
            return "new track"
        took_over = any(s.track == a.track and s.label != a.label and a.frame <= s.frame <= b.frame
                        for s in self.starts)
        return "another label took over" if took_over else "score dipped"


def score(rec: Recording, events: list[dict], smoothing: int) -> Scores:
    """Score one video's replayed events against its labels (``smoothing``: the config's, for the peak
    smoothed score of a segment that was not found)."""
    video, out = _Video(rec, events), Scores()
    for line in (e for e in events if e["kind"] == LineKind.START):
        out.starts += 1
        out.false_starts += line["label"] != video.true_label(line["frame_index"], line.get("box"))
    for seg in video.segments:
        first, last, label = seg["start_frame"], seg["end_frame"], seg["label"]
        mine = [s for s in video.starts if s.label == label and s.actor == seg["actor"] and first <= s.frame <= last]
        out.segments += 1
        out.starts_in_segments.append(len(mine))
        for a, b in zip(mine, mine[1:]):
            out.restarts[video.cause(a, b)] = out.restarts.get(video.cause(a, b), 0) + 1
        if len(mine) > 1:
            out.twice += 1
            out.twice_by_label[label] = out.twice_by_label.get(label, 0) + 1
        if last - first + 1 < MIN_SEGMENT_S * rec.fps or (video.truth and label == STILL):
            continue  # too short to ask for, or (tracked) no motion for the tracker to see
        out.long_segments += 1
        on = [a for a in video.actions if a.label == label and a.start <= last and a.end >= first
              and video.track_actor(a.track, max(first, a.start), last) == seg["actor"]]
        ongoing = any(a.start < first for a in on)
        if ongoing or mine:
            out.found += 1
            out.onsets.append(0.0 if ongoing else (mine[0].frame - first) / rec.fps)
            out.end_lags.append((max(a.written for a in on) - last) / rec.fps)
        else:
            out.missed.append((label, _peak(rec, smoothing, label, first, last) if not video.truth else float("nan")))
    return out


def _peak(rec: Recording, smoothing: int, label: str, first: int, last: int) -> float:
    """An untracked stream's best smoothed score of ``label`` at results in frames first..last."""
    probs = rec.probs[:, rec.labels.index(label)]
    smoothed = np.convolve(probs, np.ones(smoothing) / smoothing)[:len(probs)]
    smoothed[:smoothing - 1] = np.cumsum(probs[:smoothing - 1]) / np.arange(1, smoothing)  # a short history at first
    inside = (rec.frame_index >= first) & (rec.frame_index <= last)
    return float(smoothed[inside].max()) if inside.any() else 0.0


def _actions(events: list[dict]) -> list[_Action]:
    """Start and end lines paired by id (an action never ended would run to the end; reset_all ends them all)."""
    open_, out = {}, []
    for line in events:
        if line["kind"] == LineKind.START:
            open_[line["id"]] = line
        elif line["kind"] == LineKind.END and line["id"] in open_:
            start = open_.pop(line["id"])
            out.append(_Action(start.get("track", -1), start["label"], start["frame_index"], line["frame_index"],
                               line["written"]))
    return out
