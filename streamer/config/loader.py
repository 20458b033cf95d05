"""The pipeline's configuration: one TOML file plus command-line overrides → one frozen config per stage.

``load_config`` is the only reader of the file; every stage gets its own small frozen
dataclass and reads nothing else (no globals, no environment). Every bad value raises a
:class:`ConfigError` whose message names the file, the key and what is allowed.
"""

import math
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from streamer.look.crops import LOOK_KEYS, LookConfig, load_look
from streamer.errors import ConfigError
from streamer.stages.events import EventConfig
from streamer.transport.framestore import store_prefix
from streamer.transport.messages import MAX_BATCH, MAX_NAME
from streamer.video.readers import hwaccel_choices
from streamer.transport.security import Security, check_endpoint, load_security  # noqa: F401  (stages import Security here)
from streamer.config.sinks import (CLIP_KEYS, MQTT_KEYS, WEBHOOK_KEYS, ClipsConfig, ClipStageConfig, SinksConfig,
                                   load_clips, load_mqtt, load_webhooks)
from streamer.config.toml import get_value, read_toml
from streamer.config.web import KEYS as WEB_KEYS
from streamer.config.web import WebConfig, load_web_config, web_listen
from workers.sampling import window_span
from workers.flips import check_flip_views

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "default.toml"


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ addresses. ``windows``/``work``/``results`` are bound by the dispatcher, ``display`` by the
    overlay, ``web`` (display frames for the web stage) by the web stage, ``clips`` by the clips stage."""

    windows: str
    work: str
    results: str
    display: str
    web: str = ""
    clips: str = ""


@dataclass(frozen=True)
class CaptureConfig:
    """One source → windows for the dispatcher (and display frames for the overlay)."""

    stream: str
    source: str
    endpoints: Endpoints
    size: int
    num_frames: int
    frame_interval: int
    hop: int
    offline: bool = False
    display: bool = False     # send display frames to the overlay
    web: bool = False         # and to the web stage
    clips: bool = False       # and to the clips stage (every frame: the pre-roll must be there)
    display_width: int = 640
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    hwaccel: str = "none"  # hardware decoding for files and RTSP (streamer.video.readers.open_decoding)
    frame_store: str = ""  # shared-memory frame store prefix (streamer.transport.framestore); "" sends frames inline
    security: Security = field(default_factory=Security)
    look: LookConfig = field(default_factory=LookConfig)  # regions, crop mode, tracked actors (contract 7)


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
    heartbeat_timeout_s: float = 30.0
    status_interval_s: float = 1.0
    security: Security = field(default_factory=Security)


@dataclass(frozen=True)
class WorkerConfig:
    """One inference process: the model, where it runs, how many windows it takes at once."""

    name: str
    endpoints: Endpoints
    checkpoint: str
    device: str = "cpu"
    precision: str = "bf16"
    backend: str = "auto"     # torch, openvino or auto (workers.openvino_backend)
    calibration: str = ""     # int8: "synthetic" or a folder of videos per class (workers.quantize)
    max_batch: int = 4
    threads: int = 0
    top_k: int = 5
    delay_s: float = 0.0  # added to every forward: simulates a slower model (overload tests and benchmarks)
    flip_views: tuple[str, ...] = ()  # mirror images averaged in (workers.views)
    index: int = 0            # picks the GPU round robin
    workers_on_host: int = 1  # CPU workers share the cores evenly
    frame_store: str = ""     # the prefix of the frame stores it may read windows from
    security: Security = field(default_factory=Security)


@dataclass(frozen=True)
class OverlayConfig:
    """Newest frame + newest result per stream → a window, an annotated video, or both."""

    endpoints: Endpoints
    streams: tuple[str, ...]
    window: bool = True
    output: str | None = None
    fps: float = 30.0
    top_k: int = 5
    security: Security = field(default_factory=Security)


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


def _writable_file(value: str | None, what: str) -> str | None:
    """A file the pipeline will write (event log, annotated video), checked before any stage starts:
    its folder is made if missing, and a folder or an unwritable place is a ConfigError now rather
    than a failed stage later."""
    if value is None:
        return None
    if not value or "\x00" in value:
        raise ConfigError(f"{what} {value!r}: not a usable file name")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {value}: is a folder; name a file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{what} {value}: cannot make its folder ({err.strerror}); pick a writable path") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{what} {value}: not writable; pick a writable path")
    return str(path)


ENDPOINT_NAMES = ("windows", "work", "results", "display", "web", "clips")


def default_endpoints() -> Endpoints:
    """Private ipc:// sockets in a fresh folder, so pipelines running side by side never collide."""
    folder = Path(tempfile.mkdtemp(prefix="tss-"))
    return Endpoints(*(f"ipc://{folder / name}" for name in ENDPOINT_NAMES))


