"""``[web]`` in the config and ``--web HOST:PORT``: where the web stage listens and how it serves."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamer.errors import ConfigError
from streamer.transport.security import is_loopback

if TYPE_CHECKING:
    from streamer.config.loader import Endpoints, Security

DEFAULT_LISTEN = "127.0.0.1:8080"
KEYS = {"listen", "token", "jpeg_quality", "max_fps", "events_kept"}


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
    """

    host: str
    port: int
    endpoints: Endpoints
    security: Security
    streams: tuple[tuple[str, str], ...]
    token: str = field(default="", repr=False)
    jpeg_quality: int = 80
    max_fps: float = 30.0
    required: bool = True
    build: tuple[tuple[str, str], ...] = ()
    top_k: int = 5
    events_kept: int = 1000

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


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


def web_listen(table: dict, flag: str | None):
    """The listen address asked for (``--web`` wins over ``[web] listen``; a ``[web]`` table without one
    listens on the default), or None when the web stage is off."""
    listen = flag if flag is not None else table.get("listen", DEFAULT_LISTEN if table else None)
    return None if listen == "off" else listen


def load_web_config(table: dict, flag: str | None, where: str, *, default_file: bool, **pipeline) -> WebConfig | None:
    """The web stage's config from ``[web]`` and ``--web`` (which wins); None when it is off.

    ``pipeline`` gives the fields that come from elsewhere in the config (endpoints, security, streams,
    build, top_k). Listening beyond loopback without a token is refused.
    """
    listen = web_listen(table, flag)
    if listen is None:
        return None
    where = "--web" if flag is not None else f"{where} [web]"
    if not isinstance(listen, str):
        raise ConfigError(f"{where}: 'listen' must be text such as \"127.0.0.1:8080\" or \"off\", got {listen!r}")
    host, port = parse_listen(listen, where)
    token = table.get("token", "")
    if not isinstance(token, str) or (token and (len(token) < 16 or not token.isprintable() or " " in token)):
        raise ConfigError(f"{where}: 'token' must be at least 16 printable characters without spaces "
                          "(python -c 'import secrets; print(secrets.token_urlsafe())' makes one)")
    if not is_loopback(host) and not token:
        raise ConfigError(f"{where}: listening on {host} lets other machines in; set [web] token "
                          "(a long random string) or listen on 127.0.0.1")
    quality = table.get("jpeg_quality", 80)
    if type(quality) is not int or not 1 <= quality <= 100:
        raise ConfigError(f"{where}: 'jpeg_quality' must be an integer from 1 to 100, got {quality!r}")
    max_fps = table.get("max_fps", 30.0)
    if type(max_fps) not in (int, float) or not math.isfinite(max_fps) or not 0 < max_fps <= 240:
        raise ConfigError(f"{where}: 'max_fps' must be a number in (0, 240], got {max_fps!r}")
    kept = table.get("events_kept", 1000)
    if type(kept) is not int or not 1 <= kept <= 100_000:
        raise ConfigError(f"{where}: 'events_kept' must be an integer from 1 to 100000, got {kept!r}")
    return WebConfig(host=host, port=port, token=token, jpeg_quality=quality, max_fps=float(max_fps),
                     events_kept=kept, required=flag is not None or not default_file, **pipeline)


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
