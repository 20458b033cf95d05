"""Everything that travels between processes, and the one encode/decode pair for it.

A message is a ZeroMQ multipart message: frame 0 is a small UTF-8 JSON header
``{"type": ..., fields..., "v": 2}`` written and read by msgspec against the Structs of
:mod:`streamer.transport.message_types`; every following frame is the raw bytes of one
array (uint8 images, float32 probabilities), sent without copying. Nothing is ever
pickled. :func:`decode` trusts nothing: msgspec checks every field's type and bounds
while it parses, the codec then checks the rules that span fields and every array's
size against its declared shape, so a hostile or broken peer costs one
:class:`~streamer.errors.ProtocolError`, never a crash or a large allocation.

Usage::

    sock.send_multipart(encode(msg), copy=False)
    msg = decode(sock.recv_multipart(copy=False))  # arrays are read-only views
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Sequence

import msgspec
import numpy as np
import zmq
from loguru import logger

from streamer.errors import ProtocolError
from streamer.transport.message_types import FrameRef
from streamer.transport.message_types import (
    MAX_ARRAY_BYTES, MAX_BATCH, MAX_CLASSES, MAX_DETAIL, MAX_HEADER_BYTES, MAX_IMAGE_SIDE, MAX_INDEX, MAX_LABELS,
    MAX_LINE_FIELDS, MAX_NAME, MAX_PARTS, MAX_SAMPLES, MAX_TIMINGS, MAX_TOP, MAX_TRACKS, MAX_VIEWS, MAX_WINDOW_FRAMES,
    MAX_ADAPTER_WEIGHTS, MAX_EMBEDDING, MAX_TAUGHT, PRINTABLE, VERSION, AdapterUpdate, Batch, Classes, Credit, DisplayFrame, FramesFound, FramesShape, FramesWanted, Heartbeat,
    EmbeddingShape, ImageShape, Leaving, LogLine, Message, Result, ResultBatch, Stats, Status, Window, WorkRequest,
)
from workers.adapter import neighbour_problem

__all__ = [  # the message types and bounds are part of this module's interface
    "MAX_ARRAY_BYTES", "MAX_BATCH", "MAX_CLASSES", "MAX_DETAIL", "MAX_HEADER_BYTES", "MAX_IMAGE_SIDE", "MAX_INDEX",
    "MAX_LABELS", "MAX_LINE_FIELDS", "MAX_NAME", "MAX_PARTS", "MAX_SAMPLES", "MAX_TIMINGS", "MAX_TOP", "MAX_TRACKS",
    "MAX_VIEWS", "MAX_WINDOW_FRAMES", "MAX_EMBEDDING", "MAX_TAUGHT", "VERSION", "AdapterUpdate", "Batch", "Credit", "DisplayFrame", "FramesFound", "FramesWanted",
    "Heartbeat", "Leaving", "LogLine", "Message",
    "Result", "ResultBatch", "Stats", "Status", "Window", "WorkRequest", "MalformedLog", "ProtocolError", "decode",
    "display_topic", "drain", "encode", "recorder_topic", "recv", "send",
]

U8 = np.dtype("|u1")
F32 = np.dtype("<f4")
F16 = np.dtype("<f2")
_TYPE_NAMES = frozenset(cls.__struct_config__.tag for cls in Message.__args__)


class _Envelope(msgspec.Struct):
    """What is read before the rest (other fields skipped): a header of another version is not parsed further."""

    v: Any = None
    type: Any = None


def _one_line(text: object, limit: int = 200) -> str:
    text = str(text).replace(f"matching regex {PRINTABLE!r}", "without control characters")
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


# ---------------------------------------------------------------------------
# Arrays: out as they are, in as read-only views of exactly their declared size
# ---------------------------------------------------------------------------


def _outgoing(array: np.ndarray) -> np.ndarray:
    """The array as it goes on the wire: C-contiguous (no copy if it already is), uint8, float32 or float16."""
    if array.dtype not in (U8, F32, F16):
        raise TypeError(f"arrays travel as uint8, float32 or float16, not {array.dtype}")
    return np.ascontiguousarray(array)


def _wire_shape(array: np.ndarray) -> int | list[int]:
    """What an array field holds in the header: a vector's length (float32 probabilities), else the shape (uint8)."""
    return array.shape[0] if array.ndim == 1 else list(array.shape)


