"""``[security]`` → :class:`~streamer.config.network.Security`: the key files it names, read and matched.

Binding beyond loopback needs CurveZMQ keys (``python -m streamer.transport.keys DIR`` makes them and prints
the table) or an explicit opt-in to plaintext. Every file error names the file and the key.
"""

from __future__ import annotations

from pathlib import Path

from streamer.config.network import Security
from streamer.config.tables import SecurityTable
from streamer.errors import ConfigError
from streamer.transport.keys import read_key_file

SEE_KEYS = "python -m streamer.transport.keys DIR prints every line"


def load_security(table: SecurityTable, where: str, base: Path, server_secret: bool = True) -> Security:
    """The keys ``table`` names; a relative file is looked for in the working folder, then in ``base``
    (the config file's folder). Without ``server_secret`` (a stage that only connects) the server's
    secret key is not read, so a host or container that binds nothing need not hold it."""
    paths = {"server_public_key": table.server_public_key,
             "server_secret_key": table.server_secret_key if server_secret else "",
             "client_secret_key": table.client_secret_key}
    allowed = tuple(filter(None, [table.allowed_clients] if isinstance(table.allowed_clients, str)
                           else table.allowed_clients))
    if not any(paths.values()) and not allowed:
        return Security(allow_plaintext=table.allow_plaintext)
    if not paths["server_public_key"] and not paths["server_secret_key"]:
        raise ConfigError(f"{where}: keys need server_public_key (the server.key file); {SEE_KEYS}")
    if not paths["client_secret_key"]:
        raise ConfigError(f"{where}: keys need client_secret_key (the client.key_secret file): every host "
                          f"connects somewhere; {SEE_KEYS}")
    keys = {name: read_key_file(_key_path(value, base), secret=name.endswith("secret_key"), where=f"{where} {name}")
            for name, value in paths.items() if value}
    server_public = keys.get("server_public_key", ("", ""))[0]
    server_public_of_secret, server_secret = keys.get("server_secret_key", ("", ""))
    if server_public and server_public_of_secret and server_public != server_public_of_secret:
        raise ConfigError(f"{where}: server_public_key {paths['server_public_key']!r} is not the public half of "
                          f"server_secret_key {paths['server_secret_key']!r}")
    client_public, client_secret = keys["client_secret_key"]
    try:
        return Security(allow_plaintext=table.allow_plaintext,
                        server_public_key=server_public or server_public_of_secret, server_secret_key=server_secret,
                        client_public_key=client_public, client_secret_key=client_secret,
                        allowed_clients=_allowed_clients(allowed, where, base) if allowed else (client_public,))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _key_path(value: str, base: Path) -> Path:
    """As given (relative to the working folder), else relative to the config file's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (base / path).exists():
        return path
    return base / path


def _allowed_clients(items: tuple[str, ...], where: str, base: Path) -> tuple[str, ...]:
    """Public keys from files and folders (every ``*.key`` in a folder), in order, without repeats."""
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
