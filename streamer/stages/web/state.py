"""What the web stage knows of the pipeline, built only from the messages it receives.

Display frames (from the captures, only while someone watches), event-log lines, source status
and the dispatcher's once-a-second :class:`~streamer.transport.messages.Stats` (which also say when each
capture last read a frame) are applied here, on the web stage's event
loop; the routes only read. Everything kept is bounded: one frame per stream, the newest
``events_kept`` action events, counters keyed by stream and label.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

from streamer.kinds import RESTARTED_STAGE, LineKind, StageKind, StreamState
from streamer.render.panel import StreamView
from streamer.transport.messages import DisplayFrame, LogLine, Stats, Status
from streamer.config.stages import WebConfig

FRAME_AGE_S = 5.0  # a live source that delivered no frame for this long is not ready
DISPATCHER_SILENT_S = 5.0  # the dispatcher reports once a second; silent this long, it is down
SUBSCRIBER_BACKLOG = 256  # server-sent events waiting for one page; a page further behind misses some


@dataclass
class WebStream:
    """One stream as the page and the API show it."""

    name: str
    kind: str  # webcam, rtsp, file, synthetic
    view: StreamView
    lost: str | None = None  # why its source is lost, while it is
    ended: bool = False
    last_frame: float = 0.0  # capture time of its newest frame (from its display frames or its capture's report)
    shown_at: float = 0.0  # Unix time the newest display frame arrived (frames come only while watched)
    frame_version: int = 0  # counts display frames; a JPEG is made for one version
    latest: dict | None = None  # its newest prediction line
    active: dict | None = None  # the start line of its ongoing action
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) on each frame

    def state(self, now: float) -> StreamState:
        if self.ended:
            return StreamState.ENDED
        if self.lost is not None or (self.last_frame and now - self.last_frame > FRAME_AGE_S):
            return StreamState.LOST
        return StreamState.LIVE if self.last_frame else StreamState.STARTING


def _valid_top(top: Any) -> bool:
    return isinstance(top, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        and type(pair[1]) in (int, float) and math.isfinite(pair[1]) for pair in top)


class WebState:
    """The streams, the recent action events, the counters and readiness, for one web stage."""

    def __init__(self, config: WebConfig, observe=None) -> None:
        self.config = config
        self.streams = {name: WebStream(name, kind, StreamView(config.top_k)) for name, kind in config.streams}
        self.events: collections.deque[dict] = collections.deque(maxlen=config.events_kept)
        self.counts: collections.Counter = collections.Counter()  # (metric, ((label, value), ...)) → n
        self.reported: dict[tuple, float] = {}  # the dispatcher's latest samples
        self.stage_reports: dict[str, dict[tuple, float]] = {}  # other stages' (the sinks'), by sender
        self.clips: collections.OrderedDict[str, str] = collections.OrderedDict()  # event id → clip path, newest last
        self.reported_at = 0.0
        self.malformed = 0
        self.started = time.time()
        self.subscribers: set[asyncio.Queue] = set()
        self.observe = observe  # called with each prediction line (the metrics' histograms)
        for name in self.streams:
            self.counts["predictions", (("stream", name),)] += 0

    # ------------------------------------------------------------------ applying messages

    def apply(self, msg: Any) -> None:
        if isinstance(msg, DisplayFrame):
            self._frame(msg)
        elif isinstance(msg, LogLine):
            self._line(msg.line)
        elif isinstance(msg, Status):
            self._status(msg)
        elif isinstance(msg, Stats) and msg.sender == StageKind.DISPATCHER:
            self.reported = {(name, tuple(sorted(labels.items()))): value for name, labels, value in msg.samples}
            self.reported_at = time.time()
            for labels, ts in self.reported_samples("last_frame_ts"):
                if (stream := self.streams.get(labels.get("stream"))) is not None:
                    stream.last_frame = max(stream.last_frame, ts)
        elif isinstance(msg, Stats) and msg.sender in (StageKind.SINKS, StageKind.CLIPS):  # forwarded by the dispatcher
            self.stage_reports[msg.sender] = {(name, tuple(sorted(labels.items()))): value
                                              for name, labels, value in msg.samples}

    def _frame(self, msg: DisplayFrame) -> None:
        stream = self.streams.get(msg.stream)
        if stream is None:
            return
        now = time.time()
        stream.view.add_frame(msg.image, msg.index, msg.ts, now, msg.tracks)
        stream.last_frame, stream.shown_at = max(stream.last_frame, msg.ts), now
        self._redraw(stream)

    @staticmethod
    def _redraw(stream: WebStream) -> None:
        """A new picture to show (a new frame, or the same one with a new status): wake its viewers."""
        stream.frame_version += 1
        changed, stream.changed = stream.changed, asyncio.Event()
        changed.set()

    def _line(self, line: dict) -> None:
        kind, stream = line.get("kind"), self.streams.get(line.get("stream"))
        if stream is None or kind not in (LineKind.PREDICTION, LineKind.START, LineKind.END):
            return  # status lines come as Status messages too; other streams are not shown
        if kind == LineKind.PREDICTION:
            latency = line.get("latency_ms")
            if not _valid_top(line.get("top")) or type(latency) not in (int, float):
                self.malformed += 1
                return
            stream.latest = line
            track = line.get("track")
            stream.view.add_top([tuple(pair) for pair in line["top"]], float(latency),
                                track if type(track) is int else None)
            self.counts["predictions", (("stream", stream.name),)] += 1
            if self.observe is not None:
                self.observe(line)
            return
        if not isinstance(line.get("label"), str):
            self.malformed += 1
            return
        stream.active = line if kind == LineKind.START else None
        if kind == LineKind.END and isinstance(line.get("clip"), str) and isinstance(line.get("id"), str):
            self.clips[line["id"]] = line["clip"]
            while len(self.clips) > self.config.events_kept:
                self.clips.popitem(last=False)
        self.events.appendleft(line)
        self.counts["action_events", (("kind", kind), ("label", line["label"]), ("stream", stream.name))] += 1
        self.publish("event", line)

    def _status(self, msg: Status) -> None:
        if (stage := RESTARTED_STAGE.get(msg.kind)) is not None:
            self.counts["stage_restarts", (("stage", stage),)] += 1
            return
        stream = self.streams.get(msg.stream)
        if stream is None:
            return
        if msg.kind == LineKind.SOURCE_LOST:
            stream.lost, stream.view.status, stream.active = msg.detail or "lost", "source lost", None
            self.counts["source_losses", (("stream", stream.name),)] += 1
        elif msg.kind == LineKind.SOURCE_RESTORED:
            stream.lost, stream.view.status = None, None
            self.counts["source_reconnects", (("stream", stream.name),)] += 1
        elif msg.kind == LineKind.END_OF_STREAM:
            stream.ended, stream.view.status = True, "ended"
        else:
            return
        self._redraw(stream)  # viewers of a frozen picture see it marked lost (or back) at once
        self.publish("streams", self.stream_list())

    # ------------------------------------------------------------------ server-sent events

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)

    def publish(self, kind: str, data: Any) -> None:
        """To every open page; a page too far behind misses this one (the next stream list catches it up)."""
        for queue in self.subscribers:
            if not queue.full():
                queue.put_nowait((kind, data))

    # ------------------------------------------------------------------ what the routes read

    def reported_value(self, name: str, **labels: str) -> float:
        return self.reported.get((name, tuple(sorted(labels.items()))), 0.0)

    def reported_samples(self, name: str):
        """``(labels, value)`` of each sample of ``name`` in the latest reports (the dispatcher's and the sinks')."""
        reports = [self.reported, *self.stage_reports.values()]
        return [(dict(labels), value) for report in reports for (metric, labels), value in report.items()
                if metric == name]

    def stream_list(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for s in self.streams.values():
            dropped = sum(v for labels, v in self.reported_samples("windows_dropped") if labels["stream"] == s.name)
            out.append({
                "name": s.name, "source": s.kind, "state": s.state(now), "detail": s.lost,
                "fps_in": round(self.reported_value("input_fps", stream=s.name), 2),
                "frames_captured": int(self.reported_value("frames_captured", stream=s.name)),
                "windows_sent": int(self.reported_value("windows_sent", stream=s.name)),
                "windows_dropped": int(dropped),
                "predictions": self.counts["predictions", (("stream", s.name),)],
                "action": s.active["label"] if s.active else None,
                "latest": s.latest,
            })
        return out

    def not_ready(self) -> list[str]:
        """What keeps the pipeline from being ready (empty: ready), one readable reason each."""
        now, problems = time.time(), []
        if now - self.reported_at > DISPATCHER_SILENT_S:
            problems.append("dispatcher: no report in the last "
                            f"{DISPATCHER_SILENT_S:g} s" if self.reported_at else "dispatcher: not reporting yet")
        elif self.reported_value("workers_answering") < 1:
            problems.append("workers: none is warm and answering yet")
        for s in self.streams.values():
            if s.ended:
                continue
            if s.lost is not None:
                problems.append(f"source {s.name} ({s.kind}): lost: {s.lost}")
            elif not s.last_frame:
                problems.append(f"source {s.name} ({s.kind}): no frame yet")
            elif now - s.last_frame > FRAME_AGE_S:
                problems.append(f"source {s.name} ({s.kind}): no frame for {now - s.last_frame:.0f} s")
        return problems
