"""Everything that travels between processes, and the one encode/decode pair for it.

A message is a ZeroMQ multipart message: frame 0 is a small UTF-8 JSON header
``{"v": 1, "type": ..., fields...}``; every following frame is the raw bytes of
one array (uint8 images, float32 probabilities), sent without copying. Nothing
is ever pickled. :func:`decode` trusts nothing: every field is type- and
range-checked and every size is bounded before it is used, so a hostile or
broken peer costs one :class:`~streamer.errors.ProtocolError`, never a crash
or a large allocation.

Usage::

    sock.send_multipart(encode(msg), copy=False)
    msg = decode(sock.recv_multipart(copy=False))  # arrays are read-only views
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from streamer.errors import ProtocolError
from streamer.transport.framestore import FrameRef

from streamer.transport.wire import (  # noqa: F401  (the bounds are part of this module's interface)
    F32, IMAGE_SHAPE, check_box, MAX_ARRAY_BYTES, MAX_BATCH, MAX_CLASSES, MAX_DETAIL, MAX_HEADER_BYTES, MAX_IMAGE_SIDE,
    MAX_INDEX, MAX_LABELS, MAX_LINE_FIELDS, MAX_NAME, MAX_PARTS, MAX_SAMPLES, MAX_TIMINGS, MAX_TOP,
    MAX_WINDOW_FRAMES, U8, WINDOW_SHAPE, Fields, MalformedLog, array_view, check_float, check_int, check_shape, check_text,
    expect_frames, outgoing,
)

VERSION = 1


from streamer.transport.message_types import (  # noqa: F401  (the message types are part of this module's interface)
    Batch, Credit, DisplayFrame, Heartbeat, LogLine, Message, Result, ResultBatch, Stats, Status, Window, WorkRequest,
)


# ---------------------------------------------------------------------------
# Per-type conversion: message → (header fields, arrays) and back
# ---------------------------------------------------------------------------


def _window_header(w: Window) -> tuple[dict, np.ndarray | None]:
    if (w.frames is None) == (w.store is None):
        raise ProtocolError("window: needs its frames or a frame store reference, not both or neither")
    frames = None if w.frames is None else outgoing(w.frames, U8, 4, "window.frames")
    head = {
        "stream": w.stream,
        "seq": _ascheck_int(w.seq),
        "frame_indices": [_ascheck_int(i) for i in w.frame_indices],
        "frame_ts": [float(t) for t in w.frame_ts],
        "shape": list(frames.shape if frames is not None else w.store.shape),
        "sent_ts": float(w.sent_ts),
    }
    if w.store is not None:
        head["store"] = {"name": w.store.name, "serials": [_ascheck_int(s) for s in w.store.serials]}
    if w.views != 1:
        head["views"] = _ascheck_int(w.views)
    return {**head, **_place_header(w.track, w.box)}, frames


MAX_VIEWS = 8  # crops of one window's frames
MAX_TRACKS = 256  # tracked actors listed in one display frame


def _place_header(track: int | None, box) -> dict:
    """A tracked actor's id and box, when the message has one."""
    return {} if track is None else {"track": _ascheck_int(track), "box": [float(v) for v in box]}


def _place_meta(f: Fields, where: str) -> dict:
    if not f.has("track"):
        return {}
    return {"track": f.integer("track", 0, MAX_INDEX), "box": check_box(f.raw("box"), f"{where}.box")}


