"""The wire format: every message type round-trips, and nothing malformed gets past decode."""

from __future__ import annotations

import json
import math
import random
import tracemalloc

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.transport import messages as m
from streamer.errors import ProtocolError
from streamer.transport.messages import (Batch, Credit, DisplayFrame, Heartbeat, LogLine, Result, ResultBatch, Stats, Status,
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


# ---------------------------------------------------------------------------
# Fuzzing: everything malformed raises ProtocolError, nothing else
# ---------------------------------------------------------------------------


def _samples() -> list[list]:
    """Valid messages of every type, encoded, with their arrays as bytes."""
    rng = np.random.default_rng(1)
    window = Window("cam0", 7, (0, 4, 8), (10.0, 10.1, 10.2), rng.integers(0, 256, (3, 5, 6, 3), np.uint8), 10.3)
    result = Result("cam0", 7, 8, 10.2, np.full(6, 1 / 6, np.float32), (("run", 0.5), ("walk", 0.25)), "w0",
                    {"queue_ms": 1.5, "forward_ms": 20.0})
    msgs = [
        window,
        WorkRequest("w0", 4),
        Batch((window, Window("cam1", 0, (3,), (1.0,), np.zeros((1, 2, 2, 3), np.uint8), 1.1))),
        result,
        ResultBatch((result, Result("cam1", 0, 3, 1.0, np.zeros(6, np.float32), (), "w0", {}))),
        DisplayFrame("cam0", 8, 10.2, rng.integers(0, 256, (9, 7, 3), np.uint8)),
        Status("source_lost", "cam0", "read timed out", 11.0),
        Credit("cam0", 1),
        Heartbeat("w0", 11.5),
        LogLine({"kind": "start", "stream": "cam0", "label": "run", "frame_index": 8, "score": 0.9, "id": "1-ab"}),
        Stats("dispatcher", 12.0, (("windows_dropped", {"stream": "cam0", "reason": "overtaken"}, 3.0),
                                   ("workers_answering", {}, 1.0))),
    ]
    return [[bytes(p) if isinstance(p, bytes) else np.asarray(p).tobytes() for p in encode(msg)] for msg in msgs]


def _paths(obj: object, path: tuple = ()) -> list[tuple]:
    """Paths to every value inside a JSON document (not the root)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append(path + (key,))
        out.extend(_paths(value, path + (key,)))
    return out


def _get(obj: object, path: tuple) -> object:
    for key in path:
        obj = obj[key]
    return obj


def _kind(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "const"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


OTHER_KIND = {"const": [None, True, False], "number": [0, 1, -1.5, 7], "str": ["", "x", "1"],
              "list": [[], [1], ["a", 1.0]], "dict": [{}, {"a": 1}]}


class Mutator:
    """Turns valid messages into ones that are malformed for sure (never a different valid message)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        # A LogLine's line and a Stats sample's labels are free-form: another field there is still valid
        # (see test_hostile_log_lines_and_stats_decode_or_raise_protocol_error).
        self.samples = [p for p in _samples() if json.loads(p[0])["type"] not in ("log_line", "stats")]

    def dump(self, head: object, parts: list) -> list:
        text = json.dumps(head, allow_nan=True).replace('"__1e400__"', "-1e400")  # a float literal that is -inf
        return [text.encode(), *parts]

    def pick(self) -> tuple[dict, list]:
        parts = self.r.choice(self.samples)
        return json.loads(parts[0]), list(parts[1:])

    def random_bytes(self) -> list:
        n = self.r.randrange(0, 300)
        return [self.r.randbytes(n)] + [self.r.randbytes(self.r.randrange(50)) for _ in range(self.r.randrange(3))]

    def truncated_header(self) -> list:
        parts = self.r.choice(self.samples)
        return [parts[0][:self.r.randrange(len(parts[0]))], *parts[1:]]

    def bad_utf8(self) -> list:
        parts = self.r.choice(self.samples)
        at = self.r.randrange(len(parts[0]))
        return [parts[0][:at] + self.r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + parts[0][at:], *parts[1:]]

    def wrong_version(self) -> list:
        head, parts = self.pick()
        v = m.VERSION
        head["v"] = self.r.choice([0, v - 1, v + 1, -1, str(v), float(v), True, None, [v], {"v": v}, 10**30])
        if self.r.random() < 0.2:
            del head["v"]
        return self.dump(head, parts)

    def wrong_type(self) -> list:
        head, parts = self.pick()
        others = [json.loads(p[0])["type"] for p in self.samples if json.loads(p[0])["type"] != head["type"]]
        head["type"] = self.r.choice(others + ["", "Window", "windows", 3, None, ["window"]])
        return self.dump(head, parts)

    def missing_field(self) -> list:
        head, parts = self.pick()
        dicts = [p for p in _paths(head) if isinstance(_get(head, p), dict) and p[-1] != "timings"]
        target = _get(head, self.r.choice(dicts)) if dicts and self.r.random() < 0.5 else head
        # A message inside a batch may leave out its type and version: its container implies both.
        keys = [k for k in target if target is head or k not in ("type", "v")]
        del target[self.r.choice(keys)]
        return self.dump(head, parts)

    def extra_field(self) -> list:
        head, parts = self.pick()
        dicts = [p for p in _paths(head) if isinstance(_get(head, p), dict) and p[-1] != "timings"]
        target = _get(head, self.r.choice(dicts)) if dicts and self.r.random() < 0.5 else head
        target["zz_" + str(self.r.randrange(100))] = self.r.choice([1, "x", None, [], {}])
        return self.dump(head, parts)

    def wrong_kind(self) -> list:
        """A value replaced by one of another JSON kind (the schema fixes every value's kind)."""
        head, parts = self.pick()
        path = self.r.choice(_paths(head))
        kind = _kind(_get(head, path))
        if kind == "const":
            return self.wrong_version()
        value = self.r.choice([v for k, vs in OTHER_KIND.items() if k != kind for v in vs])
        _get(head, path[:-1])[path[-1]] = value
        return self.dump(head, parts)

    def bad_number(self) -> list:
        head, parts = self.pick()
        numbers = [p for p in _paths(head) if _kind(_get(head, p)) == "number"]
        path = self.r.choice(numbers)
        choices = [math.nan, math.inf, -math.inf, 10**400, -(10**400), "__1e400__"]
        if isinstance(_get(head, path), int):  # integer fields: also out of range or not integral
            choices += [-1, 2**63, 2**64 + 1, 1.5, 0.0 if _get(head, path) else 1.0]
        _get(head, path[:-1])[path[-1]] = self.r.choice(choices)
        return self.dump(head, parts)

    def bad_string(self) -> list:
        head, parts = self.pick()
        strings = [p for p in _paths(head) if isinstance(_get(head, p), str)]
        path = self.r.choice(strings)
        value = self.r.choice(["x" * self.r.randrange(2049, 20000), "a\nb", "\x00", "tab\there", "\ud800", "\x1b[2J"])
        _get(head, path[:-1])[path[-1]] = value
        return self.dump(head, parts)

    def frame_count(self) -> list:
        head, parts = self.pick()
        if parts and self.r.random() < 0.5:
            del parts[self.r.randrange(len(parts))]
        else:
            parts.insert(self.r.randrange(len(parts) + 1), self.r.randbytes(self.r.randrange(64)))
        return self.dump(head, parts)

    def frame_size(self) -> list:
        head, parts = self.pick()
        if not parts:
            return self.frame_count()
        i = self.r.randrange(len(parts))
        k = self.r.randrange(1, 64)
        parts[i] = parts[i][:-k] if self.r.random() < 0.5 and len(parts[i]) > k else parts[i] + bytes(k)
        return self.dump(head, parts)

    def huge_shape(self) -> list:
        head, parts = self.pick()
        shapes = [p for p in _paths(head) if p[-1] in ("shape", "classes")]
        if not shapes:
            return self.frame_size()
        path = self.r.choice(shapes)
        huge = [10**6, 2**31, 2**63 - 1, 10**20, 4097, 65, 100_001]
        if path[-1] == "classes":
            _get(head, path[:-1])["classes"] = self.r.choice(huge)
        else:
            shape = _get(head, path)
            shape[self.r.randrange(len(shape))] = self.r.choice(huge)
            if self.r.random() < 0.3:
                shape[:] = [m.MAX_WINDOW_FRAMES, m.MAX_IMAGE_SIDE, m.MAX_IMAGE_SIDE, 3][-len(shape):]
        return self.dump(head, parts)

    def too_many_items(self) -> list:
        head, parts = self.pick()
        lists = [p for p in _paths(head) if isinstance(_get(head, p), list) and _get(head, p)
                 and p[-1] not in ("shape",)]
        if not lists:
            return [b"{}"] * (m.MAX_PARTS + 1 + self.r.randrange(1000))
        target = _get(head, self.r.choice(lists))
        target.extend([target[0]] * self.r.choice([m.MAX_BATCH, 5000]))  # beyond every bound
        return self.dump(head, parts)

    def bad_window(self) -> list:
        """Window headers that are well-typed but inconsistent."""
        head, parts = json.loads(self.samples[0][0]), list(self.samples[0][1:])
        choice = self.r.randrange(4)
        if choice == 0:
            head["frame_indices"] = head["frame_indices"][::-1]
        elif choice == 1:
            head["frame_ts"] = head["frame_ts"][:-1]
        elif choice == 2:  # 4 channels, and a frame of exactly that size
            head["shape"][3] = 4
            parts = [bytes(math.prod(head["shape"]))]
        else:
            head["frame_indices"][1] = head["frame_indices"][0]
        return self.dump(head, parts)

    def non_finite_probs(self) -> list:
        parts = list(self.samples[3])
        probs = np.frombuffer(parts[1], np.float32).copy()
        probs[self.r.randrange(probs.size)] = self.r.choice([np.nan, np.inf, -np.inf])
        return [parts[0], probs.tobytes()]

    def big_header(self) -> list:
        head, parts = self.pick()
        head["zz"] = "x" * (m.MAX_HEADER_BYTES + self.r.randrange(10_000))
        return self.dump(head, parts)

    def not_an_object(self) -> list:
        return [json.dumps(self.r.choice([[], [1, 2], 1, "window", None, True, 1.5])).encode()]

    def bad_parts(self) -> object:
        return self.r.choice([[], [1], ["text"], [None], [b"{}", 3], [np.zeros((2, 2), np.uint8)[:, :1]]])

    def make(self) -> object:
        return getattr(self, self.r.choice(MUTATIONS))()


MUTATIONS = ["random_bytes", "truncated_header", "bad_utf8", "wrong_version", "wrong_type", "missing_field",
             "extra_field", "wrong_kind", "bad_number", "bad_string", "frame_count", "frame_size", "huge_shape",
             "too_many_items", "bad_window", "non_finite_probs", "big_header", "not_an_object", "bad_parts"]


def test_samples_used_for_fuzzing_are_valid() -> None:
    for parts in _samples():
        decode(parts)


def test_ten_thousand_malformed_messages_raise_protocol_error_and_nothing_else() -> None:
    mutator = Mutator(seed=1234)
    seen: dict[str, int] = {}
    for i in range(12_000):
        name = mutator.r.choice(MUTATIONS)
        _assert_refused(name, i, getattr(mutator, name)())
        seen[name] = seen.get(name, 0) + 1
    assert sum(seen.values()) >= 10_000
    assert set(seen) == set(MUTATIONS)


def test_huge_declared_sizes_are_refused_before_any_allocation() -> None:
    mutator = Mutator(seed=77)
    sizes = ["huge_shape", "too_many_items", "big_header", "frame_size", "bad_number"]
    tracemalloc.start()
    try:
        for i in range(1000):
            name = sizes[i % len(sizes)]
            parts = getattr(mutator, name)()
            tracemalloc.reset_peak()
            _assert_refused(name, i, parts)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 4 * 1024 * 1024, f"{name} #{i}: decode allocated {peak} bytes at peak"
    finally:
        tracemalloc.stop()


def _assert_refused(name: str, i: int, parts: object) -> None:
    try:
        decode(parts)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError(f"{name} #{i} decoded without error: {str(parts)[:300]}")


def test_random_byte_flips_either_decode_or_raise_protocol_error() -> None:
    r = random.Random(99)
    samples = _samples()
    for _ in range(4000):
        parts = [bytearray(p) for p in r.choice(samples)]
        part = r.choice(parts)
        for _ in range(r.randrange(1, 4)):
            if part:
                part[r.randrange(len(part))] = r.randrange(256)
        try:
            decode([bytes(p) for p in parts])
        except ProtocolError:
            pass


def test_hostile_log_lines_and_stats_decode_or_raise_protocol_error() -> None:
    """Free-form parts get random JSON junk: decoding either refuses it or yields bounded, finite, printable values."""
    r = random.Random(99)
    junk = [None, True, -1, 2**63, 10**400, 1e308, math.nan, math.inf, "", "x" * 5000, "a\nb", "\ud800", [], {},
            [[[[[[1]]]]]], {"a": {"b": {"c": {"d": {"e": 1}}}}}, list(range(2000)), "__1e400__"]
    samples = [p for p in _samples() if json.loads(p[0])["type"] in ("log_line", "stats")]

    def bounded(value: object, depth: int = 0) -> None:
        assert depth <= 5
        if isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert abs(value) <= m.MAX_INDEX
        elif isinstance(value, str):
            assert value.isprintable() or not value
        elif isinstance(value, (list, dict)):
            for item in (value.values() if isinstance(value, dict) else value):
                bounded(item, depth + 1)

    decoded = 0
    for i in range(3000):
        head = json.loads(r.choice(samples)[0])
        paths = _paths(head)
        path = r.choice(paths)
        _get(head, path[:-1])[path[-1]] = r.choice(junk)
        parts = [json.dumps(head, allow_nan=True).replace('"__1e400__"', "-1e400").encode()]
        try:
            msg = decode(parts)
        except ProtocolError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        decoded += 1
        bounded(msg.line if isinstance(msg, LogLine) else [list(s) for s in msg.samples])
    assert 0 < decoded < 3000


@given(names)
def test_a_display_topic_is_the_prefix_of_exactly_its_streams_frames(stream: str) -> None:
    frame = DisplayFrame(stream, 3, 1.5, np.zeros((2, 2, 3), np.uint8))
    assert encode(frame)[0].startswith(m.display_topic(stream))
    other = DisplayFrame(stream + "x", 3, 1.5, np.zeros((2, 2, 3), np.uint8))
    assert not encode(other)[0].startswith(m.display_topic(stream))  # "cam" does not subscribe to "camx"
