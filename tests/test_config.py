"""Config files as users write them, wrong in every way the loader must catch before any stage starts."""

import os
import tempfile
from pathlib import Path

import pytest

from streamer.config.loader import Overrides, load_config
from streamer.config.look import LookConfig, Region, TrackingConfig
from streamer.config.network import Endpoints, Security
from streamer.config.sinks import ClipsConfig, MqttConfig
from streamer.config.stages import CaptureConfig, DispatchConfig, OverlayConfig, WebConfig, WorkerConfig
from streamer.config.tables import MAX_BATCH, MAX_TOP_K
from streamer.errors import ConfigError
from streamer.transport import messages
from workers.model import describe_checkpoint

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.safetensors"
SOURCE = "[[sources]]\nspec = 'synthetic:'\n"

BAD = {  # what a config says → what the one-line error must say
    "nan duration": ("[pipeline]\nduration = nan", "'duration' must be a finite number"),
    "a thousand workers": ("[pipeline]\nworkers = 1000", "'workers' must be 1..64"),
    "zero heartbeat": ("[pipeline]\nheartbeat_timeout_s = 0", "'heartbeat_timeout_s' must be > 0"),
    "negative delay": ("[model]\ndelay_s = -1.0", "'delay_s' must be ≥ 0"),
    "negative threads": ("[model]\nthreads = -1", "'threads' must be ≥ 0"),
    "batch of 65": ("[model]\nmax_batch = 65", "'max_batch' must be ≥ 1 and ≤ 64"),
    "1000-frame windows": ("[model]\nnum_frames = 1000", "'num_frames' must be ≥ 1 and ≤ 128"),
    "a window spanning minutes": ("[model]\nframe_interval = 1000", "spans 7001 source frames"),
    "overlay at 0 fps": ("[overlay]\nfps = 0", "'fps' must be > 0"),  # checked even when headless
    "a 5 px display": ("[overlay]\ndisplay_width = 5", "'display_width' must be ≥ 16"),
    "negative open timeout": (SOURCE + "open_timeout_s = -1", "'open_timeout_s' must be > 0"),
    "infinite read timeout": (SOURCE + "read_timeout_s = inf", "'read_timeout_s' must be a finite number"),
    "a number for a name": (SOURCE + "name = 5", "'name' must be str"),
    "a tab in a name": (SOURCE + 'name = "front\\tdoor"', "'name' must be 1-256 printable characters"),
    "two sources, one name": (SOURCE + "name = 'door'\n" + SOURCE + "name = 'door'", "two sources are named 'door'"),
    "a NUL in the event log": ('[events]\npath = "log\\u0000.jsonl"', "not a usable file name"),
    "a number for allowed clients": ("[security]\nallowed_clients = 0", "'allowed_clients' must be"),
    "web on every interface, no token": ('[web]\nlisten = "0.0.0.0:8080"', "set [web] token"),
    "web port out of range": ('[web]\nlisten = "127.0.0.1:70000"', "must be HOST:PORT"),
    "web on a host name": ('[web]\nlisten = "example.com:80"', "is not an IP address"),
    "a short web token": ('[web]\ntoken = "abc"', "at least 16 printable characters"),
    "JPEG quality 0": ("[web]\njpeg_quality = 0", "'jpeg_quality' must be an integer from 1 to 100"),
    "web at 0 fps": ("[web]\nmax_fps = 0", "'max_fps' must be a number in (0, 240]"),
    "an unknown web key": ("[web]\nport = 8080", "unknown key 'port' in [web]"),
    "an unknown backend": ('[model]\nbackend = "tensorrt"', "'backend' must be torch, openvino or auto"),
    "an unknown hardware decoder": (SOURCE + 'hwaccel = "gpu"', "hwaccel 'gpu' is not one of none, auto, "),
    "hardware decoding of the generator": (SOURCE + 'hwaccel = "cuda"', "hwaccel is for video files and RTSP"),
    "an MQTT URL of another scheme": ('[mqtt]\nurl = "http://127.0.0.1:1883"', "'url' must be mqtt://HOST:PORT"),
    "MQTT credentials in the URL": ('[mqtt]\nurl = "mqtt://u:p@127.0.0.1:1883"', "not in the URL"),
    "an MQTT password from an unset variable": ('[mqtt]\nurl = "mqtt://127.0.0.1"\npassword_env = "NO_SUCH_VAR_X"',
                                                "names NO_SUCH_VAR_X, which is not set"),
    "MQTT qos 3": ('[mqtt]\nurl = "mqtt://127.0.0.1"\nqos = 3', "'qos' must be 0, 1 or 2"),
    "a wildcard in the topic prefix": ('[mqtt]\nurl = "mqtt://127.0.0.1"\ntopic_prefix = "a/#"', "'topic_prefix'"),
    "a webhook to ftp": ('[[webhooks]]\nurl = "ftp://example.com/x"', "'url' must be http://"),
    "a webhook for unknown events": ('[[webhooks]]\nurl = "http://127.0.0.1/x"\nevents = ["prediction"]',
                                     "'events' must be a list of start and end"),
    "a webhook waiting forever": ('[[webhooks]]\nurl = "http://127.0.0.1/x"\ntimeout_s = 0', "'timeout_s' must be"),
    "clips without a folder": ("[clips]\npre_s = 2", "'dir' is missing; it must be a folder"),
    "a minute-long pre-roll and more": ('[clips]\ndir = "c"\npre_s = 61', "'pre_s' must be ≥ 0 and ≤ 60"),
    "an unknown clips key": ('[clips]\ndir = "c"\nwidth = 3', "unknown key 'width' in [clips]"),
    "a store that is a folder": ('[store]\npath = "/tmp"', "action store (--store) /tmp: is a folder"),
    "a store kept -1 days": ('[store]\npath = "a.db"\nkeep_days = -1', "'keep_days' must be ≥ 0 days"),
    "a negative end hold": ("[events]\nend_hold_s = -1", "'end_hold_s' must be seconds from 0 to 3600"),
    "thresholds of a label the model lacks": ('[events.labels."falling"]\nstart_threshold = 0.5',
                                              "'falling' is not a label of the model"),
    "an unknown per-label key": ('[events.labels."still"]\nhold = 1', "unknown key 'hold'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_setting_is_one_clear_config_error(tmp_path, case):
    content, message = BAD[case]
    if "[[sources]]" not in content:
        content = SOURCE + content
    path = tmp_path / "bad.toml"
    path.write_text(content + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_named_sources_keep_their_names_and_unnamed_ones_do_not_collide(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(SOURCE + "name = 'synthetic'\n" + SOURCE)
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert [c.stream for c in config.captures] == ["synthetic", "synthetic-2"]


def test_sinks_and_clips_are_read_with_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret-from-env")
    path = tmp_path / "sinks.toml"
    path.write_text(SOURCE + '[mqtt]\nurl = "mqtts://broker.example:8883"\nusername = "cam"\n'
                    'password_env = "TEST_MQTT_PASSWORD"\ndiscovery = true\n'
                    '[[webhooks]]\nurl = "https://hooks.example/a?token=t0ken"\nsecret = "x"\n'
                    '[[webhooks]]\nurl = "http://127.0.0.1:9/b"\nevents = ["end"]\n'
                    '[clips]\ndir = "clips"\npost_s = 3\n')
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    mqtt = config.sinks.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.password, mqtt.discovery) == ("broker.example", 8883, True,
                                                                               "s3cret-from-env", True)
    assert "s3cret" not in repr(config.sinks) and "t0ken" not in config.sinks.webhooks[0].where
    assert [h.events for h in config.sinks.webhooks] == [("start", "end"), ("end",)]
    assert config.clips.clips.path("demo", "abc") == "clips/demo/abc.mp4" and config.dispatch.clips.post_s == 3
    assert all(c.clips for c in config.captures) and config.clips.span == 29


def test_hardware_decoding_is_asked_for_per_camera(tmp_path, video_file):
    path = tmp_path / "hw.toml"
    path.write_text(f"[[sources]]\nspec = '{video_file}'\nhwaccel = 'auto'\n[[sources]]\nspec = '{video_file}'\n")
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert [c.hwaccel for c in config.captures] == ["auto", "none"]


def test_the_demo_listens_on_8080_and_a_config_without_web_does_not(tmp_path):
    demo = load_config(Overrides(headless=True), describe_checkpoint)
    assert (demo.web.host, demo.web.port, demo.web.required) == ("127.0.0.1", 8080, False)
    assert demo.web.streams == (("demo", "synthetic"),) and all(c.web for c in demo.captures)
    assert load_config(Overrides(headless=True, web="off"), describe_checkpoint).web is None
    flag = load_config(Overrides(headless=True, web="127.0.0.1:9000"), describe_checkpoint).web
    assert (flag.port, flag.required) == (9000, True)  # asked for: a taken port is an error, not a warning
    path = tmp_path / "plain.toml"
    path.write_text(SOURCE)
    plain = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert plain.web is None and not any(c.web for c in plain.captures)
    path.write_text(SOURCE + '[web]\ntoken = "0123456789abcdef0123"\n')
    guarded = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert guarded.web.port == 8080 and guarded.web.required and "0123456789" not in repr(guarded.web)


ENDPOINTS = Endpoints("ipc:///tmp/w", "ipc:///tmp/k", "ipc:///tmp/r", "ipc:///tmp/d")
DIRECT = {  # a stage config built directly (as tests and benchmarks do) → what its error must say
    "a batch of 0": (lambda: WorkerConfig("w", ENDPOINTS, "m.safetensors", max_batch=0), "WorkerConfig.max_batch = 0"),
    "an unknown precision": (lambda: WorkerConfig("w", ENDPOINTS, "m", precision="int4"), "fp32, bf16, fp16 or int8"),
    "an unknown flip": (lambda: WorkerConfig("w", ENDPOINTS, "m", flip_views=("sideways",)), "'sideways' is not one"),
    "a window of 0 frames": (lambda: CaptureConfig("cam", "synthetic:", ENDPOINTS, size=32, num_frames=0,
                                                   frame_interval=2, hop=2), "CaptureConfig.num_frames = 0"),
    "a text hop": (lambda: CaptureConfig("cam", "synthetic:", ENDPOINTS, size=32, num_frames=4, frame_interval=2,
                                         hop="2"), "CaptureConfig.hop = '2': must be int"),
    "no endpoints": (lambda: DispatchConfig(None, (), (), ()), "DispatchConfig.endpoints = None"),
    "a zero heartbeat": (lambda: DispatchConfig(ENDPOINTS, (), (), (), heartbeat_timeout_s=0), "heartbeat_timeout_s"),
    "an overlay at -1 fps": (lambda: OverlayConfig(ENDPOINTS, (), fps=-1.0), "OverlayConfig.fps = -1.0"),
    "web beyond loopback, no token": (lambda: WebConfig("0.0.0.0", 8080, ENDPOINTS, Security(), ()), "set [web] token"),
    "a minute-long pre-roll": (lambda: ClipsConfig(dir="clips", pre_s=61), "ClipsConfig.pre_s = 61"),
    "MQTT qos 3": (lambda: MqttConfig("broker", 1883, qos=3), "must be 0, 1 or 2"),
    "a short key": (lambda: Security(server_public_key="short"), "40-character Z85 key"),
    "a secret key of garbage": (lambda: Security(server_secret_key="not a key"), "server_secret_key = (hidden)"),
    "a tracker at 0 fps": (lambda: TrackingConfig(fps=0), "TrackingConfig.fps = 0"),
    "two regions, one name": (lambda: LookConfig(regions=(Region("a", (0, 0, 1, 1)), Region("a", (0, 0, 9, 9)))),
                              "two regions are named 'a'"),
}


@pytest.mark.parametrize("case", DIRECT, ids=list(DIRECT))
def test_a_stage_config_built_directly_checks_itself(case):
    build, message = DIRECT[case]
    with pytest.raises(ConfigError) as err:
        build()
    text = str(err.value)
    assert message in text and "\n" not in text and "not a key" not in text, text


def test_loading_makes_nothing_on_disk(tmp_path, monkeypatch):
    """The loader only names the ipc:// folder (run_pipeline.py makes it and removes it) and only checks that
    the event log's folder could be made (the dispatcher makes it)."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.toml"
    path.write_text(SOURCE + '[events]\npath = "logs/today/events.jsonl"\n')
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "temp"] and not list(temp.iterdir())
    assert Path(config.ipc_dir).parent == temp and config.dispatch.endpoints.windows == f"ipc://{config.ipc_dir}/windows"
    assert config.dispatch.events_path == "logs/today/events.jsonl"
    again = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert again.ipc_dir != config.ipc_dir, "two pipelines side by side would share their sockets"


def test_a_file_naming_every_endpoint_needs_no_private_folder(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(SOURCE + "[endpoints]\n" + "".join(f'{name} = "tcp://127.0.0.1:{5550 + i}"\n' for i, name in
                                                      enumerate(("windows", "work", "results", "display", "web", "clips"))))
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert config.ipc_dir == "" and config.fixed_endpoints and config.dispatch.endpoints.clips.endswith(":5555")


def service_endpoints(bind_host: str, extra: str = "") -> str:
    """Every endpoint named by a service name, as in a container network, and where binding stages listen."""
    return (SOURCE + "[endpoints]\n" + "".join(f'{name} = "tcp://dispatcher:{5550 + i}"\n' for i, name in
                                              enumerate(("windows", "work", "results", "display", "web", "clips")))
            + f'bind_host = "{bind_host}"\n' + extra)


def test_bind_host_is_where_binding_stages_listen_while_connecting_stages_use_the_name(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(service_endpoints("0.0.0.0", "\n[security]\nallow_plaintext = true\n"))
    endpoints = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True),
                            describe_checkpoint).dispatch.endpoints
    assert endpoints.windows == "tcp://dispatcher:5550" and endpoints.bound("windows") == "tcp://0.0.0.0:5550"
    assert endpoints.bound("clips") == "tcp://0.0.0.0:5555"
    assert Endpoints("ipc:///a", "ipc:///b", "ipc:///c", "ipc:///d", bind_host="0.0.0.0").bound("work") == "ipc:///b"


def test_listening_on_every_interface_without_keys_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(service_endpoints("0.0.0.0"))
    with pytest.raises(ConfigError, match="reachable from other hosts"):
        load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    path.write_text(service_endpoints("somewhere"))
    with pytest.raises(ConfigError, match="bind_host"):
        load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)


def test_the_config_asks_no_more_than_the_wire_carries():
    assert MAX_BATCH <= messages.MAX_BATCH and MAX_TOP_K <= messages.MAX_TOP


def test_a_secret_that_breaks_a_rule_stays_out_of_the_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(SOURCE + '[web]\ntoken = "hunter2 is short"\n')
    with pytest.raises(ConfigError) as err:
        load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert "'token' must be at least 16" in str(err.value) and "hunter2" not in str(err.value), str(err.value)


def test_a_role_reads_only_its_own_secrets(tmp_path, monkeypatch):
    """A capture or worker container holds no server secret, MQTT password or web token: its --role loads the
    config without them; the stages that bind or deliver still refuse to start without theirs."""
    import subprocess
    import sys

    keys = tmp_path / "keys"
    made = subprocess.run([sys.executable, "-m", "streamer.transport.keys", str(keys)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "c.toml"
    path.write_text(service_endpoints("0.0.0.0") + made.stdout + '\n[mqtt]\nurl = "mqtt://mqtt:1883"\n'
                    'username = "u"\npassword_env = "TEST_MQTT_PASSWORD"\n\n[web]\nlisten = "0.0.0.0:8080"\n'
                    'token_env = "TEST_WEB_TOKEN"\n')
    monkeypatch.delenv("TEST_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("TEST_WEB_TOKEN", raising=False)
    (keys / "server.key_secret").unlink()

    def load(role):
        return load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True, role=role),
                           describe_checkpoint)

    for role in ("capture", "worker"):
        config = load(role)
        assert config.security.curve and not config.security.server_secret_key
        assert config.sinks is None and config.web is None
    with pytest.raises(ConfigError, match="server_secret_key"):
        load("dispatcher")
    with pytest.raises(ConfigError, match="TEST_MQTT_PASSWORD, which is not set"):
        load("sinks")
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "a password")
    assert load("sinks").sinks.mqtt.password == "a password"


def test_the_web_token_may_come_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(SOURCE + '[web]\nlisten = "0.0.0.0:8080"\ntoken_env = "TEST_WEB_TOKEN"\n')
    monkeypatch.setenv("TEST_WEB_TOKEN", "a-token-from-a-secret-0123")
    config = load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert config.web.token == "a-token-from-a-secret-0123" and "a-token" not in repr(config.web)
    monkeypatch.setenv("TEST_WEB_TOKEN", "short")
    with pytest.raises(ConfigError) as err:
        load_config(Overrides(config=str(path), checkpoint=str(DEMO), headless=True), describe_checkpoint)
    assert "token" in str(err.value) and "short" not in str(err.value)


def test_a_container_s_cpu_limit_caps_a_worker_s_threads():
    from streamer.stages.worker import cpu_threads
    from workers.cpu import usable_cores

    cores = usable_cores()
    assert 1 <= cores <= os.cpu_count()
    assert cpu_threads(0, 1, shares_host=False) == cores  # alone in its container: every core it may use
    assert cpu_threads(0, 1) == max(1, cores - 1) and cpu_threads(3, 1) == 3


def test_our_checkpoint_is_described_from_its_header_without_torch_and_others_in_full(tmp_path):
    """The supervisor builds every stage's config from the checkpoint's description before any stage starts: for
    our own files that is the header alone (no torch import: the pipeline starts about 1.5 s sooner), the same
    answer as the full read; a damaged header is one CheckpointError all the same."""
    import subprocess
    import sys

    from streamer.errors import CheckpointError
    from workers.checkpoint_meta import described

    code = ("import sys; from workers.checkpoint_meta import described; "
            f"pre, labels = described({str(DEMO)!r}); print(len(labels), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=DEMO.parents[1])
    assert done.stdout.split() == ["10", "False"], done.stderr
    from workers.model import read_checkpoint

    _, config, labels, pre = read_checkpoint(DEMO)  # the full read: the weights too
    assert described(DEMO) == describe_checkpoint(DEMO) == (pre, labels) and config.num_classes == 10
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(DEMO.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="damaged.safetensors: not a readable safetensors file"):
        described(damaged)
    plain = tmp_path / "plain.txt"  # not ours: left to the full read
    plain.write_text("x")
    assert described(plain) is None
