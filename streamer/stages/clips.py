"""The clips stage: one H.264 MP4 per action, exact to the frame, from ``pre_s`` before the first frame of
the window that started it to ``post_s`` after its end line's frame (contract 6), with a JPEG thumbnail
of the frame where the action scored highest.

Every stream's recent display frames are kept JPEG-compressed (a few seconds more than ``pre_s``), so
the pre-roll is there when a start line comes. A frame is drawn once a prediction at or after it has
arrived (so it shows what the overlay showed at that moment) and encoded in memory; the complete clip is
written under a hidden temporary name and renamed. A clip that cannot be written (full disk, unwritable
folder) costs one warning and that clip only.
"""

from __future__ import annotations

import bisect
import collections
import io
import multiprocessing.synchronize
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zmq
from loguru import logger

from streamer.kinds import LineKind, StageKind
from streamer.transport import messages, sockets
from streamer.render.panel import SMOOTHING, annotated
from streamer.stages.health import Health
from streamer.transport.messages import DisplayFrame, LogLine, Stats
from streamer.config.sinks import ClipsConfig, ClipStageConfig
from streamer.video.writer import VideoOut

JPEG_QUALITY = 85
EXTRA_KEEP_S = 3.0   # kept beyond pre_s and a window's span: the start line's delay
DRAW_WAIT_S = 2.0    # a frame no prediction has reached yet is drawn anyway after this long
END_WAIT_S = 3.0     # after the post-roll's last frame was due, a clip is finished with what came
RECEIVE_QUEUE_FRAMES = 8  # a stream's frames waiting in ZeroMQ for this stage (raw BGR: bounded memory, not a backlog)
DRAWN_PER_PUMP = 6  # frames drawn between two looks at the sockets (their queues hold 8 a stream)
CLIP_PRESET = "superfast"  # x264: about half veryfast's time a frame, for files a little larger


@dataclass
class Clip:
    """One action's clip while it is written."""

    event_id: str
    label: str
    first: int                      # first source frame in the clip
    last: int                       # last one (the start's cap until the end line says)
    final: Path
    next: int = -1                  # next frame index to write
    ended: bool = False
    ended_at: float = 0.0
    writer: VideoOut | None = None
    best: tuple[float, int] = (-1.0, -1)  # (score, frame index) of the label's best prediction
    thumbnail: bytes = b""
    frames: int = 0
    missed: int = 0                 # frames of its span that never reached the recorder (it was behind)
    failed: str = ""

    @property
    def temporary(self) -> Path:
        return self.final.with_name(f".{self.final.stem}.part.mp4")