def _window_meta(obj: Any, where: str) -> tuple[dict, tuple[int, ...]]:
    """Checked window fields (all but frames) and the declared frames shape; ``meta["store"]`` may be set."""
    f = Fields(obj, where)
    shape = check_shape(f.raw("shape"), f"{where}.shape", WINDOW_SHAPE)
    indices = f.items("frame_indices", MAX_WINDOW_FRAMES)
    stamps = f.items("frame_ts", MAX_WINDOW_FRAMES)
    views = f.integer("views", 2, MAX_VIEWS) if f.has("views") else 1
    if len(indices) * views != shape[0] or len(stamps) != len(indices):
        raise ProtocolError(f"{where}: {shape[0]} frames but {len(indices)} indices, {len(stamps)} timestamps "
                            f"and {views} view(s)")
    indices = tuple(check_int(v, f"{where}.frame_indices[{i}]", 0, MAX_INDEX) for i, v in enumerate(indices))
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ProtocolError(f"{where}.frame_indices: not strictly increasing")
    meta = {
        "stream": f.text("stream"),
        "seq": f.integer("seq", 0, MAX_INDEX),
        "frame_indices": indices,
        "frame_ts": tuple(check_float(v, f"{where}.frame_ts[{i}]") for i, v in enumerate(stamps)),
        "sent_ts": f.number("sent_ts"),
        "views": views,
        **_place_meta(f, where),
    }
    if "store" in obj:
        s = Fields(f.raw("store"), f"{where}.store")
        serials = s.items("serials", MAX_WINDOW_FRAMES)
        if len(serials) != shape[0]:
            raise ProtocolError(f"{where}.store: {shape[0]} frames but {len(serials)} serials")
        meta["store"] = FrameRef(s.text("name", 80),
                                 tuple(check_int(v, f"{where}.store.serials[{i}]", 0, MAX_INDEX)
                                       for i, v in enumerate(serials)), shape)
        s.done()
    f.done()
    return meta, shape


def _result_header(r: Result) -> tuple[dict, np.ndarray]:
    probs = outgoing(r.probs, F32, 1, "result.probs")
    head = {
        "stream": r.stream,
        "seq": _ascheck_int(r.seq),
        "frame_index": _ascheck_int(r.frame_index),
        "frame_ts": float(r.frame_ts),
        "classes": int(probs.shape[0]),
        "top": [[label, float(p)] for label, p in r.top],
        "worker": r.worker,
        "timings": {k: float(v) for k, v in r.timings.items()},
        **_place_header(r.track, r.box),
    }
    return head, probs


def _result_meta(obj: Any, where: str) -> tuple[dict, int]:
    f = Fields(obj, where)
    classes = f.integer("classes", 1, MAX_CLASSES)
    top = []
    for i, pair in enumerate(f.items("top", min(MAX_TOP, classes))):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ProtocolError(f"{where}.top[{i}]: expected [label, probability]")
        top.append((check_text(pair[0], f"{where}.top[{i}][0]", MAX_NAME), check_float(pair[1], f"{where}.top[{i}][1]")))
    timings = {}
    for key, value in f.mapping("timings", MAX_TIMINGS).items():
        timings[check_text(key, f"{where}.timings key", MAX_NAME)] = check_float(value, f"{where}.timings[{key!r}]")
    meta = {
        "stream": f.text("stream"),
        "seq": f.integer("seq", 0, MAX_INDEX),
        "frame_index": f.integer("frame_index", 0, MAX_INDEX),
        "frame_ts": f.number("frame_ts"),
        "top": tuple(top),
        "worker": f.text("worker"),
        "timings": timings,
        **_place_meta(f, where),
    }
    f.done()
    return meta, classes


def _probs(buf: memoryview, classes: int, where: str) -> np.ndarray:
    probs = array_view(buf, (classes,), F32, where)
    if not np.isfinite(probs).all():
        raise ProtocolError(f"{where}: probabilities are not all finite")
    return probs


def _ascheck_int(value: Any) -> Any:
    """numpy integers as ints for JSON; anything else is left for the checks to refuse."""
    return int(value) if isinstance(value, np.integer) else value


