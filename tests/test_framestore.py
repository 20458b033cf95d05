"""The shared-memory frame store: what a window names is exactly what a worker reads, or it knows it is gone."""

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import zmq

from streamer.transport import messages
from streamer.config.stages import WorkerConfig
from streamer.errors import ProtocolError
from streamer.transport.framestore import FrameRef, FrameStore, FrameStoreReader, remove_stores, store_dir, store_prefix
from streamer.transport.messages import Batch, ResultBatch, Status, Window, WorkRequest
from streamer.video.ringbuffer import RingBuffer
from tests.test_fuzz_stages import _run_worker, endpoints, stop_stage
from tests.test_pipeline import PRE, checkpoint  # noqa: F401  (fixture re-used)

NUM_FRAMES, INTERVAL, SIZE = PRE.num_frames, PRE.frame_interval, PRE.size


def frame(i: int) -> np.ndarray:
    """A frame that says its own index in every pixel, plus a pattern so frames differ in more than level."""
    rgb = np.random.default_rng(i).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    rgb[0, 0] = (i % 256, i // 256 % 256, 7)
    return rgb


@pytest.fixture
def prefix(tmp_path):
    """A pipeline's store prefix, unique to the test; its files are removed afterwards."""
    name = store_prefix(f"ipc://{tmp_path}/windows")
    yield name
    remove_stores(name)
    assert not list(store_dir().glob(f"{name}*"))


def filled_ring(prefix: str, capacity: int, frames: int, stream: str = "cam") -> tuple[FrameStore, RingBuffer]:
    store = FrameStore(prefix, stream, capacity, SIZE, SIZE)
    ring = RingBuffer(capacity, SIZE, SIZE, store=store)
    for i in range(frames):
        ring.push(i, 1000.0 + i, frame(i))
    return store, ring


def ref_of(store: FrameStore, ring: RingBuffer) -> tuple[tuple[int, ...], FrameRef]:
    indices, _, serials = ring.window_serials(NUM_FRAMES, INTERVAL)
    return indices, FrameRef(store.name, serials, (NUM_FRAMES, SIZE, SIZE, 3))


def test_reader_gets_exactly_the_window_frames(prefix):
    store, ring = filled_ring(prefix, capacity=20, frames=33)  # wrapped around the ring more than once
    indices, ref = ref_of(store, ring)
    got = FrameStoreReader(prefix).frames(ref)
    assert indices == (26, 28, 30, 32)
    assert np.array_equal(got, np.stack([frame(i) for i in indices]))
    assert np.array_equal(got, ring.window(NUM_FRAMES, INTERVAL)[2]), "store and private copy disagree"
    assert got.flags.writeable and not np.shares_memory(got, store.frames), "the reader must get its own copy"
    store.close()


def test_overwritten_or_half_written_frames_are_reported_not_returned(prefix):
    store, ring = filled_ring(prefix, capacity=20, frames=20)
    _, ref = ref_of(store, ring)
    reader = FrameStoreReader(prefix)
    assert reader.frames(ref) is not None
    slot = ref.serials[0] % 20
    store.serials[slot] = -1  # what a writer leaves while it copies a frame in
    assert reader.frames(ref) is None
    for i in range(20, 40):  # the capture moves on past the window
        ring.push(i, 0.0, frame(i))
    assert reader.frames(ref) is None
    store.close()


@pytest.mark.parametrize("name", ["../../etc/passwd", "tss-000000000000-00000000-1.frames", "x.frames"])
def test_names_outside_this_pipeline_are_refused(prefix, name):
    with pytest.raises(ProtocolError):
        FrameStoreReader(prefix).frames(FrameRef(name, (0, 1, 2, 3), (4, SIZE, SIZE, 3)))


def test_a_store_of_another_size_or_gone_is_a_protocol_error(prefix):
    store, ring = filled_ring(prefix, capacity=10, frames=10)
    _, ref = ref_of(store, ring)
    with pytest.raises(ProtocolError, match="holds"):
        FrameStoreReader(prefix).frames(FrameRef(ref.name, ref.serials, (NUM_FRAMES, SIZE * 2, SIZE * 2, 3)))
    store.close()
    assert not store.path.exists()
    with pytest.raises(ProtocolError, match="cannot map"):
        FrameStoreReader(prefix).frames(ref)


def test_a_restarted_capture_replaces_its_killed_predecessors_file(prefix):
    old = store_dir() / f"{FrameStore(prefix, 'cam', 4, SIZE, SIZE).name.rsplit('-', 1)[0]}-999999.frames"
    os.replace(next(store_dir().glob(f"{prefix}*")), old)  # as if a capture with pid 999999 was SIGKILLed
    other = FrameStore(prefix, "another stream", 4, SIZE, SIZE)
    fresh = FrameStore(prefix, "cam", 4, SIZE, SIZE)
    assert not old.exists() and fresh.path.exists() and other.path.exists()
    fresh.close()
    other.close()


def window_of(store: FrameStore, ring: RingBuffer, stream: str, seq: int, inline: bool) -> Window:
    indices, stamps, serials = ring.window_serials(NUM_FRAMES, INTERVAL)
    if inline:
        return Window(stream, seq, indices, stamps, ring.window(NUM_FRAMES, INTERVAL)[2], time.time())
    return Window(stream, seq, indices, stamps, None, time.time(),
                  FrameRef(store.name, serials, (NUM_FRAMES, SIZE, SIZE, 3)))


def test_worker_reads_windows_from_the_store_and_reports_the_ones_it_cannot(tmp_path, prefix, checkpoint):  # noqa: F811
    """A real worker process: a store window predicts exactly as the same frames inline; stale ones come back
    as window_stale statuses, so the dispatcher stops waiting for them."""
    eps = endpoints(tmp_path)
    assert store_prefix(eps.windows) == prefix
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(eps.work)
    stop = mp.get_context("spawn").Event()
    config = WorkerConfig("w", eps, str(checkpoint), device="cpu", precision="fp32", threads=1, frame_store=prefix)
    proc = mp.get_context("spawn").Process(target=_run_worker, args=(config, stop))
    proc.start()
    store, ring = filled_ring(prefix, capacity=12, frames=12)
    try:
        assert router.poll(60_000), "the worker never asked for work"
        identity, *parts = router.recv_multipart()
        assert isinstance(messages.decode(parts), WorkRequest)
        stale = window_of(store, ring, "old", 0, inline=False)
        for i in range(12, 20):
            ring.push(i, 0.0, frame(i))  # overwrites the frames "old" names
        foreign = Window("foreign", 0, (0, 1, 2, 3), (0.0,) * 4, None, time.time(),
                         FrameRef("tss-123456789abc-12345678-1.frames", (0, 1, 2, 3), (NUM_FRAMES, SIZE, SIZE, 3)))
        batch = Batch((window_of(store, ring, "shared", 1, inline=False), stale,
                       window_of(store, ring, "inline", 2, inline=True), foreign))
        router.send_multipart([identity, *messages.encode(batch)])
        answers, statuses = [], []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not answers or len(statuses) < 2):
            if router.poll(1000):
                msg = messages.decode(router.recv_multipart()[1:])
                if isinstance(msg, ResultBatch):
                    answers.append(msg)
                elif isinstance(msg, Status):
                    statuses.append(msg)
        assert answers, "no results"
        results = {r.stream: r for r in answers[0].results}
        assert set(results) == {"shared", "inline"}
        np.testing.assert_array_equal(results["shared"].probs, results["inline"].probs)
        assert sorted((s.kind, s.stream) for s in statuses) == [("window_stale", "foreign"), ("window_stale", "old")]
        assert "overwritten" in next(s.detail for s in statuses if s.stream == "old")
        assert proc.is_alive()
    finally:
        stop_stage(proc, stop)
        router.close()
        ctx.term()
        store.close()


def test_capture_falls_back_to_inline_frames_when_dev_shm_is_full(tmp_path, prefix):
    """A store larger than the memory left (Docker's 64 MB /dev/shm, say): one warning, no file, no SIGBUS later."""
    from loguru import logger

    from streamer.stages import capture
    from streamer.config.stages import CaptureConfig

    config = CaptureConfig(stream="cam", source="synthetic:", endpoints=endpoints(tmp_path), size=224, num_frames=8,
                           frame_interval=4, hop=4, frame_store=prefix)
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING")
    try:
        assert capture._open_store(config, capacity=10_000_000) is None  # 1.5 TB
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and "sending frames inline" in warnings[0]
    assert not list(store_dir().glob(f"{prefix}*"))
