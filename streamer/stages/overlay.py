"""Overlay stage: newest frame + newest smoothed result of each stream → a window and/or an annotated video.

Frames arrive on the display socket (bound here, captures connect), results and source
status on the dispatcher's results socket. Drawing runs at ``fps``; a stream with no frame
yet shows a placeholder. The video file is finished properly on stop, so it stays playable.
"""

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
    health.ready()
    try:
        while not stop.is_set():
            health.beat()
            events = dict(poller.poll(max(1, int(1000 * (next_draw - time.monotonic())))))
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
                    if isinstance(msg, DisplayFrame):
                        view.add_frame(msg.image, msg.index, msg.ts, time.monotonic(), msg.tracks)
                    elif isinstance(msg, Result):
                        view.add_top(msg.top, 1000 * (time.time() - msg.frame_ts), msg.track)
                    elif isinstance(msg, Status) and msg.kind != LineKind.TRACK_ENDED:
                        view.status = None if msg.kind == LineKind.SOURCE_RESTORED else msg.kind.replace("_", " ")
            if time.monotonic() < next_draw:
                continue
            next_draw += period
            if next_draw < time.monotonic():
                next_draw = time.monotonic() + period
            if all(v.frame is None for v in views.values()):
                continue
            image = compose(views)
            if video is not None:
                video.write(image)
            if show:
                show = _show(image)
    finally:
        if video is not None:
            video.close()
        if config.window:
            cv2.destroyAllWindows()
        frames.close(linger=0)
        results.close(linger=0)
        ctx.term()
    return 0


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