def _encode_fields(msg: Message) -> tuple[dict, list[np.ndarray]]:
    """Header fields (without v/type) and array frames of one message."""
    if isinstance(msg, (Window, Batch)):  # arrays only for windows whose frames travel inline
        pairs = [_window_header(w) for w in (msg.windows if isinstance(msg, Batch) else (msg,))]
        arrays = [a for _, a in pairs if a is not None]
        return ({"windows": [h for h, _ in pairs]} if isinstance(msg, Batch) else pairs[0][0]), arrays
    if isinstance(msg, Result):
        head, probs = _result_header(msg)
        return head, [probs]
    if isinstance(msg, ResultBatch):
        pairs = [_result_header(r) for r in msg.results]
        return {"results": [h for h, _ in pairs]}, [a for _, a in pairs]
    if isinstance(msg, DisplayFrame):
        image = outgoing(msg.image, U8, 3, "display.image")
        head = {"stream": msg.stream, "index": _ascheck_int(msg.index), "ts": float(msg.ts), "shape": list(image.shape),
                "fps": float(msg.fps)}
        if msg.tracks:
            head["tracks"] = [[_ascheck_int(track), [float(v) for v in box]] for track, box in msg.tracks]
        return head, [image]
    if isinstance(msg, WorkRequest):
        return {"worker": msg.worker, "max_batch": _ascheck_int(msg.max_batch)}, []
    if isinstance(msg, Status):
        head = {"kind": msg.kind, "stream": msg.stream, "detail": msg.detail, "ts": float(msg.ts)}
        return ({**head, "track": _ascheck_int(msg.track)} if msg.track is not None else head), []
    if isinstance(msg, Credit):
        return {"stream": msg.stream, "n": _ascheck_int(msg.n)}, []
    if isinstance(msg, Heartbeat):
        return {"sender": msg.sender, "ts": float(msg.ts)}, []
    if isinstance(msg, LogLine):
        return {"line": msg.line}, []
    if isinstance(msg, Stats):
        samples = [[name, dict(labels), float(value)] for name, labels, value in msg.samples]
        return {"sender": msg.sender, "ts": float(msg.ts), "samples": samples}, []
    raise ProtocolError(f"cannot encode a {type(msg).__name__}: not a message type")


def _windows(metas: list[tuple[dict, tuple[int, ...]]], bufs: list[memoryview], where) -> tuple[Window, ...]:
    """Windows from checked fields; the array frames belong, in order, to those without a store reference."""
    expect_frames(bufs, sum("store" not in meta for meta, _ in metas))
    arrays = iter(bufs)
    return tuple(
        Window(frames=None if "store" in meta else array_view(next(arrays), shape, U8, f"{where(i)}.frames"), **meta)
        for i, (meta, shape) in enumerate(metas))


def _decode_window(h: dict, bufs: list[memoryview]) -> Window:
    return _windows([_window_meta(h, "window")], bufs, lambda i: "window")[0]


def _decode_batch(h: dict, bufs: list[memoryview]) -> Batch:
    f = Fields(h, "batch")
    items = f.items("windows", MAX_BATCH)
    f.done()
    metas = [_window_meta(obj, f"batch.windows[{i}]") for i, obj in enumerate(items)]
    return Batch(_windows(metas, bufs, lambda i: f"batch.windows[{i}]"))


def _decode_result(h: dict, bufs: list[memoryview]) -> Result:
    meta, classes = _result_meta(h, "result")
    expect_frames(bufs, 1)
    return Result(probs=_probs(bufs[0], classes, "result.probs"), **meta)


def _decode_result_batch(h: dict, bufs: list[memoryview]) -> ResultBatch:
    f = Fields(h, "result_batch")
    items = f.items("results", MAX_BATCH)
    f.done()
    metas = [_result_meta(obj, f"result_batch.results[{i}]") for i, obj in enumerate(items)]
    expect_frames(bufs, len(metas))
    return ResultBatch(tuple(
        Result(probs=_probs(buf, classes, f"result_batch.results[{i}].probs"), **meta)
        for i, ((meta, classes), buf) in enumerate(zip(metas, bufs))
    ))


