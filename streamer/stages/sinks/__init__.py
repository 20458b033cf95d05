"""The sinks stage: where action events go besides the event log, MQTT (``mqtt``) and webhooks (``webhooks``).

It only reads the start and end lines the dispatcher publishes, so a broker or a web server that is
slow or gone can never hold up the pipeline: a message this stage is too slow to take is dropped by
ZeroMQ (RCVHWM is large) and the sinks' own queues are bounded, their drops counted. Delivery counts
go to the dispatcher once a second as ``Stats``, from where the web stage's /metrics shows them.
Video clips of each action are a stage of their own (:mod:`streamer.stages.clips`).
"""

from __future__ import annotations

import multiprocessing.synchronize
import time
from typing import TYPE_CHECKING

import zmq
from loguru import logger

from streamer.kinds import ACTION_KINDS, StageKind
from streamer.transport import messages, sockets
from streamer.stages.health import Health
from streamer.transport.messages import LogLine, Stats

if TYPE_CHECKING:
    from streamer.config.sinks import SinksConfig

REPORT_EVERY_S = 1.0
FINAL_LINES_S = 1.5  # at a stop, the dispatcher's last lines are awaited this long at most
QUIET_MS = 500  # and no longer than this after the last of them


def _samples(sinks) -> tuple:
    return tuple(("sink_messages", {"sink": sink.name, "outcome": outcome}, float(n))
                 for sink in sinks for outcome, n in sink.counts.items())


def run(config: SinksConfig, stop: multiprocessing.synchronize.Event, health: Health | None = None) -> int:
    """Deliver every start and end line until ``stop`` is set, then the dispatcher's last ones. ``health``
    (``--health``) is ready once the sinks run: a broker or webhook that is down is retried, not waited for."""
    from streamer.stages.sinks.mqtt import MqttSink
    from streamer.stages.sinks.webhooks import WebhookSink

    ctx = sockets.Context()
    results = sockets.make_socket(ctx, zmq.SUB, config.endpoints.results, bind=False, security=config.security,
                                  options={zmq.SUBSCRIBE: b"", zmq.RCVHWM: 100_000})
    report = sockets.make_socket(ctx, zmq.DEALER, config.endpoints.windows, bind=False, security=config.security,
                                 options={zmq.LINGER: 0, zmq.SNDHWM: 4})
    sinks: list = []
    if config.mqtt is not None:
        sinks.append(MqttSink(config.mqtt, config.streams, config.labels))
    sinks += [WebhookSink(hook, f"webhook {i + 1}") for i, hook in enumerate(config.webhooks)]
    logger.info("sinks: " + ", ".join(f"{sink.name} {sink.config.where}" for sink in sinks))
    malformed = messages.MalformedLog("sinks")
    next_report = time.monotonic() + REPORT_EVERY_S

    health = health or Health("sinks")
    health.ready()

    def send_report() -> None:
        samples = _samples(sinks)
        health.publish(samples)
        try:
            messages.send(report, Stats(StageKind.SINKS, time.time(), samples), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def deliver(wait_ms: int) -> bool:
        """Hand the start and end lines that arrived to every sink; False when none came within ``wait_ms``."""
        if not results.poll(wait_ms):
            return False
        for msg in messages.drain(results, malformed):
            if isinstance(msg, LogLine) and msg.line.get("kind") in ACTION_KINDS:
                for sink in sinks:
                    sink.event(msg.line)
        return True

    try:
        while not stop.is_set():
            health.beat()
            deliver(100)
            if time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                send_report()
        # Stopping: the dispatcher's last lines (the end of every action under way) come after the stop.
        deadline = time.monotonic() + FINAL_LINES_S
        while time.monotonic() < deadline and deliver(QUIET_MS):
            pass
    finally:
        for sink in sinks:
            sink.close()
        send_report()
        results.close(linger=0)
        report.close(linger=500)
        ctx.term()
    return 0
