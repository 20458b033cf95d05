"""The pipeline's configuration: one TOML file plus command-line flags → one frozen config per stage.

``load_config`` is the only reader of the file. It is read with ``tomllib``, each flag given is laid over
the key it stands for (so a flag is checked as that key is), and msgspec turns the result into the tables of
:mod:`streamer.config.tables`; then each part of the pipeline is built by a function named for it. Every bad
value is one :class:`ConfigError` naming the file (or the flag), the table, the key and what is allowed.

Loading changes nothing on disk: the private folder of the default ipc:// endpoints is only named here
(``PipelineConfig.ipc_dir``); whoever runs the stages makes it and removes it (``run_pipeline.py``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from streamer.config.checks import read_table
from streamer.config.load_keys import load_security
from streamer.config.load_outputs import clips_config, mqtt_config, webhook_configs
from streamer.config.load_sources import CaptureCommon, capture_configs
from streamer.config.network import ENDPOINT_NAMES, Endpoints, Security
from streamer.config.sinks import ClipStageConfig, SinksConfig, StoreConfig
from streamer.config.stages import (CaptureConfig, DispatchConfig, EventConfig, LabelThresholds, OverlayConfig,
                                    PipelineConfig, WorkerConfig)
from streamer.config.tables import (MAX_SPAN, ConfigFile, EndpointsTable, EventsTable, LabelEventsTable, ModelTable,
                                    StoreTable, TeachTable)
from streamer.config.web import web_config, web_listen
from streamer.errors import ConfigError
from streamer.store.schema import check_store
from streamer.transport.framestore import store_prefix
from streamer.transport.security import check_endpoint
from workers.flips import check_flip_views
from workers.sampling import window_span

REPO = Path(__file__).resolve().parents[2]  # the checkout; beside site-packages when installed with pip


def default_config() -> Path:
    """``configs/default.toml`` of the working folder (an image's /app, a checkout's root), else of the checkout."""
    here = Path("configs/default.toml").resolve()
    return here if here.is_file() else REPO / "configs" / "default.toml"



VIDEO_OUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")  # containers the overlay writes H.264 into
BINDING_ROLES = (None, "dispatcher", "web", "overlay", "clips")  # the --roles that bind (None: every stage)
FLAG_KEYS = {  # each flag that stands for a key: the table and the key
    "checkpoint": ("model", "checkpoint"), "device": ("model", "device"), "precision": ("model", "precision"),
    "workers": ("pipeline", "workers"), "duration": ("pipeline", "duration"), "events": ("events", "path"),
    "output": ("overlay", "output"), "web": ("web", "listen"), "store": ("store", "path"),
    "adapter": ("model", "adapter"),
}


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
    store: str | None = None  # FILE.db or "off"
    adapter: str | None = None  # --adapter: taught labels beside the checkpoint's
    role: str | None = None  # --role: only that stage's secrets are read (a capture needs no MQTT password)
    advertise: str | None = None  # --advertise: the address workers fetch this host's captures' frames at


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint and how windows sample the source for it: the checkpoint's own preprocessing unless
    ``[model]`` says otherwise."""

    checkpoint: str
    labels: tuple[str, ...]
    size: int
    num_frames: int
    frame_interval: int
    hop: int
    flip_views: tuple[str, ...]
    adapter: str = ""  # the adapter file, checked against the checkpoint; its labels are in ``labels``
    checkpoint_labels: tuple[str, ...] = ()  # ``labels`` without the adapter's


