"""End to end over RTSP: run_pipeline.py reading a real camera (the fixture's GStreamer server on 127.0.0.1)
that is killed, frozen, or never there, and a truncated file; real processes and sockets throughout."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import free_port, make_video
from tests.test_pipeline import (  # noqa: F401  (the checkpoint fixture is re-used)
    PRE,
    check_prediction_contract,
    checkpoint,
    due_indices,
    run,
    write_config,
)
from tests.test_reliability import REPO, Pipeline
from tests.test_web import get, metric, web_url

pytestmark = pytest.mark.rtsp

STREAM = "127.0.0.1"  # run_pipeline.py names an RTSP stream after its host
FPS = 30.0  # the fixture's test pattern
WINDOW_FRAMES = (PRE.num_frames - 1) * PRE.frame_interval  # from a window's first frame to its last
REFILL_S = PRE.num_frames * PRE.frame_interval / FPS  # frames a fresh ring buffer needs before a window
RESUME_S = 5.0  # issue 5: a camera that returns is read again within 5 s of its return
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| ")  # a loguru line from supervisor.configure_logging


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def of_kind(lines: list[dict], kind: str) -> list[dict]:
    return [line for line in lines if line["kind"] == kind]


def start_pipeline(tmp_path: Path, checkpoint: Path, url: str, *more) -> tuple[Pipeline, Path]:  # noqa: F811
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint)
    # --duration is only a safety net; each test stops the pipeline itself with SIGTERM.
    pipe = Pipeline("--config", config, "--source", url, "--headless", "--events", events, "--duration", 120, *more)
    pipe.wait_for(lambda: len(of_kind(read_events(events), "prediction")) >= 3, timeout=40,
                  what="first predictions from the camera")
    return pipe, events


def status_lines(pipe: Pipeline, word: str) -> list[str]:
    """stderr lines that report the source as lost ('lost', 'no frame') or back ('restored')."""
    return [line for line in pipe.lines if "capture" in line and word in line]


def check_status_line(line: dict, kind: str) -> None:
    assert set(line) == {"kind", "stream", "detail", "ts"}, line
    assert line["kind"] == kind and line["stream"] == STREAM
    assert isinstance(line["detail"], str) and line["detail"]
    assert isinstance(line["ts"], float) and abs(line["ts"] - time.time()) < 600


def check_outage(pipe: Pipeline, events: Path, back_at: float) -> None:
    """After an outage and the camera's return at ``back_at``: lost → back once each, fresh windows only."""
    pipe.wait_for(lambda: any(p["frame_ts"] > back_at for p in of_kind(read_events(events), "prediction")),
                  timeout=30, what="predictions after the camera came back")
    assert pipe.proc.poll() is None, "the pipeline exited instead of reconnecting"
    lines = read_events(events)
    statuses = [line for line in lines if line["kind"] in ("source_lost", "source_restored")]
    assert [line["kind"] for line in statuses] == ["source_lost", "source_restored"], statuses
    lost, restored = statuses
    check_status_line(lost, "source_lost")
    check_status_line(restored, "source_restored")
    assert lost["ts"] <= restored["ts"]

    predictions = of_kind(lines, "prediction")
    for line in predictions:
        check_prediction_contract(line)
    indices = [line["frame_index"] for line in predictions]
    assert indices == sorted(set(indices)), "frame_index must keep increasing across the reconnect"

    # Predictions resume within 5 s of the camera's return (plus the time to refill a window).
    first_after = next(p for p in predictions if p["frame_ts"] > back_at)
    written_at = first_after["frame_ts"] + first_after["latency_ms"] / 1000
    assert written_at - back_at < RESUME_S + REFILL_S, f"resumed {written_at - back_at:.1f} s after the return"

    # No window spans the gap: the first frame read after the reconnect is named in the restored line,
    # and every later window must lie wholly after it.
    first_new = int(re.search(r"from frame (\d+)", restored["detail"]).group(1))
    position = lines.index(restored)
    after = of_kind(lines[position:], "prediction")
    assert after, "no prediction after source_restored"
    spanning = [p["frame_index"] for p in after if p["frame_index"] < first_new + WINDOW_FRAMES]
    assert not spanning, f"windows ending at {spanning} hold frames from before the gap (first new frame: {first_new})"
    before = of_kind(lines[: lines.index(lost)], "prediction")
    assert all(p["frame_index"] < first_new for p in before)

    # One clear line on stderr for the loss and one for the return, not a flood.
    assert 1 <= len(status_lines(pipe, "lost") + status_lines(pipe, "no frame")) < 5, pipe.lines[-30:]
    assert 1 <= len(status_lines(pipe, "restored")) < 3, pipe.lines[-30:]
    assert not any("Traceback" in line for line in pipe.lines)


