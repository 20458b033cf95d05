"""The dispatcher's rules, through its real sockets: this test plays the captures, a worker and a subscriber.

The dispatcher stage runs in a thread (its ``run(config, stop)``, as in its own process); every message
goes over ZeroMQ ``ipc://`` sockets and is encoded and decoded as in the pipeline.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config.network import Endpoints
from tests.test_events import AT_ONCE
from streamer.config.sinks import StoreConfig
from streamer.store import queries
from streamer.store.schema import connect
from streamer.config.stages import DispatchConfig
from streamer.kinds import LineKind
from streamer.stages import dispatcher
from streamer.stages.dispatcher.event_log import EventLog
from streamer.stages.dispatcher.rules import OFFERED_SPAN_S, Dispatcher
from streamer.stages.dispatcher.tracker import EventConfig
from streamer.transport import messages
from streamer.transport.messages import (Batch, Credit, Leaving, LogLine, Result, ResultBatch, Stats, Status, Window,
                                         WorkRequest)

LABELS = ("left", "right", "still")
FRAMES = np.zeros((4, 8, 8, 3), np.uint8)


def window(stream: str, seq: int, track: int | None = None) -> Window:
    return Window(stream, seq, (0, 1, 2, 3), (1000.0 + seq,) * 4, FRAMES, time.time(), track=track,
                  box=None if track is None else (0.0, 0.0, 4.0, 4.0))


def result_of(w: Window, probs=(0.9, 0.05, 0.05)) -> Result:
    p = np.asarray(probs, np.float32)
    top = tuple((LABELS[i], float(p[i])) for i in np.argsort(-p))
    return Result(w.stream, w.seq, w.frame_indices[-1], w.frame_ts[-1], p, top, "w0", {"forward_ms": 1.0},
                  track=w.track, box=w.box)


class Hub:
    """A running dispatcher and the sockets that talk to it as a capture, a worker and a subscriber do."""

    def __init__(self, tmp_path: Path, streams: tuple[str, ...], **config) -> None:
        self.events = tmp_path / "events.jsonl"
        endpoints = Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display")))
        self.config = DispatchConfig(endpoints=endpoints, streams=streams, finite_streams=config.pop("finite", ()),
                                     labels=LABELS, events_path=str(self.events), status_interval_s=0.1,
                                     events=config.pop("events", EventConfig(**AT_ONCE, smoothing=1)), **config)
        self.stop = threading.Event()
        self.returned: list[int] = []
        self.thread = threading.Thread(target=lambda: self.returned.append(dispatcher.run(self.config, self.stop)))
        self.thread.start()
        self.ctx = zmq.Context()
        self.capture = self._socket(zmq.DEALER, endpoints.windows)
        self.worker = self._socket(zmq.DEALER, endpoints.work)
        self.results = self._socket(zmq.SUB, endpoints.results)
        self.results.setsockopt(zmq.SUBSCRIBE, b"")

    def _socket(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        return sock

    def send(self, sock: zmq.Socket, msg) -> None:
        messages.send(sock, msg)

    def receive(self, sock: zmq.Socket, kind: type, timeout_s: float = 5.0):
        """The next message of ``kind`` on ``sock`` (others skipped); None if none comes in time."""
        deadline = time.monotonic() + timeout_s
        while sock.poll(max(1, int(1000 * (deadline - time.monotonic())))):
            msg = messages.decode(sock.recv_multipart())
            if isinstance(msg, kind):
                return msg
        return None

    def counts(self, until, timeout_s: float = 5.0) -> dict[tuple, float]:
        """The dispatcher's counters from its first report for which ``until(counts)`` holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.receive(self.results, Stats, deadline - time.monotonic())
            if stats is not None and stats.sender == "dispatcher":
                counts = {(name, tuple(sorted(labels.items()))): value for name, labels, value in stats.samples}
                if until(counts):
                    return counts
        raise AssertionError("the dispatcher never reported the expected counts")

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in (self.capture, self.worker, self.results):
            sock.close()
        self.ctx.term()


@pytest.fixture
def hub_factory(tmp_path):
    hubs: list[Hub] = []

    def make(streams=("cam0", "cam1"), **config) -> Hub:
        folder = tmp_path / f"hub{len(hubs)}"
        folder.mkdir()
        hubs.append(Hub(folder, streams, **config))
        return hubs[-1]

    yield make
    for hub in hubs:
        hub.close()


def sent(stream: str) -> tuple:
    return "windows_sent", (("stream", stream),)


def dropped(stream: str, reason: str) -> tuple:
    return "windows_dropped", (("reason", reason), ("stream", stream))


def test_live_only_the_newest_window_of_each_stream_waits_and_a_worker_gets_several_streams_at_once(hub_factory):
    hub = hub_factory()
    for seq in range(3):
        hub.send(hub.capture, window("cam0", seq))
    hub.send(hub.capture, window("cam1", 7))
    counts = hub.counts(lambda c: c.get(sent("cam0")) == 3 and c.get(sent("cam1")) == 1)
    assert counts[dropped("cam0", "overtaken")] == 2, "the two overtaken windows of cam0 are dropped and counted"
    assert dropped("cam1", "overtaken") not in counts
    hub.send(hub.worker, WorkRequest("w0", 4))
    batch = hub.receive(hub.worker, Batch)
    assert batch is not None, "a worker asking for work got none"
    assert sorted((w.stream, w.seq) for w in batch.windows) == [("cam0", 2), ("cam1", 7)]
    assert hub.receive(hub.worker, Batch, timeout_s=0.5) is None, "a busy worker was sent a second batch"


def test_a_worker_asking_for_one_gets_the_stream_that_waited_longest(hub_factory):
    hub = hub_factory()
    hub.send(hub.capture, window("cam1", 0))
    time.sleep(0.01)
    hub.send(hub.capture, window("cam0", 0))
    hub.counts(lambda c: c.get(sent("cam0")) == 1 and c.get(sent("cam1")) == 1)
    hub.send(hub.worker, WorkRequest("w0", 1))
    first = hub.receive(hub.worker, Batch)
    hub.send(hub.worker, ResultBatch((result_of(first.windows[0]),)))
    hub.send(hub.worker, WorkRequest("w0", 1))
    second = hub.receive(hub.worker, Batch)
    assert [w.stream for w in first.windows + second.windows] == ["cam1", "cam0"]


def test_offline_windows_wait_instead_of_being_dropped_and_each_taken_one_credits_its_capture(hub_factory):
    hub = hub_factory(offline=True)
    for seq in range(3):
        hub.send(hub.capture, window("cam0", seq))
    counts = hub.counts(lambda c: c.get(sent("cam0")) == 3)
    assert not any(name == "windows_dropped" for name, _ in counts)
    taken = []
    for _ in range(3):
        hub.send(hub.worker, WorkRequest("w0", 1))
        batch = hub.receive(hub.worker, Batch)
        assert batch is not None, f"offline, window {len(taken)} was not kept for the worker"
        taken += [w.seq for w in batch.windows]
        credit = hub.receive(hub.capture, Credit)
        assert credit == Credit("cam0", 1), "the capture got no credit for a window a worker took"
        hub.send(hub.worker, ResultBatch(tuple(result_of(w) for w in batch.windows)))
    assert taken == [0, 1, 2], "offline windows go out oldest first, none skipped"


