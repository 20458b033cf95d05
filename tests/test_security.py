"""CurveZMQ: keys from ``python -m streamer.transport.keys``, encrypted and authenticated sockets, clear key errors."""

import dataclasses
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import zmq

from streamer.transport import messages
from streamer.config.checks import read_table
from streamer.config.load_keys import load_security
from streamer.config.loader import Overrides, load_config
from streamer.config.network import Security
from streamer.config.tables import SecurityTable
from streamer.errors import ConfigError
from streamer.transport.messages import Result, Status
from streamer.transport.sockets import Context, make_socket
from tests.conftest import free_port, make_video
from tests.test_pipeline import REPO, checkpoint, read_lines, write_config  # noqa: F401  (fixture re-used)
from workers.model import describe_checkpoint

WAIT_MS = 5000   # a client that should get through does so well within this
QUIET_S = 1.0    # a client that should not get through stays silent this long after a good one got through


def make_keys(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.transport.keys", str(folder), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keys"
    proc = make_keys(folder)
    assert proc.returncode == 0, proc.stderr
    (folder / "security.toml").write_text(proc.stdout)
    return folder


@pytest.fixture(scope="module")
def security(keys) -> Security:
    table = tomllib.loads((keys / "security.toml").read_text())["security"]
    return load_security(read_table(table, SecurityTable, "test [security]"), "test [security]", keys)


def stranger(security: Security) -> Security:
    """The right server key, but a client key pair the servers were never told about."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    return dataclasses.replace(security, client_public_key=public, client_secret_key=secret)


@pytest.fixture
def server(security):
    """A dispatcher-like hub on tcp://127.0.0.1: a ROUTER that receives and a PUB that publishes."""
    ctx = Context()
    inbox = make_socket(ctx, zmq.ROUTER, f"tcp://127.0.0.1:{free_port()}", bind=True, security=security)
    outbox = make_socket(ctx, zmq.PUB, f"tcp://127.0.0.1:{free_port()}", bind=True, security=security)
    yield inbox, outbox
    inbox.close()
    outbox.close()
    ctx.term()


@pytest.fixture
def client_ctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def endpoint(sock: zmq.Socket) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def received(sock: zmq.Socket, timeout_ms: float) -> list[bytes] | None:
    return sock.recv_multipart() if sock.poll(timeout_ms) else None


def status(text: str) -> Status:
    return Status(kind="test", stream="s", detail=text, ts=time.time())


def assert_only_keyed_client_gets_through(server, client_ctx, good: Security, bad_sockets) -> None:
    """The good client's messages arrive both ways; the bad ones send and subscribe but get nothing."""
    inbox, outbox = server
    good_dealer = make_socket(client_ctx, zmq.DEALER, endpoint(inbox), bind=False, security=good)
    good_sub = make_socket(client_ctx, zmq.SUB, endpoint(outbox), bind=False, security=good,
                           options={zmq.SUBSCRIBE: b""})
    bad = [(make(zmq.DEALER, endpoint(inbox)), make(zmq.SUB, endpoint(outbox))) for make in bad_sockets]
    for dealer, sub in bad:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        messages.send(dealer, status("from a stranger"))
    messages.send(good_dealer, status("from a friend"))

    parts = received(inbox, WAIT_MS)
    assert parts is not None, "a client holding the server's public key got nothing through"
    assert messages.decode(parts[1:]).detail == "from a friend"
    deadline = time.monotonic() + WAIT_MS / 1000
    while (got := received(good_sub, 50)) is None and time.monotonic() < deadline:
        messages.send(outbox, status("to subscribers"))
    assert got is not None and messages.decode(got).detail == "to subscribers"

    quiet_until = time.monotonic() + QUIET_S
    while time.monotonic() < quiet_until:
        messages.send(outbox, status("to subscribers"))
        assert received(inbox, 50) is None, "a client without the right keys got a message through"
        for _, sub in bad:
            assert received(sub, 0) is None, "a client without the right keys received a published message"


def test_client_with_server_key_gets_through_and_plain_or_wrong_key_client_gets_nothing(server, client_ctx,
                                                                                        security):
    wrong_server = dataclasses.replace(security, server_public_key=zmq.curve_keypair()[0].decode())

    def plain(kind: int, address: str) -> zmq.Socket:
        return make_socket(client_ctx, kind, address, bind=False, security=Security())

    def wrong_key(kind: int, address: str) -> zmq.Socket:
        return make_socket(client_ctx, kind, address, bind=False, security=wrong_server)

    assert_only_keyed_client_gets_through(server, client_ctx, security, [plain, wrong_key])


def test_client_key_not_in_allowed_clients_is_refused(server, client_ctx, security):
    def unlisted(kind: int, address: str) -> zmq.Socket:
        return make_socket(client_ctx, kind, address, bind=False, security=stranger(security))

    assert_only_keyed_client_gets_through(server, client_ctx, security, [unlisted])


def test_every_client_key_in_allowed_clients_gets_through(tmp_path, keys, client_ctx):
    """allowed_clients may list several clients (a folder of .key files): each of them is admitted."""
    other = tmp_path / "other"
    assert make_keys(other).returncode == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for i, folder in enumerate((keys, other)):
        (allowed / f"host{i}.key").write_text((folder / "client.key").read_text())
    hub = load_security(SecurityTable(server_secret_key=str(keys / "server.key_secret"),
                                      client_secret_key=str(keys / "client.key_secret"),
                                      allowed_clients=str(allowed)), "test", tmp_path)
    other_client = load_security(SecurityTable(server_public_key=str(keys / "server.key"),
                                               client_secret_key=str(other / "client.key_secret")), "test", tmp_path)
    assert len(hub.allowed_clients) == 2
    ctx = Context()
    inbox = make_socket(ctx, zmq.ROUTER, f"tcp://127.0.0.1:{free_port()}", bind=True, security=hub)
    try:
        for who in (hub, other_client):
            dealer = make_socket(client_ctx, zmq.DEALER, endpoint(inbox), bind=False, security=who)
            messages.send(dealer, status("hello"))
            assert received(inbox, WAIT_MS) is not None
    finally:
        inbox.close()
        ctx.term()


def test_binding_without_server_secret_is_a_config_error(security):
    """A host given only the client keys (a worker host) cannot pose as the hub."""
    client_only = dataclasses.replace(security, server_secret_key="")
    ctx = Context()
    try:
        with pytest.raises(ConfigError, match="server_secret_key"):
            make_socket(ctx, zmq.ROUTER, f"tcp://127.0.0.1:{free_port()}", bind=True, security=client_only)
    finally:
        ctx.term()


def test_pipeline_runs_with_keys_on_tcp_and_a_plain_listener_hears_nothing(tmp_path, checkpoint, keys, security):
    """run_pipeline.py with every socket on tcp://127.0.0.1 under CurveZMQ: predictions arrive, the
    dispatcher's results reach a keyed subscriber and not a plaintext one."""
    video = make_video(tmp_path / "clip.avi", num_frames=150)
    events, output = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    config = write_config(tmp_path / "c.toml", checkpoint)
    ports = {name: free_port() for name in ("windows", "work", "results", "display")}
    with config.open("a") as f:
        f.write("\n[endpoints]\n" + "".join(f'{n} = "tcp://127.0.0.1:{p}"\n' for n, p in ports.items()))
        f.write("\n" + (keys / "security.toml").read_text())
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "--config", str(config), "--source", str(video),
                             "--headless", "--events", str(events), "--output", str(output), "--duration", "90"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        results = f"tcp://127.0.0.1:{ports['results']}"
        keyed = make_socket(ctx, zmq.SUB, results, bind=False, security=security, options={zmq.SUBSCRIBE: b""})
        plain = make_socket(ctx, zmq.SUB, results, bind=False, security=Security(), options={zmq.SUBSCRIBE: b""})
        deadline, got = time.monotonic() + 90, None
        while got is None and time.monotonic() < deadline and proc.poll() is None:
            parts = received(keyed, 200)
            got = parts if parts and isinstance(messages.decode(parts), Result) else None
        assert got is not None, "a subscriber with the keys saw no results"
        assert received(plain, 0) is None, "a plaintext subscriber heard the encrypted pipeline"
        _, stderr = proc.communicate(timeout=90)
    finally:
        ctx.destroy(linger=0)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    predictions = [line for line in read_lines(events) if line["kind"] == "prediction"]
    assert predictions and {line["stream"] for line in predictions} == {"clip"}
    assert "refused a CurveZMQ client" not in stderr, "a stage of the pipeline itself was refused"
    assert output.stat().st_size > 0


def test_pipeline_given_a_client_only_config_stops_with_one_line_about_the_server_secret(tmp_path, checkpoint, keys):
    """A worker host's config (no server secret) run where the dispatcher binds: exit 2, the reason in one line."""
    config = write_config(tmp_path / "c.toml", checkpoint)
    client_only = [line for line in (keys / "security.toml").read_text().splitlines()
                   if not line.startswith("server_secret_key")]
    with config.open("a") as f:
        f.write(f'\n[endpoints]\nwindows = "tcp://127.0.0.1:{free_port()}"\n\n' + "\n".join(client_only) + "\n")
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--headless",
                           "--duration", "30"], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "server_secret_key" in errors[0], proc.stderr


