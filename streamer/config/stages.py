"""One frozen config per stage, each checked when it is built (a config built directly, as tests and benchmarks
do, is held to the same bounds as one built from the file), and :class:`PipelineConfig`, all of them.

The bounds are the named types of :mod:`streamer.config.tables`; :func:`streamer.config.checks.check` has
msgspec hold a config to them. Standard library, msgspec, :mod:`streamer.errors` and the torch-free
:mod:`workers.flips` only, so every layer may import its config from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.config.checks import check
from streamer.config.look import LookConfig
from streamer.config.network import Endpoints, Security, is_loopback
from streamer.config.sinks import ClipsConfig, ClipStageConfig, SinksConfig, StoreConfig
from streamer.config.tables import (Backend, Count, Delay, Device, DisplayWidth, EventsKept, Fps, Hold, JpegQuality,
                                    MaxBatch, NumFrames, Port, Precision, Seconds, Smoothing, Threads, Threshold,
                                    TopK, WebFps, WebToken, Workers)
from streamer.errors import ConfigError
from workers.flips import check_flip_views


@dataclass(frozen=True)
class LabelThresholds:
    """One label's own start and end thresholds (``[events.labels."falling"]``)."""

    start_threshold: Threshold
    end_threshold: Threshold

    def __post_init__(self) -> None:
        check(self)
        if self.end_threshold > self.start_threshold:
            raise ConfigError(f"end_threshold = {self.end_threshold} is above start_threshold = "
                              f"{self.start_threshold}; it must be lower or equal (hysteresis)")


@dataclass(frozen=True)
class EventConfig:
    """How predictions become action events, calmly: one action is one start and one end.

    Args:
        smoothing: results averaged per stream (a moving average of probabilities).
        start_threshold: smoothed probability at which an action starts.
        end_threshold: smoothed probability below which it ends (≤ start_threshold).
        end_hold_s: it ends only once its score has stayed below ``end_threshold`` this long (a blink's dark
            phase does not end "blinking").
        merge_gap_s: a start of the same label on the same stream or actor within this long of its end
            continues that action (same id); its end line waits this long for it.
        min_duration_s: a shorter action is kept in the event log, marked ``"brief"``, and the sinks never hear
            of it (0: every action reaches them).
        top_k: labels in the smoothed top list.
        labels: ``(label, LabelThresholds)`` pairs: labels with their own thresholds.
    """

    smoothing: Smoothing = 3
    start_threshold: Threshold = 0.6
    end_threshold: Threshold = 0.4
    end_hold_s: Hold = 1.0
    merge_gap_s: Hold = 0.0
    min_duration_s: Hold = 0.0
    top_k: TopK = 5
    labels: tuple[tuple[str, LabelThresholds], ...] = ()

    def __post_init__(self) -> None:
        check(self)
        LabelThresholds(self.start_threshold, self.end_threshold)

    def thresholds(self, label: str) -> tuple[float, float]:
        """``(start, end)`` thresholds of ``label``."""
        for name, own in self.labels:
            if name == label:
                return own.start_threshold, own.end_threshold
        return self.start_threshold, self.end_threshold


