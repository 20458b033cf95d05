"""Which endpoints a config may name: loopback and ipc:// always, other hosts only with CurveZMQ keys or
plaintext allowed (``[security]``, :class:`streamer.config.network.Security`)."""

from urllib.parse import urlparse

from streamer.config.network import Security, is_loopback
from streamer.errors import ConfigError


def check_endpoint(address: str, where: str, security: Security) -> str:
    """Loopback and ipc:// only, unless keys are configured or plaintext is explicitly allowed."""
    parsed = urlparse(address)
    if parsed.scheme == "ipc":
        return address
    if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
        raise ConfigError(f"{where}: endpoint {address!r} must look like tcp://127.0.0.1:5555 or ipc:///path")
    if not is_loopback(parsed.hostname) and not security.curve and not security.allow_plaintext:
        raise ConfigError(
            f"{where}: endpoint {address!r} is reachable from other hosts; set [security] keys "
            "(python -m streamer.transport.keys DIR) or allow_plaintext = true"
        )
    return address
