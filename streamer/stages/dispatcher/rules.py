"""The dispatcher's rules, apart from its sockets so that each reads on its own (and tests drive them directly).

Live, each stream (or tracked actor) keeps only its newest window: an overtaken one is dropped and
counted, so no window waits longer than one inference. Offline, windows queue and none is dropped.
A worker asking for ``n`` gets the waiting window of up to ``n`` streams at once, the stream that
has waited longest first. An ended track closes once the windows it sent are back from the workers.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamer.kinds import StageKind
from streamer.transport.messages import Stats, Window

if TYPE_CHECKING:
    from streamer.config.stages import DispatchConfig

CLOSE_WAIT_S = 10.0  # an ended track's windows still at a worker after this long are not waited for
OFFERED_SPAN_S = 10.0  # the offered rate behind workers_needed is averaged over this long, so one quiet second
                       # (a capture starved of CPU, a reconnect) does not tell an autoscaler the pool can go


@dataclass
class Counters:
    """What the once-a-second status line reports, reset after each line."""

    windows_in: int = 0
    dropped: int = 0
    predicted: int = 0
    malformed: int = 0
    forward_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    worker_ms: list[float] = field(default_factory=list)  # a worker's time for each window (its share of a batch)


class CaptureTotals:
    """Each stream's frame counters, summed over restarts of its capture (each reports its own counts)."""

    COUNTERS = ("frames_captured", "frames_converted", "display_frames", "tracks_skipped")

    def __init__(self) -> None:
        self.earlier: collections.Counter = collections.Counter()  # (counter, stream) → what restarted captures counted
        self.current: dict[str, tuple[float, dict[str, float]]] = {}  # stream → (its capture's start, its counts)
        self.fps: dict[str, float] = {}
        self.source_fps: dict[str, float] = {}  # stream → its source's own frame rate (0: unknown)
        self.tracks: dict[str, float] = {}  # stream → tracked actors active now
        self.last_frame: dict[str, float] = {}  # stream → capture time of its newest frame

    def update(self, stats: Stats) -> None:
        """Take one capture's report: its counters, ``capture_started`` and ``input_fps``."""
        values = {name: value for name, _, value in stats.samples}
        streams = {labels.get("stream", "") for _, labels, _ in stats.samples}
        if len(streams) != 1 or "capture_started" not in values:
            return
        stream = streams.pop()
        started = values["capture_started"]
        began, before = self.current.get(stream, (started, {}))
        if started != began:  # a new capture process: keep what the one before it counted
            for name, n in before.items():
                self.earlier[name, stream] += n
        self.current[stream] = (started, {name: values[name] for name in self.COUNTERS if name in values})
        if "input_fps" in values:
            self.fps[stream] = values["input_fps"]
        if "source_fps" in values:
            self.source_fps[stream] = values["source_fps"]
        if "tracks_active" in values:
            self.tracks[stream] = values["tracks_active"]
        if values.get("last_frame_ts"):
            self.last_frame[stream] = values["last_frame_ts"]

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        out = [(name, {"stream": stream}, self.earlier[name, stream] + n)
               for stream, (_, counts) in self.current.items() for name, n in counts.items()]
        return (out + [("input_fps", {"stream": s}, fps) for s, fps in self.fps.items()]
                + [("tracks_active", {"stream": s}, n) for s, n in self.tracks.items()]
                + [("last_frame_ts", {"stream": s}, ts) for s, ts in self.last_frame.items()])


@dataclass
class WorkerState:
    identity: bytes
    name: str
    waiting_for: int = 0          # windows it asked for and has not been sent
    last_seen: float = 0.0
    holding: tuple[tuple[str, int | None], ...] = ()  # (stream, track) of the batch it is running (empty: idle)


