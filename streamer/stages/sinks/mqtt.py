"""Action events to an MQTT broker (paho-mqtt 2.x): availability with a last will, every start and end
as JSON, a retained ON/OFF state per stream and label, and Home Assistant discovery when asked.

paho's network thread connects, reconnects with a capped backoff and holds up to ``queue`` messages
while the broker is away; ``publish`` only queues, so the stage never waits for the broker. An outage
is logged once when it starts and once when it ends; messages the queue could not take are counted.
"""

from __future__ import annotations

import json
import re
import threading
import time

from loguru import logger

from streamer.kinds import LineKind
from streamer.config.sinks import MqttConfig

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30


def topic_part(text: str) -> str:
    """A stream or label as topic levels: MQTT's wildcards and NUL replaced (``/`` is kept: regions
    name their streams ``<stream>/<region>``)."""
    return re.sub(r"[+#\0]", "_", text) or "_"


def _object_id(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


class MqttSink:
    """One connection to the broker for the life of the stage."""

    name = "mqtt"

    def __init__(self, config: MqttConfig, streams: tuple[str, ...], labels: tuple[str, ...]) -> None:
        import paho.mqtt.client as mqtt

        self.config, self.streams, self.labels = config, streams, labels
        self.prefix = config.topic_prefix
        self.available = f"{self.prefix}/available"
        self.counts = {"published": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._ever_connected, self._down_since = False, 0.0
        self.active: dict[tuple[str, str], set] = {}  # (stream, label) → ids of its actions under way (tracks: several)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                  protocol=mqtt.MQTTv311)
        if config.username:
            self.client.username_pw_set(config.username, config.password or None)
        if config.tls:
            self.client.tls_set()  # the system's CA store; the broker's name is checked
        self.client.will_set(self.available, "offline", qos=1, retain=True)
        self.client.max_queued_messages_set(config.queue)
        self.client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_connect_fail = lambda client, userdata: self._disconnected(client, userdata, None,
                                                                                   "connection refused", None)
        self.client.on_publish = self._acknowledged
        self._last_acked = -1  # the newest message the broker took (qos 1/2 are taken in order)
        self._closing = False
        self.client.connect_async(config.host, config.port, keepalive=30)
        self.client.loop_start()  # events published before the first connection are held and sent when it comes

    # paho's thread
    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._disconnected(client, userdata, None, reason, properties)
            return
        if not self._ever_connected:
            logger.info(f"MQTT: connected to {self.config.where}; events on {self.prefix}/events")
        else:
            logger.info(f"MQTT: {self.config.where} is back after {time.monotonic() - self._down_since:.0f} s; "
                        "queued events follow")
        self._ever_connected, self._down_since = True, 0.0
        self._publish(self.available, "online", retain=True)  # also after a will said offline
        self._announce()

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        with self._lock:
            if self._down_since or self._closing:
                return  # the outage is already logged (paho keeps retrying), or we are leaving
            self._down_since = time.monotonic()
        what = "cannot reach" if not self._ever_connected else "lost"
        logger.warning(f"MQTT: {what} {self.config.where} ({reason}); retrying every ≤{RECONNECT_MAX_S} s, "
                       f"up to {self.config.queue} messages held meanwhile")

    def _acknowledged(self, client, userdata, mid, reason, properties) -> None:
        self._last_acked = mid

    def _announce(self) -> None:
        """At every connection: Home Assistant's discovery configs and every stream/label state (OFF unless
        under way: a crash may have left one ON, a restarted broker may have lost them all)."""
        for stream in self.streams:
            for label in self.labels:
                if self.config.discovery:
                    self._publish(*self._discovery(stream, label), retain=True)
                self._publish(self.state_topic(stream, label), "ON" if (stream, label) in self.active else "OFF",
                              retain=True)

    def _discovery(self, stream: str, label: str) -> tuple[str, str]:
        node = _object_id(self.prefix)
        object_id = _object_id(f"{stream}_{label}")
        words = label.replace("_", " ")
        config = {
            "name": f"{stream} {words}", "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}",
            "state_topic": self.state_topic(stream, label), "payload_on": "ON", "payload_off": "OFF",
            "availability_topic": self.available, "payload_available": "online", "payload_not_available": "offline",
            "device": {"identifiers": [node], "name": f"TimeSformer ({self.prefix})", "manufacturer": "timesformer-stream",
                       "model": "action recognition"},
        }
        return f"{self.config.discovery_prefix}/binary_sensor/{node}/{object_id}/config", json.dumps(config)

    def state_topic(self, stream: str, label: str) -> str:
        return f"{self.prefix}/{topic_part(stream)}/{topic_part(label)}"

    def _publish(self, topic: str, payload: str, retain: bool = False) -> int:
        import paho.mqtt.client as mqtt

        info = self.client.publish(topic, payload, qos=self.config.qos, retain=retain)
        key = "published" if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) else "dropped"
        if info.rc == mqtt.MQTT_ERR_NO_CONN and self.config.qos == 0:
            key = "dropped"  # qos 0 is not held while away
        with self._lock:
            self.counts[key] += 1
            dropped = self.counts["dropped"]
        if key == "dropped" and (dropped == 1 or dropped % 1000 == 0):
            logger.warning(f"MQTT: {dropped} message(s) dropped so far: the broker is away and the queue of "
                           f"{self.config.queue} is full")
        return info.mid

    # the stage's thread
    def event(self, line: dict) -> None:
        """One start or end line: on ``<prefix>/events``, and the stream/label state."""
        self._publish(f"{self.prefix}/events", json.dumps(line, separators=(",", ":")))
        if isinstance(line.get("stream"), str) and isinstance(line.get("label"), str):
            if line["label"] not in self.labels:  # taught while running: announced at its first action
                self.labels = (*self.labels, line["label"])
                for stream in self.streams if self.config.discovery else ():
                    self._publish(*self._discovery(stream, line["label"]), retain=True)
            key, start = (line["stream"], line["label"]), line["kind"] == LineKind.START
            if "track" in line:  # tracked actors: ON while any of them does it (their actions told apart by id)
                ids = self.active.setdefault(key, set())
                (ids.add if start else ids.discard)(str(line.get("id")))
                if not ids:
                    del self.active[key]
            elif start:  # a stream's own action: ON from its start to its end
                self.active[key] = {""}
            else:
                self.active.pop(key, None)
            self._publish(self.state_topic(*key), "ON" if key in self.active else "OFF", retain=True)

    def close(self, timeout_s: float = 3.0) -> None:
        """``offline`` (retained) after what is queued, all sent within ``timeout_s`` if the broker is
        there, then a clean disconnect (so the broker does not send the last will as well)."""
        mid = self._publish(self.available, "offline", retain=True)
        deadline = time.monotonic() + timeout_s
        while self._last_acked != mid and not self._down_since and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
