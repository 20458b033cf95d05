"""Supervisor: start the stages a config names as processes, restart one that dies, stop them all cleanly.

What it does with each kind of stage is said once, in :data:`SPECS`: the module whose
``run(config, stop)`` is the stage, how long a stop may take, how a crash is restarted, whether
it waits for a warm worker, what a clean exit means, whether a restart writes a new video part.
A stage that exits with code 2 on its first start hit a usage error (bad source, bad checkpoint)
and the whole pipeline stops with that one line. Any exit its spec does not call clean is a crash:
the stage is restarted after a delay that grows while it keeps crashing (1 s doubling to 30 s),
and the restart is reported in the log and, as ``<stage>_restarted``, in the event log.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from loguru import logger

from streamer.errors import USAGE_ERROR, PipelineError
from streamer.kinds import RESTARTED, LineKind, StageKind
from streamer.transport import messages
from streamer.transport.framestore import remove_stores
from streamer.transport.messages import Status

if TYPE_CHECKING:
    from streamer.config.network import Security
    from streamer.config.stages import PipelineConfig

STOP_GRACE_S = 3.0
SINKS_GRACE_S = 6.0  # the sinks stage takes the dispatcher's last lines (≤ 1.5 s), then flushes MQTT (≤ 3 s)
CLIPS_GRACE_S = 20.0  # the clip recorder finishes the clips under way (the post-roll it has) before it ends
WORKER_READY_TIMEOUT_S = 120.0  # the sources start after this long even if no worker is warm yet


class CleanExit(Enum):
    """What a stage's exit with code 0 means (before the pipeline asked it to stop)."""

    RESTART = "restart"  # nothing: the stage should run until stopped, so it is restarted like a crash
    FINAL = "final"  # this stage is done (its file has ended) and is not started again
    PIPELINE_DONE = "pipeline done"  # the whole pipeline is done (every file predicted): stop every stage


@dataclass(frozen=True)
class RestartPolicy:
    """When a stage that died starts again: after a delay that doubles with each crash in a row."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    healthy_after_s: float = 30.0  # a stage up this long has its crash count (and so its delay) reset

    def delay_s(self, crashes: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (crashes - 1))


@dataclass(frozen=True)
class StageSpec:
    """How the supervisor runs one kind of stage.

    Args:
        kind: which stage; its restarts are reported as ``RESTARTED[kind]``.
        module: the module (or package) whose ``run(config, stop, **options)`` is the stage.
        grace_s: how long a stop may take before the stage is terminated.
        restart: the delays before a crashed stage starts again.
        waits_for_worker: started only once a worker is warm, so that its first windows are not dropped.
        clean_exit: what an exit with code 0 means.
        hung_kind: given, the stage gets a ``heartbeat`` (a shared Unix time it keeps fresh); one whose
            heartbeat stops is killed, reported as this kind, and restarted.
        new_video_part: a restart writes the stage's ``output`` video to ``<name>.part<N><suffix>``,
            so that what the earlier part holds is not overwritten.
    """

    kind: StageKind
    module: str
    grace_s: float = STOP_GRACE_S
    restart: RestartPolicy = RestartPolicy()
    waits_for_worker: bool = False
    clean_exit: CleanExit = CleanExit.RESTART
    hung_kind: LineKind | None = None
    new_video_part: bool = False


SPECS: dict[StageKind, StageSpec] = {spec.kind: spec for spec in (
    StageSpec(StageKind.DISPATCHER, "streamer.stages.dispatcher", clean_exit=CleanExit.PIPELINE_DONE),
    StageSpec(StageKind.WORKER, "streamer.stages.worker", hung_kind=LineKind.WORKER_HUNG),
    StageSpec(StageKind.OVERLAY, "streamer.stages.overlay", new_video_part=True),
    StageSpec(StageKind.WEB, "streamer.stages.web"),
    StageSpec(StageKind.SINKS, "streamer.stages.sinks", grace_s=SINKS_GRACE_S),
    StageSpec(StageKind.CLIPS, "streamer.stages.clips", grace_s=CLIPS_GRACE_S),
    StageSpec(StageKind.CAPTURE, "streamer.stages.capture", waits_for_worker=True, clean_exit=CleanExit.FINAL),
)}


@dataclass
class StageProcess:
    """One stage the supervisor keeps running: what it runs, and how it has fared so far."""

    name: str  # as the log says it: "dispatcher", "worker-0", "capture cam0"
    spec: StageSpec
    config: Any  # the stage's frozen config, the first argument of its run
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its run (the web's listener)
    heartbeat: Any = None  # with a hung_kind: a shared double, the Unix time of its last sign of life (0: not warm)
    waiting: bool = False  # for a warm worker before its first start
    process: mp.Process | None = None
    started: float = 0.0
    starts: int = 0
    crashes: int = 0  # in a row; reset once it has run for restart.healthy_after_s
    next_start: float = 0.0
    done: bool = False


def pipeline_stages(config: PipelineConfig, web_listener=None) -> list[StageProcess]:
    """Every stage a pipeline config names, in the order they start."""
    def stage(name: str, kind: StageKind, stage_config, **options) -> StageProcess:
        return StageProcess(name, SPECS[kind], stage_config, options)

    stages = [stage("dispatcher", StageKind.DISPATCHER, config.dispatch)]
    stages += [stage(w.name, StageKind.WORKER, w) for w in config.workers]
    if config.overlay is not None:
        stages.append(stage("overlay", StageKind.OVERLAY, config.overlay))
    if config.web is not None:
        stages.append(stage("web", StageKind.WEB, config.web, listener=web_listener))
    if config.sinks is not None:
        stages.append(stage("sinks", StageKind.SINKS, config.sinks))
    if config.clips is not None:
        stages.append(stage("clips", StageKind.CLIPS, config.clips))
    return stages + [stage(f"capture {c.stream}", StageKind.CAPTURE, c) for c in config.captures]


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


def _child(module: str, config: Any, options: dict[str, Any], stop, errors) -> None:
    """Process entry: Ctrl-C goes to the supervisor only; a usage error leaves one line and exit code 2."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    configure_logging()
    try:
        code = importlib.import_module(module).run(config, stop, **options)
    except PipelineError as err:
        errors.put(str(err))
        sys.exit(USAGE_ERROR)
    except Exception:
        logger.exception("stage crashed")
        sys.exit(1)
    sys.exit(code or 0)


