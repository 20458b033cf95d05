"""Video sources against real files, the real synthetic generator and a real RTSP server."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import frame_index_of, make_video
from streamer.errors import ConfigError, SourceError
from streamer.video.sources import (
    Frame,
    SourceConfig,
    SourceLost,
    SourceState,
    VideoSource,
    open_source,
    parse_source,
)

REPO = Path(__file__).resolve().parents[1]
SLACK_S = 1.0  # what a read may take beyond read_timeout_s on a loaded 2-core machine


# ---------------------------------------------------------------- helpers


@dataclass
class Reading:
    """What a read loop saw: frames, SourceLost raises, events and the longest single read."""

    frames: list[Frame] = field(default_factory=list)
    lost_raises: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)
    longest_read_s: float = 0.0
    ended: bool = False


def read_for(source: VideoSource, seconds: float, reading: Reading | None = None,
             until=lambda r: False) -> Reading:
    """Read for ``seconds`` (or until ``until(reading)``), timing every call."""
    reading = reading or Reading()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until(reading):
        started = time.monotonic()
        try:
            frame = source.read()
        except SourceLost:
            reading.lost_raises += 1
            frame = False
        reading.longest_read_s = max(reading.longest_read_s, time.monotonic() - started)
        reading.events += source.events()
        if frame is None:
            reading.ended = True
            break
        if frame:
            reading.frames.append(frame)
    return reading


def kinds(events: list[tuple[str, str]]) -> list[str]:
    return [kind for kind, _ in events]


def assert_indices_increase(frames: list[Frame]) -> None:
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)), f"indices not strictly increasing: {indices}"


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("spec, kind", [
    ("0", "webcam"), ("rtsp://127.0.0.1:8554/cam", "rtsp"), ("rtsps://cam.local/x", "rtsp"),
    ("synthetic:", "synthetic"), ("synthetic:42", "synthetic"), ("synthetic", "synthetic"),
])
def test_parse_source_names_the_kind(spec, kind):
    assert parse_source(spec) == kind


def test_specs_are_checked_without_loading_a_decoder():
    """The config loader checks every source spec before any process starts: that must not cost cv2 or PyAV."""
    code = ("import sys; from streamer.video.specs import parse_source, synthetic_seed; "
            "assert parse_source('synthetic:7') == 'synthetic' and synthetic_seed(' synthetic:7') == 7; "
            "print(sorted(m for m in ('cv2', 'av', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_parse_source_accepts_an_existing_file(video_file):
    assert parse_source(str(video_file)) == "file"


@pytest.mark.parametrize("spec, shown", [
    ("/no/such/clip.mp4", "/no/such/clip.mp4"),
    ("http://cam.local/stream", "http://"),
    ("synthetic:abc", "synthetic:abc"),
    ("/dev/video99", "/dev/video99"),
    ("rtsp:///path-only", "rtsp:///path-only"),
    ("", "empty source"),
])
def test_bad_spec_raises_source_error_naming_the_value(spec, shown):
    with pytest.raises(SourceError) as err:
        parse_source(spec)
    message = str(err.value)
    assert shown in message and "\n" not in message


def test_directory_is_refused_as_a_source(tmp_path):
    with pytest.raises(SourceError, match=str(tmp_path)):
        open_source(SourceConfig(str(tmp_path)))


def test_missing_webcam_device_raises_source_error():
    with pytest.raises(SourceError, match="/dev/video99"):
        open_source(SourceConfig("/dev/video99"))


def test_missing_webcam_index_raises_source_error():
    with pytest.raises(SourceError, match="webcam 9"):
        open_source(SourceConfig("9"))


def test_rtsp_password_never_appears_in_errors():
    # Port 1 on loopback: nothing listens, so the open fails at once.
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig("rtsp://admin:s3cret@127.0.0.1:1/live", open_timeout_s=2))
    assert "s3cret" not in str(err.value) and "127.0.0.1:1" in str(err.value)


@pytest.mark.parametrize("name", ["open_timeout_s", "read_timeout_s", "backoff_max_s"])
def test_config_rejects_non_positive_seconds(name):
    with pytest.raises(ConfigError, match=name):
        SourceConfig("synthetic:", **{name: 0})


# ---------------------------------------------------------------- files


def test_file_source_reads_every_frame_in_order_then_none(video_file):
    with open_source(SourceConfig(str(video_file), realtime=False)) as source:
        assert (source.kind, source.name, source.fps) == ("file", "clip.avi", 30.0)
        reading = read_for(source, 10)
        assert reading.ended and source.read() is None
        assert source.state is SourceState.ENDED
    assert [f.index for f in reading.frames] == list(range(60))
    assert [frame_index_of(f.bgr) for f in reading.frames] == list(range(60))  # none skipped or repeated
    assert all(f.bgr.shape == (120, 160, 3) and f.bgr.dtype == np.uint8 for f in reading.frames)
    stamps = [f.ts for f in reading.frames]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 5
    assert reading.events == []  # a complete file ends without a loss


def test_file_source_in_realtime_is_paced_at_the_file_fps(video_file):
    with open_source(SourceConfig(str(video_file), realtime=True)) as source:
        started = time.monotonic()
        frames = [source.read() for _ in range(31)]  # frame 30 is due 1 s after frame 0
        elapsed = time.monotonic() - started
    assert all(frames)
    assert 0.8 <= elapsed < 3.0, f"31 frames at 30 fps took {elapsed:.2f} s"


def test_offline_file_reads_much_faster_than_realtime(tmp_path):
    clip = make_video(tmp_path / "long.avi", num_frames=150)  # 5 s at 30 fps
    with open_source(SourceConfig(str(clip), realtime=False)) as source:
        started = time.monotonic()
        reading = read_for(source, 10)
        elapsed = time.monotonic() - started
    assert len(reading.frames) == 150 and reading.ended
    assert elapsed < 2.5, f"offline read of a 5 s file took {elapsed:.2f} s"


def test_truncated_file_ends_cleanly_and_says_so(video_file, tmp_path):
    truncated = tmp_path / "truncated.avi"
    data = video_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with open_source(SourceConfig(str(truncated), realtime=False)) as source:
        reading = read_for(source, 10)
    assert reading.ended, "a truncated file must end, not hang"
    assert 0 < len(reading.frames) < 60
    assert [frame_index_of(f.bgr) for f in reading.frames] == list(range(len(reading.frames)))
    assert kinds(reading.events) == ["source_lost"] and "truncated" in reading.events[0][1]


def test_file_without_its_index_is_refused_at_open(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", fourcc="mp4v")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the moov atom is at the end: gone
    with pytest.raises(SourceError, match="cut.mp4"):
        open_source(SourceConfig(str(cut)))


def test_garbage_file_is_refused_at_open(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="garbage.mp4"):
        open_source(SourceConfig(str(garbage)))


# ---------------------------------------------------------------- synthetic


def test_synthetic_source_is_paced_and_deterministic():
    paced_config, fast_config = SourceConfig("synthetic:7"), SourceConfig("synthetic:7", realtime=False)
    with open_source(paced_config) as first, open_source(fast_config) as again:
        assert first.kind == "synthetic" and first.fps == 30.0
        started = time.monotonic()
        paced = [first.read() for _ in range(16)]  # frame 15 is due 0.5 s after frame 0
        elapsed = time.monotonic() - started
        fast = [again.read() for _ in range(16)]
    assert elapsed >= 0.4, f"16 synthetic frames took only {elapsed:.2f} s"
    assert [f.index for f in paced] == list(range(16))
    assert all(np.array_equal(a.bgr, b.bgr) for a, b in zip(paced, fast))


# ---------------------------------------------------------------- RTSP (a real server)

LIVE = dict(open_timeout_s=2.0, read_timeout_s=2.0, backoff_max_s=1.0)


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_rtsp_source_delivers_consecutive_frames(rtsp_server):
    started = time.monotonic()
    with open_source(SourceConfig(rtsp_server.url, **LIVE)) as source:
        assert (source.kind, source.name, source.fps) == ("rtsp", f"127.0.0.1:{rtsp_server.port}/test", 30.0)
        reading = read_for(source, 10, until=lambda r: len(r.frames) >= 30)
        assert source.state is SourceState.LIVE
    assert len(reading.frames) == 30, f"only {len(reading.frames)} frames in 10 s"
    assert [f.index for f in reading.frames] == list(range(30))
    assert reading.frames[0].bgr.shape == (240, 320, 3)
    assert time.monotonic() - started < 5, "30 frames of a 30 fps camera took over 5 s"
    assert reading.lost_raises == 0 and reading.events == []


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_rtsp_serving_a_file_loops_it_and_each_frame_arrives_once(rtsp_server_factory, video_file):
    server = rtsp_server_factory(file=video_file)
    with open_source(SourceConfig(server.url, **LIVE)) as source:
        reading = read_for(source, 15, until=lambda r: len(r.frames) >= 90)
    shown = [frame_index_of(f.bgr) for f in reading.frames]
    assert len(shown) == 90
    # Each frame follows its predecessor in the 60-frame loop: none decoded twice, none skipped.
    assert all(b == (a + 1) % 60 for a, b in zip(shown, shown[1:])), shown


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_slow_reader_gets_fresh_frames_and_drops_are_counted(rtsp_server):
    with open_source(SourceConfig(rtsp_server.url, **LIVE)) as source:
        assert source.read() is not None
        time.sleep(2.5)  # the camera keeps sending ~75 frames meanwhile
        frame = source.read()
        assert time.time() - frame.ts < 1.5, "a slow reader was handed stale frames"
        assert source.dropped > 0


class BlockingCamera:
    """Stands in for a webcam (none exists here) whose read blocks while ``unplugged`` is set,
    as V4L2 devices do: the reader thread never gets control back until frames flow again."""

    fps = 30.0
    why = ""

    def __init__(self) -> None:
        import threading
        self.unplugged = threading.Event()
        self.plugged = threading.Event()
        self.plugged.set()

    def grab(self) -> np.ndarray:
        if self.unplugged.is_set():
            self.plugged.wait()
        time.sleep(1 / self.fps)
        return np.zeros((48, 64, 3), np.uint8)

    def close(self) -> None:
        pass


@pytest.mark.timeout(30)
def test_a_webcam_whose_read_blocks_is_reported_lost_once_then_restored():
    from streamer.video.sources import _LiveSource

    camera = BlockingCamera()
    config = SourceConfig("0", open_timeout_s=1.0, read_timeout_s=0.5)
    source = _LiveSource(config, "webcam", camera, opener=lambda: camera)
    try:
        reading = read_for(source, 5, until=lambda r: len(r.frames) >= 5)
        camera.plugged.clear()
        camera.unplugged.set()
        read_for(source, 2.0, reading)  # several reads time out meanwhile
        assert reading.lost_raises >= 2
        assert reading.longest_read_s < config.read_timeout_s + SLACK_S
        assert kinds(reading.events) == ["source_lost"], "one source_lost for the outage, not one per read"
        assert "stalled" in reading.events[0][1]
        before = len(reading.frames)
        camera.unplugged.clear()
        camera.plugged.set()
        read_for(source, 5, reading, until=lambda r: len(r.frames) >= before + 5)
    finally:
        source.close()
    assert len(reading.frames) >= before + 5
    assert kinds(reading.events) == ["source_lost", "source_restored"]


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_rtsp_killed_and_restarted_is_lost_then_restored(rtsp_server):
    config = SourceConfig(rtsp_server.url, **LIVE)
    with open_source(config) as source:
        reading = read_for(source, 10, until=lambda r: len(r.frames) >= 10)
        assert len(reading.frames) == 10
        rtsp_server.kill()
        read_for(source, 2.5, reading)  # down for a while: reads time out, never hang
        assert "source_lost" in kinds(reading.events)
        assert source.state is SourceState.LOST
        before = len(reading.frames)
        rtsp_server.restart()
        back_at = time.time()  # the server is listening again
        read_for(source, 10, reading, until=lambda r: len(r.frames) >= before + 10)
        resumed_after = reading.frames[before].ts - back_at if len(reading.frames) > before else 99.0
    assert len(reading.frames) >= before + 10, "frames did not resume after the camera came back"
    assert resumed_after < 5.0, f"first frame {resumed_after:.1f} s after the camera's return"
    assert kinds(reading.events) == ["source_lost", "source_restored"]
    assert_indices_increase(reading.frames)
    assert reading.frames[0].segment == 0 and reading.frames[-1].segment == 1
    assert reading.longest_read_s < config.read_timeout_s + SLACK_S


@pytest.mark.rtsp
@pytest.mark.timeout(90)
def test_rtsp_stalled_server_times_out_then_resumes(rtsp_server):
    config = SourceConfig(rtsp_server.url, **LIVE)
    with open_source(config) as source:
        reading = read_for(source, 10, until=lambda r: len(r.frames) >= 10)
        rtsp_server.stop()
        read_for(source, 3 * config.read_timeout_s, reading, until=lambda r: r.lost_raises >= 2)
        assert reading.lost_raises >= 2, "a read blocked on the stalled camera instead of timing out"
        lost = [detail for kind, detail in reading.events if kind == "source_lost"]
        assert lost and "stalled" in lost[0]
        before = len(reading.frames)
        rtsp_server.cont()
        read_for(source, 15, reading, until=lambda r: len(r.frames) >= before + 10)
    assert len(reading.frames) >= before + 10, "frames did not resume after SIGCONT"
    assert kinds(reading.events) == ["source_lost", "source_restored"]
    assert_indices_increase(reading.frames)
    assert reading.longest_read_s < config.read_timeout_s + SLACK_S


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_rtsp_open_of_a_stalled_server_fails_within_open_timeout(rtsp_server):
    rtsp_server.stop()  # accepts TCP connections (the kernel does) but never answers
    started = time.monotonic()
    with pytest.raises(SourceError, match=f"127.0.0.1:{rtsp_server.port}"):
        open_source(SourceConfig(rtsp_server.url, open_timeout_s=1.5))
    assert time.monotonic() - started < 1.5 + SLACK_S


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_rtsp_without_reconnect_ends_when_lost(rtsp_server):
    with open_source(SourceConfig(rtsp_server.url, reconnect=False, **LIVE)) as source:
        reading = read_for(source, 10, until=lambda r: len(r.frames) >= 5)
        rtsp_server.kill()
        read_for(source, 10, reading)
        assert reading.ended and source.state is SourceState.ENDED and source.read() is None
    assert kinds(reading.events) == ["source_lost"]


@pytest.mark.rtsp
@pytest.mark.timeout(60)
def test_close_while_reconnecting_returns_promptly(rtsp_server):
    source = open_source(SourceConfig(rtsp_server.url, **LIVE))
    assert source.read() is not None
    rtsp_server.kill()
    read_for(source, 1.0)
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 1.5
    assert source.read() is None
