"""The wire format: every message type round-trips, zero-copy, and encode refuses what decode would drop (fuzzing:
test_messages_fuzz.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.transport import messages as m
from streamer.errors import ProtocolError
from streamer.transport.messages import (Batch, Credit, DisplayFrame, Heartbeat, Leaving, LogLine, Result, ResultBatch, Stats, Status,
                               Window, WorkRequest, decode, encode)

# ---------------------------------------------------------------------------
# Strategies and comparison
# ---------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40)
indices = st.integers(0, m.MAX_INDEX)
stamps = st.floats(allow_nan=False, allow_infinity=False)
probs_f = st.floats(0.0, 1.0, width=32)
boxes = st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e4)).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
tracks = st.one_of(st.none(), st.integers(1, 10**9))  # a tracked actor's id (contract 7), or none


@st.composite
def windows(draw: st.DrawFn) -> Window:
    t = draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    idx = sorted(draw(st.sets(indices, min_size=t, max_size=t)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    views, track = draw(st.integers(1, 3)), draw(tracks)
    frames = rng.integers(0, 256, (views * t, h, w, 3), dtype=np.uint8)
    return Window(draw(names), draw(indices), tuple(idx), tuple(draw(st.lists(stamps, min_size=t, max_size=t))),
                  frames, draw(stamps), track=track, box=None if track is None else draw(boxes), views=views)


@st.composite
def results(draw: st.DrawFn) -> Result:
    probs = np.array(draw(st.lists(probs_f, min_size=1, max_size=50)), np.float32)
    k = draw(st.integers(0, min(5, probs.size)))
    top = tuple((draw(names), draw(probs_f)) for _ in range(k))
    timings = draw(st.dictionaries(names, stamps, max_size=5))
    track = draw(tracks)
    return Result(draw(names), draw(indices), draw(indices), draw(stamps), probs, top, draw(names), timings,
                  track=track, box=None if track is None else draw(boxes))


@st.composite
def display_frames(draw: st.DrawFn) -> DisplayFrame:
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    image = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    shown = tuple(draw(st.lists(st.tuples(st.integers(1, 10**9), boxes), max_size=4)))
    return DisplayFrame(draw(names), draw(indices), draw(stamps), image, 0.0, shown)


any_message = st.one_of(
    windows(),
    st.builds(WorkRequest, names, st.integers(1, m.MAX_BATCH)),
    st.builds(Batch, st.lists(windows(), max_size=4).map(tuple)),
    results(),
    st.builds(ResultBatch, st.lists(results(), max_size=4).map(tuple)),
    display_frames(),
    st.builds(Status, names, st.one_of(st.just(""), names), st.text(st.characters(codec="utf-8",
              categories=("L", "N", "P"), include_characters=" "), max_size=200), stamps, tracks),
    st.builds(Credit, names, st.integers(1, m.MAX_BATCH)),
    st.builds(Heartbeat, names, stamps),
    st.builds(Leaving, names),
    st.builds(LogLine, st.fixed_dictionaries({"kind": names}, optional={"stream": names, "frame_index": indices,
                                                                        "top": st.lists(st.tuples(names, probs_f)
                                                                                        .map(list), max_size=5)})),
    st.builds(Stats, names, stamps, st.lists(st.tuples(names, st.dictionaries(names, names, max_size=3), stamps),
                                             max_size=20).map(tuple)),
)


def same(a: object, b: object) -> bool:
    """Field-by-field equality that understands arrays, nested messages and float32 rounding."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "__struct_fields__"):
        return type(a) is type(b) and all(same(getattr(a, f), getattr(b, f)) for f in a.__struct_fields__)
    return a == b and type(a) is type(b)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_every_message_type_round_trips(msg: m.Message) -> None:
    parts = encode(msg)
    assert isinstance(parts[0], bytes) and json.loads(parts[0])["v"] == m.VERSION
    back = decode(parts)
    assert same(msg, back)


def test_decoded_arrays_are_read_only_views_of_the_received_buffers() -> None:
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    window = Window("cam", 0, (5, 9), (1.0, 2.0), frames, 3.0)
    received = [bytes(p) for p in encode(window)]
    back = decode(received)
    assert not back.frames.flags.writeable and not back.frames.flags.owndata
    assert np.shares_memory(back.frames, np.frombuffer(received[1], np.uint8))


def test_encode_sends_arrays_without_copying() -> None:
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    probs = np.full(10, 0.1, np.float32)
    assert encode(Window("cam", 0, (0, 1), (0.0, 0.1), frames, 0.2))[1] is frames
    assert encode(Result("cam", 0, 1, 0.1, probs, (), "w", {}))[1] is probs


@pytest.mark.parametrize("msg", [
    Window("cam", 0, (2, 1), (0.0, 0.1), np.zeros((2, 2, 2, 3), np.uint8), 0.0),  # indices not increasing
    Window("cam", 0, (0,), (0.0,), np.zeros((1, 2, 2, 3), np.float32), 0.0),  # not uint8
    Window("", 0, (0,), (0.0,), np.zeros((1, 2, 2, 3), np.uint8), 0.0),  # no stream name
    Result("cam", 0, 1, math.nan, np.zeros(3, np.float32), (), "w", {}),  # NaN timestamp
    Result("cam", 0, 1, 0.0, np.array([np.inf], np.float32), (), "w", {}),  # non-finite probability
    WorkRequest("w", 0),
    Credit("cam\nfake log line", 1),
    Heartbeat("w", "now"),
    LogLine({"stream": "cam"}),  # no kind
    LogLine({"kind": "x", "score": math.nan}),  # NaN is not JSON
    Stats("d", 1.0, (("m", {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}, 1.0),)),  # too many labels
    Stats("d", 1.0, (("m", {}, math.inf),)),
])
def test_encode_refuses_a_message_the_receiver_would_drop(msg: m.Message) -> None:
    with pytest.raises(ProtocolError):
        encode(msg)


def test_window_round_trips_over_a_real_zmq_socket_without_copies() -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        for s in (pull, push):
            s.linger = 0
        pull.rcvtimeo = 5000
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        frames = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
        window = Window("cam0", 41, tuple(range(0, 225, 32)), tuple(0.1 * i for i in range(8)), frames, 12.5)
        push.send_multipart(encode(window), copy=False)
        parts = pull.recv_multipart(copy=False)
        assert all(isinstance(p, zmq.Frame) for p in parts)
        back = decode(parts)
        assert same(window, back)
        assert not back.frames.flags.writeable and not back.frames.flags.owndata

        batch = Batch((window, Window("cam1", 0, (7,), (1.0,), frames[:1], 2.0)))
        m.send(push, batch)
        back = m.recv(pull)
        assert same(batch, back)
    finally:
        push.close()
        pull.close()
        ctx.term()


@given(names)
def test_a_display_topic_is_the_prefix_of_exactly_its_streams_frames(stream: str) -> None:
    frame = DisplayFrame(stream, 3, 1.5, np.zeros((2, 2, 3), np.uint8))
    assert encode(frame)[0].startswith(m.display_topic(stream))
    other = DisplayFrame(stream + "x", 3, 1.5, np.zeros((2, 2, 3), np.uint8))
    assert not encode(other)[0].startswith(m.display_topic(stream))  # "cam" does not subscribe to "camx"
