"""The dispatcher's sockets and loop: windows in from the captures, batches out to the workers, lines out.

Captures (and the supervisor's notices) come in on a ROUTER, workers on another; event-log lines,
results and status go out on a PUB for the overlay, the web stage, the sinks and the clips. What to
do with each message is decided by :class:`~streamer.stages.dispatcher.rules.Dispatcher` and
:class:`~streamer.stages.dispatcher.tracker.ActionTracker`; this module only moves messages.
"""

from __future__ import annotations

import multiprocessing.synchronize
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Iterator

import zmq
from loguru import logger

from streamer.errors import ConfigError, ProtocolError
from streamer.kinds import LineKind, StageKind
from streamer.render.words import label_words
from streamer.stages.adapters import Handout
from streamer.stages.dispatcher.brief import BriefGate
from streamer.stages.dispatcher.event_log import EventLog
from streamer.stages.dispatcher.rules import Counters, Dispatcher
from streamer.stages.dispatcher.tracker import ActionTracker, left_open, prediction_line
from streamer.stages.health import Health
from streamer.store import taught
from streamer.store.schema import connect
from streamer.store.writer import StoreWriter
from streamer.transport import messages, sockets
from streamer.transport.messages import (Batch, Credit, Heartbeat, Leaving, LogLine, Result, ResultBatch, Stats,
                                         Status, Window, WorkRequest)
from workers.adapter import Adapter, checkpoint_digest, load_adapter

if TYPE_CHECKING:
    from streamer.config.stages import DispatchConfig

READ_AT_ONCE = 64  # messages taken from one socket before the other gets its turn
RESUBSCRIBE_S = 1.0  # a restarted dispatcher waits this long for the subscribers to reconnect before it publishes


