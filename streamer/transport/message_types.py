"""The messages that travel between processes, as frozen msgspec Structs, and the wire's bounds.

The Structs are the schema: every field's type and ``Meta`` bounds are what :func:`~streamer.transport.messages.decode`
enforces (msgspec checks them while it parses), ``forbid_unknown_fields`` refuses anything else. Import them
from :mod:`streamer.transport.messages`, which re-exports them next to the codec.

An array field (``Window.frames``, ``Result.probs``, ``Result.embedding``, ``DisplayFrame.image``,
``AdapterUpdate.weights``) holds a numpy array here and its shape on the wire (under the name ``shape``, or
``classes`` for probabilities and weights; an embedding's ``[views, width]`` says float16); its bytes travel as
the next ZeroMQ frame. Rules that span fields (indices increasing, shapes against frame counts) live in the codec.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np
from msgspec import Meta

from workers.adapter import MAX_NEIGHBOURS

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
MAX_VIEWS = 8  # crops of one window's frames
MAX_TRACKS = 256  # tracked actors listed in one display frame
MAX_STORE_NAME = 80  # characters of a frame store's file name
MAX_EMBEDDING = 8192  # width of a window's embedding (the class token: 768 for base-size TimeSformer)
MAX_TAUGHT = 256  # taught labels in one adapter
MAX_ADAPTER_WEIGHTS = MAX_TAUGHT * (MAX_EMBEDDING + 1)
MAX_NEIGHBOUR_ROWS = (MAX_TAUGHT + 1) * MAX_NEIGHBOURS  # an adapter's neighbours: so many a class, at most

VERSION = 2  # 2: msgspec's layout (nested messages keep their type, a store reference its shape)

# No control characters (a log line stays one line), no line or paragraph separators, no lone surrogates (they
# could not be written out as UTF-8). Unlike str.isprintable(), format and private-use characters and non-ASCII
# spaces pass: none of them breaks a line or a write, and a regex that refused them would cost 0.5 µs a character.
PRINTABLE = "^[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]*$"


def _text(max_length: int, min_length: int = 1) -> Any:
    return Annotated[str, Meta(min_length=min_length, max_length=max_length, pattern=PRINTABLE)]


Name = _text(MAX_NAME)  # a stream, worker, label, kind or timing name
MaybeName = _text(MAX_NAME, min_length=0)
Detail = _text(MAX_DETAIL, min_length=0)
Index = Annotated[int, Meta(ge=0, le=MAX_INDEX)]
Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
Box = tuple[Finite, Finite, Finite, Finite]  # [x0, y0, x1, y1] in pixels; x0 ≤ x1, y0 ≤ y1 (checked by the codec)
Count = Annotated[int, Meta(ge=1, le=MAX_BATCH)]  # n of a request or credit
Side = Annotated[int, Meta(ge=1, le=MAX_IMAGE_SIDE)]
Classes = Annotated[int, Meta(ge=1, le=MAX_CLASSES)]  # the length of a Result's probabilities


# What an array field declares (the codec checks it with msgspec.convert, which caches a Struct's checks and
# rebuilds a bare tuple type's on every call: 0.2 µs against 5).
class EmbeddingShape(msgspec.Struct, frozen=True, array_like=True):
    """Embedding rows: [rows, width] (float16). A window's embedding has a row per flip view (the window, then
    its mirror images: at most MAX_VIEWS, checked by the codec); an adapter's neighbours a row each."""

    views: Annotated[int, Meta(ge=1, le=MAX_NEIGHBOUR_ROWS)]
    width: Annotated[int, Meta(ge=1, le=MAX_EMBEDDING)]


class FramesShape(msgspec.Struct, frozen=True, array_like=True):
    """A window's frames: [T, H, W, 3] (uint8 RGB)."""

    count: Annotated[int, Meta(ge=1, le=MAX_WINDOW_FRAMES)]
    height: Side
    width: Side
    channels: Literal[3]


class ImageShape(msgspec.Struct, frozen=True, array_like=True):
    """A display frame's image: [H, W, 3] (uint8 BGR)."""

    height: Side
    width: Side
    channels: Literal[3]


def _json_value(depth: int) -> Any:
    """A value inside a LogLine: bounded text, finite numbers, small lists and objects ``depth`` levels deep."""
    scalar = Union[None, bool, Annotated[int, Meta(ge=-MAX_INDEX, le=MAX_INDEX)], Finite, Detail]
    if depth == 0:
        return scalar
    inner = _json_value(depth - 1)
    return Union[scalar, Annotated[list[inner], Meta(max_length=MAX_TOP)],
                 Annotated[dict[Name, inner], Meta(max_length=MAX_LINE_FIELDS)]]


LineValue = _json_value(3)  # a LogLine's line is an object of these: four levels in all
StoreName = _text(MAX_STORE_NAME)


class FrameRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Where a window's frames are: a store file name, one serial number per frame, the (T, H, W, 3) shape
    (see :mod:`streamer.transport.framestore`), and the capture's frame server when the worker is on another
    host (``tcp://HOST:PORT``, see :mod:`streamer.transport.frameserver`; "" when the store is on this one)."""

    name: StoreName
    serials: Annotated[tuple[Index, ...], Meta(max_length=MAX_WINDOW_FRAMES)]
    shape: tuple[int, int, int, int]  # checked as a FramesShape by the codec
    server: Annotated[str, Meta(max_length=MAX_NAME, pattern=r"^(tcp://[A-Za-z0-9.:\[\]_-]+:[0-9]{1,5})?$")] = ""


class _Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True,
               tag_field="type"):
    """What every message shares: its ``type`` (the tag, written first) and the wire version ``v``.

    ``v`` gets its default from a factory so that ``omit_defaults`` (which keeps unused optional fields off the
    wire) still writes it; decode checks that the header names it.
    """

    v: Literal[VERSION] = msgspec.field(default_factory=lambda: VERSION)


class Window(_Message, tag="window", eq=False, rename={"frames": "shape"}):
    """``num_frames`` RGB model-size frames of one stream, oldest first.

    Args:
        stream: stream name.
        seq: per-stream window counter of the capture that made it.
        frame_indices: source frame index of each frame, strictly increasing.
        frame_ts: capture time (Unix seconds) of each frame.
        frames: (T, H, W, 3) uint8 RGB, or None when ``store`` says where they are.
        sent_ts: when capture sent it (Unix seconds), for queue timings.
        store: the frames' place in a shared-memory frame store (same-host workers read them
            there, see :mod:`streamer.transport.framestore`); None when the frames travel inline.
        track: the tracked actor the window was cut around (contract 7), None for a whole stream.
        box: that track's box ``[x0, y0, x1, y1]`` (source pixels) at the window's last frame.
        views: crops of each frame (``crop = "three"``: 3, stacked view after view, ``views·T`` frames);
            the worker averages their answers.
    """

    stream: Name
    seq: Index
    frame_indices: Annotated[tuple[Index, ...], Meta(max_length=MAX_WINDOW_FRAMES)]
    frame_ts: Annotated[tuple[Finite, ...], Meta(max_length=MAX_WINDOW_FRAMES)]
    frames: np.ndarray | None
    sent_ts: Finite
    store: FrameRef | None = None
    track: Index | None = None
    box: Box | None = None
    views: Annotated[int, Meta(ge=1, le=MAX_VIEWS)] = 1

    @property
    def key(self) -> tuple[str, int | None]:
        """What "only the newest window waits" is per: a stream, or one tracked actor of it."""
        return self.stream, self.track


AdapterKey = Annotated[str, Meta(max_length=64, pattern=r"^[0-9a-f]*$")]


class WorkRequest(_Message, tag="work_request"):
    """A worker asks for up to ``max_batch`` windows; it doubles as its heartbeat. ``adapter``: the key of the
    taught labels it runs ("" for none), so the dispatcher knows whom to hand a new adapter."""

    worker: Name
    max_batch: Count
    adapter: AdapterKey = ""


class AdapterUpdate(_Message, tag="adapter_update", eq=False, rename={"weights": "classes"}):
    """Dispatcher → worker, before a batch: run these taught labels from now on (:mod:`workers.adapter`).

    Args:
        key: the adapter's key ("" with no labels: back to the checkpoint's own).
        labels: the taught labels, in class order after the checkpoint's.
        checkpoint: SHA-256 of the checkpoint it was taught on; a worker running another refuses it.
        weights: float32, each label's weight row (``width`` values) then the biases: ``K · (width + 1)``;
            None with no labels.
        width: the embedding width the weights read.
        neighbours: float16 ``[rows, width]``: the rows it was taught on, which vote on its labels
            (:class:`workers.adapter.Adapter`); None: no vote.
        neighbour_counts: their count by class: the negatives, then each label.
    """

    key: AdapterKey
    labels: Annotated[tuple[Name, ...], Meta(max_length=MAX_TAUGHT)]
    checkpoint: Annotated[str, Meta(max_length=64, pattern=r"^[0-9a-f]*$")]
    weights: np.ndarray | None
    width: Annotated[int, Meta(ge=1, le=MAX_EMBEDDING)]
    neighbours: np.ndarray | None = None
    neighbour_counts: Annotated[tuple[Annotated[int, Meta(ge=0, le=MAX_NEIGHBOURS)], ...],
                                Meta(max_length=MAX_TAUGHT + 1)] = ()


class Batch(_Message, tag="batch", eq=False):
    """Windows for one worker, newest of several streams, in one message."""

    windows: Annotated[tuple[Window, ...], Meta(max_length=MAX_BATCH)]


