"""``[[sources]]`` (or ``--source``) → one :class:`~streamer.config.stages.CaptureConfig` per source, with
the names its streams go out under and where in its frames the model looks (contract 7)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import msgspec

from streamer.config.checks import read_table
from streamer.config.look import LookConfig, Region, TrackingConfig
from streamer.config.network import Endpoints, Security
from streamer.config.stages import CaptureConfig
from streamer.config.tables import LookTable, SourceTable, TrackingTable
from streamer.errors import ConfigError
from streamer.transport.messages import MAX_NAME
from streamer.video.readers import hwaccel_choices


@dataclass(frozen=True)
class CaptureCommon:
    """What every capture shares: the model's window sampling, the sockets, and who gets its frames."""

    endpoints: Endpoints
    security: Security
    size: int
    num_frames: int
    frame_interval: int
    hop: int
    offline: bool
    display: bool
    web: bool
    clips: bool
    display_width: int
    frame_store: str
    frames_port: int = 0  # source N serves its frames on this port + N (0: frames travel with the windows)
    advertise: str = ""  # the address workers reach this host's captures at


def capture_configs(tables: tuple[SourceTable, ...], common: CaptureCommon, where: str) -> tuple[CaptureConfig, ...]:
    """One capture per source, each named (its ``name``, else from its spec) and none named twice."""
    from streamer.video.sources import parse_source  # validates the spec; sources imports cv2, so import late

    if not tables:
        raise ConfigError(f"{where}: no sources; add [[sources]] spec = \"synthetic:\" or pass --source")
    taken: set[str] = set()
    captures = []
    for i, table in enumerate(tables):
        here = f"{where} [[sources]] #{i + 1}"
        kind = parse_source(table.spec)
        name = _stream_label(table.name, here, taken) or stream_name(table.spec, i, taken)
        look = look_config(table, f"{where} [[sources]] {name!r}")
        for stream in look.streams(name) if look.regions else ():
            _stream_label(stream, f"{where} [[sources]] {name!r}", taken)
        captures.append(CaptureConfig(
            stream=name, source=table.spec, endpoints=common.endpoints, size=common.size,
            num_frames=common.num_frames, frame_interval=common.frame_interval, hop=common.hop,
            offline=common.offline, display=common.display, web=common.web, clips=common.clips,
            display_width=common.display_width, open_timeout_s=table.open_timeout_s,
            read_timeout_s=table.read_timeout_s, hwaccel=_hwaccel(table.hwaccel, here, kind),
            frame_store=common.frame_store, security=common.security, look=look,
            **_frames_server(common, i, here)))
    return tuple(captures)


def _frames_server(common: CaptureCommon, index: int, where: str) -> dict[str, str]:
    """Where source ``index`` serves its window frames, when ``frames_port`` is set: advertised at this host's
    address, bound there too (or on ``bind_host``)."""
    if not common.frames_port:
        return {}
    from streamer.transport.security import check_endpoint

    port = common.frames_port + index
    bind = check_endpoint(f"tcp://{common.endpoints.bind_host or common.advertise}:{port}",
                          f"{where}: its frame server ([endpoints] frames_port)", common.security)
    return {"frames_bind": bind, "frames_advertise": f"tcp://{common.advertise}:{port}"}


def look_config(table: LookTable, where: str) -> LookConfig:
    """A source's ``regions``, ``crop``, ``track`` and ``tracking``; a bad combination is one ConfigError."""
    try:
        regions = tuple(Region(region.name, region.box) for region in table.regions)
        tracking = TrackingConfig(**msgspec.structs.asdict(table.tracking or TrackingTable())) if table.track else None
        return LookConfig(regions, table.crop, tracking)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def load_look(raw: dict, where: str) -> LookConfig:
    """:func:`look_config` of a table as ``tomllib`` gives it (a source's look keys alone)."""
    return look_config(read_table(raw, LookTable, where, brackets=False), where)


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


def _hwaccel(value: str, where: str, kind: str) -> str:
    if value not in hwaccel_choices():
        raise ConfigError(f"{where}: hwaccel {value!r} is not one of {', '.join(hwaccel_choices())}")
    if value != "none" and kind not in ("file", "rtsp"):
        raise ConfigError(f"{where}: hwaccel is for video files and RTSP cameras, not a {kind} source")
    return value