def _shape(declared: Any, shape_type: Any) -> tuple[int, ...]:
    """``declared`` checked as ``shape_type`` (FramesShape, ImageShape or Classes); else ValueError."""
    try:
        shape = msgspec.convert(declared, shape_type)
    except msgspec.ValidationError as err:
        raise ValueError(str(err)) from None
    return (shape,) if isinstance(shape, int) else msgspec.structs.astuple(shape)


class _Arrays:
    """The array frames after one header, handed out in order as read-only views, each checked against the shape
    its field declares: the size must match exactly, before anything is allocated."""

    def __init__(self, bufs: list[memoryview]) -> None:
        self.bufs, self.taken = bufs, 0

    def take(self, declared: Any) -> np.ndarray:
        """The next frame as the array that ``declared`` (an array field's value) describes; else ValueError."""
        if type(declared) is int:
            shape_type, dtype = Classes, F32
        elif isinstance(declared, list) and len(declared) in (3, 4):
            shape_type, dtype = (ImageShape if len(declared) == 3 else FramesShape), U8
        elif isinstance(declared, list) and len(declared) == 2:
            shape_type, dtype = EmbeddingShape, F16
        else:
            raise ValueError("expected a class count, [views, width], [H, W, 3] or [T, H, W, 3]")
        shape = _shape(declared, shape_type)
        expected = math.prod(shape) * dtype.itemsize
        if expected > MAX_ARRAY_BYTES:
            raise ValueError(f"declares {expected} bytes, at most {MAX_ARRAY_BYTES} allowed")
        if self.taken == len(self.bufs):
            raise ValueError(f"no array frame left for it ({len(self.bufs)} after the header)")
        buf = self.bufs[self.taken]
        self.taken += 1
        if buf.nbytes != expected:
            raise ValueError(f"frame has {buf.nbytes} bytes, shape {list(shape)} needs {expected}")
        array = np.frombuffer(buf, dtype=dtype).reshape(shape)
        array.flags.writeable = False
        return array

    def done(self) -> None:
        if self.taken != len(self.bufs):
            raise ProtocolError(f"expected {self.taken} array frame(s) after the header, got {len(self.bufs)}")


_decoding = threading.local()  # .arrays: the frames of the message this thread is decoding, for the hook below


def _array_field(kind: type, declared: Any) -> np.ndarray:
    """msgspec's hook for an array field (typed np.ndarray): msgspec adds the field's path to its ValueErrors."""
    return _decoding.arrays.take(declared)


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_DECODER = msgspec.json.Decoder(Message, dec_hook=_array_field)


# ---------------------------------------------------------------------------
# Rules that span fields (msgspec has checked each field on its own)
# ---------------------------------------------------------------------------


def _box(box: tuple[float, ...], where: str) -> None:
    if box[2] < box[0] or box[3] < box[1]:
        raise ProtocolError(f"{where}: {list(box)} is not a box (x1 < x0 or y1 < y0)")


def _place(track: int | None, box: tuple[float, ...] | None, where: str) -> None:
    if (track is None) != (box is None):
        raise ProtocolError(f"{where}: a track needs its box and a box its track")
    if box is not None:
        _box(box, f"{where}.box")


def _array(array: np.ndarray, ndim: int, where: str) -> None:
    if array.ndim != ndim:
        raise ProtocolError(f"{where}: declares a {array.ndim}-d array, expected {ndim}-d")


def _frame_ref(ref: FrameRef, where: str) -> int:
    """The frame count of a store reference whose shape and serials agree."""
    try:
        count = _shape(list(ref.shape), FramesShape)[0]
    except ValueError as err:
        raise ProtocolError(f"{where}.shape: {_one_line(err)}") from None
    if len(ref.serials) != count:
        raise ProtocolError(f"{where}: {count} frames but {len(ref.serials)} serials")
    return count


def _window(w: Window, where: str) -> None:
    if (w.frames is None) == (w.store is None):
        raise ProtocolError(f"{where}: needs its frames or a frame store reference, not both or neither")
    if w.store is None:
        _array(w.frames, 4, f"{where}.shape")
        count = w.frames.shape[0]
    else:
        count = _frame_ref(w.store, f"{where}.store")
    if len(w.frame_indices) * w.views != count or len(w.frame_ts) != len(w.frame_indices):
        raise ProtocolError(f"{where}: {count} frames but {len(w.frame_indices)} indices, {len(w.frame_ts)} "
                            f"timestamps and {w.views} view(s)")
    if any(b <= a for a, b in zip(w.frame_indices, w.frame_indices[1:])):
        raise ProtocolError(f"{where}.frame_indices: not strictly increasing")
    _place(w.track, w.box, where)


