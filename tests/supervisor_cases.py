"""The supervisor's restart and stop policy, with real stage processes (this module's ``run`` is the stage); run by
tests/test_supervisor.py in an interpreter of its own.

Each stage here is a small double whose config says how it behaves (crash, serve until stopped, ignore
the stop, ...) and which writes a line to its own file at each start and stop, so the test can see
what the supervisor did. A restart is also reported to a real ZeroMQ socket, as the dispatcher gets it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zmq
from loguru import logger

from streamer.errors import ConfigError
from streamer.kinds import LineKind, StageKind
from streamer.supervisor import SPECS, RestartPolicy, StageProcess, StageSpec, Supervisor
from streamer.transport import messages
from streamer.transport.messages import Status
from streamer.config.network import Security

HERE = __name__  # the module whose run() the stage processes call
QUICK = RestartPolicy(first_delay_s=0.2, max_delay_s=0.8)
USAGE_MESSAGE = "stage.toml [double] mode = 'usage': a test of the usage error; pick another mode"


@dataclass(frozen=True)
class Double:
    """How a stage double behaves, and where it writes its ``start <t>`` / ``stop <t>`` lines."""

    record: str
    mode: str  # crash, usage, clean, serve, stubborn, warm
    after_s: float = 0.0  # clean and warm: how long before


def run(config: Double, stop, heartbeat=None) -> int:
    """The stage: does what ``config.mode`` says."""
    def note(what: str) -> None:
        with open(config.record, "a") as f:
            f.write(f"{what} {time.time()}\n")

    note("start")
    if config.mode == "crash":
        return 1
    if config.mode == "usage":
        raise ConfigError(USAGE_MESSAGE)
    if config.mode == "clean":
        time.sleep(config.after_s)
        return 0
    if config.mode == "stubborn":  # never looks at stop
        while True:
            time.sleep(0.1)
    began = time.monotonic()
    while not stop.wait(0.05):
        if heartbeat is not None and time.monotonic() - began >= config.after_s:
            if not heartbeat.value:
                note("warm")
            heartbeat.value = time.time()
    note("stop")
    return 0


def times(record: Path, what: str) -> list[float]:
    lines = record.read_text().splitlines() if record.exists() else []
    return [float(line.split()[1]) for line in lines if line.split()[0] == what]


def stage(tmp_path: Path, name: str, kind: StageKind, mode: str, **spec_changes) -> StageProcess:
    """A double run as stage ``kind`` is run (its spec from SPECS), with ``spec_changes``."""
    spec = replace(SPECS[kind], module=HERE, **spec_changes)
    return StageProcess(name, spec, Double(str(tmp_path / f"{name}.log"), mode))


def stop_when(condition, timeout_s: float = 20.0) -> None:
    """SIGTERM to this process (the supervisor's stop, as from a service manager) once ``condition()`` holds."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


@pytest.fixture
def log_lines():
    lines: list[str] = []
    handle = logger.add(lines.append, format="{message}", level="INFO")
    yield lines
    logger.remove(handle)


def test_a_crashing_stage_is_restarted_with_a_growing_backoff_and_each_restart_reported(tmp_path, log_lines):
    endpoint = f"ipc://{tmp_path}/windows"
    ctx = zmq.Context()
    dispatcher = ctx.socket(zmq.ROUTER)  # where the supervisor reports restarts: the dispatcher's windows socket
    dispatcher.bind(endpoint)
    crashing = stage(tmp_path, "sinks", StageKind.SINKS, "crash",
                     restart=RestartPolicy(first_delay_s=0.1, max_delay_s=0.4))
    try:
        began = time.monotonic()
        stop_when(lambda: len(times(tmp_path / "sinks.log", "start")) >= 5)
        code = Supervisor([crashing], duration_s=15, notify=endpoint, security=Security()).run()
        reports = []
        while dispatcher.poll(200):
            reports.append(messages.decode(dispatcher.recv_multipart()[1:]))
    finally:
        dispatcher.close(linger=0)
        ctx.term()
    assert code == 0 and time.monotonic() - began < 8
    delays = [float(line.split("restarting in ")[1].split()[0]) for line in log_lines if "restarting in" in line]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.4], log_lines  # doubling from first_delay_s, capped at max_delay_s
    starts = times(tmp_path / "sinks.log", "start")
    assert len(starts) >= 5
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, delays)), (gaps, delays)  # it waited each delay out
    assert len(reports) == len(starts) - 1
    assert all(isinstance(r, Status) and r.kind == LineKind.SINKS_RESTARTED for r in reports), reports
    assert reports[0].detail == "sinks restarted after crash 1"