def load_config(flags: Overrides, preprocess_of) -> PipelineConfig:
    """Build every stage's config from the TOML file and the flags.

    Args:
        flags: command-line overrides.
        preprocess_of: ``checkpoint path -> (Preprocess, labels)``; reads the checkpoint's metadata
            (it raises CheckpointError for a bad checkpoint, before any process starts).
    """
    path = Path(flags.config) if flags.config else default_config()
    file, where = read_config(path, flags), str(path)
    # what can be checked without the checkpoint first: reading one imports torch (a second)
    security = load_security(file.security, f"{where} [security]", path.parent,
                             server_secret=flags.role in BINDING_ROLES)
    endpoints, ipc_dir = pipeline_endpoints(file.endpoints, security, where)
    video = writable_video(file.overlay.output)
    clips = clips_config(file.clips)
    store = store_config(file.store, file.teach)
    model = model_choice(file.model, preprocess_of, where)
    events = event_config(file.events, model.labels, f"{where} [events]")
    same_host = all(e.startswith("ipc://") for e in (endpoints.windows, endpoints.work))  # frames in shared memory
    frames_port = (file.endpoints.frames_port if file.endpoints is not None and file.pipeline.shared_memory
                   and not same_host else None)  # on one host the workers read the store themselves
    frame_store = store_prefix(endpoints.windows) if (same_host or frames_port) and file.pipeline.shared_memory else ""
    captures = capture_configs(file.sources, CaptureCommon(
        endpoints, security, model.size, model.num_frames, model.frame_interval, model.hop, file.pipeline.offline,
        display=bool(video) or _window(file), web=web_listen(file.web) is not None, clips=clips is not None,
        display_width=file.overlay.display_width, frame_store=frame_store, frames_port=frames_port or 0,
        advertise=advertised_host(flags.advertise) if frames_port else ""), where)
    kinds = _source_kinds(captures)
    streams = tuple(kinds)
    for stream in file.teach.streams:
        if stream not in kinds:
            raise ConfigError(f"{where} [teach] streams: {stream!r} is not a source's name ({', '.join(streams)})")
    embed = (file.teach.streams or ("*",)) if store is not None and store.keep_windows_h else ()
    if file.pipeline.offline and any(kind != "file" for kind in kinds.values()):
        raise ConfigError("--offline reads files as fast as the workers take them; every source must be a file")
    dispatch = DispatchConfig(
        endpoints=endpoints, streams=streams, finite_streams=tuple(s for s, k in kinds.items() if k == "file"),
        labels=model.checkpoint_labels, offline=file.pipeline.offline, events=events, clips=clips, store=store,
        security=security, checkpoint=model.checkpoint, adapter=model.adapter,
        events_path=writable_file(file.events.path, "event log (--events)"),
        heartbeat_timeout_s=file.pipeline.heartbeat_timeout_s)
    sockets, panel_top = {"endpoints": endpoints, "security": security}, min(events.top_k, 5)
    return PipelineConfig(
        captures=captures, dispatch=dispatch,
        workers=worker_configs(file, model, endpoints, security, frame_store, events.top_k, where, embed),
        overlay=OverlayConfig(streams=streams, window=_window(file), output=video, fps=file.overlay.fps,
                              every_frame=file.pipeline.offline and bool(video) and len(streams) == 1,
                              top_k=panel_top, **sockets) if video or _window(file) else None,
        web=web_config(file.web, flags.web, where, default_file=path.resolve() == default_config(),
                       streams=tuple(kinds.items()), top_k=panel_top, store=store, checkpoint=model.checkpoint,
                       labels=model.checkpoint_labels, **sockets)
        if flags.role in (None, "web") else None,
        sinks=sinks_config(file, endpoints, security, streams, model.labels, where)
        if flags.role in (None, "sinks") else None,
        clips=ClipStageConfig(clips=clips, streams=streams, span=window_span(model.num_frames, model.frame_interval),
                              top_k=panel_top, end_lag_s=events.end_hold_s + events.merge_gap_s,
                              **sockets) if clips else None,
        duration_s=file.pipeline.duration, security=security, source_file=where,
        fixed_endpoints=file.endpoints is not None, ipc_dir=ipc_dir)


def event_config(table: EventsTable, labels: tuple[str, ...], where: str) -> EventConfig:
    """``[events]``, with ``[events.labels."LABEL"]`` tables for labels of the model that need their own
    thresholds (a key left out is ``[events]``'s)."""
    own = []
    for label, raw in table.labels.items():
        here = f'{where.removesuffix(" [events]")} [events.labels."{label}"]'
        thresholds = read_table(raw, LabelEventsTable, here, brackets=False)
        if labels and label not in labels:
            raise ConfigError(f"{here}: {label!r} is not a label of the model; its labels are "
                              f"{', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''}")
        own.append((label, _built(here, LabelThresholds,
                                  start_threshold=thresholds.start_threshold or table.start_threshold,
                                  end_threshold=thresholds.end_threshold or table.end_threshold)))
    return _built(where, EventConfig, smoothing=table.smoothing, top_k=table.top_k,
                  start_threshold=table.start_threshold, end_threshold=table.end_threshold,
                  end_hold_s=table.end_hold_s, merge_gap_s=table.merge_gap_s, min_duration_s=table.min_duration_s,
                  labels=tuple(own))


