"""``[mqtt]``, ``[[webhooks]]`` and ``[clips]`` in the config (contract 6), checked before any stage starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from streamer.errors import ConfigError

if TYPE_CHECKING:
    from streamer.config.loader import Endpoints, Security

MQTT_KEYS = {"url", "username", "password", "password_env", "topic_prefix", "qos", "client_id", "discovery",
             "discovery_prefix", "queue"}
WEBHOOK_KEYS = {"url", "events", "secret", "secret_env", "timeout_s", "retries", "queue"}
CLIP_KEYS = {"dir", "pre_s", "post_s", "annotated", "max_s", "keep_days", "max_bytes"}
EVENT_KINDS = ("start", "end")


@dataclass(frozen=True)
class MqttConfig:
    """A broker that gets every action event, per-camera state and availability (contract 6)."""

    host: str
    port: int
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    topic_prefix: str = "timesformer"
    qos: int = 1
    client_id: str = ""
    discovery: bool = False          # Home Assistant MQTT discovery: one binary sensor per stream and label
    discovery_prefix: str = "homeassistant"
    queue: int = 10_000              # messages held while the broker is away; more are dropped and counted

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class WebhookConfig:
    """An HTTP endpoint that gets each start and end line POSTed as JSON."""

    url: str
    events: tuple[str, ...] = EVENT_KINDS
    secret: str = field(default="", repr=False)  # HMAC-SHA256 key for X-Signature-256
    timeout_s: float = 5.0
    retries: int = 3
    queue: int = 1000

    @property
    def where(self) -> str:
        """The URL without credentials or query (which may hold a token): safe for logs."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class ClipsConfig:
    """One MP4 per action, from ``pre_s`` before its first window to ``post_s`` after its end (contract 6)."""

    dir: str
    pre_s: float = 2.0
    post_s: float = 2.0
    annotated: bool = True        # the overlay's drawing on the frames; False: the plain frames
    max_s: float = 120.0          # a longer action's clip is cut here
    keep_days: float = 0.0        # 0: keep forever
    max_bytes: int = 0            # 0: no cap; else the oldest clips go first

    def path(self, stream: str, event_id: str) -> str:
        """Where the clip of action ``event_id`` goes (what its end line names in ``"clip"``)."""
        return os.path.join(self.dir, stream, f"{event_id}.mp4")


@dataclass(frozen=True)
class ClipStageConfig:
    """The clips stage: display frames of every stream (on ``endpoints.clips``) and the dispatcher's lines."""

    clips: ClipsConfig
    endpoints: Endpoints
    security: Security
    streams: tuple[str, ...]
    span: int                     # source frames one window covers: the start line's frame minus span + 1
    top_k: int = 5


@dataclass(frozen=True)
class SinksConfig:
    """The sinks stage: MQTT and webhooks, fed by the dispatcher's event-log lines."""

    endpoints: Endpoints
    security: Security
    streams: tuple[str, ...]
    labels: tuple[str, ...]
    mqtt: MqttConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()


def _check(table: dict, keys: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(keys))}")


