"""Window frames straight from a capture's frame server to a worker on another host (streamer.transport.frameserver):
real ZeroMQ sockets on tcp://127.0.0.1 under CurveZMQ, a real shared frame store."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config.load_keys import load_security
from streamer.config.tables import SecurityTable
from streamer.errors import ProtocolError
from streamer.transport import messages, sockets
from streamer.transport.frameserver import FrameFetcher, FrameServer
from streamer.transport.framestore import FrameStore, store_prefix
from streamer.transport.message_types import FrameRef
from tests.conftest import free_port

T, SIDE = 8, 32


@pytest.fixture(scope="module")
def security(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys") / "keys"
    made = subprocess.run([sys.executable, "-m", "streamer.transport.keys", str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return load_security(SecurityTable(server_public_key=str(folder / "server.key"),
                                       client_secret_key=str(folder / "client.key_secret"),
                                       allowed_clients=str(folder / "client.key")), "test", Path("."),
                         server_secret=False)


@pytest.fixture
def served(security):
    """A capture's store with 16 frames (frame i filled with i), served on a free port; the server's address."""
    prefix = store_prefix(f"test-{time.time()}")
    store = FrameStore(prefix, "cam", 16, SIDE, SIDE)
    for serial in range(16):
        store.serials[serial] = -1
        store.frames[serial] = serial
        store.serials[serial] = serial
    ctx = sockets.Context()
    address = f"tcp://127.0.0.1:{free_port()}"
    server = FrameServer(ctx, store, prefix, address, security)
    yield store, server, address
    server.close()
    store.close()
    ctx.term()


def ref(store, serials, address) -> FrameRef:
    return FrameRef(store.name, tuple(serials), (len(serials), SIDE, SIDE, 3), address)


def test_a_worker_gets_exactly_the_frames_a_window_names_or_hears_they_are_gone(served, security):
    store, server, address = served
    ctx = zmq.Context()
    fetcher = FrameFetcher(ctx, security)
    try:
        first, second = fetcher.fetch([ref(store, range(8), address), ref(store, range(4, 12), address)])
        assert first.shape == (T, SIDE, SIDE, 3) and [int(f[0, 0, 0]) for f in first] == list(range(8))
        assert [int(f[0, 0, 0]) for f in second] == list(range(4, 12))
        store.serials[3] = 19  # slot 3 now holds frame 19: the window's frame 3 is gone
        assert fetcher.fetch([ref(store, range(8), address)]) == [None]
        assert server.served == 2 and server.stale == 1
        # A capture that went away: the window is lost within the answer timeout, nothing hangs.
        fetcher.timeout_s = 0.3
        begun = time.monotonic()
        [lost] = fetcher.fetch([ref(store, range(8), f"tcp://127.0.0.1:{free_port()}")])
        assert isinstance(lost, ProtocolError) and "did not answer" in str(lost)
        assert time.monotonic() - begun < 1.0
    finally:
        fetcher.close()
        ctx.term()


def test_a_client_without_the_pipeline_s_keys_gets_no_frames(served):
    store, server, address = served
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)
    plain.connect(address)
    try:
        messages.send(plain, messages.FramesWanted(ask=1, ref=ref(store, range(8), address)))
        assert not plain.poll(700)
        assert server.served == 0
    finally:
        plain.close(linger=0)
        ctx.term()


def test_requests_for_another_store_or_malformed_ones_are_counted_not_answered(served, security):
    store, server, address = served
    ctx = zmq.Context()
    fetcher = FrameFetcher(ctx, security, timeout_s=0.3)
    try:
        another_store = store.name.rsplit("-", 1)[0] + "-1.frames"  # this pipeline's name, not this capture's
        other = FrameRef(another_store, tuple(range(8)), (8, SIDE, SIDE, 3), address)
        [answer] = fetcher.fetch([other])
        assert isinstance(answer, ProtocolError)
        sock = fetcher._socket(address)
        sock.send_multipart([b"not a message"])
        time.sleep(0.3)
        assert server.malformed == 2 and server.served == 0
    finally:
        fetcher.close()
        ctx.term()