def store_config(table: StoreTable, teach: TeachTable) -> StoreConfig | None:
    """``[store]`` (``--store FILE|off`` laid over its path) with ``[teach]``'s windows: None when off; a file
    that exists must be a store this code can use (checked read-only, nothing is made)."""
    if table.path in ("", "off"):
        return None
    path = writable_file(table.path, "action store (--store)")
    check_store(path)
    return StoreConfig(path=path, keep_days=table.keep_days, max_bytes=table.max_bytes,
                       keep_windows_h=teach.keep_h, windows_max_bytes=teach.max_bytes)


def advertised_host(flag: str | None) -> str:
    """The address workers on other hosts reach this host's captures at: ``--advertise``, else the address
    this host's name resolves to (a pod's own IP in Kubernetes, a container's on a compose network)."""
    import socket

    if flag:
        return flag
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        raise ConfigError("[endpoints] frames_port: this host's name does not resolve to an address; tell the "
                          "workers where to fetch frames with --advertise HOST") from None


def read_config(path: Path, flags: Overrides) -> ConfigFile:
    """The file, with the flags laid over it, as its tables; anything wrong is one ConfigError."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing TOML file to --config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None
    return read_table(raw, ConfigFile, str(path), _lay_flags(raw, flags))


def _lay_flags(raw: dict, flags: Overrides) -> dict[tuple[str, str], str]:
    """Put each flag given into the table it overrides; returns ``(table, key) → flag`` for the messages."""
    named = {}
    for flag, (table, key) in FLAG_KEYS.items():
        value = getattr(flags, flag)
        if value is not None and isinstance(raw.setdefault(table, {}), dict):
            raw[table][key] = value
            named[table, key] = f"--{flag}"
    for flag in ("offline", "headless"):
        if getattr(flags, flag) and isinstance(raw.setdefault("pipeline", {}), dict):
            raw["pipeline"][flag] = True
    if flags.sources:
        raw["sources"] = [{"spec": spec} for spec in flags.sources]
    return named


def model_choice(table: ModelTable, preprocess_of, where: str) -> ModelChoice:
    """The checkpoint (a relative path is also looked for in the repository) and its window sampling."""
    where = f"{where} [model]"
    checkpoint = table.checkpoint
    if not Path(checkpoint).is_absolute() and not Path(checkpoint).exists() and (REPO / checkpoint).exists():
        checkpoint = str(REPO / checkpoint)
    preprocess, labels = preprocess_of(checkpoint)
    num_frames = table.num_frames or preprocess.num_frames
    frame_interval = table.frame_interval or preprocess.frame_interval
    if (span := window_span(num_frames, frame_interval)) > MAX_SPAN:
        raise ConfigError(f"{where}: a window of {num_frames} frames {frame_interval} apart spans "
                          f"{span} source frames; at most {MAX_SPAN} fit the ring buffer")
    flips = check_flip_views(table.flip_views, where) if table.flip_views is not None else preprocess.flip_views
    labels = own = tuple(labels or ())
    if table.adapter:
        from workers.adapter import load_adapter

        labels += load_adapter(table.adapter, checkpoint, list(labels)).labels
    return ModelChoice(checkpoint=checkpoint, labels=labels, size=preprocess.size, num_frames=num_frames,
                       frame_interval=frame_interval, hop=table.hop or max(1, frame_interval), flip_views=flips,
                       adapter=table.adapter, checkpoint_labels=own)


def pipeline_endpoints(table: EndpointsTable | None, security: Security, where: str) -> tuple[Endpoints, str]:
    """The file's endpoints, the others private ipc:// sockets in a folder of this run (so that pipelines
    side by side never collide): the endpoints and that folder ("" when the file names every endpoint).
    The folder is named, not made."""
    named = {name: getattr(table, name) for name in ENDPOINT_NAMES if table is not None and getattr(table, name)}
    folder = "" if len(named) == len(ENDPOINT_NAMES) else os.path.join(
        tempfile.gettempdir(), f"tss-{os.getpid()}-{secrets.token_hex(4)}")
    endpoints = Endpoints(**{name: check_endpoint(named.get(name) or f"ipc://{folder}/{name}",
                                                  f"{where} [endpoints] {name}", security)
                             for name in ENDPOINT_NAMES}, bind_host=table.bind_host or "" if table else "")
    for name in ENDPOINT_NAMES if endpoints.bind_host else ():
        check_endpoint(endpoints.bound(name), f"{where} [endpoints] bind_host", security)
    return endpoints, folder


def worker_configs(file: ConfigFile, model: ModelChoice, endpoints: Endpoints, security: Security,
                   frame_store: str, top_k: int, where: str, embed: tuple[str, ...] = ()) -> tuple[WorkerConfig, ...]:
    """``[pipeline] workers`` of them, alike but for their name and index."""
    table, count = file.model, file.pipeline.workers
    worker = _built(f"{where} [model]", WorkerConfig, name="worker-0", endpoints=endpoints, checkpoint=model.checkpoint,
                    adapter=model.adapter,
                    device=table.device, precision=table.precision, backend=table.backend,
                    calibration=_calibration(table, model.labels, f"{where} [model]"), max_batch=table.max_batch,
                    threads=table.threads, top_k=top_k, delay_s=table.delay_s, flip_views=model.flip_views,
                    embed_streams=embed, workers_on_host=count, frame_store=frame_store, security=security)
    return tuple(replace(worker, name=f"worker-{i}", index=i) for i in range(count))


def _calibration(table: ModelTable, labels: tuple[str, ...], where: str) -> str:
    """int8 calibrates on the model's own data: ``synthetic`` for models of the
    demo's actions, else a folder the config names; without one, int8 is refused here."""
    value = table.calibration
    if table.precision != "int8":  # int8 is static and calibrated whatever the backend (workers.runtime)
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