def _stream_label(name: str | None, where: str, taken: set[str]) -> str | None:
    """A name given to a source in the config: printable, at most MAX_NAME characters, not used twice."""
    if name is None:
        return None
    if not name or len(name) > MAX_NAME or not name.isprintable():  # longer ones would not pass the wire
        raise ConfigError(f"{where}: 'name' must be 1-{MAX_NAME} printable characters, got {name!r}")
    if name in taken:
        raise ConfigError(f"{where}: two sources are named {name!r}; give each its own name")
    taken.add(name)
    return name


def _calibration(model: dict, precision: str, backend: str, labels, where: str) -> str:
    """int8 calibrates on the model's own data: ``synthetic`` for models of the
    demo's actions, else a folder the config names; without one, int8 is refused here."""
    value = get_value(model, "calibration", str, "", where)
    if precision != "int8":  # int8 is static and calibrated whatever the backend (workers.runtime)
        return value
    if not value:
        from streamer.synthetic.scenes import CLASSES

        if labels and list(labels) == list(CLASSES):
            return "synthetic"
        raise ConfigError(f"{where}: precision int8 calibrates on windows of the model's own data; set "
                          "calibration = \"DIR\" (a folder of videos, one subfolder per class, as for training) "
                          "or use precision fp32")
    if value != "synthetic" and not Path(value).expanduser().exists():
        raise ConfigError(f"{where}: calibration {value!r} does not exist; name a folder of videos per class "
                          "or \"synthetic\"")
    return value


def stream_name(source: str, index: int, taken: set[str]) -> str:
    """A short readable name for a source: file stem, camera host, 'webcam0', 'synthetic'."""
    if source.startswith("synthetic:"):
        base = "synthetic"
    elif source.startswith("rtsp://"):
        base = urlparse(source).hostname or "rtsp"
    elif source.isdigit() or source.startswith("/dev/video"):
        base = "webcam" + source.rsplit("video", 1)[-1]
    else:
        base = Path(source).stem or f"source{index}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class Overrides:
    """Command-line flags; None means 'as the config file says'."""

    config: str | None = None
    sources: tuple[str, ...] = ()
    checkpoint: str | None = None
    headless: bool = False
    duration: float | None = None
    events: str | None = None
    output: str | None = None
    offline: bool = False
    workers: int | None = None
    device: str | None = None
    precision: str | None = None
    web: str | None = None  # HOST:PORT or "off"


MAX_WORKERS = 64  # worker processes on one host; more than its cores or GPUs only adds contention
MAX_NUM_FRAMES = 128  # frames a window (TimeSformer-L takes 96)
MAX_SPAN = 1024  # source frames a window may span: 34 s at 30 fps, 154 MB of ring at 224 px
VIDEO_OUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")  # containers the overlay writes H.264 into
MAX_WAIT_S = 3600.0  # the longest timeout or delay a setting may ask for

