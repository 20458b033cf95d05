"""Every stage's sockets come from here, so none can forget the size bound or the CurveZMQ keys.

Without keys a socket is plain (the config only allows that on loopback, ipc:// or with
``allow_plaintext``). With keys every socket is CurveZMQ, whatever its transport:

- a binding socket is a Curve server holding the server key pair, and its context runs a
  ZAP authenticator that admits only the client public keys in ``Security.allowed_clients``;
- a connecting socket knows the server's public key (it refuses any other server) and
  proves the client key pair.

A client without the server's public key, or with a key pair not on the list, never
completes the handshake: nothing it sends is delivered and it receives nothing.
"""

from collections.abc import Mapping

import zmq
from loguru import logger
from zmq.auth.thread import ThreadAuthenticator

from streamer.transport import messages
from streamer.config.network import Security
from streamer.errors import ConfigError


class _AllowList:
    """ZAP credentials provider: a known client public key passes; each refused key is logged once."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = frozenset(key.encode() for key in allowed)
        self.refused: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        if key not in self.refused and len(self.refused) < 1000:
            self.refused.add(key)
            logger.warning(f"refused a CurveZMQ client with unknown public key {key.decode(errors='replace')}; "
                           "add its .key file to [security] allowed_clients to let it in")
        return False


class Context(zmq.Context):
    """A ZeroMQ context that stops its authenticator before terminating.

    ``term()`` waits for every socket of the context, the authenticator's included, so a plain
    context with a running authenticator would never finish terminating.
    """

    authenticator: ThreadAuthenticator | None = None  # declared here so pyzmq treats it as an attribute

    def authenticate(self, allowed: tuple[str, ...]) -> None:
        """Start the ZAP handler once; it must run before the first Curve server socket binds."""
        if self.authenticator is not None:
            return
        self.authenticator = ThreadAuthenticator(self)
        self.authenticator.start()
        self.authenticator.configure_curve_callback("*", credentials_provider=_AllowList(allowed))

    def _stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def term(self) -> None:
        self._stop_authenticator()
        super().term()

    def destroy(self, linger: int | None = None) -> None:
        self._stop_authenticator()
        super().destroy(linger)


def _apply_curve(ctx: zmq.Context, sock: zmq.Socket, endpoint: str, bind: bool, security: Security) -> None:
    if bind:
        if not security.server_secret_key:
            raise ConfigError(f"{endpoint}: this stage binds it, so [security] needs server_secret_key "
                              "(the server.key_secret file; only hosts that bind need it)")
        if not isinstance(ctx, Context):
            raise TypeError("a Curve server socket needs a streamer.transport.sockets.Context (it runs the authenticator)")
        ctx.authenticate(security.allowed_clients)
        sock.curve_server = True
        sock.curve_secretkey = security.server_secret_key.encode()
        sock.curve_publickey = security.server_public_key.encode()
    else:
        sock.curve_serverkey = security.server_public_key.encode()
        sock.curve_publickey = security.client_public_key.encode()
        sock.curve_secretkey = security.client_secret_key.encode()


def make_socket(ctx: zmq.Context, kind: int, endpoint: str, *, bind: bool, security: Security,
                options: Mapping[int, int | bytes] | None = None) -> zmq.Socket:
    """A socket of ``kind`` bound to (or connected to) ``endpoint``, secured as ``security`` says.

    Args:
        ctx: the stage's context; a :class:`Context` where a Curve socket binds.
        kind: ``zmq.DEALER``, ``zmq.ROUTER``, ``zmq.PUB``, ``zmq.SUB``...
        endpoint: ``tcp://host:port`` or ``ipc:///path``.
        bind: bind (the stage owns the address) or connect.
        security: keys from the config; without keys the socket is plain.
        options: more socket options (``{zmq.SNDHWM: 4}``), set before binding or connecting;
            they may override the defaults (LINGER 0, MAXMSGSIZE ``messages.MAX_ARRAY_BYTES``).
    """
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, messages.MAX_ARRAY_BYTES)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if security.curve:
            _apply_curve(ctx, sock, endpoint, bind, security)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock
