"""Health of one stage process, for an orchestrator's probes: ``--health HOST:PORT`` serves it.

``GET /healthz``: 200 while the stage's loop goes round (a loop silent for ``stall_s`` is hung: 503, so
a liveness probe restarts it); ``GET /readyz``: 200 when the stage can do its work, else 503 with the
reason as JSON (a worker still loading its model, a capture whose camera is away); ``GET /metrics``:
the stage's own counters in Prometheus' text format. Served from a thread of the stage's process by
the standard library's HTTP server: three small GET routes need no framework, and a slow probe never
blocks the stage. Without ``--health`` (the stages under one supervisor) the same object only counts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()

# (metric, help) of the counters the stages report (``Stats`` samples): exported with ``_total``, here and on
# the web stage's /metrics. Any other sample is a gauge, with its help from REPORTED_GAUGES when it has one.
REPORTED_COUNTERS = {
    "frames_captured": "Frames read from each source",
    "frames_converted": "Frames converted to model input (the others no window holds are only decoded)",
    "display_frames": "Frames made for the overlay and the live view (only while one of them watches)",
    "tracks_skipped": "Moving things not tracked because a stream had max_tracks actors already (per frame)",
    "windows_sent": "Windows each capture sent to the dispatcher",
    "windows_dropped": "Windows dropped, by stream and reason (overtaken: a newer one came first; "
                       "stale: its frames were overwritten before a worker read them; dispatcher_away: a capture could not "
                       "hand it to a dispatcher that was down)",
    "event_log_lines": "Lines written to the event log",
    "store_lines_written": "Action start and end lines written into the action store",
    "malformed_messages": "Messages the dispatcher dropped as malformed",
    "sink_messages": "Messages of the event sinks, by sink (mqtt, webhook N) and outcome (published or delivered; "
                     "dropped: their queue was full; failed: given up after the retries; retries)",
    "clips": "Action clips, by outcome (written, failed)",
    "clip_frames_missed": "Frames missing from written clips (the recorder fell behind and ZeroMQ dropped them)",
}
STAGE_COUNTERS = {  # counted for one stage's own /metrics only
    "frame_server_windows": "Windows' frames a capture's frame server was asked for, by outcome (served; stale: "
                            "overwritten before the worker asked; malformed)",
    "worker_windows": "Windows this worker predicted",
    "worker_batches": "Batches this worker ran",
    "worker_windows_stale": "Windows whose frames were overwritten before this worker read them",
}
REPORTED_GAUGES = {
    "input_fps": "Frames a second read from each source",
    "source_fps": "Each source's own frame rate (0: it does not say)",
    "last_frame_ts": "Unix time of the newest frame read from each source",
    "capture_started": "Unix time this capture process started",
    "tracks_active": "Tracked actors each stream follows now",
    "workers_answering": "Workers warm and answering the dispatcher",
    "clip_buffer_bytes": "Recent frames the clips stage holds for pre-roll (JPEG)",
    "dispatcher_windows_waiting": "Windows waiting for a worker now (live: at most one a stream or tracked actor)",
    "dispatcher_workers_needed": "Workers it would take to predict every window offered: windows offered a second "
                                 "(over the last 10 s) times the worker-seconds one window takes (at least 1 while "
                                 "windows wait and no worker answers); the worker autoscaling metric",
    "store_lines_waiting": "Action lines waiting to be written into the action store (it is slow, locked or full)",
    "worker_forward_seconds": "The model's forward pass over this worker's last batch",
}
STALL_S = 60.0  # a loop silent this long is hung (a worker's slowest batch on a CPU stays well below it)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Health:
    """What one stage says about itself: whether it is ready (or why not), that its loop turns, its metrics.

    Args:
        stage: the stage as metrics and answers name it ("dispatcher", "worker-0", "capture cam0").
        stall_s: a loop that has turned once and then not for this long makes /healthz fail.
    """

    def __init__(self, stage: str, stall_s: float = STALL_S) -> None:
        self.stage, self.stall_s = stage, stall_s
        self.registry = CollectorRegistry()
        self._reason = "starting"  # "" when ready; one str assignment, so no lock is needed
        self._last_beat = 0.0  # monotonic time the loop last turned; 0 before its first turn
        self._reported: tuple = ()  # the samples of the stage's latest report
        self.registry.register(_StageCollector(self))

    # ------------------------------------------------------------------ what the stage says

    def ready(self) -> None:
        self._reason = ""

    def not_ready(self, reason: str) -> None:
        self._reason = reason or "not ready"

    def beat(self) -> None:
        """The stage's loop turned (call it once a round)."""
        self._last_beat = time.monotonic()

    def publish(self, samples) -> None:
        """The stage's latest counts, ``(name, labels, value)`` as its ``Stats`` report carries them."""
        self._reported = tuple(samples)

    # ------------------------------------------------------------------ what the probes read

    @property
    def reason(self) -> str:
        """Why the stage is not ready ("" when it is)."""
        return self._reason

    def stalled_s(self) -> float:
        """How long the loop has been silent past its limit (0 when it turns, or has not started turning)."""
        if not self._last_beat:
            return 0.0
        silent = time.monotonic() - self._last_beat
        return silent if silent > self.stall_s else 0.0