@dataclass
class Recorder:
    """One stream: recent frames, its predictions, and its clips being written."""

    name: str
    config: ClipsConfig
    span: int
    end_lag_s: float = 0.0  # an end line names a frame up to this long before the newest prediction
    fps: float = 0.0
    frames: collections.deque = field(default_factory=collections.deque)   # (index, ts, received, jpeg)
    predictions: list = field(default_factory=list)                         # (frame_index, top, latency_ms)
    clips: dict[str, Clip] = field(default_factory=dict)

    def add_frame(self, frame: DisplayFrame, now: float) -> None:
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        if frame.fps > 0:
            self.fps = frame.fps
        elif len(self.frames) > 1:  # no rate from the source: measure it
            first, last = self.frames[0], self.frames[-1]
            self.fps = (last[0] - first[0]) / max(1e-6, last[1] - first[1])
        self.frames.append((frame.index, frame.ts, now, jpeg.tobytes()))
        keep_from = frame.index - self.span - round((self.config.pre_s + EXTRA_KEEP_S) * (self.fps or 30.0))
        waiting = [c.next for c in self.clips.values() if c.next >= 0]
        keep_from = min([keep_from, *waiting])
        while self.frames and self.frames[0][0] < keep_from:
            self.frames.popleft()

    def add_prediction(self, line: dict) -> None:
        index, top = line.get("frame_index"), line.get("top")
        if type(index) is not int or not isinstance(top, list):
            return
        top = [(str(t[0]), float(t[1])) for t in top
               if isinstance(t, list) and len(t) == 2 and type(t[1]) in (int, float)]
        if self.predictions and index < self.predictions[-1][0]:
            return  # an older window answered late: the drawing goes by frame order
        latency = line.get("latency_ms")
        self.predictions.append((index, top, float(latency) if type(latency) in (int, float) else 0.0))
        del self.predictions[:-4096]
        for clip in self.clips.values():
            score = dict(top).get(clip.label, -1.0)
            if clip.first <= index <= clip.last and score > clip.best[0]:
                jpeg = self._jpeg(index)
                if jpeg is not None:
                    clip.best, clip.thumbnail = (score, index), jpeg

    def _jpeg(self, index: int) -> bytes | None:
        for frame in reversed(self.frames):
            if frame[0] == index:
                return frame[3]
            if frame[0] < index:
                return None
        return None

    def start(self, line: dict) -> None:
        fps = self.fps or 30.0
        first = max(0, line["frame_index"] - self.span + 1 - round(self.config.pre_s * fps))
        final = Path(self.config.path(self.name, line["id"]))
        clip = Clip(line["id"], str(line.get("label", "")), first, first + round(self.config.max_s * fps) - 1, final)
        clip.next = first
        self.clips[clip.event_id] = clip

    def end(self, line: dict, now: float) -> None:
        clip = self.clips.get(line.get("id"))
        if clip is None or type(line.get("frame_index")) is not int:
            return
        clip.last = min(clip.last, line["frame_index"] + round(self.config.post_s * (self.fps or 30.0)))
        clip.ended, clip.ended_at = True, now

    def _top_at(self, index: int) -> tuple[list, float | None]:
        """What the overlay showed at frame ``index``: the mean of the last few predictions up to it."""
        at = bisect.bisect_right(self.predictions, index, key=lambda p: p[0])  # no copy of the list per frame
        recent = self.predictions[max(0, at - SMOOTHING):at]
        if not recent:
            return [], None
        scores: dict[str, float] = collections.defaultdict(float)
        for _, top, _ in recent:
            for label, prob in top:
                scores[label] += prob / len(recent)
        return sorted(scores.items(), key=lambda kv: -kv[1])[:5], recent[-1][2]

    def pump(self, now: float, warn, stopping: bool = False) -> list[Clip]:
        """Write what each clip can take now; return the clips that are finished (written or failed).

        Frame by frame, each drawn once for every clip that holds it (actions overlap by their rolls)."""
        newest_prediction = self.predictions[-1][0] if self.predictions else -1
        # a clip still under way ends at a frame no earlier than this (its end line names where its score went
        # below, up to end_lag_s before the newest prediction), so it takes no frame past its post-roll from there
        sure = newest_prediction + round((self.config.post_s - self.end_lag_s) * (self.fps or 30.0))
        budget = DRAWN_PER_PUMP  # a clip's pre-roll is drawn a few frames at a time, so the sockets keep draining
        for index, _, received, jpeg in list(self.frames):
            if budget <= 0 and not stopping:
                break
            takers = [c for c in self.clips.values() if not c.failed and c.next <= index <= c.last
                      and (c.ended or stopping or index <= sure)]
            if not takers:
                continue
            if self.config.annotated and index > newest_prediction and now - received < DRAW_WAIT_S and not stopping:
                break  # its prediction is not here yet: draw it later, as the overlay showed it
            image = self._draw(index, jpeg)
            budget -= 1
            for clip in takers:
                clip.missed += index - clip.next  # a gap: frames dropped on the way to this stage
                self._write(clip, index, image, warn)
        done = []
        newest = self.frames[-1] if self.frames else None
        for clip in list(self.clips.values()):
            due = clip.ended and (clip.next > clip.last or now - clip.ended_at > self.config.post_s + END_WAIT_S)
            capped = clip.next > clip.last
            if clip.failed or due or capped or stopping or (newest and now - newest[2] > 30 and clip.ended):
                done.append(self.clips.pop(clip.event_id))
        return done

    def _draw(self, index: int, jpeg: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if self.config.annotated:
            top, latency = self._top_at(index)
            image = annotated(self.name, image, top, self.fps, latency, None)
        return image

    def _write(self, clip: Clip, index: int, image: np.ndarray, warn) -> None:
        try:
            if clip.writer is None:  # encoded in memory: a full or failing disk is met in plain file I/O at the end
                clip.writer = VideoOut(io.BytesIO(), self.fps or 30.0, preset=CLIP_PRESET)
            clip.writer.write(image)
            clip.frames += 1
        except Exception as err:  # OSError, or PyAV's FFmpegError
            clip.failed = warn(clip, err)
        clip.next = index + 1


def _return_freed_memory() -> None:
    """Hand what a finished clip's encoder freed back to the system (glibc keeps it otherwise: each clip's
    x264 buffers would stay in the stage's memory as its high-water mark)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ClipStage:
    """Every stream's recorder, and the clips finished: renamed into place, thumbnail beside, old ones pruned."""

    def __init__(self, config: ClipStageConfig) -> None:
        self.config, self.clips = config, config.clips
        self.recorders = {name: Recorder(name, config.clips, config.span, config.end_lag_s)
                          for name in config.streams}
        self.counts = {"written": 0, "failed": 0}
        self.missed_frames = 0
        self._warned: set[str] = set()
        for stale in Path(config.clips.dir).glob("*/.*.part.mp4"):  # left by a stage that crashed: never complete
            stale.unlink(missing_ok=True)

    def apply(self, msg, now: float) -> None:
        recorder = self.recorders.get(getattr(msg, "stream", None) or (msg.line.get("stream") if isinstance(
            msg, LogLine) else None))
        if recorder is None:
            return
        if isinstance(msg, DisplayFrame):
            recorder.add_frame(msg, now)
        elif isinstance(msg, LogLine):
            line = msg.line
            if line.get("kind") == LineKind.PREDICTION:
                recorder.add_prediction(line)
            elif line.get("kind") == LineKind.START and isinstance(line.get("id"), str) and type(line.get("frame_index")) is int:
                recorder.start(line)
            elif line.get("kind") == LineKind.END:
                recorder.end(line, now)

    def pump(self, now: float, stopping: bool = False) -> None:
        for recorder in self.recorders.values():
            for clip in recorder.pump(now, self._warn, stopping):
                self._finish(clip)

    def _warn(self, clip: Clip, err: Exception) -> str:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0][:160] or type(err).__name__
        if why not in self._warned:
            self._warned.add(why)
            logger.warning(f"clips: cannot write {clip.final} ({why}); that action has no clip, the pipeline "
                           "goes on (said once per reason)")
        return why

    def _finish(self, clip: Clip) -> None:
        try:
            self._write_out(clip)
        finally:
            clip.writer = None
            _return_freed_memory()

    def _write_out(self, clip: Clip) -> None:
        try:
            if clip.writer is not None:
                clip.writer.close()
            if not clip.failed and clip.frames:
                clip.final.parent.mkdir(parents=True, exist_ok=True)
                with open(clip.temporary, "wb") as out:
                    out.write(clip.writer.path.getvalue())
                os.replace(clip.temporary, clip.final)
                if clip.thumbnail:
                    thumb = clip.final.with_suffix(".jpg")
                    part = thumb.with_name(f".{thumb.name}.part")
                    part.write_bytes(clip.thumbnail)
                    os.replace(part, thumb)
                self.counts["written"] += 1
                self.missed_frames += clip.missed
                gap = f"; {clip.missed} frames missing: the recorder fell behind (CPU)" if clip.missed else ""
                (logger.warning if clip.missed else logger.info)(f"clip {clip.final}: {clip.frames} frames ({clip.label}){gap}")
                self._prune()
                return
        except Exception as err:  # OSError, or PyAV's FFmpegError when the last packets do not fit
            clip.failed = clip.failed or self._warn(clip, err)
        self.counts["failed"] += 1
        try:
            clip.temporary.unlink(missing_ok=True)
        except OSError:
            pass

    def _prune(self) -> None:
        """Clips past ``keep_days``, then the oldest while all of them pass ``max_bytes``."""
        if not self.clips.keep_days and not self.clips.max_bytes:
            return
        files = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in Path(self.clips.dir).glob("*/*.mp4")
                       if not p.name.startswith("."))
        total, cutoff = sum(size for _, size, _ in files), time.time() - self.clips.keep_days * 86400
        for mtime, size, path in files:
            if not ((self.clips.keep_days and mtime < cutoff) or (self.clips.max_bytes and total > self.clips.max_bytes)):
                break
            for gone in (path, path.with_suffix(".jpg")):
                gone.unlink(missing_ok=True)
            total -= size

    def ring_bytes(self) -> int:
        return sum(len(f[3]) for r in self.recorders.values() for f in r.frames)


