"""Capture converts only what is used: the real capture stage reading a real numbered video over real sockets,
and the one-pass libswscale conversion against the OpenCV path it replaces."""

import threading

import av
import cv2
import numpy as np
import pytest
import zmq

from streamer.stages import capture
from streamer.transport import messages
from streamer.config.network import Endpoints
from streamer.config.stages import CaptureConfig
from streamer.video.frames import display_image, model_frame, to_model_frame
from streamer.transport.messages import Credit, Stats, Status, Window
from streamer.video.ringbuffer import WindowSchedule
from tests.conftest import frame_index_of, make_video

# How far the one-pass conversion may be from today's path (libswscale's default BGR, then OpenCV's resize),
# in 0-255 levels. Measured: 720p and 1080p → 224 differ by 1.2 (mean) and 2 (99th percentile); small
# frames by up to 1.9 and 10, nearly all of it today's path's coarser chroma upsampling (converting to
# RGB with full-resolution chroma first, then resizing with OpenCV, differs from today's by as much).
MEAN_TOLERANCE, P99_TOLERANCE = 2.0, 10.0


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A BGR picture with edges, text and smooth areas: what resampling differences show up on."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 0)
    cv2.putText(image, "frame 42", (width // 10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, height / 200, (255, 255, 255),
                max(1, height // 100))
    cv2.rectangle(image, (width // 2, height // 5), (width * 3 // 4, height * 3 // 4), (20, 200, 40), -1)
    return image


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape and ours.dtype == reference.dtype == np.uint8
    diff = np.abs(ours.astype(int) - reference.astype(int))
    assert diff.mean() <= MEAN_TOLERANCE and np.percentile(diff, 99) <= P99_TOLERANCE, \
        f"mean {diff.mean():.2f}, p99 {np.percentile(diff, 99):.1f} levels"


@pytest.mark.parametrize("height,width,size", [(720, 1280, 224), (1080, 1920, 224), (240, 320, 224), (480, 640, 48)])
def test_one_pass_conversion_matches_the_opencv_path(height, width, size):
    """A decoder frame (YUV 4:2:0, as H.264 gives) converted and resized by libswscale in one pass."""
    decoded = av.VideoFrame.from_ndarray(textured(height, width), format="bgr24").reformat(format="yuv420p")
    reference = to_model_frame(decoded.to_ndarray(format="bgr24"), size)
    assert_close(model_frame(decoded, size), reference)
    assert model_frame(decoded, size).flags.c_contiguous
    shown = display_image(decoded, 640)
    assert shown.shape == (round(height * 640 / width) if width > 640 else height, min(640, width), 3)


def test_arrays_still_take_the_opencv_path():
    image = textured(240, 320)
    assert np.array_equal(model_frame(image, 64), to_model_frame(image, 64))
    assert display_image(image, 640) is image


def endpoints(tmp_path) -> Endpoints:
    return Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display", "web")))


def run_capture(config: CaptureConfig) -> tuple[list[Window], list[Stats]]:
    """The real capture stage, offline, over a real ROUTER socket until its file ends: every window it sent
    (each answered with a credit, as the dispatcher does) and every report."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(config.endpoints.windows)
    stop = threading.Event()
    thread = threading.Thread(target=capture.run, args=(config, stop), daemon=True)
    thread.start()
    windows, stats = [], []
    try:
        while True:
            assert router.poll(30_000), "capture went silent"
            identity, *parts = router.recv_multipart()
            msg = messages.decode(parts)
            if isinstance(msg, Window):
                windows.append(msg)
                router.send_multipart([identity, *messages.encode(Credit(msg.stream, 1))])
            elif isinstance(msg, Stats):
                stats.append(msg)
            elif isinstance(msg, Status) and msg.kind == "end_of_stream":
                break
    finally:
        stop.set()
        thread.join(timeout=10)
        router.close()
        ctx.term()
    return windows, stats


@pytest.mark.parametrize("num_frames,interval,hop", [(4, 2, 4), (4, 8, 8), (3, 5, 7)])
def test_capture_converts_exactly_the_frames_its_windows_hold(tmp_path, num_frames, interval, hop):
    """Offline over a real ROUTER socket: every window arrives, its frames equal today's path's within the
    tolerance, and the capture's own count of conversions is the number of distinct frames windows hold."""
    total = 90
    video = make_video(tmp_path / "clip.avi", num_frames=total, size=(240, 240))  # square: the index blocks stay
    config = CaptureConfig("cam", str(video), endpoints(tmp_path), size=64, num_frames=num_frames,
                           frame_interval=interval, hop=hop, offline=True)
    windows, stats = run_capture(config)

    schedule = WindowSchedule(num_frames, interval, hop)
    due, wanted = [], set()
    for i in range(total):
        if schedule.due(i):
            due.append(i)
        if schedule.wanted(i):
            wanted.add(i)
    assert [w.frame_indices[-1] for w in windows] == due
    held = {i for w in windows for i in w.frame_indices}
    # Converted: the frames windows held, and near the end those a window after the file's last frame would
    # have held (a live stream does go on).
    assert held <= wanted and all(i > total - schedule.span for i in wanted - held)
    counts = {name: value for name, _, value in stats[-1].samples}
    assert counts["frames_captured"] == total
    assert counts["frames_converted"] == len(wanted) < total

    reader = cv2.VideoCapture(str(video))  # today's path: OpenCV's BGR, then to_model_frame
    reference = [to_model_frame(reader.read()[1], 64) for _ in range(total)]
    reader.release()
    for window in windows:
        for index, frame in zip(window.frame_indices, window.frames):
            assert_close(frame, reference[index])
            back = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), (240, 240), interpolation=cv2.INTER_LINEAR)
            assert frame_index_of(back) == index, "a window holds another frame than it names"


# ---------------------------------------------------------------- hardware decoding


def _software_frames(path, count: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f, _ in zip(container.decode(video=0), range(count))]


def _hw_frames(path, hwaccel: str, count: int) -> tuple[list[np.ndarray], list[str]]:
    """Frames of ``path`` read through the file source with ``hwaccel``, and what it logged."""
    from loguru import logger

    from streamer.video.sources import SourceConfig, open_source

    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="INFO")
    try:
        with open_source(SourceConfig(str(path), realtime=False, hwaccel=hwaccel)) as source:
            frames = [source.read() for _ in range(count)]
    finally:
        logger.remove(sink)
    return [f.picture.to_ndarray(format="rgb24") for f in frames], said


@pytest.fixture
def h264_clip(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(12):
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(textured(240, 320, index), cv2.COLOR_BGR2RGB), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_asked_for_hardware_decoding_that_is_not_here_falls_back_to_software_with_one_line(h264_clip):
    from av.codec.hwaccel import HWAccel

    for device in ("cuda", "vaapi", "qsv"):
        try:
            with av.open(str(h264_clip), hwaccel=HWAccel(device)) as probe:
                if probe.streams.video[0].codec_context.is_hwaccel:
                    continue  # this one works here: not a fallback case
        except Exception:
            pass
        frames, said = _hw_frames(h264_clip, device, 12)
        reference = _software_frames(h264_clip, 12)
        assert all(np.array_equal(a, b) for a, b in zip(frames, reference))
        notes = [line for line in said if "hardware decoding" in line]
        assert len(notes) == 1 and f"({device}) unavailable" in notes[0] and "decoding in software" in notes[0], said
        return
    pytest.skip("every hardware decoder tried works on this machine: nothing falls back")


def test_hardware_decoding_where_a_device_works(h264_clip):
    """Where a device decodes (NVDEC, VAAPI, QSV...), its frames are the software decoder's within the stated
    conversion tolerance; skipped with the reasons where none does."""
    frames, said = _hw_frames(h264_clip, "auto", 12)
    used = [line for line in said if "decoding on" in line]
    if not used:
        reasons = next((line for line in said if "unavailable" in line), "no hardware device type in this FFmpeg")
        pytest.skip(f"no hardware decoder works here: {reasons}")
    for ours, reference in zip(frames, _software_frames(h264_clip, 12)):
        assert_close(ours, reference)
