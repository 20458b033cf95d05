"""The web stage's process: aiohttp routes over :class:`WebState`, fed by a thread that reads the sockets.

Routes (contract 5 in DESIGN.md): ``/`` the live page, ``/streams/<stream>.mjpeg`` and ``.jpg``,
``/api/streams``, ``/api/events``, ``/api/live`` (server-sent events for the page), ``/metrics``,
``/healthz``, ``/readyz``. The pipeline never waits for a viewer: frames reach this process
through a PUB socket that drops for a slow reader, and a viewer gets only the newest frame.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import multiprocessing.synchronize
import socket
import threading
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

import msgspec
import zmq
from aiohttp import web
from loguru import logger

from streamer.transport import messages, sockets
from streamer.errors import ConfigError
from streamer.transport.messages import DisplayFrame
from streamer.config.stages import WebConfig
from streamer.config.web import bind_listener
from streamer.stages.health import Health
from streamer.stages.web.feeds import MAX_WIDTH, MIN_WIDTH, Feeds
from streamer.stages.web.history import History
from streamer.stages.web.teach import Teacher
from streamer.stages.web.metrics import Metrics
from streamer.stages.web.state import WebState

COOKIE = "timesformer_token"
PAGES = ("/", "/review")  # the pages that take ?token=TOKEN once and set the cookie
BOUNDARY = "frame"
WRITE_TIMEOUT_S = 10.0  # a viewer that takes no data for this long is disconnected
STREAMS_EVERY_S = 1.0  # the page's stream list is pushed this often
STATIC = {"page.js": "text/javascript", "page.css": "text/css", "review.js": "text/javascript",
          "review.css": "text/css", "teach.js": "text/javascript"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _refuse(exception: type[web.HTTPException], message: str) -> web.HTTPException:
    """An HTTP error to raise from a handler, with the same ``{"error": ...}`` body as :func:`_error`."""
    return exception(text=json.dumps({"error": message}), content_type="application/json")


def _number(request: web.Request, key: str, kind, low, high):
    """A query parameter as ``kind`` within [low, high], None when absent; 400 when malformed."""
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise _refuse(web.HTTPBadRequest, f"?{key}={raw[:40]!r} is not a number") from None
    if not low <= value <= high:  # nan fails too
        raise _refuse(web.HTTPBadRequest, f"?{key}= must be from {low} to {high}")
    return value


class WebApp:
    """The routes, over one state, one set of feeds and one metrics registry."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.metrics = Metrics(dict(config.build))
        self.state = WebState(config, observe=self.metrics.observe)
        self.feeds = Feeds(self.state.streams, config.jpeg_quality, config.max_fps)
        self.metrics.attach(self.state, self.feeds)
        self.token = config.token.encode()
        self.history = History(config.store)
        self.teacher = Teacher(config.store, config.checkpoint, config.labels)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=64 * 1024)
        app.add_routes([
            web.get("/", self.page), web.get("/static/{file}", self.static),
            web.get("/streams/{file}", self.stream),
            web.get("/api/streams", self.api_streams), web.get("/api/events", self.api_events),
            web.get("/api/live", self.live),
            web.get("/events/{event_id}/{file}", self.event_file),
            web.get("/metrics", self.metrics_text), web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
            web.get("/review", self.review), *self.history.routes(), *self.teacher.routes(),
        ])
        return app

    # ------------------------------------------------------------------ security

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token)

    @web.middleware
    async def guard(self, request: web.Request, handler):
        """The token (when configured), then the handler; an unexpected error is a 500, never a traceback."""
        if self.token and request.path != "/healthz":
            if request.path in PAGES and "token" in request.query:
                if not hmac.compare_digest(request.query["token"].encode(), self.token):
                    return _error(401, "wrong token")
                redirect = web.HTTPFound(request.path)  # out of the address bar and the history
                redirect.set_cookie(COOKIE, self.config.token, httponly=True, samesite="Strict")
                raise redirect
            if not self._authorised(request):
                return web.json_response({"error": "this server needs a token: Authorization: Bearer TOKEN, "
                                                   "or open /?token=TOKEN once"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return _error(exc.status, exc.reason)
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            logger.exception(f"web: {request.method} {request.path} failed")
            return _error(500, "internal error (logged by the web stage)")
        if not response.prepared:
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        return response

    # ------------------------------------------------------------------ the page

    async def page(self, request: web.Request) -> web.Response:
        html = resources.files("streamer.stages.web").joinpath("static/page.html").read_text()
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def review(self, request: web.Request) -> web.Response:
        """The review page: the action history per stream and day (contract 8)."""
        html = resources.files("streamer.stages.web").joinpath("static/review.html").read_text()
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in STATIC:
            return _error(404, "no such file")
        body = resources.files("streamer.stages.web").joinpath(f"static/{name}").read_text()
        return web.Response(text=body, content_type=STATIC[name])

    # ------------------------------------------------------------------ streams

    def _stream_of(self, request: web.Request) -> tuple[str, str]:
        """(stream, suffix) from the raw path, so that a ``/`` written ``%2F`` stays part of the name."""
        raw = request.rel_url.raw_path.split("/streams/", 1)[1]
        name, dot, suffix = unquote(raw).rpartition(".")
        if not dot or suffix not in ("mjpeg", "jpg"):
            raise _refuse(web.HTTPNotFound, "streams are /streams/NAME.mjpeg or .jpg")
        if name not in self.state.streams:
            raise _refuse(web.HTTPNotFound, f"no stream named {name[:80]!r}; GET /api/streams lists them")
        return name, suffix

    async def stream(self, request: web.Request) -> web.StreamResponse:
        name, suffix = self._stream_of(request)
        width = _number(request, "width", int, MIN_WIDTH, MAX_WIDTH)
        if suffix == "jpg":
            jpeg = await self.feeds.fresh(name, width)
            self.feeds.sent_bytes += len(jpeg.data)
            return web.Response(body=jpeg.data, content_type="image/jpeg", headers={
                "Cache-Control": "no-store", "X-Frame-Index": str(jpeg.frame_index),
                "X-Frame-Timestamp": f"{jpeg.frame_ts:.6f}"})
        fps = _number(request, "fps", float, 0.1, 240.0)
        return await self._mjpeg(request, name, width, fps)

    async def _mjpeg(self, request: web.Request, name: str, width: int | None, fps: float | None):
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"})
        if not await _started(response, request):
            return response
        self.feeds.viewers[name] += 1
        version, next_due = -1, 0.0
        try:
            await response.write(f"--{BOUNDARY}\r\n".encode())
            while True:
                if fps is not None and (wait := next_due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if version < 0:
                    jpeg = await self.feeds.fresh(name, width)
                else:
                    jpeg = await self.feeds.newer_than(name, version, width)
                version, next_due = jpeg.version, time.monotonic() + (1.0 / fps if fps else 0.0)
                # Each part ends with the next boundary, so a browser shows it at once rather than
                # when the next frame begins.
                part = (f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg.data)}\r\n"
                        f"X-Frame-Index: {jpeg.frame_index}\r\nX-Frame-Timestamp: {jpeg.frame_ts:.6f}\r\n\r\n"
                        ).encode() + jpeg.data + f"\r\n--{BOUNDARY}\r\n".encode()
                await asyncio.wait_for(response.write(part), WRITE_TIMEOUT_S)
                self.feeds.sent_bytes += len(part)
        except (ConnectionError, asyncio.TimeoutError):
            if request.transport is not None:
                request.transport.abort()  # a stalled viewer: drop it and what waits in its buffer
        finally:
            self.feeds.viewers[name] -= 1
        return response

    # ------------------------------------------------------------------ clips

    async def event_file(self, request: web.Request) -> web.StreamResponse:
        """``/events/<id>/clip.mp4`` and ``thumbnail.jpg``: the files the clips stage wrote for that action."""
        event_id, name = request.match_info["event_id"], request.match_info["file"]
        if name not in ("clip.mp4", "thumbnail.jpg"):
            raise _refuse(web.HTTPNotFound, "an event has /events/ID/clip.mp4 and /events/ID/thumbnail.jpg")
        clip = self.state.clips.get(event_id) or await self.history.clip_of(event_id)
        if clip is None:
            raise _refuse(web.HTTPNotFound, f"no clip is known for event {event_id[:80]!r} (clips are made with "
                                            "[clips] in the config; /api/events lists the events)")
        path = Path(clip) if name == "clip.mp4" else Path(clip).with_suffix(".jpg")
        if not path.is_file():
            raise _refuse(web.HTTPNotFound, f"{name} of event {event_id} is not written (yet): a clip is complete "
                                            "its post-roll after the action's end")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ API

    async def api_streams(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.stream_list())

    async def api_events(self, request: web.Request) -> web.Response:
        limit = _number(request, "limit", int, 1, 2**63)  # more than are kept: all that are kept
        events = list(self.state.events)[: min(limit or 50, self.config.events_kept)]
        return web.json_response(events)

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events for the page: ``hello`` (the streams, the events this stage saw, and the history's
        actions from before it started), then ``streams`` (each second) and ``event`` lines."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        if not await _started(response, request):
            return response
        queue = self.state.subscribe()
        try:
            await response.write(_sse("hello", {"streams": self.state.stream_list(),
                                                "events": list(self.state.events)[:50],
                                                "earlier": await self.history.earlier(self.state.started)}))
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), STREAMS_EVERY_S)
                except asyncio.TimeoutError:
                    kind, data = "streams", self.state.stream_list()
                await asyncio.wait_for(response.write(_sse(kind, data)), WRITE_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError):
            if request.transport is not None:
                request.transport.abort()
        finally:
            self.state.unsubscribe(queue)
        return response

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.text(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "running", "uptime_s": round(time.time() - self.state.started, 1)})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = self.state.not_ready()
        return web.json_response({"ready": not problems, "not_ready": problems}, status=503 if problems else 200)


class _ClientFaults(logging.Filter):
    """Drops aiohttp's tracebacks for requests that were malformed (it has already answered them 400):
    a client's mistake is not the server's error, and the log stays one line per real problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


async def _started(response: web.StreamResponse, request: web.Request) -> bool:
    """Send a streaming response's headers; False when the viewer has gone already (a tab closed as the stream
    began). Returned rather than raised, the reset connection is dropped quietly; raised, aiohttp logs a traceback."""
    try:
        await response.prepare(request)
        return True
    except ConnectionError:
        return False


def _sse(kind: str, data) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _read_sockets(config: WebConfig, loop: asyncio.AbstractEventLoop, state: WebState, feeds: Feeds,
             done: threading.Event) -> None:
    """Socket thread: display frames (newest per stream, coalesced) and the dispatcher's messages → the loop.

    Display frames are subscribed to per stream, only while a viewer watches it (``Feeds.watched``), so
    the captures convert no frame for the web stage while nobody looks.
    """
    ctx = sockets.Context()
    frames = sockets.make_socket(ctx, zmq.SUB, config.endpoints.bound("web"), bind=True, security=config.security,
                                 options={zmq.RCVHWM: 4})
    subscribed: set[str] = set()
    results = sockets.make_socket(ctx, zmq.SUB, config.endpoints.results, bind=False, security=config.security,
                                  options={zmq.SUBSCRIBE: b"", zmq.RCVHWM: 10000})
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(results, zmq.POLLIN)
    newest: dict[str, DisplayFrame] = {}
    lock = threading.Lock()
    malformed = messages.MalformedLog("web")

    def flush() -> None:
        with lock:
            waiting = list(newest.values())
            newest.clear()
        for frame in waiting:
            state.apply(frame)

    try:
        while not done.is_set():
            wanted = feeds.watched()
            for name in wanted - subscribed:
                frames.setsockopt(zmq.SUBSCRIBE, messages.display_topic(name))
            for name in subscribed - wanted:
                frames.setsockopt(zmq.UNSUBSCRIBE, messages.display_topic(name))
            subscribed = wanted
            ready = dict(poller.poll(50))
            for sock in (frames, results):
                for msg in messages.drain(sock, malformed) if sock in ready else ():
                    if isinstance(msg, DisplayFrame):
                        msg = msgspec.structs.replace(msg, image=msg.image.copy())  # off zmq's buffer, the rest kept
                        with lock:
                            first = not newest
                            newest[msg.stream] = msg
                        if first:
                            loop.call_soon_threadsafe(flush)
                    else:
                        loop.call_soon_threadsafe(state.apply, msg)
    except RuntimeError:  # the loop closed under us: stopping
        pass
    finally:
        frames.close(linger=0)
        results.close(linger=0)
        ctx.term()


async def _serve(config: WebConfig, listener: socket.socket | None, stop: multiprocessing.synchronize.Event,
                 health: Health) -> int:
    logging.getLogger("aiohttp.server").addFilter(_ClientFaults())
    web_app = WebApp(config)
    done = threading.Event()
    reader = threading.Thread(target=_read_sockets, args=(config, asyncio.get_running_loop(), web_app.state, web_app.feeds,
                                                     done),
                              name="web-sockets", daemon=True)
    reader.start()
    runner = web.AppRunner(web_app.app(), access_log=None, shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    if listener is None:  # run alone (--role web): bind here
        try:
            listener = bind_listener(config)
        except OSError as err:
            raise ConfigError(f"web view {config.host}:{config.port}: cannot listen there ({err.strerror})") from None
        config = replace(config, port=listener.getsockname()[1])
    await web.SockSite(runner, listener).start()
    logger.info(f"web view at {config.url}" + (f" (what happened: {config.url}review)" if config.store else ""))
    health.ready()
    try:
        while not stop.is_set():
            health.beat()
            await asyncio.sleep(0.1)
    finally:
        done.set()
        await runner.cleanup()
        web_app.feeds.close()
        reader.join(timeout=2.0)
    return 0


def serve(config: WebConfig, stop: multiprocessing.synchronize.Event, listener: socket.socket | None,
          health: Health) -> int:
    """Serve until ``stop`` is set; ``listener`` is the socket the supervisor bound (None: bind here)."""
    return asyncio.run(_serve(config, listener, stop, health))
