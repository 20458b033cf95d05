"""The wire's bounds and checked readers, shared by encode (catch a bad message at its sender) and decode.

Every field of a message header goes through one of these before it is used: types,
ranges, string lengths and printable text, array sizes that match their shape exactly.
A failed check is a :class:`~streamer.errors.ProtocolError` naming the field.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
from loguru import logger

from streamer.errors import ProtocolError

# Bounds, checked before anything is allocated or trusted.
MAX_HEADER_BYTES = 64 * 1024
MAX_WINDOW_FRAMES = 64  # frames in one window
MAX_IMAGE_SIDE = 4096  # pixels, height and width
MAX_BATCH = 64  # windows in a Batch, results in a ResultBatch, n of a request or credit
MAX_CLASSES = 100_000
MAX_TOP = 1000  # (label, prob) pairs in a Result
MAX_TIMINGS = 32  # entries in Result.timings
MAX_NAME = 256  # characters of a stream, worker, label, kind or timing name
MAX_DETAIL = 2048  # characters of Status.detail
MAX_INDEX = 2**63 - 1  # frame indices and sequence numbers
MAX_ARRAY_BYTES = 512 * 1024 * 1024  # one array frame; also a sane zmq.MAXMSGSIZE
MAX_PARTS = 1 + MAX_BATCH
MAX_LINE_FIELDS = 64  # keys of a LogLine
MAX_SAMPLES = 4096  # samples in one Stats
MAX_LABELS = 4  # labels of one sample

U8 = np.dtype("|u1")
F32 = np.dtype("<f4")


class Fields:
    """Takes the fields out of one JSON object, each checked; ``done()`` refuses leftovers."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        self._obj = obj
        self._where = where
        self._taken: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self._obj

    def raw(self, key: str) -> Any:
        if key not in self._obj:
            raise ProtocolError(f"{self._where}: missing field {key!r}")
        self._taken.add(key)
        return self._obj[key]

    def text(self, key: str, max_len: int = MAX_NAME, empty: bool = False) -> str:
        return check_text(self.raw(key), f"{self._where}.{key}", max_len, empty)

    def integer(self, key: str, lo: int, hi: int) -> int:
        return check_int(self.raw(key), f"{self._where}.{key}", lo, hi)

    def number(self, key: str) -> float:
        return check_float(self.raw(key), f"{self._where}.{key}")

    def items(self, key: str, max_len: int) -> list:
        return self._sized(key, list, "a list", "items", max_len)

    def mapping(self, key: str, max_len: int) -> dict:
        return self._sized(key, dict, "an object", "entries", max_len)

    def _sized(self, key: str, kind: type, what: str, unit: str, max_len: int):
        value = self.raw(key)
        if not isinstance(value, kind):
            raise ProtocolError(f"{self._where}.{key}: expected {what}, got {type(value).__name__}")
        if len(value) > max_len:
            raise ProtocolError(f"{self._where}.{key}: {len(value)} {unit}, at most {max_len} allowed")
        return value

    def done(self) -> None:
        extra = set(self._obj) - self._taken
        if extra:
            raise ProtocolError(f"{self._where}: unexpected field {sorted(extra)[0]!r}")


def check_text(value: Any, where: str, max_len: int, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolError(f"{where}: string of {len(value)} characters, at most {max_len} allowed")
    if not value and not empty:
        raise ProtocolError(f"{where}: empty string")
    # Rejects control characters (log lines stay one line) and lone surrogates
    # (they could not be written out as UTF-8 later).
    if not value.isprintable():
        raise ProtocolError(f"{where}: string has non-printable characters")
    return value


def check_int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{where}: {value} outside [{lo}, {hi}]")
    return value


def check_float(value: Any, where: str) -> float:
    if type(value) not in (int, float):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    result = float(value)  # ints beyond float range raise OverflowError
    if not math.isfinite(result):
        raise ProtocolError(f"{where}: {value!r} is not finite")
    return result


def check_box(value: Any, where: str) -> tuple[float, float, float, float]:
    """``[x0, y0, x1, y1]``: four finite numbers with x0 ≤ x1 and y0 ≤ y1 (a region or track, in pixels)."""
    if not isinstance(value, list) or len(value) != 4:
        raise ProtocolError(f"{where}: expected [x0, y0, x1, y1]")
    box = tuple(check_float(v, f"{where}[{i}]") for i, v in enumerate(value))
    if box[2] < box[0] or box[3] < box[1]:
        raise ProtocolError(f"{where}: {list(box)} is not a box (x1 < x0 or y1 < y0)")
    return box


def check_shape(value: Any, where: str, limits: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != len(limits):
        raise ProtocolError(f"{where}: expected a shape of {len(limits)} integers")
    return tuple(check_int(v, f"{where}[{i}]", lo, hi) for i, (v, (lo, hi)) in enumerate(zip(value, limits)))


WINDOW_SHAPE = ((1, MAX_WINDOW_FRAMES), (1, MAX_IMAGE_SIDE), (1, MAX_IMAGE_SIDE), (3, 3))
IMAGE_SHAPE = ((1, MAX_IMAGE_SIDE), (1, MAX_IMAGE_SIDE), (3, 3))


def array_view(buf: memoryview, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    """A read-only view of ``buf`` as ``shape``; its size must match exactly."""
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_ARRAY_BYTES:
        raise ProtocolError(f"{where}: declared {expected} bytes, at most {MAX_ARRAY_BYTES} allowed")
    if buf.nbytes != expected:
        raise ProtocolError(f"{where}: frame has {buf.nbytes} bytes, shape {list(shape)} needs {expected}")
    array = np.frombuffer(buf, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return array


def outgoing(array: Any, dtype: np.dtype, ndim: int, where: str) -> np.ndarray:
    """The array as it goes on the wire: C-contiguous ``dtype`` (no copy if it already is)."""
    if not isinstance(array, np.ndarray) or array.ndim != ndim:
        raise ProtocolError(f"{where}: expected a {ndim}-d numpy array")
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ProtocolError(f"{where}: expected dtype {dtype.name}, got {array.dtype.name}")
    return np.ascontiguousarray(array, dtype=dtype)


def expect_frames(bufs: list[memoryview], n: int) -> None:
    if len(bufs) != n:
        raise ProtocolError(f"expected {n} array frame(s) after the header, got {len(bufs)}")


class MalformedLog:
    """Counts what a stage dropped (malformed messages by default); one log line per ``interval_s`` at most."""

    def __init__(self, where: str, interval_s: float = 10.0, what: str = "malformed messages") -> None:
        self.where, self.interval_s, self.what, self.count, self._last = where, interval_s, what, 0, -math.inf

    def saw(self, err: Exception | str) -> None:
        self.count += 1
        if time.monotonic() - self._last >= self.interval_s:
            logger.warning(f"{self.where}: dropping {self.what} ({self.count} so far; last: {err})")
            self._last = time.monotonic()
