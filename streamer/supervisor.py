"""Supervisor: start the stages a config names as processes, restart one that dies, stop them all cleanly.

A stage that exits with code 2 hit a usage error (bad source, bad checkpoint) and the whole
pipeline stops with that one line. A file capture that ends (code 0) is not restarted.
Any other exit is a crash: the stage is restarted with a backoff that grows while it keeps
crashing (1 s doubling to 30 s) and is reported in the log and the event log.
"""

import multiprocessing as mp
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import zmq
from loguru import logger

from streamer.transport import messages, sockets
from streamer.config.stages import PipelineConfig
from streamer.errors import USAGE_ERROR, PipelineError
from streamer.transport.framestore import remove_stores
from streamer.transport.messages import Status

STOP_GRACE_S = 3.0
SINKS_GRACE_S = 6.0  # the sinks stage takes the dispatcher's last lines (≤ 1.5 s), then flushes MQTT (≤ 3 s)
CLIPS_GRACE_S = 20.0  # the clip recorder finishes the clips under way (the post-roll it has) before it ends
HEALTHY_AFTER_S = 30.0
WORKER_READY_TIMEOUT_S = 120.0  # a stage up this long has its crash backoff reset


def configure_logging() -> None:
    logger.remove()
    logger.add(sys.stderr, format="{time:HH:mm:ss.SSS} | {level: <7} | {message}", level="INFO",
               backtrace=False, diagnose=False)


def _die_with_parent() -> None:
    """End this stage when the supervisor is gone (kill -9 of it): an orphan would keep a camera, a port and
    its broker connection, whose last will then never comes (Linux: PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the line above
        os._exit(1)


def _child(target: Callable, args: tuple, stop, errors, heartbeat) -> None:
    """Process entry: Ctrl-C goes to the supervisor only; a usage error leaves one line and exit code 2."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    configure_logging()
    try:
        code = target(*args, stop, **({"heartbeat": heartbeat} if heartbeat is not None else {}))
    except PipelineError as err:
        errors.put(str(err))
        sys.exit(USAGE_ERROR)
    except Exception:
        logger.exception("stage crashed")
        sys.exit(1)
    sys.exit(code or 0)


@dataclass
class Stage:
    name: str
    target: Callable
    args: tuple
    restart: bool = True            # False: a clean exit (file end) is final
    process: mp.Process | None = None
    started: float = 0.0
    crashes: int = 0
    next_start: float = 0.0
    done: bool = False
    heartbeat: object = None        # workers: shared Unix time of their last sign of life, 0 until warm
    enabled: bool = True            # captures start disabled, enabled once a worker is warm
    starts: int = 0
    grace_s: float = STOP_GRACE_S   # how long a stop may take before the stage is terminated


def video_part(path: str, part: int) -> str:
    """``out.mp4`` → ``out.part2.mp4``: where a restarted overlay writes, keeping the earlier file."""
    base = Path(path)
    return str(base.with_name(f"{base.stem}.part{part}{base.suffix}"))


