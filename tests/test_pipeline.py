"""End to end: run_pipeline.py as a user runs it, with real processes, sockets, video files and checkpoints."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import tomli_w

from streamer.transport.framestore import store_dir
from streamer.video.ringbuffer import WindowSchedule
from tests.conftest import make_video
from workers.model import Preprocess, save_model
from workers.timesformer import TimeSformer, TimeSformerConfig

REPO = Path(__file__).resolve().parents[1]
LABELS = ["left", "right", "still"]
PRE = Preprocess(size=32, num_frames=4, frame_interval=2)
HOP = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = TimeSformer(TimeSformerConfig(img_size=32, patch_size=8, num_classes=3, num_frames=4, embed_dim=32,
                                          depth=1, num_heads=2))
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", labels=LABELS, preprocess=PRE)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "clip.avi", num_frames=60)


def write_config(path: Path, checkpoint: Path, *, delay_s: float = 0.0, max_batch: int = 4, hop: int = HOP,
                 shared_memory: bool = True, **pipeline) -> Path:
    model = {"checkpoint": str(checkpoint), "precision": "fp32", "backend": "torch", "hop": hop, "max_batch": max_batch,
             "delay_s": delay_s, "threads": 1}
    path.write_text(tomli_w.dumps({"model": model, "pipeline": {"shared_memory": shared_memory, **pipeline},
                                   "sources": [{"spec": "synthetic:"}]}))
    return path


def run(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def due_indices(num_frames_in_file: int, hop: int = HOP) -> list[int]:
    schedule = WindowSchedule(PRE.num_frames, PRE.frame_interval, hop)
    return [i for i in range(num_frames_in_file) if schedule.due(i)]


def check_prediction_contract(line: dict) -> None:
    assert line["kind"] == "prediction"
    assert isinstance(line["stream"], str) and line["stream"]
    assert isinstance(line["frame_index"], int)
    assert isinstance(line["frame_ts"], float) and abs(line["frame_ts"] - time.time()) < 600
    assert isinstance(line["latency_ms"], (int, float)) and line["latency_ms"] >= 0
    top = line["top"]
    assert top and all(isinstance(lab, str) and 0.0 <= p <= 1.0 for lab, p in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert {lab for lab, _ in top} <= set(LABELS)


def test_file_source_headless_writes_contract_lines_and_stops_at_end(tmp_path, checkpoint, video):
    events, temp = tmp_path / "logs" / "events.jsonl", tmp_path / "temp"
    config = write_config(tmp_path / "c.toml", checkpoint)
    temp.mkdir()
    proc = run("--config", config, "--source", video, "--headless", "--events", events, "--duration", 60,
               env={**os.environ, "TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr
    assert not list(temp.iterdir()), "the run left its ipc:// folder (or something else) in the temp folder"
    lines = read_lines(events)
    predictions = [line for line in lines if line["kind"] == "prediction"]
    assert predictions, proc.stderr
    for line in predictions:
        check_prediction_contract(line)
        assert line["stream"] == "clip"
        # The latency's parts: each step once, none negative, together within the whole.
        steps = [line["timings"][key] for key in ("capture_ms", "queue_ms", "preprocess_ms", "forward_ms")]
        assert min(steps) >= 0 and sum(steps) <= line["latency_ms"] + 1.0
    indices = [line["frame_index"] for line in predictions]
    due = due_indices(60)
    assert set(indices) <= set(due), "a prediction's frame_index is not the last frame of a window"
    assert indices == sorted(indices)
    assert indices[-1] == due[-1], "the pipeline stopped before the file's last window was predicted"
    stamps = [line["frame_ts"] for line in predictions]
    assert stamps == sorted(stamps)
    # Played at its own 30 fps: 60 frames take about 2 s of capture time.
    span = (stamps[-1] - stamps[0]) / max(1, indices[-1] - indices[0])
    assert 1 / 45 < span < 1 / 20


def test_offline_drops_no_window_and_its_annotated_video_holds_every_frame(tmp_path, checkpoint, video):
    """Offline, the workers set the pace (slow here: 50 ms a window) and none of the file is lost: every window
    predicted, and the annotated video (--output) one frame per source frame, not sampled at wall-clock speed."""
    events, output = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    config = write_config(tmp_path / "c.toml", checkpoint, delay_s=0.05, max_batch=1)
    proc = run("--config", config, "--source", video, "--offline", "--headless", "--events", events,
               "--output", output)
    assert proc.returncode == 0, proc.stderr
    indices = [line["frame_index"] for line in read_lines(events) if line["kind"] == "prediction"]
    assert indices == due_indices(60)
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 60


def test_frames_through_shared_memory_predict_exactly_as_inline(tmp_path, checkpoint, video):
    """Same file, offline, both transports: the same windows with bit-identical probabilities; no store left."""
    def stores() -> set[str]:
        return {p.name for p in store_dir().glob("tss-*.frames")}

    before, runs = stores(), {}
    for shared in (True, False):
        events = tmp_path / f"events-{shared}.jsonl"
        config = write_config(tmp_path / f"c-{shared}.toml", checkpoint, max_batch=1, shared_memory=shared)
        proc = run("--config", config, "--source", video, "--offline", "--headless", "--events", events)
        assert proc.returncode == 0, proc.stderr
        assert ("frames through shared memory" in proc.stderr) == shared, proc.stderr
        runs[shared] = [(line["frame_index"], line["top"]) for line in read_lines(events)
                        if line["kind"] == "prediction"]
    assert [i for i, _ in runs[True]] == due_indices(60)
    assert runs[True] == runs[False]
    assert stores() <= before, "a frame store file was left behind"


def test_overload_keeps_latency_bounded_and_counts_drops(tmp_path, checkpoint):
    """A model far slower than the windows: old windows are dropped, latency stays about one inference."""
    long_video = make_video(tmp_path / "long.avi", num_frames=150)
    events = tmp_path / "events.jsonl"
    inference_s = 0.5
    config = write_config(tmp_path / "c.toml", checkpoint, delay_s=inference_s, hop=2)
    proc = run("--config", config, "--source", long_video, "--headless", "--events", events)
    assert proc.returncode == 0, proc.stderr
    predictions = [line for line in read_lines(events) if line["kind"] == "prediction"]
    offered = len(due_indices(150, hop=2))
    assert len(predictions) < offered / 2, "nothing was dropped although the model is 7x too slow"
    totals = [int(n) for n in re.findall(r"dropped \d+ \(total (\d+)\)", proc.stderr)]
    assert totals and totals[-1] > 0, "drops are not counted in the status line"
    # Queueing every window would reach ~(75 - 10) × 0.5 s ≈ 30 s by the end; newest-only stays near
    # one inference waited plus one run (2 × 0.5 s) and start-up jitter.
    latencies = [line["latency_ms"] for line in predictions[2:]]
    assert max(latencies) < 4 * inference_s * 1000, latencies


def test_two_streams_are_batched_in_one_worker(tmp_path, checkpoint, video):
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint, delay_s=0.2, max_batch=4)
    proc = run("--config", config, "--source", video, "--source", video, "--headless", "--events", events)
    assert proc.returncode == 0, proc.stderr
    predictions = [line for line in read_lines(events) if line["kind"] == "prediction"]
    assert {line["stream"] for line in predictions} == {"clip", "clip-2"}
    assert any(line["timings"]["batch_size"] == 2 for line in predictions)


def test_sigterm_stops_every_process_and_leaves_whole_lines(tmp_path, checkpoint):
    long_video = make_video(tmp_path / "long.avi", num_frames=900)
    events = tmp_path / "events.jsonl"
    output = tmp_path / "annotated.mp4"
    config = write_config(tmp_path / "c.toml", checkpoint)
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "--config", str(config), "--source", str(long_video),
                             "--headless", "--events", str(events), "--output", str(output)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (events.exists() and "prediction" in events.read_text()):
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 4  # dispatcher, worker, overlay, capture (+ multiprocessing's tracker)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - start < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0

    def alive(pid: str) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 5.0  # multiprocessing's resource tracker leaves just after its parent
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "a child process outlived run_pipeline.py"
    for line in events.read_text().splitlines():
        json.loads(line)
    import cv2

    capture = cv2.VideoCapture(str(output))
    ok, frame = capture.read()
    assert ok and frame.shape[0] > 0, "the annotated video is not playable after SIGTERM"


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "/nonexistent/model.pyth"], "model.pyth: no such file"),
    (["--config", "/nonexistent/c.toml"], "c.toml: config file not found"),
    (["--source", "/nonexistent/clip.mp4"], "clip.mp4"),
    (["--source", "http://example.com/x"], "http://example.com/x"),
    (["--duration", "soon"], "--duration"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--index", "3"], "--index picks the source or worker of a --role"),
    (["--device", "cuda:7"], "device 'cuda:7'"),  # no such GPU: one line, not a worker restarted forever
    (["--output", "/tmp/annotated"], "name it .mp4"),  # no container: the overlay crashed on its first frame
    (["--precision", "int8"], "precision int8 calibrates on windows of the model's own data"),  # no calibration
])
def test_usage_errors_are_one_line_and_exit_2(args, message, checkpoint):
    proc = run("--headless", *(["--checkpoint", checkpoint] if "--checkpoint" not in args else []), *args,
               timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_a_display_a_bad_setup_is_still_one_line(checkpoint):
    """The "no display found" note comes only once the setup is known to be good."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--checkpoint", "/nonexistent/model.pyth"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.pyth: no such file" in lines[0], proc.stderr