@dataclass(frozen=True)
class CaptureConfig:
    """One source → windows for the dispatcher (and display frames for the overlay)."""

    stream: str
    source: str
    endpoints: Endpoints
    size: Count
    num_frames: NumFrames
    frame_interval: Count
    hop: Count
    offline: bool = False
    display: bool = False     # send display frames to the overlay
    web: bool = False         # and to the web stage
    clips: bool = False       # and to the clips stage (every frame: the pre-roll must be there)
    display_width: DisplayWidth = 640
    open_timeout_s: Seconds = 5.0
    read_timeout_s: Seconds = 5.0
    hwaccel: str = "none"  # hardware decoding for files and RTSP (streamer.video.readers.open_decoding)
    frame_store: str = ""  # shared-memory frame store prefix (streamer.transport.framestore); "" sends frames inline
    frames_bind: str = ""  # serve the store's frames to workers on other hosts here (streamer.transport.frameserver)
    frames_advertise: str = ""  # and tell them to fetch them here (this host's address, same port)
    security: Security = field(default_factory=Security)
    look: LookConfig = field(default_factory=LookConfig)  # regions, crop mode, tracked actors (contract 7)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class DispatchConfig:
    """The hub: newest window per stream to ready workers; results to the event log and the overlay."""

    endpoints: Endpoints
    streams: tuple[str, ...]
    finite_streams: tuple[str, ...]
    labels: tuple[str, ...]
    offline: bool = False
    events_path: str | None = None
    events: EventConfig = field(default_factory=EventConfig)
    clips: ClipsConfig | None = None  # end lines name their clip
    store: StoreConfig | None = None  # the action history the dispatcher keeps (contract 8)
    checkpoint: str = ""  # the workers' checkpoint: taught labels must have been taught on it
    adapter: str = ""  # taught labels to hand the workers at start (--adapter); else the store's newest
    heartbeat_timeout_s: Seconds = 30.0
    status_interval_s: Seconds = 1.0
    security: Security = field(default_factory=Security)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class WorkerConfig:
    """One inference process: the model, where it runs, how many windows it takes at once."""

    name: str
    endpoints: Endpoints
    checkpoint: str
    adapter: str = ""         # taught labels beside the checkpoint's (workers.adapter)
    device: Device = "cpu"
    precision: Precision = "bf16"
    backend: Backend = "auto"  # torch, openvino or auto (workers.openvino_backend)
    calibration: str = ""      # int8: "synthetic" or a folder of videos per class (workers.quantize)
    max_batch: MaxBatch = 4
    threads: Threads = 0
    top_k: TopK = 5
    delay_s: Delay = 0.0  # added to every forward: simulates a slower model (overload tests and benchmarks)
    flip_views: tuple[str, ...] = ()  # mirror images averaged in (workers.views)
    embed_streams: tuple[str, ...] = ()  # streams whose results carry their embedding ("*": all), [teach]
    index: int = 0            # picks the GPU round robin
    workers_on_host: Workers = 1  # CPU workers share the cores evenly
    shares_host: bool = True  # the other stages run beside it (one supervisor), so one core is left to them
    frame_store: str = ""     # the prefix of the frame stores it may read windows from
    security: Security = field(default_factory=Security)

    def __post_init__(self) -> None:
        check(self)
        check_flip_views(self.flip_views, "WorkerConfig")


@dataclass(frozen=True)
class OverlayConfig:
    """Newest frame + newest result per stream → a window, an annotated video, or both.

    ``every_frame`` (an offline run of one file into ``output``): one image per source frame, each drawn once
    its prediction is in, instead of the newest frame at ``fps`` of wall-clock time; the capture waits for it.
    """

    endpoints: Endpoints
    streams: tuple[str, ...]
    window: bool = True
    output: str | None = None
    fps: Fps = 30.0
    top_k: TopK = 5
    security: Security = field(default_factory=Security)
    every_frame: bool = False

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class WebConfig:
    """The web stage.

    Args:
        host, port: where it listens (port 0: any free port, the log line names it).
        endpoints, security: the pipeline's sockets (display frames come on ``endpoints.web``).
        streams: ``(name, source kind)`` of every stream, in config order.
        token: needed on every request but /healthz when set; required beyond loopback.
        jpeg_quality: 1-100 for the live view's JPEGs.
        max_fps: at most this many JPEGs a second per stream, however fast the source.
        required: a listen address that cannot be bound is a usage error (False for the demo's
            default address: the demo then runs without the web view).
        build: ``(name, value)`` pairs for ``timesformer_build_info``.
        top_k: labels in the panel.
        events_kept: action events kept for /api/events and the page.
        store: the action history it serves (``/api/actions``, ``/review``), None when there is none.
        checkpoint, labels: the workers' checkpoint and its own labels, which ``/api/teach`` teaches beside.
    """

    host: str
    port: Port
    endpoints: Endpoints
    security: Security
    streams: tuple[tuple[str, str], ...]
    token: WebToken = field(default="", repr=False)
    jpeg_quality: JpegQuality = 80
    max_fps: WebFps = 30.0
    required: bool = True
    build: tuple[tuple[str, str], ...] = ()
    top_k: TopK = 5
    events_kept: EventsKept = 1000
    store: StoreConfig | None = None
    checkpoint: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(self)
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"listening on {self.host} lets other machines in; set [web] token "
                              "(a long random string) or listen on 127.0.0.1")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``run_pipeline.py`` starts, built once from the file and the flags."""

    captures: tuple[CaptureConfig, ...]
    dispatch: DispatchConfig
    workers: tuple[WorkerConfig, ...]
    overlay: OverlayConfig | None
    web: WebConfig | None = None
    sinks: SinksConfig | None = None  # MQTT and webhooks
    clips: ClipStageConfig | None = None
    duration_s: float = 0.0
    security: Security = field(default_factory=Security)
    source_file: str = ""
    fixed_endpoints: bool = False  # the file names them (needed when stages run as separate commands)
    ipc_dir: str = ""  # the private folder of the default ipc:// endpoints: made and removed by whoever runs them

    def __post_init__(self) -> None:
        check(self)