def _decode_display(h: dict, bufs: list[memoryview]) -> DisplayFrame:
    f = Fields(h, "display")
    shape = check_shape(f.raw("shape"), "display.shape", IMAGE_SHAPE)
    stream, index, ts, fps = f.text("stream"), f.integer("index", 0, MAX_INDEX), f.number("ts"), f.number("fps")
    tracks = []
    for i, item in enumerate(f.items("tracks", MAX_TRACKS) if f.has("tracks") else ()):
        if not isinstance(item, list) or len(item) != 2:
            raise ProtocolError(f"display.tracks[{i}]: expected [track, box]")
        tracks.append((check_int(item[0], f"display.tracks[{i}][0]", 0, MAX_INDEX),
                       check_box(item[1], f"display.tracks[{i}][1]")))
    f.done()
    expect_frames(bufs, 1)
    if not 0 <= fps <= 1000:
        raise ProtocolError(f"display.fps: {fps} is not a frame rate")
    return DisplayFrame(stream, index, ts, array_view(bufs[0], shape, U8, "display.image"), fps, tuple(tracks))


def _decode_work_request(h: dict, bufs: list[memoryview]) -> WorkRequest:
    f = Fields(h, "work_request")
    msg = WorkRequest(f.text("worker"), f.integer("max_batch", 1, MAX_BATCH))
    f.done()
    expect_frames(bufs, 0)
    return msg


def _decode_status(h: dict, bufs: list[memoryview]) -> Status:
    f = Fields(h, "status")
    msg = Status(f.text("kind"), f.text("stream", empty=True), f.text("detail", MAX_DETAIL, empty=True), f.number("ts"),
                 f.integer("track", 0, MAX_INDEX) if f.has("track") else None)
    f.done()
    expect_frames(bufs, 0)
    return msg


def _decode_credit(h: dict, bufs: list[memoryview]) -> Credit:
    f = Fields(h, "credit")
    msg = Credit(f.text("stream"), f.integer("n", 1, MAX_BATCH))
    f.done()
    expect_frames(bufs, 0)
    return msg


def _decode_heartbeat(h: dict, bufs: list[memoryview]) -> Heartbeat:
    f = Fields(h, "heartbeat")
    msg = Heartbeat(f.text("sender"), f.number("ts"))
    f.done()
    expect_frames(bufs, 0)
    return msg


