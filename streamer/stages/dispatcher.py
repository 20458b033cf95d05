"""Dispatcher stage: the hub between captures, workers, the event log and the overlay.

Workers pull: a worker says "ready for n" and gets at once the newest waiting window of
up to n streams (one message, batched across streams). Live, each stream keeps only its
newest window; an overtaken one is dropped and counted, so no window waits longer than
one inference. Offline, windows queue and each taken window returns a credit to its
capture, so nothing is dropped. Results become event-log lines here, as they arrive.
"""

import collections
import multiprocessing.synchronize
import time
from dataclasses import dataclass, field

import zmq
from loguru import logger

from streamer.transport import messages, sockets
from streamer.config.stages import DispatchConfig
from streamer.errors import ProtocolError
from streamer.stages.events import ActionTracker, EventLog, prediction_line
from streamer.transport.messages import Batch, Credit, Heartbeat, LogLine, ResultBatch, Stats, Status, Window, WorkRequest
from streamer.render.draw import label_words

CLOSE_WAIT_S = 10.0  # an ended track's windows still at a worker after this long are not waited for


@dataclass
class Counters:
    """What the once-a-second status line reports, reset after each line."""

    windows_in: int = 0
    dropped: int = 0
    predicted: int = 0
    malformed: int = 0
    forward_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


class CaptureTotals:
    """Each stream's frame counters, summed over restarts of its capture (each reports its own counts)."""

    COUNTERS = ("frames_captured", "frames_converted", "display_frames", "tracks_skipped")

    def __init__(self) -> None:
        self.earlier: collections.Counter = collections.Counter()  # (counter, stream) → what restarted captures counted
        self.current: dict[str, tuple[float, dict[str, float]]] = {}  # stream → (its capture's start, its counts)
        self.fps: dict[str, float] = {}
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
    """The dispatch state machine, separate from the socket loop so its rules are easy to follow."""

    def __init__(self, config: DispatchConfig) -> None:
        self.config = config
        self.pending: dict[tuple[str, int | None], collections.deque[Window]] = {}  # per stream, or tracked actor
        self.capture_of: dict[str, bytes] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self.counters = Counters()
        self.ended: set[str] = set()
        self.outstanding: dict[tuple[str, int | None], int] = collections.Counter()  # windows at workers, per key
        self.closing: dict[tuple[str, int], float] = {}  # ended tracks with windows still to predict → when to give up
        self.first_seen = False
        self.totals: collections.Counter = collections.Counter()  # (metric, stream, reason) → count, for Stats
        self.captured = CaptureTotals()

    def drop(self, stream: str, reason: str, n: int = 1) -> None:
        self.counters.dropped += n
        self.totals["windows_dropped", stream, reason] += n

    @property
    def total_dropped(self) -> int:
        return sum(n for (name, _, _), n in self.totals.items() if name == "windows_dropped")

    def stats(self, log_lines: int, malformed: int) -> Stats:
        """Everything this hub counts, for the web stage's /metrics and /readyz (sent once a second)."""
        samples = [(name, {"stream": stream, **({"reason": reason} if reason else {})}, float(n))
                   for (name, stream, reason), n in self.totals.items()]
        samples += self.captured.samples()
        samples += [("event_log_lines", {}, float(log_lines)), ("malformed_messages", {}, float(malformed)),
                    ("workers_answering", {}, float(len(self.workers)))]
        return Stats("dispatcher", time.time(), tuple(samples))

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