def _result(r: Result, where: str) -> None:
    _array(r.probs, 1, f"{where}.classes")
    if not np.isfinite(r.probs).all():
        raise ProtocolError(f"{where}.probs: probabilities are not all finite")
    if len(r.top) > r.probs.size:
        raise ProtocolError(f"{where}.top: {len(r.top)} pairs for {r.probs.size} classes")
    _place(r.track, r.box, where)
    if r.embedding is not None:
        _array(r.embedding, 2, f"{where}.embedding")
        if r.embedding.dtype != F16 or not np.isfinite(r.embedding).all():
            raise ProtocolError(f"{where}.embedding: not finite float16 values")
        if len(r.embedding) > MAX_VIEWS:
            raise ProtocolError(f"{where}.embedding: {len(r.embedding)} views, at most {MAX_VIEWS}")


def _adapter_update(msg: AdapterUpdate) -> None:
    if msg.weights is None:
        if msg.labels or msg.key:
            raise ProtocolError("adapter_update: labels without their weights")
        return
    _array(msg.weights, 1, "adapter_update.classes")
    if msg.weights.size != len(msg.labels) * (msg.width + 1) or msg.weights.size > MAX_ADAPTER_WEIGHTS:
        raise ProtocolError(f"adapter_update: {msg.weights.size} weights for {len(msg.labels)} labels of width "
                            f"{msg.width} (needs labels × (width + 1))")
    if not np.isfinite(msg.weights).all():
        raise ProtocolError("adapter_update.weights: not all finite")
    if len(set(msg.labels)) != len(msg.labels) or (msg.key == "") != (not msg.labels):
        raise ProtocolError("adapter_update: labels twice, or a key without labels (or labels without a key)")
    if msg.neighbours is not None:
        _array(msg.neighbours, 2, "adapter_update.neighbours")
    problem = neighbour_problem(msg.neighbours, msg.neighbour_counts, len(msg.labels), msg.width)
    if problem:
        raise ProtocolError(f"adapter_update: {problem}")


def _check(msg: Message) -> None:
    """The rules of ``msg`` that span fields (msgspec has checked each field on its own)."""
    if isinstance(msg, Window):
        _window(msg, "window")
    elif isinstance(msg, Batch):
        for i, window in enumerate(msg.windows):
            _window(window, f"batch.windows[{i}]")
    elif isinstance(msg, Result):
        _result(msg, "result")
    elif isinstance(msg, ResultBatch):
        for i, result in enumerate(msg.results):
            _result(result, f"result_batch.results[{i}]")
    elif isinstance(msg, AdapterUpdate):
        _adapter_update(msg)
    elif isinstance(msg, FramesWanted):
        _frame_ref(msg.ref, "frames_wanted.ref")
    elif isinstance(msg, FramesFound) and msg.frames is not None:
        _array(msg.frames, 4, "frames_found.shape")
    elif isinstance(msg, DisplayFrame):
        _array(msg.image, 3, "display.shape")
        for i, (_, box) in enumerate(msg.tracks):
            _box(box, f"display.tracks[{i}][1]")
    elif isinstance(msg, LogLine):
        kind = msg.line.get("kind")
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_NAME:
            raise ProtocolError(f"log_line.line.kind: a log line needs a kind of 1 to {MAX_NAME} characters")


def _all_finite(value: Any) -> bool:
    """No NaN or infinity in a log line's value: msgspec writes them as null, which a line may hold."""
    if isinstance(value, float):
        return math.isfinite(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return all(_all_finite(item) for item in items)


# ---------------------------------------------------------------------------
# The pair
# ---------------------------------------------------------------------------


def encode(msg: Message) -> list[bytes | np.ndarray]:
    """Multipart frames for ``msg``: JSON header, then its arrays (not copied).

    The message is checked as :func:`decode` would check it, so a bad message fails at its
    sender with a :class:`ProtocolError` (msgspec writes NaN and infinity as null: refused too).
    """
    if not isinstance(msg, Message.__args__):
        raise ProtocolError(f"cannot encode a {type(msg).__name__}: not a message type")
    arrays: list[np.ndarray] = []

    def wire_form(value: Any) -> Any:
        """An array goes out as its shape (its bytes as a frame of their own), a numpy number as a number."""
        if isinstance(value, np.ndarray):
            arrays.append(_outgoing(value))
            return _wire_shape(value)
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        raise TypeError(f"a {type(value).__name__} has no wire form")

    try:
        if isinstance(msg, LogLine) and not _all_finite(msg.line):
            raise ValueError("its line holds NaN or infinity")
        header = msgspec.json.encode(msg, enc_hook=wire_form)
        decode([header, *(memoryview(a).cast("B") for a in arrays)])  # the receiver's checks
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError, ProtocolError) as exc:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {_one_line(exc)}") from None
    return [header, *arrays]