def _json_value(value: Any, where: str, depth: int = 0) -> None:
    """A value inside a LogLine: bounded text, finite numbers, small lists and objects, nested at most 4 deep."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        check_int(value, where, -MAX_INDEX, MAX_INDEX)
    elif isinstance(value, float):
        check_float(value, where)
    elif isinstance(value, str):
        check_text(value, where, MAX_DETAIL, empty=True)
    elif isinstance(value, (list, dict)) and depth < 4:
        if len(value) > (MAX_TOP if isinstance(value, list) else MAX_LINE_FIELDS):
            raise ProtocolError(f"{where}: {len(value)} items, too many")
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            if isinstance(key, str):
                check_text(key, f"{where} key", MAX_NAME)
            _json_value(item, f"{where}[{key!r}]", depth + 1)
    else:
        raise ProtocolError(f"{where}: a {type(value).__name__} (or nested too deep)")


def _decode_log_line(h: dict, bufs: list[memoryview]) -> LogLine:
    f = Fields(h, "log_line")
    line = f.mapping("line", MAX_LINE_FIELDS)
    f.done()
    check_text(line.get("kind"), "log_line.line.kind", MAX_NAME)
    _json_value(line, "log_line.line")
    expect_frames(bufs, 0)
    return LogLine(line)


def _sample(obj: Any, where: str) -> tuple[str, dict[str, str], float]:
    if not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[1], dict) or len(obj[1]) > MAX_LABELS:
        raise ProtocolError(f"{where}: expected [name, {{at most {MAX_LABELS} labels}}, value]")
    labels = {check_text(k, f"{where} label name", MAX_NAME): check_text(v, f"{where} label {k!r}", MAX_NAME, empty=True)
              for k, v in obj[1].items()}
    return check_text(obj[0], f"{where} name", MAX_NAME), labels, check_float(obj[2], f"{where} value")


def _decode_stats(h: dict, bufs: list[memoryview]) -> Stats:
    f = Fields(h, "stats")
    sender, ts = f.text("sender"), f.number("ts")
    samples = tuple(_sample(obj, f"stats.samples[{i}]") for i, obj in enumerate(f.items("samples", MAX_SAMPLES)))
    f.done()
    expect_frames(bufs, 0)
    return Stats(sender, ts, samples)




_TYPES: dict[type, str] = {
    Window: "window",
    WorkRequest: "work_request",
    Batch: "batch",
    Result: "result",
    ResultBatch: "result_batch",
    DisplayFrame: "display",
    Status: "status",
    Credit: "credit",
    Heartbeat: "heartbeat",
    LogLine: "log_line",
    Stats: "stats",
}
_DECODERS: dict[str, Callable[[dict, list[memoryview]], Message]] = {
    "window": _decode_window,
    "work_request": _decode_work_request,
    "batch": _decode_batch,
    "result": _decode_result,
    "result_batch": _decode_result_batch,
    "display": _decode_display,
    "status": _decode_status,
    "credit": _decode_credit,
    "heartbeat": _decode_heartbeat,
    "log_line": _decode_log_line,
    "stats": _decode_stats,
}


# ---------------------------------------------------------------------------
# The pair
# ---------------------------------------------------------------------------


def encode(msg: Message) -> list[bytes | np.ndarray]:
    """Multipart frames for ``msg``: JSON header, then its arrays (not copied).

    The message is checked as :func:`decode` would check it, so a bad message
    fails at its sender with a :class:`ProtocolError`.
    """
    try:
        fields, arrays = _encode_fields(msg)
        kind = _TYPES[type(msg)]
        _DECODERS[kind](dict(fields), [memoryview(a).cast("B") for a in arrays])  # the receiver's checks
        head = {"v": VERSION, "type": kind, **fields}
        header = json.dumps(head, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{type(msg).__name__} header is {len(header)} bytes, at most {MAX_HEADER_BYTES} allowed")
    return [header, *arrays]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _buffer(part: Any, i: int) -> memoryview:
    try:
        view = part.buffer if isinstance(part, zmq.Frame) else memoryview(part)
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    except (TypeError, ValueError, AttributeError):
        raise ProtocolError(f"frame {i} is not a contiguous byte buffer") from None


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
    try:
        head = json.loads(bytes(bufs[0]).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 and bad JSON are both ValueErrors
        raise ProtocolError(f"header is not JSON: {str(exc)[:80]}") from None
    if not isinstance(head, dict):
        raise ProtocolError(f"header is a JSON {type(head).__name__}, expected an object")
    version = head.pop("v", None)
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"protocol version {str(version)[:20]!r}, expected {VERSION}")
    kind = head.pop("type", None)
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    try:
        return decoder(head, bufs[1:])
    except OverflowError:  # an integer too large for a float
        raise ProtocolError(f"{kind}: a number is out of range") from None


def recorder_topic() -> bytes:
    """What the clips stage subscribes to: every stream's DisplayFrames, under a prefix of its own so that a
    capture tells the recorder (which needs every frame) from viewers (counted as display frames)."""
    head = json.dumps({"v": VERSION, "type": "display"}, allow_nan=False, separators=(",", ":"))
    return head[:-1].encode("utf-8") + b","


def display_topic(stream: str) -> bytes:
    """The first bytes of every encoded DisplayFrame of ``stream``: what a SUB socket subscribes to in order
    to receive that stream's frames only (a capture makes display frames only while someone subscribes)."""
    head = json.dumps({"v": VERSION, "type": "display", "stream": stream}, allow_nan=False, separators=(",", ":"))
    return head[:-1].encode("utf-8") + b","


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