class Supervisor:
    def __init__(self, config: PipelineConfig, web_listener=None) -> None:
        """``web_listener``: the web view's socket, bound by the caller so that a taken port is known
        before anything starts; it is kept here across restarts of the web stage."""
        from streamer.stages import capture, dispatcher, overlay
        from streamer.stages import worker

        self.config = config
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        self.errors = self.ctx.Queue()
        self.stages = [Stage("dispatcher", dispatcher.run, (config.dispatch,))]
        self.stages += [Stage(w.name, worker.run, (w,), heartbeat=self.ctx.Value("d", 0.0)) for w in config.workers]
        if config.overlay is not None:
            self.stages.append(Stage("overlay", overlay.run, (config.overlay,)))
        self.web_listener = web_listener
        if config.web is not None:
            from streamer.stages.web import server

            self.stages.append(Stage("web", server.run, (config.web, web_listener)))
        if config.sinks is not None:
            from streamer.stages.sinks import stage as sinks

            self.stages.append(Stage("sinks", sinks.run, (config.sinks,), grace_s=SINKS_GRACE_S))
        if config.clips is not None:
            from streamer.stages import clips

            self.stages.append(Stage("clips", clips.run, (config.clips,), grace_s=CLIPS_GRACE_S))
        self.stages += [Stage(f"capture {c.stream}", capture.run, (c,), enabled=False) for c in config.captures]
        self._zmq = sockets.Context()
        self._notify = sockets.make_socket(self._zmq, zmq.DEALER, config.dispatch.endpoints.windows, bind=False,
                                           security=config.security)

    def _start(self, stage: Stage) -> None:
        if stage.heartbeat is not None:
            stage.heartbeat.value = 0.0
        if stage.name == "overlay" and stage.starts and self.config.overlay.output:
            part = video_part(self.config.overlay.output, stage.starts + 1)
            stage.args = (replace(self.config.overlay, output=part),)
            logger.warning(f"overlay restarted: the annotated video goes on in {part}, so that what "
                           f"{self.config.overlay.output} already holds is not overwritten")
        stage.process = self.ctx.Process(target=_child, args=(stage.target, stage.args, self.stop, self.errors,
                                                              stage.heartbeat),
                                         name=stage.name, daemon=False)
        stage.process.start()
        stage.started = time.monotonic()
        stage.starts += 1
        logger.info(f"{stage.name} started (pid {stage.process.pid})")

    def _report(self, kind: str, detail: str) -> None:
        logger.warning(detail)
        try:
            messages.send(self._notify, Status(kind=kind, stream="", detail=detail, ts=time.time()), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def run(self) -> int:
        """Run until Ctrl-C/SIGTERM, the duration, the end of every file source, or a usage error."""
        stop_requested: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop_requested.append(signum))
        deadline = time.monotonic() + self.config.duration_s if self.config.duration_s > 0 else None
        for stage in self.stages:
            if stage.enabled:
                self._start(stage)
        begun, sources_started = time.monotonic(), False
        try:
            while not stop_requested:
                if deadline is not None and time.monotonic() >= deadline:
                    logger.info(f"--duration {self.config.duration_s:g} s reached; stopping")
                    return 0
                if not sources_started and self._a_worker_is_ready(begun):
                    sources_started = True
                    for stage in self.stages:
                        if not stage.enabled:
                            stage.enabled = True
                            self._start(stage)
                finished, failure = self._check()
                if failure is not None:
                    print(f"error: {failure}", file=sys.stderr, flush=True)
                    return USAGE_ERROR
                if finished:
                    return 0
                time.sleep(0.05)
            logger.info("stop requested; stopping every stage")
            return 0
        finally:
            self.shutdown()

    def _a_worker_is_ready(self, begun: float) -> bool:
        """Sources start once a model is warm, so the first windows are not dropped while it loads."""
        waited = time.monotonic() - begun
        if any(s.heartbeat is not None and s.heartbeat.value > 0 for s in self.stages):
            logger.info(f"a worker is ready after {waited:.1f} s; starting the sources")
            return True
        if waited > WORKER_READY_TIMEOUT_S:
            logger.warning(f"no worker ready after {WORKER_READY_TIMEOUT_S:g} s; starting the sources anyway")
            return True
        return False

    def _check(self) -> tuple[bool, str | None]:
        """(pipeline finished, usage error message); restarts crashed stages."""
        now = time.monotonic()
        for stage in self.stages:
            if stage.done or not stage.enabled:
                continue
            proc = stage.process
            if proc is None:
                if now >= stage.next_start:
                    self._start(stage)
                    self._report(f"{stage.name.split()[0].split('-')[0]}_restarted",
                                 f"{stage.name} restarted after crash {stage.crashes}")
                continue
            if proc.is_alive() and self._hung(stage):
                self._report(f"{stage.name.split('-')[0]}_hung", f"{stage.name} sent no heartbeat for "
                             f"{self.config.dispatch.heartbeat_timeout_s:g} s; killing it")
                proc.kill()
                proc.join(timeout=5.0)
            if proc.is_alive():
                if now - stage.started > HEALTHY_AFTER_S:
                    stage.crashes = 0
                continue
            exitcode = proc.exitcode
            proc.join()
            stage.process = None
            if exitcode == USAGE_ERROR and stage.starts == 1:  # later, e.g. a camera still down: a crash
                try:
                    return False, self.errors.get(timeout=1.0)
                except Exception:
                    return False, f"{stage.name} stopped with a usage error"
            if exitcode == 0 and stage.name == "dispatcher":
                return True, None
            if exitcode == 0 and stage.name.startswith("capture"):
                stage.done = True
                continue
            stage.crashes += 1
            delay = min(30.0, 2.0 ** (stage.crashes - 1))
            stage.next_start = now + delay
            logger.warning(f"{stage.name} died (exit code {exitcode}); restarting in {delay:g} s")
        return False, None

    def _hung(self, stage: Stage) -> bool:
        """A warm worker whose heartbeat is older than the timeout (stuck in a call, deadlocked)."""
        if stage.heartbeat is None or stage.heartbeat.value <= 0:
            return False
        return time.time() - stage.heartbeat.value > self.config.dispatch.heartbeat_timeout_s

    def shutdown(self) -> None:
        """Ask every stage to stop, wait a little, then terminate and kill what is left."""
        self.stop.set()
        begun = time.monotonic()
        stages = [s for s in self.stages if s.process is not None]
        for stage in stages:
            stage.process.join(timeout=max(0.05, begun + stage.grace_s - time.monotonic()))
        procs = [s.process for s in stages]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1.0)
        self._notify.close(linger=0)
        self._zmq.term()
        if self.web_listener is not None:
            self.web_listener.close()
        for prefix in {c.frame_store for c in self.config.captures if c.frame_store}:
            remove_stores(prefix)  # a capture that was killed could not remove its own
