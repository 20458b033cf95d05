"""CurveZMQ key pairs for a pipeline spread over hosts: ``python -m streamer.transport.keys DIR``.

Writes a server and a client key pair as ZeroMQ certificates (Z85 text, the format of
``zmq.auth.create_certificates`` and czmq), secret files created 0600 from the start so no
other user can ever read them, and prints the ``[security]`` lines for the config:

    python -m streamer.transport.keys keys            # keys/server.key(_secret), keys/client.key(_secret)
    python -m streamer.transport.keys keys --force    # new keys: every host then needs the new files

``read_key_file`` is the one reader of those files (the config uses it), so a missing or
malformed key is one clear error before any process starts.
"""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import zmq

from streamer.config.network import KEY_CHARS, Z85_CHARS
from streamer.errors import USAGE_ERROR, ConfigError, UsageParser

PAIRS = ("server", "client")


def is_z85_key(text: str) -> bool:
    return len(text) == KEY_CHARS and set(text) <= Z85_CHARS


def read_key_file(path: Path, *, secret: bool, where: str) -> tuple[str, str]:
    """``(public, secret)`` Z85 keys from a certificate file; ``secret`` is "" for a public file.

    Accepts a ZeroMQ certificate (``public-key = "..."``/``secret-key = "..."`` lines) or a file
    holding one bare Z85 key. With ``secret=True`` the file must hold the secret key; the public
    key is derived from it and checked against the one written beside it.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: key file {str(path)!r} not found; make keys with "
                          "python -m streamer.transport.keys DIR and name the files it prints") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {str(path)!r} is not a key file (binary data); name a file made by "
                          "python -m streamer.transport.keys") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read key file {str(path)!r} ({err.strerror or err})") from None
    found: dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines()]
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() in ("public-key", "secret-key"):
            found[name.strip()] = value.strip().strip("\"'")
    bare = [line for line in lines if is_z85_key(line)]  # a Z85 key may start with '#': not a comment
    if not found and len(bare) == 1:
        found["secret-key" if secret else "public-key"] = bare[0]
    for name, value in found.items():
        if not is_z85_key(value):
            raise ConfigError(f"{where}: {name} in {str(path)!r} is not a {KEY_CHARS}-character Z85 key; "
                              "make keys with python -m streamer.transport.keys DIR")
    public, private = found.get("public-key", ""), found.get("secret-key", "")
    if secret:
        if not private:
            raise ConfigError(f"{where}: {str(path)!r} holds no secret-key; name the .key_secret file "
                              "made by python -m streamer.transport.keys")
        derived = zmq.curve_public(private.encode()).decode()
        if public and public != derived:
            raise ConfigError(f"{where}: public-key and secret-key in {str(path)!r} are not one pair; "
                              "make new keys with python -m streamer.transport.keys DIR --force")
        return derived, private
    if not public:
        raise ConfigError(f"{where}: {str(path)!r} holds no public-key; name a .key file made by "
                          "python -m streamer.transport.keys")
    return public, ""


def _write_certificate(path: Path, public: str, secret: str = "") -> None:
    """One certificate file, created with its final mode (0600 for a secret) and never overwritten here."""
    kind = "Secret" if secret else "Public"
    body = (f"#   ZeroMQ CURVE {kind} Certificate, made {datetime.datetime.now():%Y-%m-%d %H:%M} "
            "by python -m streamer.transport.keys\n")
    if secret:
        body += "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
    body += f'\nmetadata\ncurve\n    public-key = "{public}"\n'
    if secret:
        body += f'    secret-key = "{secret}"\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(body)


def key_paths(folder: Path) -> dict[str, Path]:
    """Every file ``write_keys`` makes, by name (``server_public``, ``server_secret``, ...)."""
    paths = {}
    for pair in PAIRS:
        paths[f"{pair}_public"] = folder / f"{pair}.key"
        paths[f"{pair}_secret"] = folder / f"{pair}.key_secret"
    return paths


def write_keys(folder: Path, force: bool = False) -> dict[str, Path]:
    """Make a server and a client key pair in ``folder``; refuse to replace keys unless ``force``."""
    paths = key_paths(folder)
    existing = [p for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to replace the keys "
                          "(every host then needs the new files)")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in existing:
            path.unlink()
        for pair in PAIRS:
            public, secret = (k.decode() for k in zmq.curve_keypair())
            _write_certificate(paths[f"{pair}_public"], public)
            _write_certificate(paths[f"{pair}_secret"], public, secret)
    except OSError as err:
        raise ConfigError(f"{folder}: cannot write keys there ({err.strerror or err})") from None
    return paths


def security_lines(paths: dict[str, Path]) -> str:
    """The ``[security]`` table naming ``paths``, ready to paste into a config."""
    def q(path: Path) -> str:
        return json.dumps(str(path))  # a TOML basic string

    return "\n".join([
        "[security]",
        f"server_public_key = {q(paths['server_public'])}   # every host",
        f"server_secret_key = {q(paths['server_secret'])}   # only hosts that bind: dispatcher, overlay",
        f"client_secret_key = {q(paths['client_secret'])}   # every host (captures, workers, supervisor connect)",
        f"allowed_clients = [{q(paths['client_public'])}]   # public keys the binding stages accept",
    ])


def main(argv: list[str] | None = None) -> int:
    p = UsageParser(prog="python -m streamer.transport.keys", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="folder for the key files (made 0700 if missing)")
    p.add_argument("--force", action="store_true", help="replace keys already in DIR")
    args = p.parse_args(argv)
    if not args.dir.strip():
        p.error("DIR must not be empty")
    try:
        paths = write_keys(Path(args.dir), force=args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(security_lines(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