KNOWN = {
    "model": {"checkpoint", "device", "precision", "backend", "calibration", "num_frames", "frame_interval", "hop",
              "max_batch", "threads", "delay_s", "flip_views"},
    "pipeline": {"workers", "offline", "headless", "duration", "heartbeat_timeout_s", "shared_memory"},
    "events": {"path", "smoothing", "start_threshold", "end_threshold", "top_k"},
    "overlay": {"window", "output", "fps", "display_width"},
    "endpoints": set(ENDPOINT_NAMES),
    "web": WEB_KEYS,
    "security": {"allow_plaintext", "server_public_key", "server_secret_key", "client_secret_key",
                 "allowed_clients"},
    "sources": {"spec", "name", "open_timeout_s", "read_timeout_s", "hwaccel", *LOOK_KEYS},
    "mqtt": MQTT_KEYS,
    "webhooks": WEBHOOK_KEYS,
    "clips": CLIP_KEYS,
}


def _hwaccel(value: str, where: str, kind: str) -> str:
    if value not in hwaccel_choices():
        raise ConfigError(f"{where}: hwaccel {value!r} is not one of {', '.join(hwaccel_choices())}")
    if value != "none" and kind not in ("file", "rtsp"):
        raise ConfigError(f"{where}: hwaccel is for video files and RTSP cameras, not a {kind} source")
    return value