def run(config: DispatchConfig, stop: multiprocessing.synchronize.Event) -> int:
    """Serve until ``stop`` is set, or until every file source has ended and been predicted (returns 0)."""
    ctx = sockets.Context()
    captures = sockets.make_socket(ctx, zmq.ROUTER, config.endpoints.windows, bind=True, security=config.security)
    workers = sockets.make_socket(ctx, zmq.ROUTER, config.endpoints.work, bind=True, security=config.security)
    results = sockets.make_socket(ctx, zmq.PUB, config.endpoints.results, bind=True, security=config.security)
    log = EventLog(config.events_path)
    tracker = ActionTracker(config.events, config.labels or None)
    state = Dispatcher(config)
    poller = zmq.Poller()
    poller.register(captures, zmq.POLLIN)
    poller.register(workers, zmq.POLLIN)
    last_status, malformed_total = time.monotonic(), 0
    logger.info(f"dispatcher: serving {len(config.streams)} stream(s), events → {config.events_path or 'nowhere'}")

    def write(line: dict) -> None:
        """One event-log line, also published for the web stage and the sinks."""
        if config.clips is not None and line.get("kind") == "end" and isinstance(line.get("id"), str):
            line["clip"] = config.clips.path(line["stream"], line["id"])
        log.write(line)
        messages.send(results, LogLine(line))

    def write_status(status: Status) -> None:
        line = {"kind": status.kind, "stream": status.stream, "detail": status.detail, "ts": status.ts}
        if status.track is not None:
            line["track"] = status.track
        if status.kind != "end_of_stream":
            write(line)
        messages.send(results, status)
        if status.kind == "source_lost":
            for event in tracker.reset(status.stream, lost_ts=status.ts):
                write(event)
        elif status.kind == "track_ended" and status.track is not None:
            state.end_track(status.stream, status.track)
            close_tracks()

    def close_tracks() -> None:
        for stream, track in state.closed_tracks():
            for event in tracker.end_track(stream, track):
                write(event)

    def dispatch() -> None:
        for worker in state.workers.values():
            if worker.waiting_for <= 0 or worker.holding:
                continue
            batch = state.next_batch(worker.waiting_for)
            if not batch:
                return
            worker.waiting_for, worker.holding = 0, tuple(w.key for w in batch)
            workers.send_multipart([worker.identity, *messages.encode(Batch(tuple(batch)))], copy=False)
            if config.offline:
                for window in batch:
                    identity = state.capture_of.get(window.stream)
                    if identity is not None:
                        captures.send_multipart([identity, *messages.encode(Credit(window.stream, 1))])

    def on_result(result) -> None:
        state.release(result.key)
        line = prediction_line(result, time.time())
        write(line)
        try:
            _, action_events = tracker.update(result)
        except ProtocolError as err:  # e.g. a worker with another model's classes
            state.counters.malformed += 1
            logger.debug(f"dispatcher: result not tracked ({err})")
            action_events = []
        for event in action_events:
            write(event)
            who = event["stream"] + (f" #{event['track']}" if "track" in event else "")
            logger.info(f"{who}: {event['kind']} {label_words(event['label'])!r} "
                        f"(score {event['score']:.2f}, frame {event['frame_index']})")
        if not state.first_seen:
            state.first_seen = True
            label, prob = result.top[0]
            logger.info(f"first prediction: {result.stream} {label_words(label)!r} {prob:.0%}, "
                        f"{line['latency_ms']:.0f} ms after its last frame was captured")
        state.counters.predicted += 1
        state.counters.forward_ms.append(result.timings.get("forward_ms", 0.0))
        state.counters.latency_ms.append(line["latency_ms"])
        messages.send(results, result)

    try:
        while not stop.is_set():
            events = dict(poller.poll(100))
            for identity, msg in _receive(captures if captures in events else None, state.counters):
                if isinstance(msg, Window):
                    state.add_window(identity, msg)
                elif isinstance(msg, Status):
                    if msg.kind == "end_of_stream":
                        state.ended.add(msg.stream)
                    write_status(msg)
                elif isinstance(msg, Stats) and msg.sender.startswith("capture"):
                    state.captured.update(msg)
                elif isinstance(msg, Stats):  # another stage's counters (the sinks): on to the web stage
                    messages.send(results, msg)
                else:
                    state.counters.malformed += 1
            for identity, msg in _receive(workers if workers in events else None, state.counters):
                now = time.time()
                if isinstance(msg, WorkRequest):
                    worker = state.workers.setdefault(identity, WorkerState(identity, msg.worker))
                    worker.waiting_for, worker.holding, worker.last_seen = msg.max_batch, (), now
                elif isinstance(msg, (Heartbeat, ResultBatch)):
                    if identity in state.workers:
                        state.workers[identity].last_seen = now
                    for result in getattr(msg, "results", ()):
                        on_result(result)
                elif isinstance(msg, Status) and msg.kind == "window_stale":
                    state.release((msg.stream, msg.track))
                    state.drop(msg.stream, "stale")
                else:
                    state.counters.malformed += 1
            _forget_silent_workers(state, config, write)
            close_tracks()
            dispatch()
            if state.finished():
                logger.info("dispatcher: every file source ended and its last window is predicted")
                return 0
            now = time.monotonic()
            if now - last_status >= config.status_interval_s:
                malformed_total += state.counters.malformed
                _log_status(state, now - last_status)
                messages.send(results, state.stats(log.lines, malformed_total))
                last_status = now
    finally:
        for event in tracker.reset_all():
            write(event)
        log.close()
        for sock in (captures, workers, results):
            sock.close(linger=0)
        ctx.term()
    return 0


def _receive(sock: zmq.Socket | None, counters: Counters, limit: int = 64):
    """Up to ``limit`` waiting messages of a ROUTER socket as ``(identity, message)``; malformed ones counted."""
    for _ in range(limit if sock is not None else 0):
        try:
            identity, *parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            msg = messages.decode(parts)
        except ProtocolError as err:
            counters.malformed += 1
            logger.debug(f"dispatcher: dropped a malformed message ({err})")
            continue
        yield identity.bytes, msg


def _forget_silent_workers(state: Dispatcher, config: DispatchConfig, write) -> None:
    """A worker silent for longer than the heartbeat timeout is gone; its windows are stale, not re-sent."""
    now = time.time()
    for key, worker in list(state.workers.items()):
        if now - worker.last_seen > config.heartbeat_timeout_s:
            del state.workers[key]
            logger.warning(f"dispatcher: {worker.name} silent for {config.heartbeat_timeout_s:g} s; forgetting it")
            write({"kind": "worker_lost", "stream": "", "detail": worker.name, "ts": now})
            for key in worker.holding:  # its windows will never come back: stop waiting for them
                state.release(key)


def _log_status(state: Dispatcher, seconds: float) -> None:
    c = state.counters
    if c.windows_in or c.predicted or c.malformed:
        def median(values):
            return sorted(values)[len(values) // 2] if values else 0.0
        logger.info(
            f"windows in {c.windows_in / seconds:.1f}/s, predicted {c.predicted / seconds:.1f}/s, "
            f"dropped {c.dropped} (total {state.total_dropped}), inference {median(c.forward_ms):.0f} ms, "
            f"latency {median(c.latency_ms):.0f} ms" + (f", malformed {c.malformed}" if c.malformed else "")
        )
    state.counters = Counters()