class Result(_Message, tag="result", eq=False, rename={"probs": "classes"}):
    """A worker's prediction for one window.

    Args:
        stream, seq: of the window.
        frame_index, frame_ts: source index and capture time of the window's last frame.
        probs: (classes,) float32 softmax probabilities.
        top: ``(label, prob)`` pairs, best first.
        worker: name of the worker that ran it.
        timings: milliseconds per step (``queue_ms``, ``preprocess_ms``, ``forward_ms``, ...).
        track, box: of the window (a tracked actor), else None.
        embedding: (views, width) float16: the window's normalised class token, a row per flip view, for the
            streams whose windows are kept to teach from (``[teach]``); else None.
    """

    stream: Name
    seq: Index
    frame_index: Index
    frame_ts: Finite
    probs: np.ndarray
    top: Annotated[tuple[tuple[Name, Finite], ...], Meta(max_length=MAX_TOP)]
    worker: Name
    timings: Annotated[dict[Name, Finite], Meta(max_length=MAX_TIMINGS)]
    track: Index | None = None
    box: Box | None = None
    embedding: np.ndarray | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.stream, self.track


class ResultBatch(_Message, tag="result_batch", eq=False):
    """A worker's results for one batch, in one message; ``adapter``: the key of the taught labels they were
    scored with ("" for none), which says what the classes after the checkpoint's are."""

    results: Annotated[tuple[Result, ...], Meta(max_length=MAX_BATCH)]
    adapter: AdapterKey = ""


class DisplayFrame(_Message, tag="display", eq=False, rename={"image": "shape"}):
    """A frame to show (overlay, web) or record (clips): (H, W, 3) uint8 BGR, at most the display width;
    ``fps``: the source's own rate (0 if unknown), which times clips in offline runs too; ``tracks``:
    ``(track, box)`` of each tracked actor in this frame, the box in this image's pixels.

    ``stream`` is the first field after the type: :func:`~streamer.transport.messages.display_topic` relies on it.
    """

    stream: Name
    index: Index
    ts: Finite
    image: np.ndarray
    fps: Annotated[float, Meta(ge=0, le=1000)] = 0.0
    tracks: Annotated[tuple[tuple[Index, Box], ...], Meta(max_length=MAX_TRACKS)] = ()


class Status(_Message, tag="status"):
    """Something a user should hear about: ``source_lost``, ``source_restored``, ``worker_restarted``...;
    ``track_ended`` names its ``track``."""

    kind: Name
    stream: MaybeName
    detail: Detail
    ts: Finite
    track: Index | None = None


class Credit(_Message, tag="credit"):
    """Offline mode, dispatcher → capture: "I took ``n`` of your windows, send more"."""

    stream: Name
    n: Count


class Heartbeat(_Message, tag="heartbeat"):
    """I am alive."""

    sender: Name
    ts: Finite


class Leaving(_Message, tag="leaving"):
    """Worker → dispatcher as it stops on purpose (an orchestrator scaling it down): forget me now, rather than
    after the heartbeat timeout, so the count of workers answering (and any autoscaler reading it) is right."""

    sender: Name


class LogLine(_Message, tag="log_line", eq=False):
    """One event-log line (contract 3) as the dispatcher wrote it, for the stages that show or forward it;
    its values nest at most four levels deep, and it has a ``kind`` (checked in the codec)."""

    line: Annotated[dict[Name, LineValue], Meta(max_length=MAX_LINE_FIELDS)]


class Stats(_Message, tag="stats", eq=False):
    """Counters and gauges a stage reports once a second, for the web stage's metrics.

    Args:
        sender: the stage (``dispatcher``, ``capture <stream>``).
        ts: when they were read (Unix seconds).
        samples: ``(name, labels, value)``: a metric name without prefix, its labels, its value.
    """

    sender: Name
    ts: Finite
    samples: Annotated[tuple[tuple[Name, Annotated[dict[Name, MaybeName], Meta(max_length=MAX_LABELS)], Finite], ...],
                       Meta(max_length=MAX_SAMPLES)]


class FramesWanted(_Message, tag="frames_wanted"):
    """Worker → a capture's frame server: the frames ``ref`` names; ``ask`` comes back with them."""

    ask: Index
    ref: FrameRef


class FramesFound(_Message, tag="frames_found", eq=False, rename={"frames": "shape"}):
    """A capture's frame server → worker: the (T, H, W, 3) frames asked for as ``ask``, or None when they were
    overwritten before the worker asked (a stale window)."""

    ask: Index
    frames: np.ndarray | None


Message = (Window | WorkRequest | Batch | Result | ResultBatch | DisplayFrame | Status | Credit | Heartbeat
           | Leaving | LogLine | Stats | FramesWanted | FramesFound | AdapterUpdate)
