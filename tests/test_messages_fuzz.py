"""Fuzzing the wire: everything malformed raises ProtocolError (one line) and nothing else, and nothing
allocates what a header merely declares."""

from __future__ import annotations

import json
import math
import random
import tracemalloc

import numpy as np

from streamer.transport import messages as m
from streamer.errors import ProtocolError
from streamer.transport.messages import (Batch, Credit, DisplayFrame, Heartbeat, Leaving, LogLine, Result, ResultBatch, Stats,
                                         Status, Window, WorkRequest, decode, encode)


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
        Leaving("w0"),
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