@pytest.mark.parametrize("content,message", [
    ("[model\ncheckpoint = 1", "not valid TOML"),
    ("[model]\ncheckpiont = 'x'", "unknown key 'checkpiont'"),
    ("[pipeline]\nworkers = 'two'", "'workers' must be int"),
    ("[model]\nflip_views = ['sideways']", "'flip_views' entry 'sideways' is not one of horizontal, vertical"),
    ("[endpoints]\nwork = 'tcp://0.0.0.0:5555'", "reachable from other hosts"),
    ("[[sources]]\nspec = 'synthetic:'\nname = 5", "'name' must be str"),  # was a capture traceback, exit 0
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, content, message, checkpoint):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    source = [] if "[[sources]]" in content else ["--source", "synthetic:"]
    proc = run("--config", config, "--checkpoint", checkpoint, *source, "--headless", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "bad.toml" in lines[0], proc.stderr


@pytest.mark.parametrize("head", [b"", b"\x80"])  # random bytes, and random bytes that start like a pickle
def test_bad_checkpoint_file_is_one_line_and_exit_2(tmp_path, head):
    bad = tmp_path / "broken.pyth"
    bad.write_bytes(head + random.Random(head).randbytes(256))  # seeded: the same bytes every run
    proc = run("--checkpoint", bad, "--headless", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "broken.pyth" in proc.stderr


@pytest.mark.parametrize("flag", ["--events", "--output"])
@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_unwritable_output_paths_are_one_line_before_anything_starts(tmp_path, checkpoint, flag, where):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    target = tmp_path if where == "a folder" else tmp_path / "notes.txt" / "out.file"
    proc = run("--checkpoint", checkpoint, "--headless", flag, target, "--duration", 30, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"({flag})" in lines[0], proc.stderr


def test_damaged_video_source_is_one_line_and_exit_2(tmp_path, checkpoint):
    """OpenCV's and FFmpeg's own console messages ("moov atom not found") stay off the terminal."""
    garbage = tmp_path / "holiday.mp4"
    garbage.write_bytes(random.Random(3).randbytes(20_000))
    proc = run("--checkpoint", checkpoint, "--source", garbage, "--headless", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "holiday.mp4" in lines[0], proc.stderr


def test_default_demo_runs_with_the_shipped_model(tmp_path):
    """`python run_pipeline.py` as a newcomer runs it (headless here, no display): synthetic actions named live.
    Its web view's port (127.0.0.1:8080) is taken here: one warning, and the demo runs on without it."""
    from streamer.synthetic.scenes import CLASSES

    events = tmp_path / "events.jsonl"
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8080))
            taken.listen()
        except OSError:
            pass  # something else holds it: the same case
        proc = run("--headless", "--duration", 9, "--events", events, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "web view off" in line]
    assert len(warnings) == 1 and "127.0.0.1:8080" in warnings[0] and "WARNING" in warnings[0], proc.stderr
    predictions = [line for line in read_lines(events) if line["kind"] == "prediction"]
    assert len(predictions) >= 10, proc.stderr
    assert all(line["stream"] == "demo" and line["top"][0][0] in CLASSES for line in predictions)
    assert "first prediction" in proc.stderr
