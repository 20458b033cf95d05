"""Every receiving stage, run as a real process, survives 10,000 malformed messages and then serves real traffic."""

import multiprocessing as mp
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from streamer.transport import messages
from streamer.config.network import Endpoints
from streamer.config.stages import CaptureConfig, OverlayConfig, WorkerConfig
from streamer.transport.messages import Batch, Credit, DisplayFrame, Result, ResultBatch, Window, WorkRequest
from tests.conftest import make_video
from tests.test_pipeline import LABELS, PRE, checkpoint  # noqa: F401  (fixture re-used)

FUZZ_COUNT = 10_000


def garbage(rng: np.random.Generator, valid: list[bytes], i: int) -> list[bytes]:
    """A malformed multipart message of one of several kinds, derived from a valid one."""
    header = valid[0]
    kind = i % 6
    if kind == 0:
        return [rng.bytes(int(rng.integers(0, 300)))]
    if kind == 1:
        return [header[: int(rng.integers(0, len(header)))], *valid[1:]]
    if kind == 2:
        return [header.replace(b'"v":%d' % messages.VERSION, b'"v":99'), *valid[1:]]
    if kind == 3:
        return [header, *(part[:-1] for part in valid[1:])] if len(valid) > 1 else [header + b"}"]
    if kind == 4:
        return [header.replace(b"32", b"40000")] + valid[1:]
    flipped = bytearray(header)
    flipped[int(rng.integers(0, len(flipped)))] ^= 0xFF
    return [bytes(flipped), *valid[1:]]


def endpoints(tmp_path: Path) -> Endpoints:
    return Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display")))


def window(stream: str = "cam", seq: int = 0) -> Window:
    frames = np.random.default_rng(seq).integers(0, 255, (PRE.num_frames, PRE.size, PRE.size, 3), dtype=np.uint8)
    return Window(stream, seq, (0, 2, 4, 6), (1.0, 2.0, 3.0, 4.0), frames, time.time())


def stop_stage(proc, stop) -> None:
    """Ask a stage process to stop as the supervisor does; kill it if it does not."""
    stop.set()
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()


def _run_worker(config, stop):
    from streamer.stages import worker
    worker.run(config, stop)


def _run_overlay(config, stop):
    from streamer.stages import overlay
    overlay.run(config, stop)


def _run_capture(config, stop, log_path):
    from loguru import logger

    from streamer.stages import capture
    logger.remove()
    logger.add(log_path, level="INFO")
    capture.run(config, stop)


def test_offline_capture_survives_malformed_credits_then_sends_on_a_real_one(tmp_path):
    """Offline, capture waits for the dispatcher's credits; garbage on that socket is counted, not obeyed."""
    eps = endpoints(tmp_path)
    video = make_video(tmp_path / "clip.avi", num_frames=120)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(eps.windows)
    stop = mp.get_context("spawn").Event()
    log = tmp_path / "capture.log"
    config = CaptureConfig("cam", str(video), eps, size=32, num_frames=4, frame_interval=2, hop=4, offline=True)
    proc = mp.get_context("spawn").Process(target=_run_capture, args=(config, stop, str(log)))
    proc.start()
    try:
        windows = []
        identity = None
        while len(windows) < 2:  # the two windows capture may send ahead of any credit
            assert router.poll(30_000), "capture sent nothing"
            identity, *parts = router.recv_multipart()
            if isinstance(msg := messages.decode(parts), Window):
                windows.append(msg)
        assert not router.poll(1000), "capture sent a third window without a credit"
        rng = np.random.default_rng(3)
        valid = [bytes(p) for p in messages.encode(Credit("cam", 1))]
        sent = 0
        for i in range(2 * FUZZ_COUNT):
            bad = garbage(rng, valid, i)
            try:
                messages.decode(bad)
                continue  # some mutations of a message this small leave it valid: not garbage
            except messages.ProtocolError:
                pass
            router.send_multipart([identity, *bad])
            sent += 1
            if sent == FUZZ_COUNT:
                break
        assert sent == FUZZ_COUNT
        assert not router.poll(2000), "garbage was taken for a credit"
        router.send_multipart([identity, *messages.encode(Credit("cam", 1))])
        assert router.poll(10_000), "a real credit after the garbage got no window"
        _, *parts = router.recv_multipart()
        following = messages.decode(parts)
        assert isinstance(following, Window) and following.seq == windows[-1].seq + 1
        assert proc.is_alive()
    finally:
        stop_stage(proc, stop)
        router.close()
        ctx.term()
    warnings = [line for line in log.read_text().splitlines() if "malformed" in line]
    assert 1 <= len(warnings) <= 3, f"{len(warnings)} log lines for the garbage: one per interval expected"


