"""Real parts for the sink tests: a Mosquitto broker on a free loopback port, an MQTT subscriber that
records what it gets, and HTTP servers that fail, stall or take webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Debian's mosquitto on 127.0.0.1:port, no persistence (a restart forgets retained messages)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Subscriber:
    """A paho client subscribed to ``topics``; ``got`` holds (monotonic time, topic, payload, retained)."""

    def __init__(self, port: int, topics=("timesformer/#", "homeassistant/#")) -> None:
        import paho.mqtt.client as mqtt

        self.got: list[tuple[float, str, str, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_message = lambda c, u, m: self.got.append(
            (time.monotonic(), m.topic, m.payload.decode(), bool(m.retain)))
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def on(self, topic: str) -> list[str]:
        return [payload for _, t, payload, _ in list(self.got) if t == topic]

    def events(self) -> list[dict]:
        return [json.loads(payload) for payload in self.on("timesformer/events")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, pattern: str, wait_s: float = 1.0) -> dict[str, str]:
    """What the broker holds retained under ``pattern``, as a fresh client sees it."""
    sub = Subscriber(port, (pattern,))
    time.sleep(wait_s)
    sub.close()
    return {topic: payload for _, topic, payload, is_retained in sub.got if is_retained}


class Hooks:
    """An HTTP server for webhooks. ``fail_first``: answer 500 to the first N attempts of each body;
    ``stall``: never answer. ``received`` holds (body, signature ok) of each request answered 200."""

    def __init__(self, secret: str = "", fail_first: int = 0, stall: bool = False) -> None:
        self.secret, self.received, self.attempts = secret, [], {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if stall:
                    time.sleep(3600)
                key = hashlib.sha256(body).hexdigest()
                outer.attempts[key] = outer.attempts.get(key, 0) + 1
                if outer.attempts[key] <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                want = "sha256=" + hmac.new(outer.secret.encode(), body, hashlib.sha256).hexdigest()
                outer.received.append((json.loads(body), self.headers.get("X-Signature-256") == want))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
