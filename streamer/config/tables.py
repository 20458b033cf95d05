"""The schema of the TOML config: every table, each key once with its type, default and bounds.

The file is read with ``tomllib`` and converted into :class:`ConfigFile` by msgspec
(:func:`streamer.config.checks.read_table`), which refuses unknown sections and keys, wrong types and values
out of bounds, each as one line naming the file, the table and the key. The bounds are named types
(``NumFrames``, ``Seconds``, ...) that the stage configs (:mod:`streamer.config.stages`) annotate their
fields with too, so a config built directly is held to the same bounds. What needs more than one key or
than the file (a window's span, key files, listen addresses, URLs) is checked by the loader.
Only the standard library, msgspec and :mod:`streamer.errors` are imported, so any layer may use it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_WAIT_S = 3600.0  # the longest timeout or delay a setting may ask for
MAX_WORKERS = 64  # worker processes on one host; more than its cores or GPUs only adds contention
MAX_NUM_FRAMES = 128  # frames a window (TimeSformer-L takes 96)
MAX_SPAN = 1024  # source frames a window may span: 34 s at 30 fps, 154 MB of ring at 224 px
MAX_BATCH = 64  # windows a worker takes at once: what one message carries (streamer.transport.wire.MAX_BATCH)
MAX_TOP_K = 1000  # labels a result carries (streamer.transport.wire.MAX_TOP)
MAX_DURATION_S = 1e9  # 31 years: a bound that keeps --duration inf out

# ---------------------------------------------------------------- bounds, shared with the stage configs

Count = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0, le=MAX_WAIT_S)]  # a timeout
Delay = Annotated[float, Meta(ge=0, le=MAX_WAIT_S)]
NumFrames = Annotated[int, Meta(ge=1, le=MAX_NUM_FRAMES)]
MaxBatch = Annotated[int, Meta(ge=1, le=MAX_BATCH)]
BindHost = Annotated[str, Meta(pattern=r"^(\*|[0-9]{1,3}(\.[0-9]{1,3}){3})$",
                                 description="an IPv4 address of this host, or 0.0.0.0 (every interface)")]
Threads = Annotated[int, Meta(ge=0, le=1024, description="≥ 0 and ≤ 1024 (0: as many as the host gives a worker)")]
TopK = Annotated[int, Meta(ge=1, le=MAX_TOP_K)]
Fps = Annotated[float, Meta(gt=0, le=1000)]
DisplayWidth = Annotated[int, Meta(ge=16, le=7680)]
Workers = Annotated[int, Meta(ge=1, le=MAX_WORKERS, description=f"1..{MAX_WORKERS} (worker processes on this host)")]
Device = Annotated[str, Meta(pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")]
Precision = Annotated[Literal["fp32", "bf16", "fp16", "int8"], Meta(description="fp32, bf16, fp16 or int8")]
Backend = Annotated[Literal["torch", "openvino", "auto"], Meta(description="torch, openvino or auto")]
Smoothing = Annotated[int, Meta(ge=1, le=1000, description="an integer from 1 to 1000 (results averaged per stream)")]
Threshold = Annotated[float, Meta(gt=0, le=1, description="a number in (0, 1] (a smoothed probability)")]
Hold = Annotated[float, Meta(ge=0, le=MAX_WAIT_S, description="seconds from 0 to 3600")]
Port = Annotated[int, Meta(ge=0, le=65535)]
Secret = Annotated[str, Meta(extra={"secret": True})]  # never shown in a message
WebToken = Annotated[str, Meta(pattern=r"^(?:[^\s\x00-\x1f\x7f]{16,})?$", extra={"secret": True}, description=(
    "at least 16 printable characters without spaces (python -c 'import secrets; print(secrets.token_urlsafe())' "
    "makes one)"))]
JpegQuality = Annotated[int, Meta(ge=1, le=100, description="an integer from 1 to 100")]
WebFps = Annotated[float, Meta(gt=0, le=240, description="a number in (0, 240] (JPEGs a second per stream)")]
EventsKept = Annotated[int, Meta(ge=1, le=100_000, description="an integer from 1 to 100000")]
Crop = Literal["centre", "full", "three"]
RegionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description=(
    "1-64 letters, digits, '_', '-' or '.' (it becomes part of a stream name and of URLs)"))]
Box = Annotated[tuple[Annotated[float, Meta(ge=0)], Annotated[float, Meta(ge=0)], Annotated[float, Meta(ge=0)],
                      Annotated[float, Meta(ge=0)]], Meta(description=(
    "[x0, y0, x1, y1], four numbers, none negative: pixels, or fractions of the frame when every number is ≤ 1"))]
DetectWidth = Annotated[int, Meta(ge=32, le=4096, description="an integer from 32 to 4096")]
MinArea = Annotated[float, Meta(gt=0, lt=1, description="a fraction of the frame above 0, below 1")]
MaxTracks = Annotated[int, Meta(ge=1, le=256, description="an integer from 1 to 256")]
KeepStill = Annotated[float, Meta(ge=0, le=MAX_WAIT_S, description="seconds from 0 to 3600")]
MinHits = Annotated[int, Meta(ge=1, le=100, description="an integer from 1 to 100")]
IouGate = Annotated[float, Meta(gt=0, lt=1, description="an IoU above 0 and below 1")]
Queue = Annotated[int, Meta(ge=1, le=1_000_000, description="1..1000000 messages")]
Topic = Annotated[str, Meta(pattern=r"^[^/+#\x00](?:[^+#\x00]*[^/+#\x00])?$",
                            description="a topic without +, # or leading/trailing /")]
TopicRoot = Annotated[str, Meta(pattern=r"^[^+#\x00]+$", description="a topic without + or #")]
EventKinds = Annotated[tuple[Literal["start", "end"], ...], Meta(min_length=1, description="a list of start and end")]
ClipSeconds = Annotated[float, Meta(ge=0, le=60)]
ClipLength = Annotated[float, Meta(ge=1, le=MAX_WAIT_S)]
KeepDays = Annotated[float, Meta(ge=0, le=100_000, description="≥ 0 days (0: keep for ever)")]
MaxBytes = Annotated[int, Meta(ge=0, description="≥ 0 bytes (0: no cap)")]
KeepHours = Annotated[float, Meta(ge=0, le=100_000, description="≥ 0 hours (0: keep none)")]
HookTimeout = Annotated[float, Meta(gt=0, le=300)]
Retries = Annotated[int, Meta(ge=0, le=20)]
Duration = Annotated[float, Meta(ge=0, le=MAX_DURATION_S, description="0 (run until stopped) or seconds to run")]
Folder = Annotated[str, Meta(min_length=1, pattern=r"^[^\x00]*$", description="a folder for the clips")]


class Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: a key it does not know is an error (a typo must not be a setting silently ignored)."""