def test_a_stale_window_is_dropped_counted_and_not_waited_for(hub_factory):
    live = hub_factory(streams=("cam0",))
    live.send(live.capture, window("cam0", 0))
    live.send(live.worker, WorkRequest("w0", 1))
    assert live.receive(live.worker, Batch) is not None
    live.send(live.worker, Status(LineKind.WINDOW_STALE, "cam0", "its frames were overwritten", time.time()))
    live.counts(lambda c: c.get(dropped("cam0", "stale")) == 1)
    hub = hub_factory(streams=("clip",), finite=("clip",))
    hub.send(hub.capture, window("clip", 0))
    hub.send(hub.capture, Status(LineKind.END_OF_STREAM, "clip", "last frame was 3", time.time()))
    hub.send(hub.worker, WorkRequest("w0", 1))
    batch = hub.receive(hub.worker, Batch)
    assert batch is not None
    hub.send(hub.worker, Status(LineKind.WINDOW_STALE, "clip", "its frames were overwritten", time.time()))
    hub.thread.join(timeout=5)
    assert hub.returned == [0], "the file's last window came back stale, yet the dispatcher still waits for it"
    lines = hub.lines()
    assert not any(line["kind"] in (LineKind.PREDICTION, LineKind.WINDOW_STALE) for line in lines)


def test_a_worker_that_says_it_leaves_is_forgotten_at_once_and_its_windows_not_waited_for(hub_factory):
    hub = hub_factory(streams=("clip",), finite=("clip",), heartbeat_timeout_s=60.0)
    hub.send(hub.capture, window("clip", 0))
    hub.send(hub.capture, Status(LineKind.END_OF_STREAM, "clip", "last frame was 3", time.time()))
    hub.send(hub.worker, WorkRequest("w0", 1))
    assert hub.receive(hub.worker, Batch) is not None
    hub.counts(lambda c: c.get(("workers_answering", ())) == 1)
    hub.send(hub.worker, Leaving("w0"))  # stopped with the window unanswered: the file is done without it
    hub.thread.join(timeout=5)
    assert hub.returned == [0], "the dispatcher still waits for the window of a worker that left"


def test_a_tracked_actors_track_closes_only_once_its_windows_are_predicted(hub_factory):
    hub = hub_factory(streams=("yard",))
    hub.send(hub.capture, window("yard", 0, track=1))
    hub.counts(lambda c: c.get(sent("yard")) == 1)
    hub.send(hub.worker, WorkRequest("w0", 1))
    batch = hub.receive(hub.worker, Batch)
    hub.send(hub.capture, Status(LineKind.TRACK_ENDED, "yard", "track 1 ended", time.time(), track=1))
    time.sleep(0.3)  # the track has ended in its capture, while its window is still at the worker
    hub.send(hub.worker, ResultBatch((result_of(batch.windows[0]),)))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(line["kind"] == "end" for line in hub.lines()):
        time.sleep(0.05)
    kinds = [(line["kind"], line.get("track")) for line in hub.lines()]
    assert kinds == [("track_ended", 1), ("prediction", 1), ("start", 1), ("end", 1)], (
        "the result of a window sent before the track ended still belongs to the actor: it starts its action, "
        "and the track's action ends once that window is predicted")


def test_results_scored_with_taught_labels_never_handed_out_are_dropped_and_said_once(hub_factory):
    """A worker whose results name an adapter this dispatcher never handed out (a bug, or another dispatcher's):
    its classes cannot be read, so no line is written, and the log says so once, not once a result."""
    from loguru import logger

    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="WARNING")
    try:
        hub = hub_factory()
        for round_ in range(2):
            hub.send(hub.capture, window("cam0", round_))
            hub.send(hub.capture, window("cam1", round_))
            hub.counts(lambda c: c.get(sent("cam0")) == round_ + 1 and c.get(sent("cam1")) == round_ + 1)
            hub.send(hub.worker, WorkRequest("w0", 4))
            batch = hub.receive(hub.worker, Batch)
            hub.send(hub.worker, ResultBatch(tuple(result_of(w) for w in batch.windows), adapter="f" * 16))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("f" * 16 in line for line in said):
            time.sleep(0.05)
        time.sleep(0.3)  # the second batch's results, read after the first's
    finally:
        logger.remove(sink)
    assert sum("f" * 16 in line and "never handed out" in line for line in said) == 1, said
    written = hub.lines() if hub.events.exists() else []
    assert not [line for line in written if line["kind"] == "prediction"]