def writable_video(value: str) -> str | None:
    """The annotated video's file: writable, and of a container the overlay writes H.264 into."""
    output = writable_file(value, "annotated video (--output)")
    if output and Path(output).suffix.lower() not in VIDEO_OUT_SUFFIXES:
        raise ConfigError(f"annotated video (--output) {output}: name it .mp4 (or "
                          f"{', '.join(VIDEO_OUT_SUFFIXES[1:])}); the container is chosen by the file's suffix")
    return output


def _window(file: ConfigFile) -> bool:
    return file.overlay.window and not file.pipeline.headless


def sinks_config(file: ConfigFile, endpoints: Endpoints, security: Security, streams: tuple[str, ...],
                 labels: tuple[str, ...], where: str) -> SinksConfig | None:
    mqtt, webhooks = mqtt_config(file.mqtt, where), webhook_configs(file.webhooks, where)
    if mqtt is None and not webhooks:
        return None
    return SinksConfig(endpoints=endpoints, security=security, streams=streams, labels=labels, mqtt=mqtt,
                       webhooks=webhooks)


def writable_file(value: str, what: str) -> str | None:
    """A file the pipeline will write (event log, annotated video), checked before any stage starts without
    making anything: a folder, a file where a folder must be, or an unwritable place is a ConfigError now
    rather than a failed stage later ("" is no file)."""
    if not value:
        return None
    if "\x00" in value:
        raise ConfigError(f"{what} {value!r}: not a usable file name")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {value}: is a folder; name a file in it")
    folder = path.absolute().parent
    while not folder.exists():  # the folders still missing are made by the stage that writes the file
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{what} {value}: {folder} is a file, not a folder; pick a writable path")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{what} {value}: not writable; pick a writable path")
    return str(path)


def _source_kinds(captures: tuple[CaptureConfig, ...]) -> dict[str, str]:
    """Every stream, in config order, and the kind of its source (file, rtsp, webcam, synthetic)."""
    from streamer.video.sources import parse_source

    return {stream: parse_source(c.source) for c in captures for stream in c.look.streams(c.stream)}


def _built(where: str, config: type, **fields):
    """``config(**fields)``, its ConfigError naming ``where``."""
    try:
        return config(**fields)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