class ModelTable(Table):
    """``[model]``: the checkpoint, where and how it runs; window sampling defaults to the checkpoint's."""

    checkpoint: str = "models/demo.safetensors"
    device: Device = "auto"
    precision: Precision = "bf16"
    backend: Backend = "auto"
    calibration: str = ""  # int8: "synthetic" or a folder of videos per class
    num_frames: NumFrames | None = None
    frame_interval: Count | None = None
    hop: Count | None = None  # source frames between windows
    max_batch: MaxBatch = 4
    threads: Threads = 0
    delay_s: Delay = 0.0
    flip_views: tuple[str, ...] | None = None  # checked by workers.flips.check_flip_views
    adapter: str = ""  # taught labels (python -m workers.teach), run beside the checkpoint's own


class PipelineTable(Table):
    workers: Workers = 1
    offline: bool = False
    headless: bool = False
    duration: Duration = 0.0
    heartbeat_timeout_s: Seconds = 30.0
    shared_memory: bool = True


class LabelEventsTable(Table):
    """``[events.labels."LABEL"]``: that label's own thresholds (the others keep ``[events]``'s)."""

    start_threshold: Threshold | None = None
    end_threshold: Threshold | None = None


class EventsTable(Table):
    path: str = ""
    smoothing: Smoothing = 3
    start_threshold: Threshold = 0.6
    end_threshold: Threshold = 0.4
    end_hold_s: Hold = 1.0
    merge_gap_s: Hold = 0.0
    min_duration_s: Hold = 0.0
    top_k: TopK = 5
    # ``[events.labels."LABEL"]`` tables, each read as a LabelEventsTable by the loader (so that a message can
    # name the label: msgspec does not say which key of a dict holds a bad value)
    labels: dict[str, dict] = msgspec.field(default_factory=dict)


class OverlayTable(Table):
    window: bool = True
    output: str = ""
    fps: Fps = 30.0  # checked even when no video is written
    display_width: DisplayWidth = 640


class EndpointsTable(Table):
    """``[endpoints]``: ZeroMQ addresses; one left out is a private ipc:// socket of this pipeline."""

    windows: str | None = None
    work: str | None = None
    results: str | None = None
    display: str | None = None
    web: str | None = None
    clips: str | None = None
    bind_host: BindHost | None = None  # binding stages listen here (same port): 0.0.0.0 behind a service name
    # Workers on other hosts fetch window frames from the captures (source N serves them on this port + N):
    # the dispatcher then carries references only (streamer.transport.frameserver).
    frames_port: Annotated[int, Meta(ge=1, le=65000)] | None = None


