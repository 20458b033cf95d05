"""Action events POSTed to HTTP endpoints (httpx), each from a thread and a bounded queue of its own.

An event is retried with exponential backoff (0.5 s doubling, at most 30 s) on a connection error, a
timeout or a 5xx/408/429 answer, up to ``retries`` times; another 4xx is final (the request is wrong,
retrying will not mend it). A hook that is slow or down fills only its own queue: further events for it
are dropped and counted, and nothing else waits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading

from loguru import logger

from streamer.config.sinks import WebhookConfig

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0


def signature(secret: str, body: bytes) -> str:
    """The ``X-Signature-256`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class WebhookSink:
    """One webhook: ``event`` queues (never blocks), a thread delivers in order."""

    def __init__(self, config: WebhookConfig, name: str) -> None:
        self.config, self.name = config, name
        self.counts = {"delivered": 0, "dropped": 0, "failed": 0, "retries": 0}
        self._queue: queue.Queue[bytes | None] = queue.Queue(config.queue)
        self._closing = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._deliver_all, name=name, daemon=True)
        self._thread.start()

    def event(self, line: dict) -> None:
        if line.get("kind") not in self.config.events:
            return
        try:
            self._queue.put_nowait(json.dumps(line, separators=(",", ":")).encode())
        except queue.Full:
            self.counts["dropped"] += 1
            if self.counts["dropped"] == 1 or self.counts["dropped"] % 1000 == 0:
                logger.warning(f"{self.name} {self.config.where}: {self.counts['dropped']} event(s) dropped so far "
                               f"(its queue of {self.config.queue} is full: the server is slow or down)")

    def _deliver_all(self) -> None:
        import httpx

        with httpx.Client(timeout=self.config.timeout_s, follow_redirects=False) as client:
            while True:
                body = self._queue.get()
                if body is None:
                    return
                self._deliver(client, body)

    def _deliver(self, client, body: bytes) -> None:
        import httpx

        headers = {"Content-Type": "application/json", "User-Agent": "timesformer-stream"}
        if self.config.secret:
            headers["X-Signature-256"] = signature(self.config.secret, body)
        delay = BACKOFF_FIRST_S
        for attempt in range(self.config.retries + 1):
            try:
                answer = client.post(self.config.url, content=body, headers=headers)
                if answer.is_success:
                    self.counts["delivered"] += 1
                    if self._failing:
                        self._failing = False
                        logger.info(f"{self.name} {self.config.where}: delivering again")
                    return
                why, final = f"HTTP {answer.status_code}", not _retryable(answer.status_code)
            except httpx.HTTPError as err:
                why, final = type(err).__name__, False
            if final or attempt == self.config.retries or self._closing.is_set():
                break
            self.counts["retries"] += 1
            if self._closing.wait(delay):
                break
            delay = min(BACKOFF_MAX_S, delay * 2)
        self.counts["failed"] += 1
        if not self._failing:
            self._failing = True  # logged once per run of failures, not once per event
            logger.warning(f"{self.name} {self.config.where}: an event was not delivered ({why}"
                           f"{', not retried' if final else f' after {self.config.retries + 1} attempts'}); "
                           "later events are still tried")

    def close(self, timeout_s: float = 3.0) -> None:
        """Deliver what is queued within ``timeout_s``, then stop (what is left is counted as dropped)."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._closing.set()
        self._thread.join(1.0)
        self.counts["dropped"] += self._queue.qsize()
