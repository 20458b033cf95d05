"""Where the stages meet and who may connect: :class:`Endpoints` and :class:`Security`, held by every stage
config. Standard library, msgspec and :mod:`streamer.errors` only, so the transport layer may use them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Annotated

from msgspec import Meta

from streamer.config.checks import check
from streamer.errors import ConfigError

Z85_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
KEY_CHARS = 40  # a 32-byte Curve25519 key in Z85
Key = Annotated[str, Meta(pattern=f"^(?:[{re.escape(''.join(sorted(Z85_CHARS)))}]{{{KEY_CHARS}}})?$",
                          description=f"a {KEY_CHARS}-character Z85 key (or empty)")]
ENDPOINT_NAMES = ("windows", "work", "results", "display", "web", "clips")


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ addresses. ``windows``/``work``/``results`` are bound by the dispatcher, ``display`` by the
    overlay, ``web`` (display frames for the web stage) by the web stage, ``clips`` by the clips stage.

    ``bind_host``: where a binding stage listens instead of its endpoint's host (same port), so that one
    config serves both sides when the endpoints name a service (``tcp://dispatcher:5550`` in a container
    network: connecting stages resolve the name, the dispatcher listens on ``0.0.0.0``)."""

    windows: str
    work: str
    results: str
    display: str
    web: str = ""
    clips: str = ""
    bind_host: str = ""

    def __post_init__(self) -> None:
        check(self)

    def bound(self, name: str) -> str:
        """The address a stage binds for endpoint ``name`` ("windows", "work"...)."""
        endpoint = getattr(self, name)
        scheme, _, rest = endpoint.partition("://")
        if not self.bind_host or scheme != "tcp":
            return endpoint
        return f"tcp://{self.bind_host}:{rest.rpartition(':')[2]}"


@dataclass(frozen=True)
class Security:
    """Binding beyond loopback needs CurveZMQ keys, or an explicit opt-in to plaintext.

    Keys are Z85 text, read by the loader from the files ``python -m streamer.transport.keys`` makes.
    With keys every socket is encrypted (``streamer.transport.sockets``): binding stages prove they hold
    the server secret, connecting stages use the client pair, and a binding stage accepts only
    clients whose public key is in ``allowed_clients``. Secrets stay out of ``repr``.
    """

    allow_plaintext: bool = False
    server_public_key: Key = ""
    server_secret_key: Key = field(default="", repr=False)  # only hosts that bind need it
    client_public_key: Key = ""
    client_secret_key: Key = field(default="", repr=False)
    allowed_clients: tuple[Key, ...] = ()

    def __post_init__(self) -> None:
        check(self)
        if any((self.server_public_key, self.server_secret_key, self.client_public_key, self.client_secret_key,
                self.allowed_clients)):
            missing = [name for name in ("server_public_key", "client_public_key", "client_secret_key")
                       if not getattr(self, name)]
            if missing:
                raise ConfigError(f"[security] with keys also needs {missing[0]}; "
                                  "python -m streamer.transport.keys DIR prints every line")
            if self.server_secret_key and not self.allowed_clients:
                raise ConfigError("[security] server_secret_key needs allowed_clients: the client public keys "
                                  "the binding stages accept")

    @property
    def curve(self) -> bool:
        """Keys are configured: every socket uses CurveZMQ."""
        return bool(self.server_public_key)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
