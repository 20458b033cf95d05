"""The worker loop from the outside: a real worker process with the tiny model, and this test as its dispatcher.

One worker serves the module's tests (loading torch and the model takes most of their time); each
test talks to it over a real ZeroMQ ROUTER, as the dispatcher does.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest
import zmq

from streamer.config.network import Endpoints
from streamer.config.stages import WorkerConfig
from streamer.kinds import LineKind
from streamer.transport import messages
from streamer.transport.framestore import FrameRef
from streamer.transport.messages import Batch, ResultBatch, Status, Window, WorkRequest
from tests.test_pipeline import LABELS, PRE, checkpoint  # noqa: F401  (fixture re-used)

MAX_BATCH = 3


def _run_worker(config, stop, heartbeat):
    from streamer.stages import worker

    worker.run(config, stop, heartbeat=heartbeat)


def window(stream: str, seq: int, track: int | None = None) -> Window:
    frames = np.random.default_rng(seq).integers(0, 255, (PRE.num_frames, PRE.size, PRE.size, 3), dtype=np.uint8)
    return Window(stream, seq, (10, 12, 14, 16), (100.0, 100.1, 100.2, 100.3), frames, time.time(), track=track,
                  box=None if track is None else (1.0, 2.0, 30.0, 40.0))


class Dispatcher:
    """This test's side: the ROUTER the worker connects to, the worker's identity, its heartbeat."""

    def __init__(self, router: zmq.Socket, heartbeat, proc) -> None:
        self.router, self.heartbeat, self.proc = router, heartbeat, proc
        self.identity: bytes | None = None

    def next(self, timeout_s: float = 60.0):
        """The worker's next message (its identity remembered)."""
        assert self.router.poll(int(timeout_s * 1000)), f"the worker said nothing for {timeout_s:g} s"
        self.identity, *parts = self.router.recv_multipart()
        return messages.decode(parts)

    def next_of(self, kind: type, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.next(deadline - time.monotonic())
            if isinstance(msg, kind):
                return msg
        raise AssertionError(f"no {kind.__name__} from the worker in {timeout_s:g} s")

    def send(self, msg) -> None:
        self.router.send_multipart([self.identity, *messages.encode(msg)])


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory, checkpoint):  # noqa: F811
    folder = tmp_path_factory.mktemp("worker")
    endpoints = Endpoints(*(f"ipc://{folder}/{name}" for name in ("windows", "work", "results", "display")))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoints.work)
    spawn = mp.get_context("spawn")
    stop, heartbeat = spawn.Event(), spawn.Value("d", 0.0)
    config = WorkerConfig("w0", endpoints, str(checkpoint), device="cpu", precision="fp32", backend="torch",
                          threads=1, max_batch=MAX_BATCH, frame_store="tsf-test")
    proc = spawn.Process(target=_run_worker, args=(config, stop, heartbeat))
    proc.start()
    try:
        yield Dispatcher(router, heartbeat, proc)
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        router.close()
        ctx.term()


def test_a_warm_worker_asks_for_work_and_asks_again_each_idle_second(dispatcher):
    first = dispatcher.next_of(WorkRequest, timeout_s=60)
    assert first == WorkRequest("w0", MAX_BATCH)
    warm_at = dispatcher.heartbeat.value
    assert warm_at > 0, "the worker asked for work before its heartbeat said it was warm"
    again = dispatcher.next_of(WorkRequest, timeout_s=3)  # nothing was sent: it asks again (a restarted
    assert again == first                                   # dispatcher learns of it this way)
    assert dispatcher.heartbeat.value > warm_at, "an idle worker's heartbeat stood still"


def test_a_worker_answers_a_batch_with_results_and_timings_then_asks_again(dispatcher):
    dispatcher.next_of(WorkRequest)
    windows = (window("cam0", 1), window("yard", 2, track=7))
    dispatcher.send(Batch(windows))
    answer = dispatcher.next_of(ResultBatch)
    assert [(r.stream, r.seq, r.track) for r in answer.results] == [("cam0", 1, None), ("yard", 2, 7)]
    for result, sent in zip(answer.results, windows):
        assert result.worker == "w0" and result.box == sent.box
        assert (result.frame_index, result.frame_ts) == (sent.frame_indices[-1], sent.frame_ts[-1])
        assert result.probs.shape == (len(LABELS),) and abs(float(result.probs.sum()) - 1.0) < 1e-4
        assert [p for _, p in result.top] == sorted((p for _, p in result.top), reverse=True)
        assert {label for label, _ in result.top} == set(LABELS)
        assert {"capture_ms", "queue_ms", "preprocess_ms", "forward_ms"} <= set(result.timings)
        assert result.timings["batch_size"] == 2.0 and result.timings["forward_ms"] > 0
    # at once, not a second later when an idle worker asks again
    assert dispatcher.next(timeout_s=0.5) == WorkRequest("w0", MAX_BATCH), "no request for the next batch"


def test_a_window_whose_frames_it_cannot_read_is_answered_stale(dispatcher):
    dispatcher.next_of(WorkRequest)
    elsewhere = FrameRef("another-pipeline-cam0.frames", (0, 2, 4, 6), (PRE.num_frames, PRE.size, PRE.size, 3))
    unreadable = Window("cam0", 3, (0, 2, 4, 6), (1.0, 2.0, 3.0, 4.0), None, time.time(), store=elsewhere)
    dispatcher.send(Batch((unreadable, window("cam1", 4))))
    answer = dispatcher.next_of(ResultBatch)
    assert [r.stream for r in answer.results] == ["cam1"], "the readable window of the batch is still predicted"
    stale = dispatcher.next()
    assert isinstance(stale, Status) and stale.kind == LineKind.WINDOW_STALE and stale.stream == "cam0", (
        "the dispatcher must be told, or it waits for that window")
    assert dispatcher.proc.is_alive()