def _buffer(part: Any, i: int) -> memoryview:
    try:
        view = part.buffer if isinstance(part, zmq.Frame) else memoryview(part)
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    except (TypeError, ValueError, AttributeError):
        raise ProtocolError(f"frame {i} is not a contiguous byte buffer") from None


def _message_type(header: memoryview) -> str:
    """The header's type name, once its version is ours."""
    try:
        envelope = _ENVELOPE.decode(header)
    except (msgspec.DecodeError, RecursionError) as err:  # DecodeError: bad JSON, bad UTF-8, not an object
        raise ProtocolError(f"header is not a JSON object: {_one_line(err, 80)}") from None
    if type(envelope.v) is not int or envelope.v != VERSION:
        raise ProtocolError(f"protocol version {_one_line(repr(envelope.v), 20)}, expected {VERSION}")
    if not isinstance(envelope.type, str) or envelope.type not in _TYPE_NAMES:
        raise ProtocolError(f"unknown message type {_one_line(repr(envelope.type), 40)}")
    return envelope.type


def decode(parts: Sequence[bytes | zmq.Frame | memoryview]) -> Message:
    """The message in ``parts``; raises :class:`ProtocolError` (and nothing else) if malformed.

    Arrays in the result are read-only views on the received buffers.
    """
    if not isinstance(parts, (list, tuple)) or not 1 <= len(parts) <= MAX_PARTS:
        count = len(parts) if isinstance(parts, (list, tuple)) else "no"
        raise ProtocolError(f"{count} frames; a message has 1 to {MAX_PARTS}")
    bufs = [_buffer(part, i) for i, part in enumerate(parts)]
    if bufs[0].nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {bufs[0].nbytes} bytes, at most {MAX_HEADER_BYTES} allowed")
    kind = _message_type(bufs[0])
    _decoding.arrays = arrays = _Arrays(bufs[1:])
    try:
        msg = _DECODER.decode(bufs[0])
    except (msgspec.DecodeError, RecursionError) as err:  # ValidationError is a DecodeError: it names the field
        raise ProtocolError(f"{kind}: {_one_line(err)}") from None
    finally:
        _decoding.arrays = None
    arrays.done()
    _check(msg)
    return msg


def recorder_topic() -> bytes:
    """What the clips stage subscribes to: every stream's DisplayFrames, under a prefix of its own so that a
    capture tells the recorder (which needs every frame) from viewers (counted as display frames)."""
    return b'{"type":' + msgspec.json.encode(DisplayFrame.__struct_config__.tag) + b","


def display_topic(stream: str) -> bytes:
    """The first bytes of every encoded DisplayFrame of ``stream`` (msgspec writes the tag, then the fields in
    order, ``stream`` first): what a SUB socket subscribes to in order to receive that stream's frames only
    (a capture makes display frames only while someone subscribes)."""
    return recorder_topic() + b'"stream":' + msgspec.json.encode(stream) + b","


def drain(socket: zmq.Socket, malformed: MalformedLog):
    """Every message waiting on ``socket`` now, decoded; a malformed one is counted (and logged) and skipped."""
    while True:
        try:
            parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            yield decode(parts)
        except ProtocolError as err:
            malformed.saw(err)


def send(socket: zmq.Socket, msg: Message, flags: int = 0) -> None:
    """Send ``msg`` on ``socket`` without copying its arrays."""
    socket.send_multipart(encode(msg), flags=flags, copy=False)


def recv(socket: zmq.Socket, flags: int = 0) -> Message:
    """Receive and decode one message; raises :class:`ProtocolError` if it is malformed."""
    return decode(socket.recv_multipart(flags=flags, copy=False))


class MalformedLog:
    """Counts what a stage dropped (malformed messages by default); one log line per ``interval_s`` at most."""

    def __init__(self, where: str, interval_s: float = 10.0, what: str = "malformed messages") -> None:
        self.where, self.interval_s, self.what, self.count, self._last = where, interval_s, what, 0, -math.inf

    def saw(self, err: Exception | str) -> None:
        self.count += 1
        if time.monotonic() - self._last >= self.interval_s:
            logger.warning(f"{self.where}: dropping {self.what} ({self.count} so far; last: {err})")
            self._last = time.monotonic()