class Hub:
    """One dispatcher process: its sockets, event log and tracker around the :class:`Dispatcher` rules."""

    def __init__(self, config: DispatchConfig, health: Health | None = None) -> None:
        self.config = config
        self.health = health or Health("dispatcher")
        self.log = EventLog(config.events_path)
        start = load_adapter(config.adapter) if config.adapter else None  # checked by the config loader
        # after the log is opened (a torn last line cut) and before this dispatcher writes to it
        self.store = StoreWriter(config.store, config.events_path, (config.adapter, start) if start else None
                                 ).start() if config.store else None
        self.tracker = ActionTracker(config.events, config.labels or None)
        self.handout = Handout(tuple(config.labels))  # the taught labels the workers run (streamer.stages.adapters)
        self.worker_adapter: dict[bytes, str] = {}  # each worker's adapter key, from its requests
        self.unknown_adapters: set[str] = set()  # keys of results dropped so far (each said once)
        self.adapter_version = 0  # the store's adapter version in force here
        self._use(start or self._stored_adapter(), f"adapter {config.adapter}" if start else "from the action store")
        self.gate = BriefGate(config.events.min_duration_s)
        self.clock_fps: dict[str, float] = {}  # offline: each stream's fps, which turns frame indices into seconds
        # Actions the dispatcher before this one (killed, or its node lost) left under way: they end here.
        self.left_open = left_open(self.log.tail(), set(config.streams), config.events.smoothing)
        self.rules = Dispatcher(config)
        self.ctx = sockets.Context()
        self.captures = sockets.make_socket(self.ctx, zmq.ROUTER, config.endpoints.bound("windows"), bind=True,
                                            security=config.security)
        self.workers = sockets.make_socket(self.ctx, zmq.ROUTER, config.endpoints.bound("work"), bind=True,
                                           security=config.security)
        self.results = sockets.make_socket(self.ctx, zmq.PUB, config.endpoints.bound("results"), bind=True,
                                           security=config.security)
        self.poller = zmq.Poller()
        self.poller.register(self.captures, zmq.POLLIN)
        self.poller.register(self.workers, zmq.POLLIN)
        self.last_status, self.malformed_total, self.first_seen = time.monotonic(), 0, False
        self.worker_s_per_window = 0.0  # what one window costs a worker (forward and preprocessing of its share)

    def serve(self, stop: multiprocessing.synchronize.Event) -> int:
        """Serve until ``stop`` is set, or until every file source has ended and been predicted (returns 0)."""
        logger.info(f"dispatcher: serving {len(self.config.streams)} stream(s), "
                    f"events → {self.config.events_path or 'nowhere'}"
                    + (f", actions kept in {self.config.store.path}" if self.config.store else ""))
        self.health.ready()
        try:
            self._end_left_open(stop)
            while not stop.is_set():
                self.health.beat()
                ready = dict(self.poller.poll(100))
                for identity, msg in _read_router(self.captures, self.rules.counters) if self.captures in ready else ():
                    self._from_capture(identity, msg)
                for identity, msg in _read_router(self.workers, self.rules.counters) if self.workers in ready else ():
                    self._from_worker(identity, msg)
                self._forget_silent_workers()
                self._follow_store()
                self._close_tracks()
                for end in self.tracker.due_ends(time.time()):  # streams silent since their action ended
                    self._write(end)
                self._dispatch()
                if self.rules.finished():
                    logger.info("dispatcher: every file source ended and its last window is predicted")
                    return 0
                self._report()
        finally:
            self.close()
        return 0

    def _end_left_open(self, stop: multiprocessing.synchronize.Event) -> None:
        """The end lines of the actions the previous dispatcher left under way, before any new line: once the
        subscribers (sinks, web, clips) have had a moment to find this dispatcher, so that they hear them too."""
        if not self.left_open:
            return
        deadline = time.monotonic() + RESUBSCRIBE_S
        while time.monotonic() < deadline and not stop.is_set():
            self.health.beat()
            time.sleep(0.05)
        logger.info(f"dispatcher: ending {len(self.left_open)} action(s) that the dispatcher before this one "
                    "left under way")
        for line in self.left_open:
            self._write(line)
        self.left_open = []

    def _stored_adapter(self) -> Adapter | None:
        """The store's newest adapter, read at start so that the first batches already run it."""
        if self.config.store is None or not self.config.labels:
            return None
        try:
            conn = connect(self.config.store.path)
        except (FileNotFoundError, ConfigError, OSError, sqlite3.Error):
            return None
        try:
            version = taught.latest(conn)
        except sqlite3.Error:
            return None
        finally:
            conn.close()
        if version is not None:
            self.adapter_version = version.version
        return version.adapter if version is not None else None

    def _use(self, adapter: Adapter | None, why: str) -> None:
        """Hand ``adapter``'s taught labels to the workers from their next batch on, and read results with them."""
        if adapter is not None and adapter.checkpoint != self._checkpoint_digest(adapter.checkpoint):
            logger.warning(f"dispatcher: taught labels {', '.join(adapter.labels)} ({why}) were taught on another "
                           f"checkpoint than {self.config.checkpoint}; not used (teach them again on this one)")
            adapter = None
        if not self.config.labels or not self.handout.use(adapter):
            return
        for event in self.tracker.relabel(self.handout.labels):
            self._write(event)
        taught_now = adapter.describe() if adapter is not None else "none"
        logger.info(f"dispatcher: taught labels now {taught_now} ({why})")

    def _checkpoint_digest(self, otherwise: str) -> str:
        """The workers' checkpoint's SHA-256; ``otherwise`` where this host has no copy of it (a dispatcher in a
        pod of its own): the workers check it themselves and refuse an adapter of another checkpoint."""
        try:
            return checkpoint_digest(self.config.checkpoint) if self.config.checkpoint else otherwise
        except OSError:
            return otherwise

    def _follow_store(self) -> None:
        """A new adapter version in the store (taught, forgotten or gone back to in the web stage): hand it on."""
        version = self.store.adapter if self.store is not None else None
        if version is not None and version.version != self.adapter_version:
            self.adapter_version = version.version
            self._use(version.adapter, f"version {version.version}: {version.note}")

    def close(self) -> None:
        """End every action under way in the log, then close the log and the sockets."""
        for event in self.tracker.reset_all():
            self._write(event)
        self.log.close()
        if self.store is not None:
            self.store.close()
        for sock in (self.captures, self.workers, self.results):
            sock.close(linger=0)
        self.ctx.term()

    # ------------------------------------------------------------------ what comes in

    def _from_capture(self, identity: bytes, msg: Any) -> None:
        """A window, a source's status (or the supervisor's notice), or a stage's counters."""
        if isinstance(msg, Window):
            self.rules.add_window(identity, msg)
        elif isinstance(msg, Status):
            if msg.kind == LineKind.END_OF_STREAM:
                self.rules.ended.add(msg.stream)
            self._write_status(msg)
        elif isinstance(msg, Stats) and msg.sender.startswith(StageKind.CAPTURE):
            self.rules.captured.update(msg)
        elif isinstance(msg, Stats):  # another stage's counters (the sinks, the clips): on to the web stage
            messages.send(self.results, msg)
        else:
            self.rules.counters.malformed += 1

    def _from_worker(self, identity: bytes, msg: Any) -> None:
        """A request for work, results (which also say the worker lives), or a window it could not read."""
        now = time.time()
        if isinstance(msg, WorkRequest):
            self.rules.worker_ready(identity, msg.worker, msg.max_batch, now)
            self.worker_adapter[identity] = msg.adapter
        elif isinstance(msg, (Heartbeat, ResultBatch)):
            self.rules.worker_seen(identity, now)
            for result in getattr(msg, "results", ()):
                probs = self.handout.probs(result.probs, msg.adapter) if self.config.labels else result.probs
                if probs is None:  # scored with taught labels this dispatcher does not know
                    self.rules.counters.malformed += 1
                    self._unknown_adapter(msg.adapter)
                    continue
                self._on_result(result, probs)
        elif isinstance(msg, Status) and msg.kind == LineKind.WINDOW_STALE:
            self.rules.window_stale((msg.stream, msg.track))
        elif isinstance(msg, Leaving):
            if self.rules.forget_worker(identity) is not None:
                self._forget_adapter_of(identity)
                logger.info(f"dispatcher: {msg.sender} stopped; {len(self.rules.workers)} worker(s) left")
        else:
            self.rules.counters.malformed += 1

    def _unknown_adapter(self, key: str) -> None:
        """Say once a key that a worker's results are dropped: scored with taught labels never handed out here."""
        if key not in self.unknown_adapters:
            self.unknown_adapters.add(key)
            logger.warning(f"dispatcher: a worker's results are scored with taught labels {key!r} this dispatcher "
                           "never handed out; they are dropped until it runs the current ones")

    def _forget_adapter_of(self, identity: bytes) -> None:
        self.handout.forget_worker(identity)
        self.worker_adapter.pop(identity, None)

    def _on_result(self, result: Result, probs) -> None:
        """Its prediction line, the action events it causes, and the result itself for the overlay; ``probs``:
        its probabilities over the current labels (:class:`Handout`)."""
        self.rules.release(result.key)
        line = prediction_line(result, time.time())
        self._write(line)
        if self.store is not None and result.embedding is not None:
            self.store.put_window(result.stream, result.track, result.frame_ts, result.frame_index,
                                  result.embedding.tobytes())
        clock = self._clock(result)
        try:
            _, action_events = self.tracker.update(result, clock, probs)
        except ProtocolError as err:  # e.g. a worker with another model's classes
            self.rules.counters.malformed += 1
            logger.debug(f"dispatcher: result not tracked ({err})")
            action_events = []
        for event in action_events:
            self._write(event, self.tracker.clock_of(result.key))
            who = event["stream"] + (f" #{event['track']}" if "track" in event else "")
            logger.info(f"{who}: {event['kind']} {label_words(event['label'])!r} "
                        f"(score {event['score']:.2f}, frame {event['frame_index']})")
        if (now := self.tracker.clock_of(result.key)) is not None:
            for start in self.gate.lasted(result.stream, result.track, now):
                messages.send(self.results, LogLine(start))
        if not self.first_seen:
            self.first_seen = True
            label, prob = result.top[0]
            logger.info(f"first prediction: {result.stream} {label_words(label)!r} {prob:.0%}, "
                        f"{line['latency_ms']:.0f} ms after its last frame was captured")
        counters = self.rules.counters
        counters.predicted += 1
        counters.forward_ms.append(result.timings.get("forward_ms", 0.0))
        counters.worker_ms.append((result.timings.get("forward_ms", 0.0) + result.timings.get("preprocess_ms", 0.0))
                                  / max(1.0, result.timings.get("batch_size", 1.0)))
        counters.latency_ms.append(line["latency_ms"])
        messages.send(self.results, result)

    # ------------------------------------------------------------------ what goes out

    def _clock(self, result: Result) -> float | None:
        """The result's time on its stream's own clock, which the event holds count in: offline, a file's media
        time (its frames are read faster than they were filmed); live, None (its capture time)."""
        if not self.config.offline:
            return None
        fps = self.clock_fps.setdefault(result.stream, self.rules.captured.source_fps.get(result.stream, 0.0))
        return result.frame_index / fps if fps > 0 else None  # one clock per stream, from its first result on

    def _write(self, line: dict, clock: float | None = None) -> None:
        """One event-log line, also published for the web stage, the sinks and the clips (unless it belongs to
        an action too brief for them, :class:`BriefGate`)."""
        publish = self.gate.publish(line, clock)
        if (self.config.clips is not None and publish and line.get("kind") == LineKind.END
                and isinstance(line.get("id"), str)):
            line["clip"] = self.config.clips.path(line["stream"], line["id"])
        self.log.write(line)
        if self.store is not None:
            self.store.put(line)
        if publish:
            messages.send(self.results, LogLine(line))

    def _write_status(self, status: Status) -> None:
        """A status as a line of its kind (not ``end_of_stream``), and what it ends: a lost source's actions,
        an ended track (once its windows are back)."""
        line = {"kind": status.kind, "stream": status.stream, "detail": status.detail, "ts": status.ts}
        if status.track is not None:
            line["track"] = status.track
        if status.kind != LineKind.END_OF_STREAM:
            self._write(line)
        messages.send(self.results, status)
        if status.kind == LineKind.SOURCE_LOST:
            for event in self.tracker.reset(status.stream, lost_ts=status.ts):
                self._write(event)
        elif status.kind == LineKind.TRACK_ENDED and status.track is not None:
            self.rules.end_track(status.stream, status.track)
            self._close_tracks()

    def _close_tracks(self) -> None:
        for stream, track in self.rules.closed_tracks():
            for event in self.tracker.end_track(stream, track):
                self._write(event)

    def _dispatch(self) -> None:
        """A batch to each idle worker that asked; offline, a credit back to each window's capture."""
        for worker, batch in self.rules.assign():
            update = self.handout.update_for(worker.identity, self.worker_adapter.get(worker.identity, ""))
            if update is not None:  # new taught labels: the worker takes them before this batch
                self.workers.send_multipart([worker.identity, *messages.encode(update)], copy=False)
            self.workers.send_multipart([worker.identity, *messages.encode(Batch(tuple(batch)))], copy=False)
            for window in batch if self.config.offline else ():
                capture = self.rules.capture_of.get(window.stream)
                if capture is not None:
                    self.captures.send_multipart([capture, *messages.encode(Credit(window.stream, 1))])

    def _forget_silent_workers(self) -> None:
        now = time.time()
        for worker in self.rules.forget_silent_workers(now):
            self._forget_adapter_of(worker.identity)
            logger.warning(f"dispatcher: {worker.name} silent for {self.config.heartbeat_timeout_s:g} s; "
                           "forgetting it")
            self._write({"kind": LineKind.WORKER_LOST, "stream": "", "detail": worker.name, "ts": now})

    def _report(self) -> None:
        """Once every ``status_interval_s``: the status line in the log, the counters to the web stage."""
        now = time.monotonic()
        if now - self.last_status < self.config.status_interval_s:
            return
        seconds = now - self.last_status
        counters = self.rules.counters
        self.malformed_total += counters.malformed
        if counters.worker_ms:
            self.worker_s_per_window = sum(counters.worker_ms) / len(counters.worker_ms) / 1000.0
        stored = () if self.store is None else (("store_lines_written", {}, float(self.store.written)),
                                                ("store_lines_waiting", {}, float(len(self.store.waiting))))
        stats = self.rules.stats(self.log.lines, self.malformed_total,
                                 self.rules.offered_rate(seconds, counters.windows_in), self.worker_s_per_window, stored)
        _log_status(self.rules, seconds)
        messages.send(self.results, stats)
        self.health.publish(stats.samples)
        self.last_status = now


def _read_router(sock: zmq.Socket, counters: Counters) -> Iterator[tuple[bytes, Any]]:
    """Up to READ_AT_ONCE waiting messages of a ROUTER socket as ``(identity, message)``; malformed ones counted."""
    for _ in range(READ_AT_ONCE):
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


def _log_status(rules: Dispatcher, seconds: float) -> None:
    c = rules.counters
    if c.windows_in or c.predicted or c.malformed:
        def median(values):
            return sorted(values)[len(values) // 2] if values else 0.0
        logger.info(
            f"windows in {c.windows_in / seconds:.1f}/s, predicted {c.predicted / seconds:.1f}/s, "
            f"dropped {c.dropped} (total {rules.total_dropped}), inference {median(c.forward_ms):.0f} ms, "
            f"latency {median(c.latency_ms):.0f} ms" + (f", malformed {c.malformed}" if c.malformed else "")
        )
    rules.counters = Counters()