def load_config(flags: Overrides, preprocess_of) -> PipelineConfig:
    """Build every stage's config from the TOML file and the flags.

    Args:
        flags: command-line overrides.
        preprocess_of: ``checkpoint path -> (Preprocess, labels)``; reads the checkpoint's metadata
            (it raises CheckpointError for a bad checkpoint, before any process starts).
    """
    path = Path(flags.config) if flags.config else DEFAULT_CONFIG
    raw = read_toml(path)
    where = str(path)
    for section, value in raw.items():
        if section not in KNOWN:
            raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(sorted(KNOWN))}")
        tables = value if isinstance(value, list) else [value]
        for table in tables:
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: [{section}] must be a table")
            unknown = sorted(set(table) - KNOWN[section])
            if unknown:
                raise ConfigError(f"{where}: unknown key '{unknown[0]}' in [{section}]; "
                                  f"known: {', '.join(sorted(KNOWN[section]))}")
    model = raw.get("model", {})
    pipe = raw.get("pipeline", {})
    ev = raw.get("events", {})
    ov = raw.get("overlay", {})
    sec = raw.get("security", {})
    where_model = f"{where} [model]"

    checkpoint = flags.checkpoint or get_value(model, "checkpoint", str, "models/demo.safetensors", where_model)
    if not Path(checkpoint).is_absolute() and not Path(checkpoint).exists() and (REPO / checkpoint).exists():
        checkpoint = str(REPO / checkpoint)
    preprocess, labels = preprocess_of(checkpoint)

    num_frames = get_value(model, "num_frames", int, preprocess.num_frames, where_model, low=1, high=MAX_NUM_FRAMES)
    frame_interval = get_value(model, "frame_interval", int, preprocess.frame_interval, where_model, low=1)
    hop = get_value(model, "hop", int, max(1, frame_interval), where_model, low=1)
    if (span := window_span(num_frames, frame_interval)) > MAX_SPAN:
        raise ConfigError(f"{where_model}: a window of {num_frames} frames {frame_interval} apart spans "
                          f"{span} source frames; at most {MAX_SPAN} fit the ring buffer")

    security = load_security(sec, f"{where} [security]", path.parent)
    ep_table = raw.get("endpoints", {})
    defaults = default_endpoints()
    endpoints = Endpoints(**{
        name: check_endpoint(get_value(ep_table, name, str, getattr(defaults, name), f"{where} [endpoints]"),
                              f"{where} [endpoints] {name}", security)
        for name in ENDPOINT_NAMES
    })

    # Frames go through shared memory only when every stage that touches them shares this host.
    same_host = all(e.startswith("ipc://") for e in (endpoints.windows, endpoints.work))
    frame_store = store_prefix(endpoints.windows) if same_host and get_value(
        pipe, "shared_memory", bool, True, f"{where} [pipeline]") else ""

    source_tables = raw.get("sources", [])
    if not isinstance(source_tables, list):
        raise ConfigError(f"{where}: sources must be an array of tables: [[sources]] spec = \"...\"")
    if flags.sources:
        source_tables = [{"spec": s} for s in flags.sources]
    if not source_tables:
        raise ConfigError(f"{where}: no sources; add [[sources]] spec = \"synthetic:\" or pass --source")

    offline = flags.offline or get_value(pipe, "offline", bool, False, f"{where} [pipeline]")
    headless = flags.headless or get_value(pipe, "headless", bool, False, f"{where} [pipeline]")
    output = _writable_file(flags.output or get_value(ov, "output", str, None, f"{where} [overlay]") or None,
                            "annotated video (--output)")
    if output and Path(output).suffix.lower() not in VIDEO_OUT_SUFFIXES:
        raise ConfigError(f"annotated video (--output) {output}: name it .mp4 (or {', '.join(VIDEO_OUT_SUFFIXES[1:])}); "
                          "the container is chosen by the file's suffix")
    window = get_value(ov, "window", bool, True, f"{where} [overlay]") and not headless
    overlay_fps = get_value(ov, "fps", float, 30.0, f"{where} [overlay]", above=0, high=1000)  # checked even if unused
    want_overlay = window or bool(output)
    web_table = raw.get("web", {})
    web_on = web_listen(web_table, flags.web) is not None
    clips = load_clips(raw.get("clips"), where)

    taken: set[str] = set()
    captures, finite = [], []
    from streamer.video.sources import parse_source  # validates the spec; sources imports cv2, so import late

    for i, table in enumerate(source_tables):
        spec = get_value(table, "spec", str, None, f"{where} [[sources]] #{i + 1}")
        if spec is None:
            raise ConfigError(f"{where}: [[sources]] #{i + 1} has no 'spec'")
        kind = parse_source(spec)
        name = _stream_label(get_value(table, "name", str, None, f"{where} [[sources]] #{i + 1}"),
                             f"{where} [[sources]] #{i + 1}", taken) or stream_name(spec, i, taken)
        look = load_look(table, f"{where} [[sources]] {name!r}")
        for stream in look.streams(name) if look.regions else ():
            _stream_label(stream, f"{where} [[sources]] {name!r}", taken)
        if kind == "file":
            finite.extend(look.streams(name))
        captures.append(CaptureConfig(
            stream=name, source=spec, endpoints=endpoints, size=preprocess.size, num_frames=num_frames,
            frame_interval=frame_interval, hop=hop, offline=offline, display=want_overlay, web=web_on,
            clips=clips is not None,
            display_width=get_value(ov, "display_width", int, 640, f"{where} [overlay]", low=16, high=7680),
            open_timeout_s=get_value(table, "open_timeout_s", float, 5.0, f"{where} [[sources]]", above=0, high=MAX_WAIT_S),
            read_timeout_s=get_value(table, "read_timeout_s", float, 5.0, f"{where} [[sources]]", above=0, high=MAX_WAIT_S),
            hwaccel=_hwaccel(get_value(table, "hwaccel", str, "none", f"{where} [[sources]]"), f"{where} [[sources]]", kind),
            frame_store=frame_store, security=security, look=look,
        ))
    streams = tuple(s for c in captures for s in c.look.streams(c.stream))
    if offline and len(finite) != len(streams):
        raise ConfigError("--offline reads files as fast as the workers take them; every source must be a file")

    try:
        events = EventConfig(
            smoothing=get_value(ev, "smoothing", int, 3, f"{where} [events]"),
            start_threshold=get_value(ev, "start_threshold", float, 0.6, f"{where} [events]"),
            end_threshold=get_value(ev, "end_threshold", float, 0.4, f"{where} [events]"),
            top_k=get_value(ev, "top_k", int, 5, f"{where} [events]"),
        )
    except ConfigError as err:
        raise ConfigError(f"{where} [events]: {err}") from None
    events_path = _writable_file(flags.events or get_value(ev, "path", str, None, f"{where} [events]") or None,
                                 "event log (--events)")

    dispatch = DispatchConfig(
        endpoints=endpoints, streams=streams, finite_streams=tuple(finite), labels=tuple(labels or ()),
        offline=offline, events_path=events_path, events=events, clips=clips,
        heartbeat_timeout_s=get_value(pipe, "heartbeat_timeout_s", float, 30.0, f"{where} [pipeline]", above=0,
                                 high=MAX_WAIT_S),
        security=security,
    )
    n_workers = flags.workers or get_value(pipe, "workers", int, 1, f"{where} [pipeline]")
    if not 1 <= n_workers <= MAX_WORKERS:
        raise ConfigError(f"{where} [pipeline]: 'workers' must be 1..{MAX_WORKERS}, got {n_workers}")
    precision = flags.precision or get_value(model, "precision", str, "bf16", where_model)
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ConfigError(f"{where_model}: 'precision' must be fp32, bf16, fp16 or int8, got {precision!r}")
    device = flags.device or get_value(model, "device", str, "auto", where_model)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"{where_model}: 'device' must be auto, cpu, cuda or cuda:N, got {device!r}")
    backend = get_value(model, "backend", str, "auto", where_model)
    if backend not in ("torch", "openvino", "auto"):
        raise ConfigError(f"{where_model}: 'backend' must be torch, openvino or auto, got {backend!r}")
    calibration = _calibration(model, precision, backend, labels, where_model)
    worker = WorkerConfig(
        name="worker-0", endpoints=endpoints, checkpoint=checkpoint, device=device, precision=precision,
        backend=backend, calibration=calibration,
        max_batch=get_value(model, "max_batch", int, 4, where_model, low=1, high=MAX_BATCH),
        threads=get_value(model, "threads", int, 0, where_model, low=0, high=1024),
        top_k=events.top_k, delay_s=get_value(model, "delay_s", float, 0.0, where_model, low=0, high=MAX_WAIT_S),
        frame_store=frame_store,
        flip_views=check_flip_views(model["flip_views"], where_model) if "flip_views" in model
        else preprocess.flip_views, security=security,
    )
    workers = tuple(replace(worker, name=f"worker-{i}", index=i, workers_on_host=n_workers) for i in range(n_workers))

    overlay = OverlayConfig(
        endpoints=endpoints, streams=streams, window=window, output=output,
        fps=overlay_fps, top_k=min(events.top_k, 5), security=security,
    ) if want_overlay else None
    kinds = {s: parse_source(c.source) for c in captures for s in c.look.streams(c.stream)}
    web = load_web_config(web_table, flags.web, where, default_file=path.resolve() == DEFAULT_CONFIG,
                          endpoints=endpoints, security=security, streams=tuple(kinds.items()),
                          top_k=min(events.top_k, 5))
    duration = flags.duration if flags.duration is not None else get_value(pipe, "duration", float, 0.0,
                                                                       f"{where} [pipeline]")
    if not duration >= 0 or not math.isfinite(duration):
        raise ConfigError(f"--duration must be zero (run until stopped) or positive, got {duration}")
    mqtt, webhooks = load_mqtt(raw.get("mqtt"), where), load_webhooks(raw.get("webhooks"), where)
    sinks = SinksConfig(endpoints=endpoints, security=security, streams=streams, labels=tuple(labels or ()),
                        mqtt=mqtt, webhooks=webhooks) if mqtt or webhooks else None
    clip_stage = ClipStageConfig(clips=clips, endpoints=endpoints, security=security, streams=streams,
                                 span=window_span(num_frames, frame_interval), top_k=min(events.top_k, 5)) if clips else None
    return PipelineConfig(captures=tuple(captures), dispatch=dispatch, workers=workers, overlay=overlay, web=web,
                          sinks=sinks, clips=clip_stage, duration_s=duration, security=security, source_file=where,
                          fixed_endpoints="endpoints" in raw)
