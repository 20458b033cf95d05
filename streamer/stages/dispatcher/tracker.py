"""Predictions → action events (contract 3 in DESIGN.md).

Every result becomes a ``prediction`` line (:func:`prediction_line`); :class:`ActionTracker` smooths
each stream's probabilities over its last few results and, with a start and a lower end threshold
(hysteresis), turns them into ``start``/``end`` lines, so one noisy window neither starts nor ends an
action. The lines are written by :class:`~streamer.stages.dispatcher.event_log.EventLog`.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from streamer.config.stages import EventConfig
from streamer.errors import ProtocolError
from streamer.kinds import LineKind
from streamer.transport.messages import Result

# A result older than the newest one seen for its stream is late (two workers
# finished out of order) and skipped; one older by more than this is taken as a
# restarted source or a clock step, and accepted.
LATE_TOLERANCE_S = 30.0
EVENT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what an action id may look like (it names files and URLs)


def new_event_id() -> str:
    """An id for one action, shared by its start and end lines: the start's Unix milliseconds and 24 random
    bits, so ids sort by time and stay unique across dispatcher restarts within a run."""
    return f"{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"


@dataclass
class _Point:
    """Where a stream stood at one result: what an end line written later names."""

    frame_index: int
    frame_ts: float
    clock: float  # the stream's own seconds (media time offline), which the holds are measured in
    score: float
    box: tuple[float, float, float, float] | None


@dataclass
class _StreamState:
    history: deque  # of (classes,) float32 arrays
    active: int | None = None  # class index of the ongoing action
    active_id: str = ""  # its event id
    started: float = 0.0  # its start, on the stream's clock
    peak: float = 0.0  # its best smoothed score so far
    quiet_since: _Point | None = None  # where its score went below the end threshold (None: it has not)
    ending: dict[str, Any] | None = None  # an end line held back for merge_gap_s: the same label may come back
    ending_due: float = 0.0  # on the stream's clock
    ending_label: int = -1
    frame_index: int = 0  # of the newest result
    frame_ts: float = 0.0
    clock: float = 0.0
    smoothed: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None  # a tracked actor's, at frame_index


ENDED_TRACKS_KEPT = 4096  # ended tracks remembered, so that a late result does not start one again


class ActionTracker:
    """Smoothed top-k and action start/end events, per stream and, within a tracked stream, per actor.

    An action starts when its label's smoothed score reaches its start threshold; it ends once the score has
    stayed below its end threshold for ``end_hold_s`` (the end line names where it went below), or when another
    label takes over. That end line is held back ``merge_gap_s``: the same label starting again by then
    continues the action, so a flickering score is one action, one id, one clip.

    Args:
        config: thresholds, holds and smoothing.
        labels: class names in model order (``model.labels``); None names them ``class_<i>``.
    """

    def __init__(self, config: EventConfig, labels: Sequence[str] | None) -> None:
        self.config = config
        self.labels = list(labels) if labels is not None else None
        self._streams: dict[tuple[str, int | None], _StreamState] = {}  # (stream, track or None) → its state
        self._lost_at: dict[str, float] = {}  # capture time of each stream's last loss
        self._ended: dict[tuple[str, int], None] = {}  # ended tracks, oldest first (a bounded, ordered set)

    def _label(self, i: int) -> str:
        return self.labels[i] if self.labels is not None else f"class_{i}"

    def _top(self, probs: np.ndarray) -> list[tuple[str, float]]:
        k = min(self.config.top_k, probs.shape[0])
        best = np.argpartition(-probs, k - 1)[:k]
        best = best[np.argsort(-probs[best], kind="stable")]
        return [(self._label(int(i)), float(probs[i])) for i in best]

    def _point(self, state: _StreamState, cls: int) -> _Point:
        return _Point(state.frame_index, state.frame_ts, state.clock, float(state.smoothed[cls]), state.box)

    def _line(self, kind: LineKind, key: tuple[str, int | None], state: _StreamState, cls: int,
              at: _Point) -> dict[str, Any]:
        line = {"kind": kind, "stream": key[0], "label": self._label(cls), "frame_index": at.frame_index,
                "frame_ts": at.frame_ts, "score": round(at.score, 6), "id": state.active_id}
        if kind == LineKind.END:
            line["peak"] = round(max(state.peak, at.score), 6)
        return line if key[1] is None else {**line, "track": key[1], "box": box_line(at.box)}

    def update(self, result: Result, clock: float | None = None, probs: np.ndarray | None = None
               ) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
        """Take one result; return its stream's smoothed top-k (best first) and the events it caused.

        ``clock`` is the result's time in its stream's own seconds, which the holds count in (default its
        ``frame_ts``; a file read faster than real time gives its media time). A late result (its stream
        already has a newer one) changes nothing. Raises ProtocolError if its class count does not match
        the labels. ``probs``: the result's probabilities laid out over the current labels, if they were not
        (a result scored before labels were taught or forgotten).
        """
        probs = np.asarray(result.probs if probs is None else probs, np.float32)
        if self.labels is not None and probs.shape != (len(self.labels),):
            raise ProtocolError(
                f"result from worker {result.worker!r} has {probs.shape[0]} classes but the model labels "
                f"list {len(self.labels)}; restart with matching checkpoints")
        if result.frame_ts <= self._lost_at.get(result.stream, -math.inf) or result.key in self._ended:
            return self._top(probs), []  # captured before its source was lost or its track ended: that action ended
        state = self._streams.get(result.key)
        if state is not None and state.history and state.history[-1].shape != probs.shape:
            state = None  # the model changed under this stream: start afresh
        if state is None:
            state = self._streams[result.key] = _StreamState(deque(maxlen=self.config.smoothing))
        elif state.smoothed is not None and 0 < state.frame_ts - result.frame_ts <= LATE_TOLERANCE_S:
            return self._top(state.smoothed), []
        state.history.append(probs)
        state.frame_index, state.frame_ts, state.box = result.frame_index, result.frame_ts, result.box
        state.clock = result.frame_ts if clock is None else clock
        state.smoothed = np.mean(state.history, axis=0)
        return self._top(state.smoothed), self._transition(result.key, state)

    def _transition(self, key: tuple[str, int | None], state: _StreamState) -> list[dict[str, Any]]:
        p, events = state.smoothed, []
        if state.ending is not None and state.clock >= state.ending_due:
            events.append(self._release_end(state))
        best = int(np.argmax(p))
        if best != state.active and p[best] >= self.config.thresholds(self._label(best))[0]:
            if state.active is not None:  # a new action takes over: the old one ends first (where it went quiet)
                at = state.quiet_since or self._point(state, state.active)
                events.append(self._line(LineKind.END, key, state, state.active, at))
            if state.ending is not None and state.ending_label == best:  # back within merge_gap_s: it goes on
                state.ending = None
            else:
                if state.ending is not None:
                    events.append(self._release_end(state))
                state.active_id, state.started, state.peak = new_event_id(), state.clock, 0.0
                events.append(self._line(LineKind.START, key, state, best, self._point(state, best)))
            state.active, state.quiet_since = best, None
        elif state.active is not None:
            events += self._maybe_end(key, state)
        if state.active is not None:
            state.peak = max(state.peak, float(p[state.active]))
        return events

    def clock_of(self, key: tuple[str, int | None]) -> float | None:
        """The stream's (or actor's) newest time on its own clock, None before its first result."""
        state = self._streams.get(key)
        return None if state is None else state.clock

    def _maybe_end(self, key: tuple[str, int | None], state: _StreamState) -> list[dict[str, Any]]:
        """The ongoing action's end, once its score has stayed below the end threshold for ``end_hold_s``."""
        score = float(state.smoothed[state.active])
        if score >= self.config.thresholds(self._label(state.active))[1]:
            state.quiet_since = None
            return []
        if state.quiet_since is None:
            state.quiet_since = self._point(state, state.active)
        if state.clock - state.quiet_since.clock < self.config.end_hold_s:
            return []
        end = self._line(LineKind.END, key, state, state.active, state.quiet_since)
        state.ending, state.ending_label = end, state.active
        state.ending_due = state.quiet_since.clock + self.config.end_hold_s + self.config.merge_gap_s
        state.active, state.quiet_since = None, None
        return [self._release_end(state)] if state.clock >= state.ending_due else []

    @staticmethod
    def _release_end(state: _StreamState) -> dict[str, Any]:
        end, state.ending = state.ending, None
        return end

    def relabel(self, labels: Sequence[str]) -> list[dict[str, Any]]:
        """The classes changed (labels taught or forgotten): each stream's history is laid out over ``labels`` by
        name and goes on; an action whose label is gone ends now (its end line is returned)."""
        before, labels = self.labels, list(labels)
        if before is None or before == labels:
            self.labels = labels
            return []
        index = {label: i for i, label in enumerate(labels)}
        moved = np.array([index.get(label, -1) for label in before])
        events = []
        for key, state in self._streams.items():  # the ends, while the old labels still name them
            if state.active is not None and moved[state.active] < 0:
                events.append(self._line(LineKind.END, key, state, state.active,
                                         state.quiet_since or self._point(state, state.active)))
                state.active, state.quiet_since = None, None
        self.labels = labels
        for state in self._streams.values():
            if state.active is not None:
                state.active = int(moved[state.active])
            state.ending_label = int(moved[state.ending_label]) if state.ending_label >= 0 else -1
            state.history = deque((_laid_out(h, moved, len(labels)) for h in state.history),
                                  maxlen=state.history.maxlen)
            if state.smoothed is not None:
                state.smoothed = _laid_out(state.smoothed, moved, len(labels))
        return events

    def active(self, stream: str, track: int | None = None) -> str | None:
        """Label of the stream's (or its tracked actor's) ongoing action, if any."""
        state = self._streams.get((stream, track))
        return None if state is None or state.active is None else self._label(state.active)

    def _forget(self, key: tuple[str, int | None]) -> list[dict[str, Any]]:
        """The stream or actor is gone: its held-back end, and the end of its ongoing action (where it went
        quiet, if it had)."""
        state = self._streams.pop(key, None)
        if state is None:
            return []
        events = [self._release_end(state)] if state.ending is not None else []
        if state.active is not None:
            at = state.quiet_since or self._point(state, state.active)
            events.append(self._line(LineKind.END, key, state, state.active, at))
        return events

    def due_ends(self, now: float) -> list[dict[str, Any]]:
        """The held-back end lines whose merge gap has passed by ``now`` (Unix seconds) although their stream
        has sent no result since (a stalled or silent stream must not hold an end back for ever)."""
        out = []
        for state in self._streams.values():
            if state.ending is not None and now - state.frame_ts >= state.ending_due - state.clock:
                out.append(self._release_end(state))
        return out

    def reset(self, stream: str, lost_ts: float | None = None) -> list[dict[str, Any]]:
        """Forget a stream and all its tracks; returns the ``end`` events of their ongoing actions.

        With ``lost_ts`` (its source was lost then), results of windows captured before it that
        are still at a worker are logged but start no action: the one they belong to has ended.
        """
        if lost_ts is not None:
            self._lost_at[stream] = lost_ts
        return [event for key in list(self._streams) if key[0] == stream for event in self._forget(key)]

    def end_track(self, stream: str, track: int) -> list[dict[str, Any]]:
        """A tracked actor is gone: the ``end`` event of its ongoing action; its late results start nothing."""
        self._ended[stream, track] = None
        while len(self._ended) > ENDED_TRACKS_KEPT:
            del self._ended[next(iter(self._ended))]
        return self._forget((stream, track))

    def reset_all(self) -> list[dict[str, Any]]:
        """Forget every stream (clean stop): the ``end`` events of all ongoing actions."""
        return [event for key in list(self._streams) for event in self._forget(key)]


