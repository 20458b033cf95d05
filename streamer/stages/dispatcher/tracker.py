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
from streamer.errors import ConfigError, ProtocolError
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
class _StreamState:
    history: deque  # of (classes,) float32 arrays
    active: int | None = None  # class index of the ongoing action
    active_id: str = ""  # its event id
    frame_index: int = 0  # of the newest result
    frame_ts: float = 0.0
    smoothed: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None  # a tracked actor's, at frame_index


ENDED_TRACKS_KEPT = 4096  # ended tracks remembered, so that a late result does not start one again


class ActionTracker:
    """Smoothed top-k and action start/end events, per stream and, within a tracked stream, per actor.

    Args:
        config: thresholds and smoothing.
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

    def _event(self, kind: LineKind, key: tuple[str, int | None], state: _StreamState, cls: int,
               score: float) -> dict[str, Any]:
        if kind == LineKind.START:
            state.active_id = new_event_id()
        line = {"kind": kind, "stream": key[0], "label": self._label(cls), "frame_index": state.frame_index,
                "frame_ts": state.frame_ts, "score": round(float(score), 6), "id": state.active_id}
        return line if key[1] is None else {**line, "track": key[1], "box": box_line(state.box)}

    def update(self, result: Result) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
        """Take one result; return its stream's smoothed top-k (best first) and the events it caused.

        A late result (its stream already has a newer one) changes nothing.
        Raises ProtocolError if its class count does not match the labels.
        """
        probs = np.asarray(result.probs, np.float32)
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
        state.smoothed = np.mean(state.history, axis=0)
        return self._top(state.smoothed), self._transition(result.key, state)

    def _transition(self, stream: tuple[str, int | None], state: _StreamState) -> list[dict[str, Any]]:
        p, cfg, events = state.smoothed, self.config, []
        best = int(np.argmax(p))
        if best != state.active and p[best] >= cfg.start_threshold:
            if state.active is not None:  # a new action takes over: the old one ends first
                events.append(self._event(LineKind.END, stream, state, state.active, p[state.active]))
            events.append(self._event(LineKind.START, stream, state, best, p[best]))
            state.active = best
        elif state.active is not None and p[state.active] < cfg.end_threshold:
            events.append(self._event(LineKind.END, stream, state, state.active, p[state.active]))
            state.active = None
        return events

    def active(self, stream: str, track: int | None = None) -> str | None:
        """Label of the stream's (or its tracked actor's) ongoing action, if any."""
        state = self._streams.get((stream, track))
        return None if state is None or state.active is None else self._label(state.active)

    def _forget(self, key: tuple[str, int | None]) -> list[dict[str, Any]]:
        state = self._streams.pop(key, None)
        if state is None or state.active is None:
            return []
        return [self._event(LineKind.END, key, state, state.active, state.smoothed[state.active])]

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


def left_open(lines: Sequence[dict[str, Any]], streams: set[str], smoothing: int) -> list[dict[str, Any]]:
    """The ``end`` lines of the actions of ``streams`` that ``lines`` (an event log's tail, oldest first) start
    and never end: what a dispatcher that died without stopping (SIGKILL, a lost node) left under way, ended as
    its clean stop would have. Each ends at its stream's (or actor's) last prediction, with the label's mean
    probability over the last ``smoothing`` predictions (a label out of a line's top list counts 0)."""
    starts: dict[str, dict[str, Any]] = {}
    recent: dict[tuple[str, Any], deque] = {}  # (stream, track) → its last predictions
    for line in lines:
        kind, stream = line.get("kind"), line.get("stream")
        if stream not in streams:
            continue
        if kind == LineKind.PREDICTION:
            recent.setdefault((stream, line.get("track")), deque(maxlen=smoothing)).append(line)
        elif kind == LineKind.START and isinstance(line.get("id"), str) and isinstance(line.get("label"), str):
            starts[line["id"]] = line
        elif kind == LineKind.END:
            starts.pop(line.get("id"), None)
    ends = []
    for start in starts.values():
        key, label = (start["stream"], start.get("track")), start["label"]
        seen = recent.get(key)
        last = seen[-1] if seen else start
        score = np.mean([next((p for name, p in line.get("top", ()) if name == label), 0.0) for line in seen]) \
            if seen else start.get("score", 0.0)
        end = {"kind": LineKind.END, "stream": key[0], "label": label, "frame_index": last["frame_index"],
               "frame_ts": last["frame_ts"], "score": round(float(score), 6), "id": start["id"]}
        ends.append(end if key[1] is None else {**end, "track": key[1], "box": last.get("box")})
    return ends


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