@pytest.mark.timeout(60)
def test_rtsp_camera_headless_writes_contract_lines(tmp_path, checkpoint, rtsp_server):  # noqa: F811
    pipe, events = start_pipeline(tmp_path, checkpoint, rtsp_server.url)
    try:
        pipe.wait_for(lambda: len(of_kind(read_events(events), "prediction")) >= 10, timeout=20,
                      what="ten predictions")
    finally:
        code = pipe.stop()
    assert code == 0, "".join(pipe.lines[-30:])
    predictions = of_kind(read_events(events), "prediction")
    for line in predictions:
        check_prediction_contract(line)
        assert line["stream"] == STREAM
        # The tiny model takes ~1 ms; a few seconds allows for a loaded 2-core machine.
        assert line["latency_ms"] < 3000
    indices = [line["frame_index"] for line in predictions]
    assert indices == sorted(set(indices))
    assert indices[0] >= WINDOW_FRAMES, "a window ended before it could hold num_frames frames"
    stamps = [line["frame_ts"] for line in predictions]
    assert stamps == sorted(stamps)
    # Live camera at 30 fps: capture times advance with the source index.
    per_frame = (stamps[-1] - stamps[0]) / (indices[-1] - indices[0])
    assert 1 / 60 < per_frame < 1 / 15, per_frame


@pytest.mark.timeout(60)
def test_rtsp_camera_killed_and_restarted_is_lost_then_back(tmp_path, checkpoint, rtsp_server):  # noqa: F811
    """With the web view on: /readyz is 503 naming the camera while it is down, 200 once it is back."""
    pipe, events = start_pipeline(tmp_path, checkpoint, rtsp_server.url, "--web", "127.0.0.1:0")
    readyz = lambda: get(f"{web_url(pipe)}/readyz")  # noqa: E731
    try:
        pipe.wait_for(lambda: readyz()[0] == 200, timeout=10, what="/readyz 200 with the camera up")
        rtsp_server.kill()
        killed_at = time.time()
        pipe.wait_for(lambda: of_kind(read_events(events), "source_lost"), timeout=15, what="source_lost line")
        # A killed camera closes its connection: the loss is known at once, long before the read timeout.
        lost_ts = of_kind(read_events(events), "source_lost")[0]["ts"]
        assert lost_ts - killed_at < 3.0, f"source_lost written {lost_ts - killed_at:.1f} s after the kill"
        pipe.wait_for(lambda: readyz()[0] == 503, timeout=5, what="/readyz 503 with the camera down")
        body = readyz()[2]
        assert any(reason.startswith(f"source {STREAM} (rtsp): lost") for reason in json.loads(body)["not_ready"])
        # Down long enough that an uncapped backoff (0.25 s doubling: tries at 3.75, 7.75, 15.75 s)
        # would miss the 5 s promise; the cap (2 s) makes the next try come soon after the return.
        time.sleep(max(0.0, killed_at + 8.0 - time.time()))
        assert pipe.proc.poll() is None, "the pipeline exited when the camera died"
        rtsp_server.start()  # the same port
        back_at = time.time()
        check_outage(pipe, events, back_at)
        pipe.wait_for(lambda: readyz()[0] == 200, timeout=10, what="/readyz 200 after the camera came back")
        text = get(f"{web_url(pipe)}/metrics")[2].decode()  # the outage, counted once each way
        assert metric(text, "timesformer_source_losses_total", stream=STREAM) == 1
        assert metric(text, "timesformer_source_reconnects_total", stream=STREAM) == 1
        assert metric(text, "timesformer_source_up", stream=STREAM) == 1
    finally:
        code = pipe.stop()
    assert code == 0, "".join(pipe.lines[-30:])