def test_a_usage_error_on_the_first_start_stops_the_pipeline_with_its_one_line(tmp_path, capsys):
    serving = stage(tmp_path, "dispatcher", StageKind.DISPATCHER, "serve")
    failing = stage(tmp_path, "worker-0", StageKind.WORKER, "usage")
    began = time.monotonic()
    code = Supervisor([serving, failing], duration_s=8).run()
    assert code == 2
    assert capsys.readouterr().err == f"error: {USAGE_MESSAGE}\n"
    assert time.monotonic() - began < 6, "the pipeline went on after the usage error"
    assert len(times(tmp_path / "worker-0.log", "start")) == 1, "a usage error is not restarted"
    assert times(tmp_path / "dispatcher.log", "stop"), "the other stages were not asked to stop"


def test_sources_wait_for_a_warm_worker_and_a_file_capture_that_ends_is_not_restarted(tmp_path):
    worker = stage(tmp_path, "worker-0", StageKind.WORKER, "warm")
    worker.config = replace(worker.config, after_s=0.5)
    capture = stage(tmp_path, "capture cam", StageKind.CAPTURE, "clean", restart=QUICK)
    # Stopped 1 s after the capture's start: time for a restart (QUICK: 0.2 s), were its end not final.
    stop_when(lambda: any(time.time() > t + 1.0 for t in times(tmp_path / "capture cam.log", "start")))
    code = Supervisor([worker, capture], duration_s=15).run()
    assert code == 0
    warm, captures = times(tmp_path / "worker-0.log", "warm"), times(tmp_path / "capture cam.log", "start")
    assert warm and len(captures) == 1, f"capture started {len(captures)} times: its clean exit must be final"
    assert captures[0] >= warm[0], "the capture started before a worker was warm"
    assert times(tmp_path / "worker-0.log", "stop"), "the pipeline stopped at the capture's end, not when asked"


def test_the_dispatchers_clean_exit_ends_the_pipeline(tmp_path):
    dispatcher = stage(tmp_path, "dispatcher", StageKind.DISPATCHER, "clean")
    dispatcher.config = replace(dispatcher.config, after_s=0.5)
    overlay = stage(tmp_path, "overlay", StageKind.OVERLAY, "serve")
    began = time.monotonic()
    assert Supervisor([dispatcher, overlay], duration_s=8).run() == 0
    assert time.monotonic() - began < 6, "the pipeline did not end with the dispatcher"
    assert times(tmp_path / "overlay.log", "stop")


def test_stop_terminates_a_stage_that_outlives_its_grace(tmp_path, log_lines):
    stubborn = stage(tmp_path, "web", StageKind.WEB, "stubborn", grace_s=0.5)
    polite = stage(tmp_path, "sinks", StageKind.SINKS, "serve")
    supervisor = Supervisor([stubborn, polite], duration_s=0.8)
    began = time.monotonic()
    assert supervisor.run() == 0
    took = time.monotonic() - began
    assert stubborn.process.exitcode == -signal.SIGTERM, "the stage that ignores the stop was not terminated"
    assert polite.process.exitcode == 0 and times(tmp_path / "sinks.log", "stop")
    assert 0.8 + 0.5 <= took < 0.8 + 0.5 + 3.0, f"stopping took {took - 0.8:.1f} s for a grace of 0.5 s"
    assert any("web did not stop within 0.5 s; terminating it" in line for line in log_lines)
