"""``[security]`` in the config: who may connect when stages listen beyond loopback.

Binding beyond loopback needs CurveZMQ keys (``python -m streamer.transport.keys DIR`` makes them) or an
explicit opt-in to plaintext; ``load_security`` reads the key files named in the table.
"""

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from streamer.errors import ConfigError
from streamer.transport.keys import KEY_CHARS, is_z85_key, read_key_file
from streamer.config.toml import get_value


@dataclass(frozen=True)
class Security:
    """Binding beyond loopback needs CurveZMQ keys, or an explicit opt-in to plaintext.

    Keys are Z85 text, read by ``load_config`` from the files ``python -m streamer.transport.keys`` makes.
    With keys every socket is encrypted (``streamer.transport.sockets``): binding stages prove they hold
    the server secret, connecting stages use the client pair, and a binding stage accepts only
    clients whose public key is in ``allowed_clients``. Secrets stay out of ``repr``.
    """

    allow_plaintext: bool = False
    server_public_key: str = ""
    server_secret_key: str = field(default="", repr=False)  # only hosts that bind need it
    client_public_key: str = ""
    client_secret_key: str = field(default="", repr=False)
    allowed_clients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = {"server_public_key": self.server_public_key, "server_secret_key": self.server_secret_key,
                "client_public_key": self.client_public_key, "client_secret_key": self.client_secret_key}
        keys.update({f"allowed_clients[{i}]": key for i, key in enumerate(self.allowed_clients)})
        for name, key in keys.items():
            if key and not is_z85_key(key):
                raise ConfigError(f"[security] {name}: not a {KEY_CHARS}-character Z85 key")
        if any(keys.values()):
            missing = [name for name in ("server_public_key", "client_public_key", "client_secret_key")
                       if not keys[name]]
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


def _key_path(value: str, base: Path) -> Path:
    """As given (relative to the working folder), else relative to the config file's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path
    return base / path


def _allowed_clients(value, where: str, base: Path) -> tuple[str, ...]:
    """Public keys from files and folders (every ``*.key`` in a folder), in order, without repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where}: 'allowed_clients' must be a key file, a folder of .key files, "
                          f"or a list of them; got {value!r}")
    keys: list[str] = []
    for item in items:
        path = _key_path(item, base)
        files = sorted(path.glob("*.key")) if path.is_dir() else [path]
        if not files:
            raise ConfigError(f"{where}: allowed_clients folder {str(path)!r} holds no .key files")
        for file in files:
            public, _ = read_key_file(file, secret=False, where=f"{where} allowed_clients")
            if public not in keys:
                keys.append(public)
    return tuple(keys)


def load_security(table: dict, where: str, base: Path) -> Security:
    """The ``[security]`` table: key files → Z85 keys, each file error naming the file and the key."""
    allow_plaintext = get_value(table, "allow_plaintext", bool, False, where)
    paths = {name: get_value(table, name, str, "", where)
             for name in ("server_public_key", "server_secret_key", "client_secret_key")}
    allowed = table.get("allowed_clients", [])
    if not isinstance(allowed, (str, list)):
        raise ConfigError(f"{where}: 'allowed_clients' must be a key file, a folder of .key files, "
                          f"or a list of them; got {allowed!r}")
    if not any(paths.values()) and not allowed:
        return Security(allow_plaintext=allow_plaintext)
    if not paths["server_public_key"] and not paths["server_secret_key"]:
        raise ConfigError(f"{where}: keys need server_public_key (the server.key file); "
                          "python -m streamer.transport.keys DIR prints every line")
    if not paths["client_secret_key"]:
        raise ConfigError(f"{where}: keys need client_secret_key (the client.key_secret file): every host "
                          "connects somewhere; python -m streamer.transport.keys DIR prints every line")
    keys = {name: read_key_file(_key_path(value, base), secret=name.endswith("secret_key"),
                                where=f"{where} {name}")
            for name, value in paths.items() if value}
    server_public = keys.get("server_public_key", ("", ""))[0]
    server_public_of_secret, server_secret = keys.get("server_secret_key", ("", ""))
    if server_public and server_public_of_secret and server_public != server_public_of_secret:
        raise ConfigError(f"{where}: server_public_key {paths['server_public_key']!r} is not the public half of "
                          f"server_secret_key {paths['server_secret_key']!r}")
    client_public, client_secret = keys["client_secret_key"]
    allowed_keys = _allowed_clients(allowed, where, base) if allowed else (client_public,)
    return Security(allow_plaintext=allow_plaintext, server_public_key=server_public or server_public_of_secret,
                    server_secret_key=server_secret, client_public_key=client_public,
                    client_secret_key=client_secret, allowed_clients=allowed_keys)