@pytest.mark.timeout(60)
def test_rtsp_camera_frozen_then_resumed_is_lost_then_back(tmp_path, checkpoint, rtsp_server):  # noqa: F811
    pipe, events = start_pipeline(tmp_path, checkpoint, rtsp_server.url)
    try:
        rtsp_server.stop()  # SIGSTOP: the connection stays open but nothing arrives
        stopped_at = time.time()
        pipe.wait_for(lambda: of_kind(read_events(events), "source_lost"), timeout=15, what="source_lost line")
        # Never blocked on the dead socket: the loss is noticed after about the read timeout (5 s; up to
        # 7.5 s when FFmpeg's first interrupted read hands back a last partial frame), never 75 s.
        lost_ts = of_kind(read_events(events), "source_lost")[0]["ts"]
        assert lost_ts - stopped_at < 2 * 5.0, f"source_lost written {lost_ts - stopped_at:.1f} s after the stall"
        time.sleep(1.0)
        assert pipe.proc.poll() is None, "the pipeline exited when the camera stalled"
        rtsp_server.cont()
        back_at = time.time()
        check_outage(pipe, events, back_at)
    finally:
        code = pipe.stop()
    assert code == 0, "".join(pipe.lines[-30:])


@pytest.mark.timeout(60)
def test_truncated_file_source_ends_cleanly_with_its_readable_part(tmp_path, checkpoint):  # noqa: F811
    whole = make_video(tmp_path / "whole.avi", num_frames=120)
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    capture = cv2.VideoCapture(str(truncated), cv2.CAP_FFMPEG)
    readable = 0
    while capture.read()[0]:
        readable += 1
    capture.release()
    assert 10 < readable < 120, "the test file is not truncated the way the test needs"
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint)
    started = time.monotonic()
    proc = run("--config", config, "--source", truncated, "--headless", "--events", events, "--duration", 50,
               timeout=55)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 45, "the pipeline ran to --duration instead of ending with the file"
    assert "Traceback" not in proc.stderr
    lines = read_events(events)
    indices = [line["frame_index"] for line in of_kind(lines, "prediction")]
    due = [i for i in due_indices(120) if i < readable]
    assert indices == sorted(indices) and set(indices) <= set(due)
    assert indices and indices[-1] == due[-1], "the last readable window was not predicted"
    lost = of_kind(lines, "source_lost")
    assert len(lost) == 1 and "truncated" in lost[0]["detail"], lines[-3:]
    after_loss = lines[lines.index(lost[0]) + 1:]  # windows still at a worker then: logged, but no action reopens
    assert not of_kind(after_loss, "start"), after_loss
    starts, ends = of_kind(lines, "start"), of_kind(lines, "end")
    assert len(starts) == len(ends) and all(s["frame_index"] <= e["frame_index"] for s, e in zip(starts, ends))


@pytest.mark.timeout(60)
def test_unreachable_camera_at_start_is_one_error_line_and_exit_2(tmp_path, checkpoint):  # noqa: F811
    """Sources are opened once before any stage starts: the only output is the error line."""
    url = f"rtsp://127.0.0.1:{free_port()}/x"  # nothing listens there
    config = write_config(tmp_path / "c.toml", checkpoint)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--source", url, "--headless",
                           "--duration", "50"], cwd=REPO, capture_output=True, text=True, timeout=60)
    took_s = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and url in lines[0], proc.stderr
    assert took_s < 30, f"took {took_s:.1f} s to give up on an unreachable camera"