def _typed(table: dict, key: str, kind, default, where: str):
    value = table.get(key, default)
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        name = {str: "text", bool: "true or false", int: "an integer", (int, float): "a number"}.get(kind, str(kind))
        raise ConfigError(f"{where}: '{key}' must be {name}, got {value!r}")
    if kind == (int, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return value


def _secret(table: dict, key: str, where: str) -> str:
    """``key``, or the environment variable ``key_env`` names (so that the config file holds no secret)."""
    value = _typed(table, key, str, "", where)
    variable = _typed(table, f"{key}_env", str, "", where)
    if variable:
        if value:
            raise ConfigError(f"{where}: set '{key}' or '{key}_env', not both")
        value = os.environ.get(variable, "")
        if not value:
            raise ConfigError(f"{where}: '{key}_env' names {variable}, which is not set in the environment")
    return value


def load_mqtt(table: dict | None, where: str) -> MqttConfig | None:
    if table is None:
        return None
    where = f"{where} [mqtt]"
    _check(table, MQTT_KEYS, where)
    url = _typed(table, "url", str, "", where)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise ConfigError(f"{where}: 'url' must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: put the user in 'username' and the password in 'password' or 'password_env', "
                          "not in the URL (URLs end up in logs)")
    tls = parts.scheme == "mqtts"
    prefix = _typed(table, "topic_prefix", str, "timesformer", where)
    if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"{where}: 'topic_prefix' {prefix!r} must be a topic without +, # or leading/trailing /")
    qos = _typed(table, "qos", int, 1, where)
    if qos not in (0, 1, 2):
        raise ConfigError(f"{where}: 'qos' must be 0, 1 or 2, got {qos!r}")
    queue = _typed(table, "queue", int, 10_000, where)
    if not 1 <= queue <= 1_000_000:
        raise ConfigError(f"{where}: 'queue' must be 1..1000000 messages, got {queue}")
    discovery_prefix = _typed(table, "discovery_prefix", str, "homeassistant", where)
    if not discovery_prefix or any(c in discovery_prefix for c in "+#\0"):
        raise ConfigError(f"{where}: 'discovery_prefix' {discovery_prefix!r} is not a topic")
    return MqttConfig(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                      username=_typed(table, "username", str, "", where), password=_secret(table, "password", where),
                      topic_prefix=prefix, qos=qos, client_id=_typed(table, "client_id", str, "", where),
                      discovery=_typed(table, "discovery", bool, False, where), discovery_prefix=discovery_prefix,
                      queue=queue)


def load_webhooks(tables, where: str) -> tuple[WebhookConfig, ...]:
    if tables is None:
        return ()
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: webhooks must be [[webhooks]] tables")
    hooks = []
    for i, table in enumerate(tables):
        here = f"{where} [[webhooks]] #{i + 1}"
        _check(table, WEBHOOK_KEYS, here)
        url = _typed(table, "url", str, "", here)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{here}: 'url' must be http://... or https://..., got {url!r}")
        events = table.get("events", list(EVENT_KINDS))
        if not isinstance(events, list) or not events or any(e not in EVENT_KINDS for e in events):
            raise ConfigError(f"{here}: 'events' must be a list of {' and '.join(EVENT_KINDS)}, got {events!r}")
        timeout = _typed(table, "timeout_s", (int, float), 5.0, here)
        retries = _typed(table, "retries", int, 3, here)
        queue = _typed(table, "queue", int, 1000, here)
        if not 0 < timeout <= 300 or not 0 <= retries <= 20 or not 1 <= queue <= 1_000_000:
            raise ConfigError(f"{here}: 'timeout_s' must be in (0, 300], 'retries' 0..20 and 'queue' 1..1000000")
        hooks.append(WebhookConfig(url=url, events=tuple(dict.fromkeys(events)), secret=_secret(table, "secret", here),
                                   timeout_s=float(timeout), retries=retries, queue=queue))
    return tuple(hooks)


def load_clips(table: dict | None, where: str) -> ClipsConfig | None:
    """A relative ``dir`` is taken from the working folder, as the event log's path is."""
    if table is None:
        return None
    where = f"{where} [clips]"
    _check(table, CLIP_KEYS, where)
    folder = _typed(table, "dir", str, "", where)
    if not folder or "\0" in folder:
        raise ConfigError(f"{where}: 'dir' must name a folder for the clips")
    numbers = {key: float(_typed(table, key, (int, float), default, where))
               for key, default in (("pre_s", 2.0), ("post_s", 2.0), ("max_s", 120.0), ("keep_days", 0.0))}
    if not 0 <= numbers["pre_s"] <= 60 or not 0 <= numbers["post_s"] <= 60:
        raise ConfigError(f"{where}: 'pre_s' and 'post_s' must be 0..60 seconds")
    if not 1 <= numbers["max_s"] <= 3600 or numbers["keep_days"] < 0:
        raise ConfigError(f"{where}: 'max_s' must be 1..3600 seconds and 'keep_days' ≥ 0")
    max_bytes = _typed(table, "max_bytes", int, 0, where)
    if max_bytes < 0:
        raise ConfigError(f"{where}: 'max_bytes' must be ≥ 0 (0: no cap)")
    return ClipsConfig(dir=folder.rstrip("/") or "/", annotated=_typed(table, "annotated", bool, True, where),
                       max_bytes=max_bytes, **numbers)