def _laid_out(probs: np.ndarray, moved: np.ndarray, classes: int) -> np.ndarray:
    """``probs[i]`` at ``moved[i]`` of ``classes`` (dropped where ``moved`` is -1; a new class starts at 0)."""
    out = np.zeros(classes, np.float32)
    kept = moved >= 0
    out[moved[kept]] = probs[kept]
    return out


def left_open(lines: Sequence[dict[str, Any]], streams: set[str], smoothing: int) -> list[dict[str, Any]]:
    """The ``end`` lines of the actions of ``streams`` that ``lines`` (an event log's tail, oldest first) start
    and never end: what a dispatcher that died without stopping (SIGKILL, a lost node) left under way, ended as
    its clean stop would have. Each ends at its stream's (or actor's) last prediction, with the label's mean
    probability over the last ``smoothing`` predictions (a label out of a line's top list counts 0)."""
    starts: dict[str, dict[str, Any]] = {}
    peaks: dict[str, float] = {}  # id → the best smoothed score of its label since its start
    recent: dict[tuple[str, Any], deque] = {}  # (stream, track) → its last predictions
    for line in lines:
        kind, stream = line.get("kind"), line.get("stream")
        if stream not in streams:
            continue
        if kind == LineKind.PREDICTION:
            key = (stream, line.get("track"))
            recent.setdefault(key, deque(maxlen=smoothing)).append(line)
            for event_id, start in starts.items():
                if (start["stream"], start.get("track")) == key:
                    peaks[event_id] = max(peaks[event_id], _mean_score(recent[key], start["label"]))
        elif kind == LineKind.START and isinstance(line.get("id"), str) and isinstance(line.get("label"), str):
            starts[line["id"]] = line
            peaks[line["id"]] = float(line.get("score", 0.0))
        elif kind == LineKind.END:
            starts.pop(line.get("id"), None)
    ends = []
    for start in starts.values():
        key, label = (start["stream"], start.get("track")), start["label"]
        seen = recent.get(key)
        last = seen[-1] if seen else start
        score = _mean_score(seen, label) if seen else start.get("score", 0.0)
        end = {"kind": LineKind.END, "stream": key[0], "label": label, "frame_index": last["frame_index"],
               "frame_ts": last["frame_ts"], "score": round(float(score), 6), "id": start["id"],
               "peak": round(max(peaks[start["id"]], float(score)), 6)}
        ends.append(end if key[1] is None else {**end, "track": key[1], "box": last.get("box")})
    return ends


def _mean_score(predictions: Sequence[dict[str, Any]], label: str) -> float:
    """The mean probability of ``label`` over prediction lines (a label out of a line's top list counts 0)."""
    return float(np.mean([next((p for name, p in line.get("top", ()) if name == label), 0.0)
                          for line in predictions]))


def box_line(box) -> list[float] | None:
    """A box as the event log writes it: pixels to a tenth."""
    return None if box is None else [round(float(v), 1) for v in box]


def prediction_line(result: Result, now: float) -> dict[str, Any]:
    """The contract's ``prediction`` line for one result, ``now`` being the Unix time it is written;
    a tracked actor's also has ``track`` and ``box`` (contract 7)."""
    place = {} if result.track is None else {"track": result.track, "box": box_line(result.box)}
    return {**place,
        "kind": LineKind.PREDICTION,
        "stream": result.stream,
        "frame_index": result.frame_index,
        "frame_ts": result.frame_ts,
        "top": [[label, round(float(p), 6)] for label, p in result.top],
        "latency_ms": round((now - result.frame_ts) * 1000.0, 3),
        "seq": result.seq,
        "worker": result.worker,
        "timings": {k: round(float(v), 3) for k, v in result.timings.items()},
    }