class Dispatcher:
    """The dispatch rules: which window waits, which is dropped, which worker gets what, when a track closes."""

    def __init__(self, config: DispatchConfig) -> None:
        self.config = config
        self.pending: dict[tuple[str, int | None], collections.deque[Window]] = {}  # per stream, or tracked actor
        self.capture_of: dict[str, bytes] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.counters = Counters()
        self.ended: set[str] = set()
        self.outstanding: dict[tuple[str, int | None], int] = collections.Counter()  # windows at workers, per key
        self.closing: dict[tuple[str, int], float] = {}  # ended tracks with windows still to predict → when to give up
        self.totals: collections.Counter = collections.Counter()  # (metric, stream, reason) → count, for Stats
        self.captured = CaptureTotals()
        self.offered: collections.deque[tuple[float, int]] = collections.deque()  # (seconds, windows in) per report

    def drop(self, stream: str, reason: str, n: int = 1) -> None:
        self.counters.dropped += n
        self.totals["windows_dropped", stream, reason] += n

    @property
    def total_dropped(self) -> int:
        return sum(n for (name, _, _), n in self.totals.items() if name == "windows_dropped")

    def stats(self, log_lines: int, malformed: int, offered_per_s: float = 0.0,
              worker_s_per_window: float = 0.0, extra: tuple = ()) -> Stats:
        """Everything this hub counts, for the web stage's /metrics and /readyz (sent once a second) and its own
        (``--health``). ``offered_per_s`` windows a second came in lately, each taking a worker
        ``worker_s_per_window``: what :meth:`workers_needed` makes of them."""
        samples = [(name, {"stream": stream, **({"reason": reason} if reason else {})}, float(n))
                   for (name, stream, reason), n in self.totals.items()]
        samples += self.captured.samples()
        samples += [("event_log_lines", {}, float(log_lines)), ("malformed_messages", {}, float(malformed)),
                    ("workers_answering", {}, float(len(self.workers))),
                    ("dispatcher_windows_waiting", {}, float(self.waiting())),
                    ("dispatcher_workers_needed", {}, self.workers_needed(offered_per_s, worker_s_per_window)),
                    *extra]
        return Stats(StageKind.DISPATCHER, time.time(), tuple(samples))

    def offered_rate(self, seconds: float, windows_in: int) -> float:
        """Windows offered a second over the last :data:`OFFERED_SPAN_S`, counting this report's ``windows_in``
        over ``seconds``."""
        self.offered.append((seconds, windows_in))
        while sum(s for s, _ in self.offered) - self.offered[0][0] >= OFFERED_SPAN_S:
            self.offered.popleft()
        return sum(n for _, n in self.offered) / sum(s for s, _ in self.offered)

    def waiting(self) -> int:
        """Windows waiting for a worker now."""
        return sum(len(q) for q in self.pending.values())

    def workers_needed(self, offered_per_s: float, worker_s_per_window: float) -> float:
        """Workers it takes to predict every window offered (the autoscaling metric): the offered rate times what
        a window costs a worker; at least 1 while windows wait and no worker answers, so that a pool scaled to
        zero comes back (it has no cost to measure then)."""
        needed = offered_per_s * worker_s_per_window
        if self.waiting() and not self.workers:
            needed = max(needed, 1.0)
        return round(needed, 3)

    def add_window(self, identity: bytes, window: Window) -> None:
        self.capture_of[window.stream] = identity
        queue = self.pending.setdefault(window.key, collections.deque())
        self.counters.windows_in += 1
        self.totals["windows_sent", window.stream, ""] += 1
        if queue and not self.config.offline:
            self.drop(window.stream, "overtaken", len(queue))
            queue.clear()
        queue.append(window)

    def next_batch(self, limit: int) -> list[Window]:
        """The newest (live) or oldest (offline) window of up to ``limit`` streams, oldest-waiting streams first."""
        ready = [q for q in self.pending.values() if q]
        ready.sort(key=lambda q: q[0].sent_ts)
        batch = []
        for queue in ready[:limit]:
            window = queue.popleft()
            batch.append(window)
            self.outstanding[window.key] += 1
        return batch

    def worker_ready(self, identity: bytes, name: str, max_batch: int, now: float) -> None:
        """A worker asks for up to ``max_batch`` windows: it holds nothing any more (its last batch is answered)."""
        worker = self.workers.setdefault(identity, WorkerState(identity, name))
        worker.waiting_for, worker.holding, worker.last_seen = max_batch, (), now

    def worker_seen(self, identity: bytes, now: float) -> None:
        if identity in self.workers:
            self.workers[identity].last_seen = now

    def assign(self) -> list[tuple[WorkerState, list[Window]]]:
        """A batch for each idle worker that asked for work, while windows wait."""
        out = []
        for worker in self.workers.values():
            if worker.waiting_for <= 0 or worker.holding:
                continue
            batch = self.next_batch(worker.waiting_for)
            if not batch:
                break
            worker.waiting_for, worker.holding = 0, tuple(w.key for w in batch)
            out.append((worker, batch))
        return out

    def forget_silent_workers(self, now: float) -> list[WorkerState]:
        """The workers silent past the heartbeat timeout, forgotten: their windows are stale, not re-sent."""
        gone = [w for w in self.workers.values() if now - w.last_seen > self.config.heartbeat_timeout_s]
        for worker in gone:
            self.forget_worker(worker.identity)
        return gone

    def forget_worker(self, identity: bytes) -> WorkerState | None:
        """A worker gone (silent, or it said it leaves): whatever it held will never come back."""
        worker = self.workers.pop(identity, None)
        for key in worker.holding if worker is not None else ():  # stop waiting for them
            self.release(key)
        return worker

    def window_stale(self, key: tuple[str, int | None]) -> None:
        """A worker could not read a window's frames (overwritten in the frame store): dropped as stale."""
        self.release(key)
        self.drop(key[0], "stale")

    def release(self, key: tuple[str, int | None]) -> None:
        """A window of ``key`` (stream, track) is back from a worker (predicted, unreadable, or its worker gone)."""
        self.outstanding[key] = max(0, self.outstanding[key] - 1)

    def finished(self) -> bool:
        """Every stream is finite, has ended, and has nothing waiting or at a worker."""
        streams = set(self.config.streams)
        return (bool(streams) and streams == set(self.config.finite_streams) and self.ended >= streams
                and not any(q for q in self.pending.values()) and not any(self.outstanding.values()))

    def end_track(self, stream: str, track: int) -> None:
        """A track ended in its capture; it closes once the windows it sent before are predicted (a capture runs
        ahead of the workers: their results still belong to the actor, and may start its action)."""
        self.closing[stream, track] = time.monotonic() + CLOSE_WAIT_S

    def closed_tracks(self) -> list[tuple[str, int]]:
        """The ended tracks with nothing left waiting or at a worker (or waited for long enough), forgotten."""
        now, out = time.monotonic(), []
        for key, give_up in list(self.closing.items()):
            if (self.pending.get(key) or self.outstanding[key]) and now < give_up:
                continue
            del self.closing[key]
            self.pending.pop(key, None)
            self.outstanding.pop(key, None)
            out.append(key)
        return out
