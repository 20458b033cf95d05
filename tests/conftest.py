"""Shared fixtures: small test videos written with OpenCV, and a real RTSP server on 127.0.0.1.

The RTSP server is ``tests/rtsp_server.py`` run by Debian's ``/usr/bin/python3``
(the only interpreter with GStreamer's bindings); tests that need it are
skipped, with the reason, when those packages are missing
(``bash .ci/system-packages.sh`` installs them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
INDEX_BITS = 8  # frames carry their index as 8 black/white blocks along the top edge
BLOCK = 16


# ---------------------------------------------------------------- test videos


def indexed_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A BGR frame whose top row of blocks spells ``index`` in binary (survives lossy codecs)."""
    frame = np.full((height, width, 3), 64, np.uint8)
    for bit in range(INDEX_BITS):
        if index >> bit & 1:
            frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255
        else:
            frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 0
    return frame


def frame_index_of(bgr: np.ndarray) -> int:
    """Read back the index that :func:`indexed_frame` drew (modulo 2**INDEX_BITS)."""
    return sum(1 << bit for bit in range(INDEX_BITS)
               if bgr[2:BLOCK - 2, bit * BLOCK + 2:(bit + 1) * BLOCK - 2].mean() > 128)


def make_video(path: Path, num_frames: int = 60, fps: float = 30.0, size: tuple[int, int] = (160, 120),
               fourcc: str = "MJPG") -> Path:
    """Write ``num_frames`` indexed frames with cv2.VideoWriter (MJPG in .avi by default)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"cv2.VideoWriter cannot write {path} with {fourcc}"
    for index in range(num_frames):
        writer.write(indexed_frame(index, *size))
    writer.release()
    return path


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    """60 frames, 30 fps, 160×120 MJPG .avi; frame i shows i in binary (see frame_index_of)."""
    return make_video(tmp_path_factory.mktemp("video") / "clip.avi")


# ---------------------------------------------------------------- RTSP server


def _gst_rtsp_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (GStreamer's Python bindings live there)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('x264enc', 'rtph264pay', 'appsrc', 'videotestsrc', 'decodebin')"
        " if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
    )
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "probing GStreamer timed out"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} cannot import GstRtspServer ({last}); run `bash .ci/system-packages.sh`"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}; run `bash .ci/system-packages.sh`"
    return None


@pytest.fixture(scope="session")
def gst_rtsp_missing() -> str | None:
    return _gst_rtsp_missing()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServer:
    """A real RTSP camera in a child process, with the faults tests need.

    ``kill()`` is a crash (SIGKILL), ``restart()`` brings it back on the same
    port, ``stop()``/``cont()`` freeze and resume it (a stalled network).
    """

    def __init__(self, log_dir: Path, file: Path | None = None, fps: int = 30, port: int | None = None,
                 ready_timeout_s: float = 20.0) -> None:
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.file, self.fps, self.ready_timeout_s = file, fps, ready_timeout_s
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the server and wait for its READY line (fails the test on timeout)."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.starts += 1
        out = self.log_dir / f"rtsp_server.{self.port}.{self.starts}.log"
        cmd = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), "--port", str(self.port), "--fps", str(self.fps)]
        if self.file is not None:
            cmd += ["--file", str(self.file)]
        with open(out, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while "READY" not in out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = out.read_text().strip()
                self.kill()
                pytest.fail(f"RTSP server on port {self.port} did not become ready: {text[-500:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the camera vanishes mid-stream; its sockets close at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGSTOP: the camera stalls; connections stay open but nothing is sent."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def rtsp_server_factory(gst_rtsp_missing, tmp_path):
    """Start RTSP servers (``factory(file=None, fps=30)``); all are killed after the test."""
    if gst_rtsp_missing:
        pytest.skip(f"RTSP server unavailable: {gst_rtsp_missing}")
    servers: list[RtspServer] = []

    def factory(file: Path | None = None, fps: int = 30) -> RtspServer:
        server = RtspServer(tmp_path, file=file, fps=fps)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def rtsp_server(rtsp_server_factory) -> RtspServer:
    """A test-pattern camera (320×240, 30 fps) at ``rtsp_server.url``."""
    return rtsp_server_factory()


def metric_samples(text: bytes) -> dict[str, float]:
    """A /metrics page as ``name`` or ``name{k=v,...}`` (labels sorted) → value, for every sample on it."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # probes go straight to the stage


def probe(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET on a stage's health or metrics endpoint; ``(0, b"")`` while nothing answers."""
    try:
        with _DIRECT.open(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:  # refused, reset, unreachable, timed out (URLError is one too)
        return 0, b""


def wait_for(check, timeout_s: float, what: str, context=lambda: "", every: float = 0.2):
    """``check()``'s first truthy value within ``timeout_s``; else an AssertionError naming ``what`` (and
    ``context()``, e.g. the processes' logs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    extra = context()
    raise AssertionError(f"not within {timeout_s:g} s: {what}" + (f"\n{extra}" if extra else ""))
