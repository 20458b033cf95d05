"""Annotated JPEG frames for the live view: each stream's frame is drawn and encoded once per frame
(and width) however many viewers watch, in a worker thread, and not at all when nobody asks.

A viewer asks for "a frame newer than the one I have"; it gets the newest there is, never a
queue of old ones, so a slow viewer simply sees fewer frames and costs nothing extra.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2

from streamer.kinds import StreamState
from streamer.render.panel import annotated
from streamer.stages.web.state import WebStream

MIN_WIDTH, MAX_WIDTH = 16, 4096  # what ?width= may ask for
KEEP_WATCHING_S = 5.0  # after a .jpg request the stream's frames keep coming this long (a poller's next request)
FRESH_S = 1.0  # a shown frame older than this, of a live stream, is waited past for a fresh one
FIRST_FRAME_WAIT_S = 2.0  # how long a request waits for that fresh frame


@dataclass(frozen=True)
class Jpeg:
    data: bytes
    version: int  # the stream's frame_version it shows (0: the "waiting for frames" placeholder)
    frame_index: int
    frame_ts: float  # the shown frame's capture time, Unix seconds (glass-to-browser latency starts there)


def _encode(name: str, frame, top, fps: float, latency_ms, status, width: int | None, quality: int,
            boxes=()) -> bytes:
    image = annotated(name, frame, top, fps, latency_ms, status, boxes)
    if width is not None and width < image.shape[1]:
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return data.tobytes()


class Feeds:
    """The JPEG side of every stream: one encode per (frame, width), shared by all who wait for it."""

    def __init__(self, streams: dict[str, WebStream], quality: int, max_fps: float, threads: int = 2) -> None:
        self.streams = streams
        self.quality = quality
        self.min_period = 1.0 / max_fps
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="jpeg")
        # per stream: (frame version, width) → (encoding, frame index, frame capture time)
        self.cache: dict[str, dict[tuple[int, int | None], tuple[asyncio.Future, int, float]]] = {
            name: {} for name in streams}
        self.last_encode: dict[tuple[str, int | None], float] = {}
        self.encodes: dict[str, int] = {name: 0 for name in streams}
        self.viewers: dict[str, int] = {name: 0 for name in streams}
        self.asked: dict[str, float] = {name: -1e9 for name in streams}  # monotonic time of the last .jpg request
        self.sent_bytes = 0

    def watched(self) -> set[str]:
        """The streams whose display frames the web stage subscribes to: watched, or asked for lately."""
        now = time.monotonic()
        return {name for name in self.streams
                if self.viewers[name] > 0 or now - self.asked[name] < KEEP_WATCHING_S}

    async def fresh(self, name: str, width: int | None) -> Jpeg:
        """The newest frame for a viewer arriving now: when the stream is live but its shown frame is old
        (nobody watched), the next one, once the subscription brings it (at most FIRST_FRAME_WAIT_S)."""
        stream = self.streams[name]
        self.asked[name] = time.monotonic()
        now = time.time()
        if stream.state(now) == StreamState.LIVE and now - stream.shown_at > FRESH_S:
            try:
                await asyncio.wait_for(stream.changed.wait(), FIRST_FRAME_WAIT_S)
            except asyncio.TimeoutError:
                pass
        return await self.newer_than(name, stream.frame_version - 1, width)

    async def newer_than(self, name: str, version: int, width: int | None) -> Jpeg:
        """The stream's newest annotated frame once there is one newer than ``version`` (-1: any)."""
        stream = self.streams[name]
        while stream.frame_version <= version:
            await stream.changed.wait()
        wait = self.last_encode.get((name, width), -1e9) + self.min_period - time.monotonic()
        if wait > 0:  # max_fps: frames that arrive faster are skipped, the newest is encoded
            await asyncio.sleep(wait)
        version = stream.frame_version
        cache = self.cache[name]
        entry = cache.get((version, width))
        if entry is None:
            if any(v != version for v, _ in cache):
                cache.clear()  # keep only the newest frame's encodings
            view = stream.view
            future = asyncio.get_running_loop().run_in_executor(
                self.pool, _encode, name, view.frame, view.top(), view.fps(), view.latency_ms, view.status,
                width, self.quality, view.boxes())
            entry = cache[(version, width)] = (future, view.frame_index, view.frame_ts)
            self.encodes[name] += 1
            self.last_encode[(name, width)] = time.monotonic()
        future, index, ts = entry
        data = await asyncio.shield(future)  # one viewer leaving does not cancel the others' frame
        return Jpeg(data, version, index, ts)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