class _StageCollector(Collector):
    """``timesformer_stage_ready`` and ``timesformer_stage_loop_age_seconds``, read at every scrape."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self):
        ready = GaugeMetricFamily("timesformer_stage_ready", "1 when the stage can do its work (what /readyz says)",
                                  labels=["stage"])
        ready.add_metric([self.health.stage], 0.0 if self.health.reason else 1.0)
        age = GaugeMetricFamily("timesformer_stage_loop_age_seconds",
                                "Seconds since the stage's loop last turned", labels=["stage"])
        beat = self.health._last_beat
        age.add_metric([self.health.stage], time.monotonic() - beat if beat else 0.0)
        yield ready
        yield age
        by_name: dict[str, list] = {}
        for name, labels, value in self.health._reported:
            by_name.setdefault(name, []).append((labels, value))
        for name, samples in by_name.items():
            counter = name in REPORTED_COUNTERS or name in STAGE_COUNTERS
            help_text = (REPORTED_COUNTERS.get(name) or STAGE_COUNTERS.get(name) or REPORTED_GAUGES.get(name)
                         or f"{name}, as the stage reports it")
            yield metric_family(CounterMetricFamily if counter else GaugeMetricFamily, name, help_text, samples)


def metric_family(kind, name: str, text: str, samples):
    """A ``timesformer_<name>`` family of ``kind`` from ``(labels, value)`` samples whose label sets may differ."""
    labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
    family = kind(f"timesformer_{name}", text, labels=labels)
    for sample_labels, value in samples:
        family.add_metric([sample_labels.get(key, "") for key in labels], value)
    return family


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass made for each server

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        health, path = self.health, self.path.split("?", 1)[0]
        if path == "/healthz":
            stalled = health.stalled_s()
            if stalled:
                self._json(503, {"alive": False, "stage": health.stage,
                                 "reason": f"its loop has not turned for {stalled:.0f} s"})
            else:
                self._json(200, {"alive": True, "stage": health.stage})
        elif path == "/readyz":
            reason = health.reason
            self._json(503 if reason else 200, {"ready": not reason, "stage": health.stage,
                                                **({"reason": reason} if reason else {})})
        elif path == "/metrics":
            self._send(200, PROMETHEUS_TEXT, generate_latest(health.registry))
        else:
            self._json(404, {"error": f"no {path}: try /healthz, /readyz or /metrics"})

    def _json(self, status: int, body: dict) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # probes every few seconds: not worth a log line
        pass


class _ServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Answer the probes on ``host:port`` from a daemon thread until the process ends; raises OSError when
    the port cannot be had. Returns the server (its ``server_address`` has the port, when 0 was asked)."""
    handler = type("HealthHandler", (_Handler,), {"health": health})
    server_class = _ServerV6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
