"""The processes around the dispatcher in ``bench/dispatch.py``: simulated captures, workers and a subscriber.

Each is a function run in a process of its own (forked), speaking the pipeline's real sockets
(``sockets.make_socket``, CurveZMQ when the plan has keys) and codec (``messages``). Three ways to
move a window, chosen by ``Plan.mode``:

- ``routed``: a capture sends the Window with its frames to the dispatcher, which batches it to a worker;
- ``direct``: a capture pushes the same Window straight to a worker (the baseline: the network's own cost);
- ``schedule``: a capture sends the dispatcher only a descriptor (a Window whose ``store`` names the
  capture's endpoint, no frames); the worker it is given to sends that descriptor back to the capture,
  which answers with the full Window. The dispatcher handles the schedule, never the bytes.

Every worker records ``(sent_ts, received)`` per window: the capture's stamp, and when the worker held
the frames (same clock, one machine).
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
from loguru import logger

from streamer.config.network import Endpoints, Security
from streamer.config.stages import DispatchConfig
from streamer.kinds import LineKind, StageKind
from streamer.stages import dispatcher
from streamer.transport import messages, sockets
from streamer.transport.message_types import FrameRef
from streamer.transport.messages import Batch, Result, ResultBatch, Stats, Status, Window, WorkRequest

REPO = Path(__file__).resolve().parents[1]
LABELS = tuple(REPO.joinpath("workers/data/kinetics400_labels.txt").read_text().splitlines())
SHAPE = (8, 224, 224, 3)  # a K400 window: 8 frames of 224×224 RGB, 1.2 MB
INTERVAL, HOP, FPS = 32, 20, 30.0  # K400 sampling (8 frames every 32), a window every 20 frames: 1.5/s a stream
FETCH_TIMEOUT_S = 1.0
KEPT = 2  # windows a capture keeps per stream for workers to fetch (schedule mode)
STATS_TOPIC = b'{"type":"stats"'
PROBS = np.full(len(LABELS), 0.5 / (len(LABELS) - 1), np.float32)  # what every simulated result says
PROBS[0] = 0.5
TOP = tuple((LABELS[i], float(PROBS[i])) for i in range(5))


@dataclass(frozen=True)
class Plan:
    """One measured run: how windows travel, how many, when, and every endpoint."""

    mode: str                      # routed, direct or schedule
    rate: float                    # windows/s offered by all captures together
    streams: int
    captures: int
    workers: int
    max_batch: int
    security: Security
    windows: str                   # the dispatcher's endpoints
    work: str
    results: str
    display: str
    worker_ends: tuple[str, ...]   # direct: where each worker listens
    capture_ends: tuple[str, ...]  # schedule: where each capture serves its frames
    start: float                   # time.time() of the first window
    steady_from: float             # the measured part: windows sent in [steady_from, end)
    end: float


def quiet() -> None:
    """A child process logs warnings only (the dispatcher's once-a-second status line is not measured)."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def dispatch_config(plan: Plan, events: Path) -> DispatchConfig:
    return DispatchConfig(endpoints=Endpoints(plan.windows, plan.work, plan.results, plan.display),
                          streams=tuple(stream_names(plan.streams)), finite_streams=(), labels=LABELS,
                          events_path=str(events), security=plan.security)


def run_dispatcher(config: DispatchConfig, stop) -> None:
    quiet()
    dispatcher.run(config, stop)


def stream_names(n: int) -> list[str]:
    return [f"cam{i:03d}" for i in range(n)]


def make_window(stream: str, seq: int, frames: np.ndarray | None, ref: str = "") -> Window:
    """Window ``seq`` of ``stream`` (K400 sampling), stamped now; with ``ref``, a descriptor naming where its
    frames are."""
    indices = tuple(seq * HOP + i * INTERVAL for i in range(SHAPE[0]))
    now = time.time()
    stamps = tuple(now - (indices[-1] - index) / FPS for index in indices)
    store = FrameRef(ref, indices, SHAPE) if ref else None
    return Window(stream, seq, indices, stamps, None if ref else frames, now, store=store)


def wire_bytes(msg) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in messages.encode(msg))


# ---------------------------------------------------------------------------- captures


def run_capture(plan: Plan, index: int, stop, out) -> None:
    """Send this capture's share of the streams' windows at ``rate / captures`` a second, on a fixed schedule
    (behind it, the next window goes at once); in schedule mode, serve fetches until ``stop``."""
    quiet()
    ctx = sockets.Context()
    frames = np.random.default_rng(index).integers(0, 256, SHAPE, dtype=np.uint8)
    mine = stream_names(plan.streams)[index::plan.captures]
    options = {zmq.SNDHWM: 4, zmq.LINGER: 0}  # as the real capture's window socket
    if plan.mode == "direct":
        send = sockets.make_socket(ctx, zmq.PUSH, plan.worker_ends[0], bind=False, security=plan.security,
                                   options=options)
        for end in plan.worker_ends[1:]:
            send.connect(end)
    else:
        send = sockets.make_socket(ctx, zmq.DEALER, plan.windows, bind=False, security=plan.security, options=options)
    served = sockets.make_socket(ctx, zmq.ROUTER, plan.capture_ends[index], bind=True, security=plan.security) \
        if plan.mode == "schedule" else None
    kept: dict[tuple[str, int], Window] = {}
    seqs: collections.Counter = collections.Counter()
    rate, k, measured = plan.rate / plan.captures, 0, 0
    while (due := plan.start + k / rate) < plan.end and not stop.is_set():
        _serve_until(served, kept, due)
        stream = mine[k % len(mine)]
        seq = seqs[stream]
        seqs[stream] += 1
        if served is not None:
            window = make_window(stream, seq, None, plan.capture_ends[index])
            kept[stream, seq] = make_window(stream, seq, frames)
            kept.pop((stream, seq - KEPT), None)
        else:
            window = make_window(stream, seq, frames)
        messages.send(send, window)  # blocking, as the real capture: a dispatcher behind holds it back
        measured += plan.steady_from <= window.sent_ts < plan.end
        k += 1
    while not stop.is_set():
        _serve_until(served, kept, time.time() + 0.1)
    out.put(("capture", index, measured))
    for sock in (send, served):
        if sock is not None:
            sock.close(linger=0)
    ctx.term()


