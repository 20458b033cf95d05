"""Stages that die or hang are restarted and predictions resume; malformed traffic is dropped, not fatal."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import zmq

from streamer.transport import messages
from streamer.transport.messages import Status, Window
from tests.conftest import make_video
from tests.test_pipeline import REPO, checkpoint, write_config  # noqa: F401  (fixture re-used)


class Pipeline:
    """run_pipeline.py in the background, with its stderr collected line by line."""

    def __init__(self, *args) -> None:
        self.proc = subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def pids(self, stage: str) -> list[int]:
        return [int(m.group(1)) for line in list(self.lines)
                if (m := re.search(rf"{re.escape(stage)} started \(pid (\d+)\)", line))]

    def wait_for(self, condition, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{''.join(self.lines[-30:])}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


def predictions(events: Path) -> list[dict]:
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text().splitlines() if '"prediction"' in line]


@pytest.mark.parametrize("stage,how", [("worker-0", signal.SIGKILL), ("capture long", signal.SIGKILL),
                                       ("overlay", signal.SIGKILL), ("worker-0", signal.SIGSTOP)])
def test_dead_or_hung_stage_is_restarted_and_predictions_resume(tmp_path, checkpoint, stage, how):  # noqa: F811
    video = make_video(tmp_path / "long.avi", num_frames=1200)
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint, heartbeat_timeout_s=3.0)
    extra = ["--output", tmp_path / "out.mp4"] if stage == "overlay" else []
    pipe = Pipeline("--config", config, "--source", video, "--headless", "--events", events, *extra)
    try:
        pipe.wait_for(lambda: len(predictions(events)) >= 3, what="first predictions")
        if stage == "overlay":  # let it write a few 2 s fragments of the annotated video first
            pipe.wait_for(lambda: (tmp_path / "out.mp4").exists(), what="the annotated video")
            time.sleep(5.0)
        victim = pipe.pids(stage)[-1]
        os.kill(victim, how)
        killed_at = time.time()
        first_part = (tmp_path / "out.mp4").read_bytes() if stage == "overlay" else b""
        pipe.wait_for(lambda: len(pipe.pids(stage)) >= 2, timeout=20, what=f"{stage} restarted")
        restarted_after = time.time() - killed_at
        pipe.wait_for(lambda: any(p["frame_ts"] > killed_at + 0.5 for p in predictions(events)), timeout=30,
                      what="predictions after the restart")
        assert pipe.proc.poll() is None, "the pipeline stopped instead of restarting one stage"
        if stage == "overlay":
            part2 = tmp_path / "out.part2.mp4"
            pipe.wait_for(lambda: part2.exists() and part2.stat().st_size > 20_000, timeout=30,
                          what="the restarted overlay writing out.part2.mp4")
    finally:
        code = pipe.stop()
        if how == signal.SIGSTOP:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 0
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert f"{stage.split()[0].split('-')[0]}_restarted" in kinds
    allowance = 3.0 + 5.0 if how == signal.SIGSTOP else 5.0   # a hung worker is noticed after the timeout
    assert restarted_after < allowance
    if stage == "overlay":  # the restarted overlay writes on in a new file; the first is not overwritten,
        assert first_part and (tmp_path / "out.mp4").read_bytes() == first_part
        # and what it had flushed before the kill -9 plays (fragmented MP4: all but the last ~2 s)
        assert count_frames(tmp_path / "out.mp4") >= 60, "the killed overlay's video lost its complete fragments"
        assert count_frames(tmp_path / "out.part2.mp4") > 10, "the second part of the annotated video is not playable"


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def test_malformed_messages_are_dropped_and_real_traffic_still_flows(tmp_path, checkpoint):  # noqa: F811
    """10,000 hostile messages at the dispatcher's capture and worker sockets, then a real window."""
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display")}
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint)
    config.write_text(config.read_text() + "\n[endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items()))
    video = make_video(tmp_path / "long.avi", num_frames=3000)
    pipe = Pipeline("--config", config, "--source", video, "--headless", "--events", events)
    ctx = zmq.Context()
    try:
        pipe.wait_for(lambda: len(predictions(events)) >= 2, what="first predictions")
        import numpy as np

        rng = np.random.default_rng(0)
        valid = messages.encode(Window("fuzz", 0, (0, 2, 4, 6), (1.0, 2.0, 3.0, 4.0),
                                       np.zeros((4, 32, 32, 3), np.uint8), 5.0))
        header = bytes(valid[0])
        for endpoint in (endpoints["windows"], endpoints["work"]):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(endpoint)
            for i in range(10_000):
                kind = i % 5
                if kind == 0:
                    parts = [rng.bytes(int(rng.integers(0, 200)))]
                elif kind == 1:
                    parts = [header[: int(rng.integers(0, len(header)))], b"x" * 10]
                elif kind == 2:
                    parts = [header.replace(b'"v":%d' % messages.VERSION, b'"v":7'), bytes(valid[1])]
                elif kind == 3:
                    parts = [header.replace(b"32,32", b"99999,99999"), b"\x00" * 100]
                else:
                    parts = [header, bytes(valid[1])[:-1]]
                sock.send_multipart(parts)
            sock.close()
        before = len(predictions(events))
        pipe.wait_for(lambda: len(predictions(events)) >= before + 3, timeout=30, what="predictions after the fuzz")
        assert pipe.proc.poll() is None
    finally:
        ctx.term()
        assert pipe.stop() == 0
    assert any("malformed" in line for line in pipe.lines), "malformed messages were not counted"
    assert not any("Traceback" in line for line in pipe.lines)


def test_status_from_a_capture_reaches_the_event_log(tmp_path, checkpoint):  # noqa: F811
    """A source_lost status sent over the capture socket is written as its own line kind."""
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display")}
    events = tmp_path / "events.jsonl"
    config = write_config(tmp_path / "c.toml", checkpoint)
    config.write_text(config.read_text() + "\n[endpoints]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items()))
    pipe = Pipeline("--config", config, "--source", make_video(tmp_path / "v.avi", num_frames=900), "--headless",
                    "--events", events)
    ctx = zmq.Context()
    try:
        pipe.wait_for(lambda: len(predictions(events)) >= 1, what="first predictions")
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoints["windows"])
        messages.send(sock, Status("source_lost", "v", "test: camera unplugged", time.time()))
        pipe.wait_for(lambda: "source_lost" in events.read_text(), timeout=10, what="source_lost line")
        sock.close(linger=0)
    finally:
        ctx.term()
        pipe.stop()
