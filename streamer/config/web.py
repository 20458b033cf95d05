"""``[web]`` and ``--web HOST:PORT``: where the web stage listens, checked (and bound) before anything starts."""

from __future__ import annotations

import ipaddress

from streamer.config.load_outputs import secret_value
from streamer.config.stages import WebConfig
from streamer.config.tables import WebTable
from streamer.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) → (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: listen address {value!r} must be HOST:PORT, e.g. 127.0.0.1:8080, "
                          "or off")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{where}: listen address {value!r}: {host!r} is not an IP address; use "
                              "127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its "
                              "addresses") from None
    return host, int(port)


def web_listen(table: WebTable | None) -> str | None:
    """The listen address asked for (a ``[web]`` table, or ``--web``, without one listens on the default),
    or None when the web stage is off."""
    if table is None:
        return None
    listen = table.listen if table.listen is not None else DEFAULT_LISTEN
    return None if listen == "off" else listen


def web_config(table: WebTable | None, flag: str | None, where: str, *, default_file: bool,
               **pipeline) -> WebConfig | None:
    """The web stage's config from ``[web]`` (``--web`` already laid over its ``listen``); None when it is off.

    ``pipeline`` gives the fields that come from elsewhere in the config (endpoints, security, streams,
    top_k). Listening beyond loopback without a token is refused (by :class:`WebConfig`).
    """
    listen = web_listen(table)
    if listen is None:
        return None
    where = "--web" if flag is not None else f"{where} [web]"
    host, port = parse_listen(listen, where)
    try:
        token = secret_value(table.token, table.token_env, "token", where)
        return WebConfig(host=host, port=port, token=token, jpeg_quality=table.jpeg_quality,
                         max_fps=table.max_fps, events_kept=table.events_kept,
                         required=flag is not None or not default_file, **pipeline)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def bind_listener(config: WebConfig):
    """The web stage's listening socket, bound now so that a taken port is known before anything starts.

    Raises:
        OSError: the address cannot be bound (taken, or not an address of this machine).
    """
    import socket

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock
