"""``[mqtt]``, ``[[webhooks]]`` and ``[clips]`` (contract 6) → their stage configs: what a URL must look like
and where secrets come from; the bounds are the tables' own (:mod:`streamer.config.tables`)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from streamer.config.sinks import ClipsConfig, MqttConfig, WebhookConfig
from streamer.config.tables import ClipsTable, MqttTable, WebhookTable
from streamer.errors import ConfigError


def secret_value(value: str, variable: str, key: str, where: str) -> str:
    """``key``'s value, or the environment variable ``key_env`` names (so that the config file holds no secret)."""
    if not variable:
        return value
    if value:
        raise ConfigError(f"{where}: set '{key}' or '{key}_env', not both")
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"{where}: '{key}_env' names {variable}, which is not set in the environment")
    return value


def mqtt_config(table: MqttTable | None, where: str) -> MqttConfig | None:
    if table is None:
        return None
    where = f"{where} [mqtt]"
    parts = urlsplit(table.url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise ConfigError(f"{where}: 'url' must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {table.url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: put the user in 'username' and the password in 'password' or 'password_env', "
                          "not in the URL (URLs end up in logs)")
    tls = parts.scheme == "mqtts"
    return MqttConfig(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls, username=table.username,
                      password=secret_value(table.password, table.password_env, "password", where),
                      topic_prefix=table.topic_prefix, qos=table.qos, client_id=table.client_id,
                      discovery=table.discovery, discovery_prefix=table.discovery_prefix, queue=table.queue)


def webhook_configs(tables: tuple[WebhookTable, ...], where: str) -> tuple[WebhookConfig, ...]:
    hooks = []
    for i, table in enumerate(tables):
        here = f"{where} [[webhooks]] #{i + 1}"
        parts = urlsplit(table.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{here}: 'url' must be http://... or https://..., got {table.url!r}")
        hooks.append(WebhookConfig(url=table.url, events=tuple(dict.fromkeys(table.events)),
                                   secret=secret_value(table.secret, table.secret_env, "secret", here),
                                   timeout_s=table.timeout_s, retries=table.retries, queue=table.queue))
    return tuple(hooks)


def clips_config(table: ClipsTable | None) -> ClipsConfig | None:
    """A relative ``dir`` is taken from the working folder, as the event log's path is."""
    if table is None:
        return None
    return ClipsConfig(dir=table.dir.rstrip("/") or "/", pre_s=table.pre_s, post_s=table.post_s,
                       annotated=table.annotated, max_s=table.max_s, keep_days=table.keep_days,
                       max_bytes=table.max_bytes)
