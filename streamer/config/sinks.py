"""The configs of the stages that send events out (contract 6): MQTT, webhooks and the clips stage."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta

from streamer.config.checks import check
from streamer.config.network import Endpoints, Security
from streamer.config.tables import (ClipLength, ClipSeconds, Count, EventKinds, Folder, HookTimeout, KeepDays, KeepHours,
                                    MaxBytes, Port, Queue, Retries, Topic, TopicRoot, TopK)

EVENT_KINDS = ("start", "end")


@dataclass(frozen=True)
class MqttConfig:
    """A broker that gets every action event, per-camera state and availability (contract 6)."""

    host: Annotated[str, Meta(min_length=1)]
    port: Port
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    topic_prefix: Topic = "timesformer"
    qos: Literal[0, 1, 2] = 1
    client_id: str = ""
    discovery: bool = False          # Home Assistant MQTT discovery: one binary sensor per stream and label
    discovery_prefix: TopicRoot = "homeassistant"
    queue: Queue = 10_000            # messages held while the broker is away; more are dropped and counted

    def __post_init__(self) -> None:
        check(self)

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class WebhookConfig:
    """An HTTP endpoint that gets each start and end line POSTed as JSON."""

    url: Annotated[str, Meta(pattern=r"^https?://[^/?#]")]
    events: EventKinds = EVENT_KINDS
    secret: str = field(default="", repr=False)  # HMAC-SHA256 key for X-Signature-256
    timeout_s: HookTimeout = 5.0
    retries: Retries = 3
    queue: Queue = 1000

    def __post_init__(self) -> None:
        check(self)

    @property
    def where(self) -> str:
        """The URL without credentials or query (which may hold a token): safe for logs."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class ClipsConfig:
    """One MP4 per action, from ``pre_s`` before its first window to ``post_s`` after its end (contract 6)."""

    dir: Folder
    pre_s: ClipSeconds = 2.0
    post_s: ClipSeconds = 2.0
    annotated: bool = True        # the overlay's drawing on the frames; False: the plain frames
    max_s: ClipLength = 120.0     # a longer action's clip is cut here
    keep_days: KeepDays = 0.0     # 0: keep forever
    max_bytes: MaxBytes = 0       # 0: no cap; else the oldest clips go first

    def __post_init__(self) -> None:
        check(self)

    def path(self, stream: str, event_id: str) -> str:
        """Where the clip of action ``event_id`` goes (what its end line names in ``"clip"``)."""
        return os.path.join(self.dir, stream, f"{event_id}.mp4")


@dataclass(frozen=True)
class StoreConfig:
    """The action history (contract 8): one SQLite file, written by the dispatcher, read by the web stage."""

    path: Annotated[str, Meta(min_length=1, pattern=r"^[^\x00]*$")]
    keep_days: KeepDays = 0.0     # 0: keep forever
    max_bytes: MaxBytes = 0       # 0: no cap; else the oldest actions go first
    keep_windows_h: KeepHours = 0.0  # [teach] keep_h: hours of window embeddings kept to teach from (0: none)
    windows_max_bytes: MaxBytes = 0  # [teach] max_bytes: their cap; the oldest go first

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ClipStageConfig:
    """The clips stage: display frames of every stream (on ``endpoints.clips``) and the dispatcher's lines."""

    clips: ClipsConfig
    endpoints: Endpoints
    security: Security
    streams: tuple[str, ...]
    span: Count                   # source frames one window covers: the start line's frame minus span + 1
    top_k: TopK = 5
    end_lag_s: float = 0.0        # how far before the newest prediction an end line may name (end_hold_s + merge_gap_s)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class SinksConfig:
    """The sinks stage: MQTT and webhooks, fed by the dispatcher's event-log lines."""

    endpoints: Endpoints
    security: Security
    streams: tuple[str, ...]
    labels: tuple[str, ...]
    mqtt: MqttConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()

    def __post_init__(self) -> None:
        check(self)