def video_part(path: str, part: int) -> str:
    """``out.mp4`` → ``out.part2.mp4``: where a restarted overlay writes, keeping the earlier file."""
    base = Path(path)
    return str(base.with_name(f"{base.stem}.part{part}{base.suffix}"))


class Supervisor:
    """Runs stage processes by their specs until a stop, the duration, the pipeline's end or a usage error.

    Args:
        stages: what to run (:func:`pipeline_stages`), in start order.
        duration_s: stop after this long (0: no limit).
        heartbeat_timeout_s: a stage with a heartbeat silent this long is hung.
        notify: the endpoint (the dispatcher's windows socket) that restarts are reported to, as
            :class:`Status` messages that become event-log lines; None: the log only.
        security: the keys for that socket.
        frame_stores: shared frame store prefixes to remove at the end (a killed capture leaves its own).
        web_listener: the web view's socket, bound by the caller so that a taken port is known before
            anything starts; kept here across restarts of the web stage and closed at the end.
    """

    def __init__(self, stages: list[StageProcess], *, duration_s: float = 0.0, heartbeat_timeout_s: float = 30.0,
                 notify: str | None = None, security: Security | None = None, frame_stores: tuple[str, ...] = (),
                 web_listener=None) -> None:
        self.stages = stages
        self.duration_s, self.heartbeat_timeout_s = duration_s, heartbeat_timeout_s
        self.frame_stores, self.web_listener = frame_stores, web_listener
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        self.errors = self.ctx.Queue()
        for stage in stages:
            stage.waiting = stage.spec.waits_for_worker
            if stage.spec.hung_kind is not None:
                stage.heartbeat = stage.options["heartbeat"] = self.ctx.Value("d", 0.0)
        self._zmq = self._notify = None
        if notify is not None:
            # Imported here, in the supervisor's process only: every stage process imports this module (for
            # _child), and sockets brings in the whole config loader.
            from streamer.transport import sockets

            self._zmq = sockets.Context()
            self._notify = sockets.make_socket(self._zmq, zmq.DEALER, notify, bind=False, security=security)

    @classmethod
    def for_pipeline(cls, config: PipelineConfig, web_listener=None) -> Supervisor:
        """The supervisor of every stage ``config`` names (what ``run_pipeline.py`` runs)."""
        return cls(pipeline_stages(config, web_listener), duration_s=config.duration_s,
                   heartbeat_timeout_s=config.dispatch.heartbeat_timeout_s, notify=config.dispatch.endpoints.windows,
                   security=config.security, frame_stores=tuple({c.frame_store for c in config.captures
                                                                 if c.frame_store}),
                   web_listener=web_listener)

    def run(self) -> int:
        """Run until Ctrl-C/SIGTERM, the duration, the end of every file source, or a usage error (returns 2)."""
        stop_requested: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: stop_requested.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code, failure = self._supervise(stop_requested)
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure is not None:  # after the stages' own last lines: the one line a usage error leaves is the last
            print(f"error: {failure}", file=sys.stderr, flush=True)
        return code

    def _supervise(self, stop_requested: list[int]) -> tuple[int, str | None]:
        deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
        for stage in self.stages:
            if not stage.waiting:
                self._start(stage)
        begun = time.monotonic()
        while not stop_requested:
            if deadline is not None and time.monotonic() >= deadline:
                logger.info(f"--duration {self.duration_s:g} s reached; stopping")
                return 0, None
            if any(s.waiting for s in self.stages) and self._a_worker_is_ready(begun):
                for stage in self.stages:
                    if stage.waiting:
                        stage.waiting = False
                        self._start(stage)
            finished, failure = self._check()
            if failure is not None:
                return USAGE_ERROR, failure
            if finished:
                return 0, None
            time.sleep(0.05)
        logger.info("stop requested; stopping every stage")
        return 0, None

    def _start(self, stage: StageProcess) -> None:
        if stage.heartbeat is not None:
            stage.heartbeat.value = 0.0
        stage.process = self.ctx.Process(target=_child, name=stage.name, daemon=False, args=(
            stage.spec.module, self._config_of_this_start(stage), stage.options, self.stop, self.errors))
        stage.process.start()
        stage.started = time.monotonic()
        stage.starts += 1
        logger.info(f"{stage.name} started (pid {stage.process.pid})")

    def _config_of_this_start(self, stage: StageProcess) -> Any:
        """The stage's config, but for a restarted stage that writes a video: a new part of it."""
        output = getattr(stage.config, "output", None)
        if not (stage.spec.new_video_part and stage.starts and output):
            return stage.config
        part = video_part(output, stage.starts + 1)
        logger.warning(f"{stage.name} restarted: the annotated video goes on in {part}, so that what "
                       f"{output} already holds is not overwritten")
        return replace(stage.config, output=part)

    def _report(self, kind: LineKind, detail: str) -> None:
        logger.warning(detail)
        if self._notify is None:
            return
        try:
            messages.send(self._notify, Status(kind=kind, stream="", detail=detail, ts=time.time()), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _a_worker_is_ready(self, begun: float) -> bool:
        """Sources start once a model is warm, so the first windows are not dropped while it loads."""
        waited = time.monotonic() - begun
        heartbeats = [s.heartbeat for s in self.stages if s.heartbeat is not None]
        if any(h.value > 0 for h in heartbeats) or not heartbeats:
            logger.info(f"a worker is ready after {waited:.1f} s; starting the sources")
            return True
        if waited > WORKER_READY_TIMEOUT_S:
            logger.warning(f"no worker ready after {WORKER_READY_TIMEOUT_S:g} s; starting the sources anyway")
            return True
        return False

    def _check(self) -> tuple[bool, str | None]:
        """(pipeline finished, usage error message); restarts the stages that died or hung."""
        now = time.monotonic()
        for stage in self.stages:
            if stage.done or stage.waiting:
                continue
            if stage.process is None:
                if now >= stage.next_start:
                    self._start(stage)
                    self._report(RESTARTED[stage.spec.kind], f"{stage.name} restarted after crash {stage.crashes}")
                continue
            if stage.process.is_alive() and self._hung(stage):
                self._report(stage.spec.hung_kind, f"{stage.name} sent no heartbeat for "
                             f"{self.heartbeat_timeout_s:g} s; killing it")
                stage.process.kill()
                stage.process.join(timeout=5.0)
            if stage.process.is_alive():
                if now - stage.started > stage.spec.restart.healthy_after_s:
                    stage.crashes = 0
                continue
            outcome = self._exited(stage, now)
            if outcome is not None:
                return outcome
        return False, None

    def _exited(self, stage: StageProcess, now: float) -> tuple[bool, str | None] | None:
        """What a stage's exit means for the pipeline: its end, a usage error, or None (go on; restart it if due)."""
        exitcode = stage.process.exitcode
        stage.process.join()
        stage.process = None
        if exitcode == USAGE_ERROR and stage.starts == 1:  # later, e.g. a camera still down: a crash
            try:
                return False, self.errors.get(timeout=1.0)
            except Exception:
                return False, f"{stage.name} stopped with a usage error"
        if exitcode == 0 and stage.spec.clean_exit is CleanExit.PIPELINE_DONE:
            return True, None
        if exitcode == 0 and stage.spec.clean_exit is CleanExit.FINAL:
            stage.done = True
            return None
        stage.crashes += 1
        delay = stage.spec.restart.delay_s(stage.crashes)
        stage.next_start = now + delay
        logger.warning(f"{stage.name} died (exit code {exitcode}); restarting in {delay:g} s")
        return None

    def _hung(self, stage: StageProcess) -> bool:
        """A warm stage whose heartbeat is older than the timeout (stuck in a call, deadlocked)."""
        if stage.heartbeat is None or stage.heartbeat.value <= 0:
            return False
        return time.time() - stage.heartbeat.value > self.heartbeat_timeout_s

    def shutdown(self) -> None:
        """Ask every stage to stop, wait up to its grace, then terminate and kill what is left."""
        self.stop.set()
        begun = time.monotonic()
        running = [s for s in self.stages if s.process is not None]
        for stage in running:
            stage.process.join(timeout=max(0.05, begun + stage.spec.grace_s - time.monotonic()))
        for stage in running:
            if stage.process.is_alive():
                logger.warning(f"{stage.name} did not stop within {stage.spec.grace_s:g} s; terminating it")
                stage.process.terminate()
                stage.process.join(timeout=1.0)
            if stage.process.is_alive():
                stage.process.kill()
                stage.process.join(timeout=1.0)
        if self._notify is not None:
            self._notify.close(linger=0)
            self._zmq.term()
        if self.web_listener is not None:
            self.web_listener.close()
        for prefix in self.frame_stores:
            remove_stores(prefix)
