"""Action events to a real Mosquitto broker and real HTTP servers, from one demo pipeline run (shipped model,
synthetic source) during which the broker is killed for 5 s; then the last will after a kill -9."""

import json
import signal
import time
from types import SimpleNamespace

import pytest

from tests.sinks_helpers import MOSQUITTO, Broker, Hooks, Subscriber, retained
from tests.test_reliability import Pipeline

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(MOSQUITTO),
                                reason="mosquitto is not installed (.ci/system-packages.sh installs it)")
SECRET = "a-long-shared-secret"


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def actions(lines) -> list[dict]:
    return [line for line in lines if line["kind"] in ("start", "end")]


def sinks_config(tmp, broker: Broker, hooks: list[Hooks], discovery: bool = True) -> str:
    hook_tables = "".join(f'[[webhooks]]\nurl = "{h.url}"\nsecret = "{SECRET}"\ntimeout_s = 1\nretries = 3\n\n'
                          for h in hooks)
    path = tmp / "sinks.toml"
    path.write_text(f"""
[model]
checkpoint = "models/demo.safetensors"
hop = 4
max_batch = 4

[[sources]]
spec = "synthetic:5"  # its actions change every 4-6 s: the waits below are short
name = "demo"

[events]
start_threshold = 0.7
end_threshold = 0.5

[mqtt]
url = "{broker.url}"
discovery = {str(discovery).lower()}

{hook_tables}""")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sinks")
    broker = Broker(tmp)
    watcher = Subscriber(broker.port)
    flaky, stalled = Hooks(SECRET, fail_first=2), Hooks(SECRET, stall=True)
    events = tmp / "events.jsonl"
    pipe = Pipeline("--config", sinks_config(tmp, broker, [flaky, stalled]), "--headless", "--web", "off",
                    "--events", events, "--duration", 300)
    outage = {}
    try:
        pipe.wait_for(lambda: "online" in watcher.on("timesformer/available"), timeout=60, what="online")
        pipe.wait_for(lambda: len(actions(log_lines(events))) >= 2, timeout=60, what="two action events")
        pipe.wait_for(lambda: len(watcher.events()) >= 2, timeout=10, what="two events over MQTT")
        while_running = retained(broker.port, "timesformer/available")
        outage["begin"] = time.time()
        broker.kill()
        time.sleep(5)
        broker.start()
        outage["end"] = time.time()
        pipe.wait_for(lambda: any(e["frame_ts"] > outage["end"] + 1 for e in watcher.events()), timeout=60,
                      what="an event after the broker came back")
        pipe.wait_for(lambda: len(flaky.received) >= len(actions(log_lines(events))) - 1, timeout=30,
                      what="the flaky webhook catching up")
        started = time.monotonic()
        code = pipe.stop()
        stop_s = time.monotonic() - started
        time.sleep(0.5)
        yield SimpleNamespace(broker=broker, watcher=watcher, flaky=flaky, stalled=stalled, log=log_lines(events),
                              outage=outage, code=code, stop_s=stop_s, pipe=pipe, while_running=while_running,
                              held=retained(broker.port, "timesformer/#"),
                              discovery=retained(broker.port, "homeassistant/#"))
    finally:
        pipe.stop()
        watcher.close()
        flaky.close()
        broker.kill()


def test_every_action_event_reaches_mqtt_with_its_id(run):
    """Every start and end of the log reached the broker, but those sent while the watcher itself was cut off
    by the outage; ends carry their start's id."""
    got = {(e["id"], e["kind"]): e for e in run.watcher.events()}
    logged = actions(run.log)
    assert len(logged) >= 4
    outside = [e for e in logged if not run.outage["begin"] - 1 < e["frame_ts"] < run.outage["end"] + 3]
    missing = [e for e in outside if (e["id"], e["kind"]) not in got]
    assert not missing, missing
    for (event_id, kind), event in got.items():
        if kind == "end" and (event_id, "start") in got:
            assert got[event_id, "start"]["label"] == event["label"]
    assert run.code == 0


