"""Overlay stage: newest frame + newest smoothed result of each stream → a window and/or an annotated video.

Frames arrive on the display socket (bound here, captures connect), results and source
status on the dispatcher's results socket. Drawing runs at ``fps``; a stream with no frame
yet shows a placeholder. The video file is finished properly on stop, so it stays playable.
Offline, one file into ``--output``: every frame instead, each with the prediction of its window
(:class:`FramesHeld`), so the annotated video is as long as the file.
"""

import collections
import multiprocessing.synchronize
import time

import cv2
import numpy as np
import zmq
from loguru import logger

from streamer.kinds import LineKind
from streamer.transport import messages, sockets
from streamer.config.stages import OverlayConfig
from streamer.errors import ProtocolError
from streamer.transport.messages import DisplayFrame, Result, Status
from streamer.render.panel import StreamView, annotate_view
from streamer.render.draw import tile
from streamer.stages.health import Health
from streamer.video.writer import VideoOut

HOLD_S = 2.0  # offline into a file: the longest a frame waits for its prediction (the file's last frames)
HOLD_FRAMES = 150  # and the most frames held meanwhile (about 100 MB at 640×360)


def compose(views: dict[str, StreamView]) -> np.ndarray:
    """One annotated image: a single stream as is, several as a grid."""
    images = [annotate_view(name, view) for name, view in views.items()]
    return images[0] if len(images) == 1 else tile(images)


def run(config: OverlayConfig, stop: multiprocessing.synchronize.Event, health: Health | None = None) -> int:
    """Draw every stream's frames with their predictions until ``stop`` is set."""
    health = health or Health("overlay")
    ctx = sockets.Context()
    frames = sockets.make_socket(ctx, zmq.SUB, config.endpoints.bound("display"), bind=True, security=config.security,
                                 options={zmq.SUBSCRIBE: b"", zmq.RCVHWM: 4})
    results = sockets.make_socket(ctx, zmq.SUB, config.endpoints.results, bind=False, security=config.security,
                                  options={zmq.SUBSCRIBE: b""})
    views = {name: StreamView(config.top_k) for name in config.streams}
    video = VideoOut(config.output, config.fps) if config.output else None
    show = config.window
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    period, next_draw, malformed = 1.0 / config.fps, time.monotonic(), 0
    held = FramesHeld(views[config.streams[0]]) if config.every_frame else None

    def draw() -> None:
        nonlocal show
        image = compose(views)
        if video is not None:
            video.write(image)
        if show:
            show = _show(image)

    health.ready()
    try:
        while not stop.is_set():
            health.beat()
            wait_ms = 50 if held is not None else max(1, int(1000 * (next_draw - time.monotonic())))
            events = dict(poller.poll(wait_ms))
            for sock in (frames, results):
                while sock in events:
                    try:
                        msg = messages.decode(sock.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
                    except ProtocolError:
                        malformed += 1
                        continue
                    view = views.get(getattr(msg, "stream", ""))
                    if view is None:
                        continue
                    if isinstance(msg, DisplayFrame) and held is not None:
                        held.frames.append((msg, time.monotonic()))
                    elif isinstance(msg, DisplayFrame):
                        view.add_frame(msg.image, msg.index, msg.ts, time.monotonic(), msg.tracks)
                    elif isinstance(msg, Result):
                        view.add_top(msg.top, 1000 * (time.time() - msg.frame_ts), msg.track)
                        if held is not None and msg.track is None:
                            held.predicted = max(held.predicted, msg.frame_index)
                    elif isinstance(msg, Status) and msg.kind != LineKind.TRACK_ENDED:
                        view.status = None if msg.kind == LineKind.SOURCE_RESTORED else msg.kind.replace("_", " ")
            if held is not None:  # offline into a file: every frame, once its prediction is in
                while held.due(time.monotonic()):
                    draw()
                continue
            if time.monotonic() < next_draw:
                continue
            next_draw += period
            if next_draw < time.monotonic():
                next_draw = time.monotonic() + period
            if all(v.frame is None for v in views.values()):
                continue
            draw()
    finally:
        while held is not None and held.due(float("inf")):  # the file's last frames, past its last window
            draw()
        if video is not None:
            video.close()
        if config.window:
            cv2.destroyAllWindows()
        frames.close(linger=0)
        results.close(linger=0)
        ctx.term()
    return 0


class FramesHeld:
    """Offline into a file (``OverlayConfig.every_frame``): each frame of the one stream waits until a prediction
    of a window ending at or after it is in (or HOLD_S has passed, or at most HOLD_FRAMES wait), then becomes the
    view's frame, to be drawn once. The capture runs ahead of the workers; this keeps the labels with their
    frames and the video as long as the file."""

    def __init__(self, view: StreamView) -> None:
        self.view, self.frames, self.predicted = view, collections.deque(), -1

    def due(self, now: float) -> bool:
        """Move the next frame to the view when it may be drawn; True when one was."""
        if not self.frames:
            return False
        frame, received = self.frames[0]
        if frame.index > self.predicted and len(self.frames) < HOLD_FRAMES and now - received < HOLD_S:
            return False
        self.frames.popleft()
        self.view.add_frame(frame.image, frame.index, frame.ts, now, frame.tracks)
        return True


def _show(image: np.ndarray) -> bool:
    """Draw in an OpenCV window; False (and one log line) when there is no display to draw on."""
    try:
        cv2.imshow("timesformer-stream", image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            logger.info("overlay: window closed with q/Esc; the pipeline goes on (Ctrl-C stops it)")
            cv2.destroyAllWindows()
            return False
        return True
    except cv2.error as err:
        logger.warning(f"overlay: no display to draw on ({str(err).strip().splitlines()[-1][:100]}); "
                       "running without a window (use --headless, or --output FILE.mp4 to save the overlay)")
        return False
