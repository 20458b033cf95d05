"""Config files as users write them, wrong in every way the loader must catch before any stage starts."""

from pathlib import Path

import pytest

from streamer.config.loader import Overrides, load_config
from streamer.errors import ConfigError
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
    "clips without a folder": ("[clips]\npre_s = 2", "'dir' must name a folder"),
    "a minute-long pre-roll and more": ('[clips]\ndir = "c"\npre_s = 61', "'pre_s' and 'post_s' must be 0..60"),
    "an unknown clips key": ('[clips]\ndir = "c"\nwidth = 3', "unknown key 'width' in [clips]"),
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