def test_kinds_are_written_as_their_plain_strings(tmp_path):
    """A ``StrEnum`` kind reads exactly as the string it replaced, in the event log and on the wire."""
    with EventLog(tmp_path / "a.jsonl") as log:
        log.write({"kind": LineKind.SOURCE_LOST, "stream": "cam", "detail": "gone", "ts": 1.5})
    assert (tmp_path / "a.jsonl").read_bytes() == b'{"kind":"source_lost","stream":"cam","detail":"gone","ts":1.5}\n'
    as_enum = messages.encode(Status(LineKind.WORKER_RESTARTED, "", "worker-0 restarted after crash 1", 2.0))
    as_text = messages.encode(Status("worker_restarted", "", "worker-0 restarted after crash 1", 2.0))
    assert [bytes(part) for part in as_enum] == [bytes(part) for part in as_text]


def test_a_dispatcher_ends_the_actions_a_killed_one_left_under_way_first_and_tells_its_subscribers(tmp_path):
    """A start without its end in the log (its dispatcher was killed) gets its end line from the next dispatcher,
    before any line of its own, and the subscribers that reconnected to it hear it too."""
    prediction = {"kind": "prediction", "stream": "cam0", "frame_index": 3, "frame_ts": 1003.0,
                  "top": [["left", 0.9], ["right", 0.05], ["still", 0.05]], "latency_ms": 5.0}
    start = {"kind": "start", "stream": "cam0", "label": "left", "frame_index": 3, "frame_ts": 1003.0, "score": 0.9,
             "id": "1003000-abcdef"}
    (tmp_path / "events.jsonl").write_text(f"{json.dumps(prediction)}\n{json.dumps(start)}\n")
    store = tmp_path / "actions.db"
    hub = Hub(tmp_path, ("cam0",), store=StoreConfig(path=str(store)))
    try:
        heard = hub.receive(hub.results, LogLine)
        assert heard is not None and heard.line == {**start, "kind": "end", "peak": 0.9}
        hub.send(hub.capture, window("cam0", 5))
        hub.send(hub.worker, WorkRequest("w0", 1))
        batch = hub.receive(hub.worker, Batch)
        hub.send(hub.worker, ResultBatch((result_of(batch.windows[0]),)))
        assert hub.receive(hub.results, Result) is not None
        assert [(line["kind"], line.get("id")) for line in hub.lines()][:4] == [
            ("prediction", None), ("start", start["id"]), ("end", start["id"]), ("prediction", None)]
    finally:
        hub.close()
    # the action history: the killed dispatcher's action, caught up from the log, ended by this one; and this
    # dispatcher's own action, ended at its clean stop
    (own, left), _ = queries.list_actions(connect(str(store)), queries.ActionQuery())
    assert (left["id"], left["start_frame"], left["end_frame"], left["score"]) == (start["id"], 3, 3, 0.9)
    assert own["label"] == "left" and own["end_ts"] is not None


def predict(hub: Hub, seq: int, probs) -> list[dict]:
    """One window of cam0 through the dispatcher and a worker, its result ``probs``; the action lines the
    subscribers heard up to that result."""
    hub.send(hub.capture, window("cam0", seq))
    hub.send(hub.worker, WorkRequest("w0", 1))
    batch = hub.receive(hub.worker, Batch)
    hub.send(hub.worker, ResultBatch((result_of(batch.windows[0], probs),)))
    heard = []
    while not isinstance(msg := hub.receive(hub.results, (LogLine, Result)), Result):
        assert msg is not None, "no result came"
        heard += [msg.line] if msg.line["kind"] in ("start", "end") else []
    return heard


def test_the_subscribers_hear_a_flickering_action_once_and_a_brief_one_not_at_all(tmp_path):
    """What the sinks and clips get: a score that dips for a moment is one start and one end (one id, so one
    MQTT pair, one clip); an action shorter than min_duration_s stays in the log, marked, and reaches none."""
    calm = EventConfig(smoothing=1, end_hold_s=1.5, merge_gap_s=2.0, min_duration_s=3.0)
    hub = Hub(tmp_path, ("cam0",), events=calm)
    left, dip, other = (0.9, 0.05, 0.05), (0.3, 0.35, 0.35), (0.05, 0.05, 0.9)
    try:
        assert hub.receive(hub.results, Stats) is not None  # subscribed: nothing published from here on is missed
        heard = [line for seq, probs in enumerate([left, left, dip, left, dip, dip, left, left, left, left, other,
                                                   other])  # windows 1 s apart: "left" for 10 s, dipping twice
                 for line in predict(hub, seq, probs)]
    finally:
        hub.close()
    logged = [line for line in hub.lines() if line["kind"] in ("start", "end")]
    assert [(x["kind"], x["label"]) for x in heard] == [("start", "left"), ("end", "left")]
    lefts = [x for x in logged if x["label"] == "left"]
    assert [x["kind"] for x in lefts] == ["start", "end"] and lefts[0]["id"] == lefts[1]["id"]
    assert lefts[1]["peak"] == pytest.approx(0.9) and "brief" not in lefts[1]
    stills = [x for x in logged if x["label"] == "still"]  # "still" at the end: under 3 s when the stop ended it
    assert [x["kind"] for x in stills] == ["start", "end"] and stills[1]["brief"] is True
    assert all(x["label"] != "still" for x in heard)


def test_each_worker_is_handed_a_new_adapter_once_and_results_are_read_by_the_labels_they_had() -> None:
    from streamer.stages.adapters import Handout, from_message
    from streamer.transport.messages import decode, encode
    from workers.adapter import Adapter

    handout = Handout(("a", "b"))
    adapter = Adapter(("x", "y"), np.arange(8, dtype=np.float32).reshape(2, 4), np.array([0.5, -0.5], np.float32),
                      "cd" * 32)  # two labels: each weight row and bias must come back where it was
    assert handout.update_for(b"w1", "") is None  # nothing taught: nothing to hand
    assert handout.use(adapter) and not handout.use(adapter) and handout.labels == ("a", "b", "x", "y")
    update = handout.update_for(b"w1", "")
    handed = from_message(decode(encode(update)))
    assert update.key == adapter.key and handed.key == adapter.key
    assert np.array_equal(handed.weight, adapter.weight) and np.array_equal(handed.bias, adapter.bias)
    assert handout.update_for(b"w1", "") is None  # handed already (refused, or on its way): not again
    assert handout.update_for(b"w2", adapter.key) is None  # runs it already
    old = handout.probs(np.array([0.6, 0.4], np.float32), "")  # scored before the swap
    assert old.tolist() == pytest.approx([0.6, 0.4, 0.0, 0.0])
    assert handout.probs(np.array([0.4, 0.3, 0.2, 0.1], np.float32), handed.key) is not None  # the worker's results
    assert handout.probs(np.array([0.5, 0.25, 0.25], np.float32), "f" * 16) is None  # a key never handed out
    handout.use(None)
    assert handout.labels == ("a", "b") and handout.update_for(b"w1", adapter.key).labels == ()


def test_the_workers_needed_hold_through_a_quiet_second_and_follow_a_lasting_change():
    """The autoscaling metric averages the offered rate over OFFERED_SPAN_S: one second with no window (a capture
    starved of CPU for a moment) must not tell an autoscaler the pool may shrink to nothing, while a rate that
    lasts longer than the span is what it reports."""
    rules = Dispatcher(DispatchConfig(endpoints=Endpoints(*("inproc://x",) * 4), streams=("cam0",), finite_streams=(),
                                      labels=LABELS))
    needed = [rules.workers_needed(rules.offered_rate(1.0, n), 0.5) for n in (4, 4, 4, 0, 4)]
    assert needed[:3] == [2.0, 2.0, 2.0]
    assert 1.5 <= needed[3] < 2.0 and needed[4] > needed[3]
    for _ in range(int(OFFERED_SPAN_S) + 1):
        quiet = rules.workers_needed(rules.offered_rate(1.0, 0), 0.5)
    assert quiet == 0.0, "a pool offered nothing for longer than the span needs no worker"