def test_availability_is_retained_online_then_offline_after_sigterm(run):
    assert run.while_running == {"timesformer/available": "online"}  # what a client arriving mid-run is told
    assert run.watcher.on("timesformer/available")[-1] == "offline"
    assert run.held["timesformer/available"] == "offline"
    assert run.stop_s < 10


def test_state_topics_hold_the_last_event_of_each_label(run):
    state = {}
    for event in actions(run.log):
        state[event["label"]] = "ON" if event["kind"] == "start" else "OFF"
    for label, value in state.items():
        assert run.held[f"timesformer/demo/{label}"] == value, label
    assert sum(1 for topic in run.held if topic.startswith("timesformer/demo/")) == 10  # every label, after a restart


def test_home_assistant_discovery_configs_are_retained_per_label(run):
    assert len(run.discovery) == 10
    for topic, payload in run.discovery.items():
        config = json.loads(payload)
        assert topic.startswith("homeassistant/binary_sensor/timesformer/") and topic.endswith("/config")
        assert config["state_topic"].startswith("timesformer/demo/") and config["payload_on"] == "ON"
        assert config["availability_topic"] == "timesformer/available"


def test_the_broker_outage_costs_the_pipeline_nothing(run):
    """Predictions and the log went on through the 5 s outage (no gap over 1 s) and kept up with the source."""
    times = [line["frame_ts"] for line in run.log if line["kind"] == "prediction"]
    during = [t for t in times if run.outage["begin"] - 1 <= t <= run.outage["end"] + 1]
    assert during and max(b - a for a, b in zip(during, during[1:])) < 1.0
    span = times[-1] - times[0]
    assert len(times) / span > 0.9 * 30 / 4  # the demo source: 30 fps, a window every 4 frames
    assert sum("MQTT: lost" in line for line in run.pipe.lines) == 1  # one line per outage
    assert sum("is back after" in line for line in run.pipe.lines) == 1


def test_webhooks_get_each_event_once_signed_despite_failures(run):
    """The flaky server failed the first two attempts of every event; each still came exactly once, signed.
    The server that never answers slowed nothing (the keeping-up check above holds with it configured)."""
    bodies = [(body["id"], body["kind"]) for body, _ in run.flaky.received]
    assert len(bodies) == len(set(bodies)), "an event was delivered twice"
    assert all(ok for _, ok in run.flaky.received), "a bad X-Signature-256"
    logged = {(e["id"], e["kind"]) for e in actions(run.log)}
    assert set(bodies) <= logged and len(logged - set(bodies)) <= 1  # the last may still be on its retries
    assert not run.stalled.received


def test_a_broker_down_at_start_is_waited_for_and_a_killed_pipeline_leaves_its_last_will(tmp_path):
    broker = Broker(tmp_path)
    broker.kill()  # down when the pipeline starts
    pipe = Pipeline("--config", sinks_config(tmp_path, broker, [], discovery=False), "--headless", "--web", "off",
                    "--duration", 120)
    watcher = None
    try:
        pipe.wait_for(lambda: any("MQTT: cannot reach" in line for line in pipe.lines), timeout=60,
                      what="the one line saying the broker is not there")
        pipe.wait_for(lambda: any("start '" in line for line in pipe.lines), timeout=60, what="a first action")
        broker.start()
        watcher = Subscriber(broker.port, ("timesformer/#",))
        pipe.wait_for(lambda: watcher.on("timesformer/available")[-1:] == ["online"], timeout=60, what="online")
        pipe.wait_for(lambda: watcher.events(), timeout=30, what="the events held while the broker was away")
        assert sum("MQTT: cannot reach" in line for line in pipe.lines) == 1
        pipe.proc.send_signal(signal.SIGKILL)
        pipe.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and watcher.on("timesformer/available")[-1:] != ["offline"]:
            time.sleep(0.05)
        assert watcher.on("timesformer/available")[-1:] == ["offline"], "no last will after kill -9"
    finally:
        pipe.stop()
        if watcher is not None:
            watcher.close()
        broker.kill()