def config_with(tmp_path: Path, security_lines: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[[sources]]\nspec = "synthetic:"\n\n[security]\n' + security_lines)
    return path


def load(path: Path, checkpoint: Path):
    return load_config(Overrides(config=str(path), checkpoint=str(checkpoint), headless=True), describe_checkpoint)


def test_keys_make_a_non_loopback_endpoint_acceptable(tmp_path, checkpoint, keys):
    path = tmp_path / "hub.toml"
    path.write_text('[[sources]]\nspec = "synthetic:"\n\n[endpoints]\nwork = "tcp://0.0.0.0:5551"\n\n'
                    + (keys / "security.toml").read_text())
    config = load(path, checkpoint)
    assert config.workers[0].security.curve and config.dispatch.security.server_secret_key
    assert config.captures[0].security == config.dispatch.security == config.security
    assert config.security.server_secret_key not in repr(config), "a secret key would end up in logs"


@pytest.mark.parametrize("lines,message", [
    ('server_secret_key = "{missing}"\nclient_secret_key = "{keys}/client.key_secret"', "not found"),
    ('server_secret_key = "{garbage}"\nclient_secret_key = "{keys}/client.key_secret"', "not a 40-character Z85"),
    ('server_secret_key = "{binary}"\nclient_secret_key = "{keys}/client.key_secret"', "not a key file"),
    ('server_secret_key = "{keys}/server.key"\nclient_secret_key = "{keys}/client.key_secret"', "no secret-key"),
    ('server_public_key = "{keys}/client.key"\nserver_secret_key = "{keys}/server.key_secret"\n'
     'client_secret_key = "{keys}/client.key_secret"', "not the public half"),
    ('server_public_key = "{keys}/server.key"', "need client_secret_key"),
    ('client_secret_key = "{keys}/client.key_secret"', "need server_public_key"),
    ('server_public_key = "{keys}/server.key"\nclient_secret_key = "{keys}/client.key_secret"\n'
     'allowed_clients = ["{missing}"]', "not found"),
    ('server_public_key = 7', "'server_public_key' must be str"),
])
def test_bad_key_config_is_one_clear_error_naming_file_and_key(tmp_path, checkpoint, keys, lines, message):
    garbage, binary = tmp_path / "garbage.key_secret", tmp_path / "binary.key_secret"
    garbage.write_text('curve\n    public-key = "short"\n    secret-key = "not a key"\n')
    binary.write_bytes(b"\xff\xfe" + os.urandom(64))
    path = config_with(tmp_path, lines.format(keys=keys, missing=tmp_path / "nowhere.key_secret",
                                              garbage=garbage, binary=binary))
    with pytest.raises(ConfigError) as err:
        load(path, checkpoint)
    text = str(err.value)
    assert message in text and "bad.toml" in text and "[security]" in text and "\n" not in text, text


def test_missing_key_file_exits_2_with_one_line(tmp_path, checkpoint):
    path = config_with(tmp_path, f'server_secret_key = "{tmp_path}/gone.key_secret"\n'
                                 f'client_secret_key = "{tmp_path}/gone.key_secret"\n')
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--config", str(path), "--checkpoint", str(checkpoint),
                           "--headless"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gone.key_secret" in lines[0] and "not found" in lines[0], proc.stderr


def test_keys_command_writes_private_secrets_and_refuses_to_overwrite(tmp_path):
    folder = tmp_path / "keys"
    proc = make_keys(folder)
    assert proc.returncode == 0, proc.stderr
    names = ("server.key", "server.key_secret", "client.key", "client.key_secret")
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode == (0o600 if name.endswith("_secret") else 0o644), (name, oct(mode))
    from zmq.auth import load_certificate  # pyzmq reads them: the standard certificate format

    public, secret = load_certificate(folder / "server.key_secret")
    assert zmq.curve_public(secret) == public == load_certificate(folder / "server.key")[0]
    table = tomllib.loads(proc.stdout)["security"]
    assert set(table) == {"server_public_key", "server_secret_key", "client_secret_key", "allowed_clients"}
    assert load_security(read_table(table, SecurityTable, "printed"), "printed", tmp_path).allowed_clients == (
        load_certificate(folder / "client.key")[0].decode(),)

    before = {name: (folder / name).read_text() for name in names}
    again = make_keys(folder)
    assert again.returncode == 2 and "--force" in again.stderr and again.stderr.count("\n") == 1, again.stderr
    assert {name: (folder / name).read_text() for name in names} == before
    forced = make_keys(folder, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (folder / "server.key_secret").read_text() != before["server.key_secret"]
    assert stat.S_IMODE((folder / "server.key_secret").stat().st_mode) == 0o600


@pytest.mark.parametrize("args", [[], ["--bogus"]])
def test_keys_command_bad_arguments_exit_2_with_one_line(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "streamer.transport.keys", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not proc.stdout, proc.stderr


def test_keys_command_in_an_unwritable_place_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = make_keys(blocker / "keys")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot write keys" in proc.stderr, proc.stderr
