"""Window frames straight from a capture to a worker on another host: the dispatcher carries only references.

Routed through the dispatcher, every K400 window (8×224×224×3, 1.2 MB) crosses it twice, and at the scale
of hundreds of cameras those bytes (and, with CurveZMQ, their encryption) are what one dispatcher cannot
carry. So a capture keeps its windows' frames in its frame store, as it does for workers on its own host,
and serves them: a window names the store, the frames' serial numbers and this server's address, the
dispatcher schedules the small window, and the worker asks the capture for the frames itself.

The server is a thread of the capture with a ROUTER socket of its own (ZeroMQ sockets stay in the thread that
made them); it reads the store as any reader does, so it answers with exactly the frames the window named or
says they are gone (overwritten: a stale window). With CurveZMQ the server proves the *client* key pair,
the one every connecting stage of the pipeline holds, so a capture host needs no server secret, and it
admits the same client keys as every other binding socket.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

import numpy as np
import zmq
from loguru import logger

from streamer.config.network import Security
from streamer.errors import ProtocolError
from streamer.transport import messages, sockets
from streamer.transport.framestore import FrameStore, FrameStoreReader
from streamer.transport.message_types import FrameRef, FramesFound, FramesWanted

ANSWER_TIMEOUT_S = 1.0  # a capture that does not answer within this is gone: its windows in the batch are lost
CONNECTIONS_KEPT = 1024  # frame servers a worker stays connected to (one a capture)


def serving_security(security: Security) -> Security:
    """The keys a frame server binds with: the pipeline's client pair in the server's place."""
    if not security.curve:
        return security
    return replace(security, server_public_key=security.client_public_key,
                   server_secret_key=security.client_secret_key)


class FrameServer:
    """Serves one capture's frame store at ``bind`` from a thread, until :meth:`close`."""

    def __init__(self, ctx: zmq.Context, store: FrameStore, prefix: str, bind: str, security: Security) -> None:
        self.store_name = store.name
        self.reader = FrameStoreReader(prefix)
        self.sock = sockets.make_socket(ctx, zmq.ROUTER, bind, bind=True, security=serving_security(security),
                                        options={zmq.SNDHWM: 64, zmq.RCVHWM: 256})
        self.served = self.stale = self.malformed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="frame-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(200):
                    self._answer_waiting()
        finally:
            self.sock.close(linger=0)

    def _answer_waiting(self) -> None:
        for _ in range(64):
            try:
                identity, *parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                wanted = messages.decode(parts)
                if not isinstance(wanted, FramesWanted) or wanted.ref.name != self.store_name:
                    raise ProtocolError("not a request for this capture's frames")
                frames = self.reader.frames(wanted.ref)
            except ProtocolError:
                self.malformed += 1
                continue
            self.served += frames is not None
            self.stale += frames is None
            try:
                self.sock.send_multipart([identity, *messages.encode(FramesFound(ask=wanted.ask, frames=frames))],
                                         zmq.NOBLOCK, copy=False)
            except zmq.Again:  # that worker is not reading: it will time out on this window
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class FrameFetcher:
    """The worker's side: asks each window's capture for its frames, all of a batch at once."""

    def __init__(self, ctx: zmq.Context, security: Security, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.ctx, self.security, self.timeout_s = ctx, replace(security, server_public_key=security.client_public_key) \
            if security.curve else security, timeout_s
        self.servers: dict[str, zmq.Socket] = {}
        self.asks = itertools.count()

    def fetch(self, refs: list[FrameRef]) -> list[np.ndarray | None | ProtocolError]:
        """For each reference, its frames, None (overwritten before we asked) or the error that lost them."""
        out: list[np.ndarray | None | ProtocolError] = [ProtocolError("no answer")] * len(refs)
        waiting: dict[int, int] = {}  # ask → position in refs
        for i, ref in enumerate(refs):
            ask = next(self.asks)
            try:
                messages.send(self._socket(ref.server), FramesWanted(ask=ask, ref=ref), zmq.NOBLOCK)
                waiting[ask] = i
            except zmq.Again:
                out[i] = ProtocolError(f"frame server {ref.server} is not taking requests")
        poller = zmq.Poller()
        for sock in {id(s): s for s in (self.servers[refs[i].server] for i in waiting.values())}.values():
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout_s
        while waiting and (left_ms := int(1000 * (deadline - time.monotonic()))) > 0:
            for sock, _ in poller.poll(left_ms):
                for msg in messages.drain(sock, _IGNORED):
                    if isinstance(msg, FramesFound) and msg.ask in waiting:
                        out[waiting.pop(msg.ask)] = msg.frames
        for ask, i in waiting.items():
            out[i] = ProtocolError(f"frame server {refs[i].server} did not answer within {self.timeout_s:g} s")
        return out

    def _socket(self, server: str) -> zmq.Socket:
        sock = self.servers.get(server)
        if sock is None:
            if len(self.servers) >= CONNECTIONS_KEPT:  # captures come and go: forget the oldest
                self.servers.pop(next(iter(self.servers))).close(linger=0)
            sock = self.servers[server] = sockets.make_socket(self.ctx, zmq.DEALER, server, bind=False,
                                                              security=self.security)
            logger.debug(f"frames: connected to the frame server at {server}")
        return sock

    def close(self) -> None:
        for sock in self.servers.values():
            sock.close(linger=0)
        self.servers.clear()


class _Ignored(messages.MalformedLog):
    """Late answers and malformed ones are dropped without a word: the window they were for is already lost."""

    def saw(self, err) -> None:
        pass


_IGNORED = _Ignored("frames")