def _serve_until(served: zmq.Socket | None, kept: dict, until: float) -> None:
    """Answer frame fetches (a descriptor in, the full Window back) until ``until`` (time.time())."""
    while (left := until - time.time()) > 0:
        if served is None:
            time.sleep(left)
            return
        if not served.poll(max(1, int(1000 * left))):
            continue
        identity, *parts = served.recv_multipart(copy=False)
        asked = messages.decode(parts)
        full = kept.get((asked.stream, asked.seq))
        reply = full if full is not None else Status(LineKind.WINDOW_STALE, asked.stream, "no longer kept", time.time())
        served.send_multipart([identity, *messages.encode(reply)], copy=False)


# ---------------------------------------------------------------------------- workers


def run_worker(plan: Plan, index: int, stop, out) -> None:
    """Take windows and answer each batch at once with real Results: the dispatcher, not the model, is measured."""
    quiet()
    ctx = sockets.Context()
    got: list[tuple[float, float]] = []
    if plan.mode == "direct":
        sock = sockets.make_socket(ctx, zmq.PULL, plan.worker_ends[index], bind=True, security=plan.security,
                                   options={zmq.RCVHWM: 4})
        while not stop.is_set():
            if sock.poll(100):
                window = messages.recv(sock)
                got.append((window.sent_ts, time.time()))
        fetchers = {}
    else:
        sock = sockets.make_socket(ctx, zmq.DEALER, plan.work, bind=False, security=plan.security)
        fetchers = {end: sockets.make_socket(ctx, zmq.DEALER, end, bind=False, security=plan.security)
                    for end in (plan.capture_ends if plan.mode == "schedule" else ())}
        _serve_batches(sock, fetchers, f"w{index}", plan.max_batch, got, stop)
    out.put(("worker", index, got))
    for s in (sock, *fetchers.values()):
        s.close(linger=0)
    ctx.term()


def result_of(window: Window, worker: str) -> Result:
    """A real Result for ``window``: 400 probabilities, the top 5; 0.5 at most, below the start threshold, so
    the dispatcher writes prediction lines and no action events."""
    return Result(window.stream, window.seq, window.frame_indices[-1], window.frame_ts[-1], PROBS, TOP, worker,
                  {"forward_ms": 0.0}, track=window.track, box=window.box)


def _serve_batches(sock: zmq.Socket, fetchers: dict, name: str, max_batch: int, got: list, stop) -> None:
    messages.send(sock, WorkRequest(name, max_batch))
    last_ask = time.monotonic()
    while not stop.is_set():
        if not sock.poll(100):
            if time.monotonic() - last_ask > 1.0:  # as the real worker: re-asking is idempotent
                messages.send(sock, WorkRequest(name, max_batch))
                last_ask = time.monotonic()
            continue
        batch = messages.recv(sock)
        if not isinstance(batch, Batch):
            continue
        if fetchers:
            fetched, stale = _fetch(fetchers, batch.windows)
        else:
            received = time.time()
            fetched, stale = [(w, received) for w in batch.windows], []
        got.extend((w.sent_ts, received) for w, received in fetched)
        windows = [w for w, _ in fetched]
        messages.send(sock, ResultBatch(tuple(result_of(w, name) for w in windows)))
        for status in stale:
            messages.send(sock, status)
        messages.send(sock, WorkRequest(name, max_batch))
        last_ask = time.monotonic()


def _fetch(fetchers: dict, descriptors) -> tuple[list[tuple[Window, float]], list[Status]]:
    """Each descriptor's frames from its capture (all asked at once); ``(window, received)`` and the stale ones."""
    for window in descriptors:
        messages.send(fetchers[window.store.name], window)
    poller = zmq.Poller()
    for sock in fetchers.values():
        poller.register(sock, zmq.POLLIN)
    windows, stale, deadline = [], [], time.monotonic() + FETCH_TIMEOUT_S
    while len(windows) + len(stale) < len(descriptors) and (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(int(1000 * left) + 1):
            while len(windows) + len(stale) < len(descriptors):
                try:
                    msg = messages.recv(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if isinstance(msg, Window):
                    windows.append((msg, time.time()))
                else:
                    stale.append(msg)
    return windows, stale


# ---------------------------------------------------------------------------- a subscriber


def run_observer(plan: Plan, stop, out) -> None:
    """Subscribe to everything the dispatcher publishes (as the web stage does); keep its newest counters."""
    quiet()
    ctx = sockets.Context()
    sock = sockets.make_socket(ctx, zmq.SUB, plan.results, bind=False, security=plan.security,
                               options={zmq.SUBSCRIBE: b"", zmq.RCVHWM: 100_000})
    totals: dict[str, float] = {}
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if parts[0].bytes.startswith(STATS_TOPIC):
                stats = messages.decode(parts)
                if isinstance(stats, Stats) and stats.sender == StageKind.DISPATCHER:
                    totals = collections.Counter()
                    for name, _, value in stats.samples:
                        totals[name] += value
    out.put(("observer", 0, dict(totals)))
    sock.close(linger=0)
    ctx.term()