class WebTable(Table):
    listen: str | None = None  # HOST:PORT or "off"; a [web] table without it listens on 127.0.0.1:8080
    token: WebToken = ""
    token_env: str = ""  # or the environment variable that holds it (a Secret in a container)
    jpeg_quality: JpegQuality = 80
    max_fps: WebFps = 30.0
    events_kept: EventsKept = 1000


class SecurityTable(Table):
    """``[security]``: key files (``python -m streamer.transport.keys DIR`` makes them and prints this table)."""

    allow_plaintext: bool = False
    server_public_key: str = ""
    server_secret_key: str = ""
    client_secret_key: str = ""
    allowed_clients: Annotated[str | tuple[str, ...], Meta(description=(
        "a key file, a folder of .key files, or a list of them"))] = ()


class RegionTable(Table):
    name: RegionName
    box: Box


class TrackingTable(Table):
    """The motion tracker's options (``tracking = {...}`` beside ``track = "motion"``)."""

    detect_width: DetectWidth = 320
    min_area: MinArea = 0.0015
    max_tracks: MaxTracks = 8
    keep_still_s: KeepStill = 4.0
    min_hits: MinHits = 3
    iou_gate: IouGate = 0.1


class LookTable(Table):
    """Where the model looks in a source's frames (contract 7): part of a ``[[sources]]`` table."""

    regions: tuple[RegionTable, ...] = ()
    crop: Crop = "centre"
    track: Annotated[Literal["motion"] | None, Meta(description=(
        '"motion", the one tracker (leave it out for none)'))] = None
    tracking: TrackingTable | None = None

    def __post_init__(self) -> None:
        if self.tracking is not None and self.track is None:
            raise ValueError('tracking = {...} sets the tracker\'s options and needs track = "motion"')


class SourceTable(LookTable, kw_only=True):
    spec: Annotated[str, Meta(description="a source: a webcam index, rtsp://..., a video file or synthetic:")]
    name: str | None = None  # checked by the loader: printable, unique, short enough for the wire
    open_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 5.0
    hwaccel: str = "none"  # the choices depend on this machine's FFmpeg (streamer.video.readers)


class MqttTable(Table):
    url: str = ""  # mqtt://HOST:PORT or mqtts://HOST:PORT, checked by the loader
    username: str = ""
    password: Secret = ""
    password_env: str = ""
    topic_prefix: Topic = "timesformer"
    qos: Literal[0, 1, 2] = 1
    client_id: str = ""
    discovery: bool = False
    discovery_prefix: TopicRoot = "homeassistant"
    queue: Queue = 10_000


class WebhookTable(Table):
    url: str = ""  # http://... or https://..., checked by the loader
    events: EventKinds = ("start", "end")
    secret: Secret = ""
    secret_env: str = ""
    timeout_s: HookTimeout = 5.0
    retries: Retries = 3
    queue: Queue = 1000


class ClipsTable(Table):
    dir: Folder  # a relative one is taken from the working folder, as the event log's path is
    pre_s: ClipSeconds = 2.0
    post_s: ClipSeconds = 2.0
    annotated: bool = True
    max_s: ClipLength = 120.0
    keep_days: KeepDays = 0.0
    max_bytes: MaxBytes = 0


class StoreTable(Table):
    path: str = ""  # "" (or --store off): no action history
    keep_days: KeepDays = 0.0
    max_bytes: MaxBytes = 0


class TeachTable(Table):
    keep_h: KeepHours = 24.0  # hours of each stream's window embeddings the store keeps to teach from (0: none)
    max_bytes: MaxBytes = 256 * 1024 * 1024  # their cap (0: none); the oldest go first
    streams: tuple[str, ...] = ()  # the streams kept (empty: all)


class ConfigFile(Table):
    """The whole file. A table left out takes its defaults; ``[endpoints]``, ``[web]``, ``[mqtt]`` and
    ``[clips]`` are None when left out, since their presence means something."""

    model: ModelTable = msgspec.field(default_factory=ModelTable)
    pipeline: PipelineTable = msgspec.field(default_factory=PipelineTable)
    events: EventsTable = msgspec.field(default_factory=EventsTable)
    overlay: OverlayTable = msgspec.field(default_factory=OverlayTable)
    endpoints: EndpointsTable | None = None
    web: WebTable | None = None
    security: SecurityTable = msgspec.field(default_factory=SecurityTable)
    sources: tuple[SourceTable, ...] = ()
    mqtt: MqttTable | None = None
    webhooks: tuple[WebhookTable, ...] = ()
    clips: ClipsTable | None = None
    store: StoreTable = msgspec.field(default_factory=StoreTable)
    teach: TeachTable = msgspec.field(default_factory=TeachTable)