def run(config: ClipStageConfig, stop: multiprocessing.synchronize.Event, health: Health | None = None) -> int:
    """Record every action's clip until ``stop`` is set, then finish the clips under way."""
    health = health or Health("clips")
    ctx = sockets.Context()
    frames = sockets.make_socket(ctx, zmq.SUB, config.endpoints.bound("clips"), bind=True, security=config.security,
                                 options={zmq.SUBSCRIBE: messages.recorder_topic(), zmq.RCVHWM: RECEIVE_QUEUE_FRAMES})
    results = sockets.make_socket(ctx, zmq.SUB, config.endpoints.results, bind=False, security=config.security,
                                  options={zmq.SUBSCRIBE: b"", zmq.RCVHWM: 100_000})
    report = sockets.make_socket(ctx, zmq.DEALER, config.endpoints.windows, bind=False, security=config.security,
                                 options={zmq.LINGER: 0, zmq.SNDHWM: 4})
    stage = ClipStage(config)
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    malformed = messages.MalformedLog("clips")
    logger.info(f"clips: every action to {config.clips.dir}/<stream>/<id>.mp4 ({config.clips.pre_s:g} s before, "
                f"{config.clips.post_s:g} s after{', annotated' if config.clips.annotated else ''})")
    next_report = time.monotonic() + 1.0
    health.ready()

    def send_report() -> None:
        samples = tuple(("clips", {"outcome": k}, float(v)) for k, v in stage.counts.items())
        samples += (("clip_buffer_bytes", {}, float(stage.ring_bytes())),
                    ("clip_frames_missed", {}, float(stage.missed_frames)))
        health.publish(samples)
        try:
            messages.send(report, Stats(StageKind.CLIPS, time.time(), samples), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def take(ready) -> bool:
        took, now = False, time.monotonic()
        for sock in (frames, results):  # frames first: a start line finds its pre-roll in the ring
            for msg in messages.drain(sock, malformed) if sock in ready else ():
                stage.apply(msg, now)
                took = True
        return took

    try:
        while not stop.is_set():
            health.beat()
            take(dict(poller.poll(50)))
            stage.pump(time.monotonic())
            if time.monotonic() >= next_report:
                next_report += 1.0
                send_report()
    finally:
        deadline = time.monotonic() + 5.0  # what is still queued for us: the last frames and end lines
        while time.monotonic() < deadline and take(dict(poller.poll(100))):
            stage.pump(time.monotonic())
        stage.pump(time.monotonic(), stopping=True)
        send_report()
        for sock in (frames, results, report):
            sock.close(linger=0)
        ctx.term()
    return 0