def test_worker_survives_malformed_batches_then_answers_a_real_one(tmp_path, checkpoint):  # noqa: F811
    eps = endpoints(tmp_path)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(eps.work)
    stop = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(
        target=_run_worker, args=(WorkerConfig("w", eps, str(checkpoint), device="cpu", precision="fp32", threads=1),
                                  stop))
    proc.start()
    try:
        assert router.poll(60_000), "the worker never asked for work"
        identity, *parts = router.recv_multipart()
        assert isinstance(messages.decode(parts), WorkRequest)
        rng = np.random.default_rng(0)
        valid = [bytes(p) for p in messages.encode(Batch((window(),)))]
        for i in range(FUZZ_COUNT):
            router.send_multipart([identity, *garbage(rng, valid, i)])
            if i % 500 == 499:
                time.sleep(0.05)  # ROUTER silently drops past the high-water mark: keep every one in the pipe
        time.sleep(1.0)
        router.send_multipart([identity, *messages.encode(Batch((window("cam", 1), window("cam2", 2))))])
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and answer is None:
            if router.poll(1000):
                msg = messages.decode(router.recv_multipart()[1:])
                if isinstance(msg, ResultBatch):
                    answer = msg
        assert answer is not None, "no result after the fuzz"
        assert [r.stream for r in answer.results] == ["cam", "cam2"]
        assert proc.is_alive()
    finally:
        stop_stage(proc, stop)
        router.close()
        ctx.term()


def test_overlay_survives_malformed_frames_and_results_then_draws(tmp_path):
    eps = endpoints(tmp_path)
    output = tmp_path / "out.mp4"
    ctx = zmq.Context()
    results = ctx.socket(zmq.PUB)
    results.setsockopt(zmq.LINGER, 0)
    results.setsockopt(zmq.SNDHWM, 0)
    results.bind(eps.results)
    stop = mp.get_context("spawn").Event()
    config = OverlayConfig(eps, ("cam",), window=False, output=str(output), fps=30.0)
    proc = mp.get_context("spawn").Process(target=_run_overlay, args=(config, stop))
    proc.start()
    display = ctx.socket(zmq.PUB)
    display.setsockopt(zmq.LINGER, 0)
    display.setsockopt(zmq.SNDHWM, 0)
    display.connect(eps.display)
    try:
        time.sleep(2.0)  # let both subscriptions reach the publishers
        rng = np.random.default_rng(1)
        image = np.zeros((120, 160, 3), np.uint8)
        valid_frame = [bytes(p) for p in messages.encode(DisplayFrame("cam", 0, time.time(), image))]
        valid_result = [bytes(p) for p in messages.encode(Result(
            "cam", 0, 0, time.time(), np.full(3, 1 / 3, np.float32), (("left", 0.4),), "w", {}))]
        for i in range(FUZZ_COUNT // 2):
            display.send_multipart(garbage(rng, valid_frame, i))
            results.send_multipart(garbage(rng, valid_result, i))
            if i % 500 == 0:
                time.sleep(0.01)  # PUB drops past the high-water mark; pace so most garbage is delivered
        for i in range(60):
            messages.send(display, DisplayFrame("cam", i, time.time(), np.full((120, 160, 3), 90, np.uint8)))
            messages.send(results, Result("cam", i, i, time.time(), np.array([0.7, 0.2, 0.1], np.float32),
                                          (("left", 0.7), ("right", 0.2)), "w", {}))
            time.sleep(1 / 30)
        assert proc.is_alive()
    finally:
        stop_stage(proc, stop)
        display.close()
        results.close()
        ctx.term()
    capture = cv2.VideoCapture(str(output))
    frames = []
    while (got := capture.read())[0]:
        frames.append(got[1])
    assert frames, "the overlay wrote no frame after the fuzz"
    last = frames[-1]  # (a mutated message may still be a valid black frame: look at the last, real one)
    assert last[last.shape[0] // 2, last.shape[1] // 2].mean() > 60


@pytest.mark.parametrize("count", [FUZZ_COUNT])
def test_decode_never_raises_anything_but_protocol_error(count):
    rng = np.random.default_rng(2)
    valid = [bytes(p) for p in messages.encode(Batch((window(),)))]
    for i in range(count):
        try:
            messages.decode(garbage(rng, valid, i))
        except messages.ProtocolError:
            pass
