"""The web stage: live annotated streams in a browser, a JSON API, Prometheus metrics and health checks.

``state`` (what the stage knows, fed by the pipeline's messages), ``feeds`` (JPEG frames, encoded
once however many watch), ``metrics`` (the Prometheus text), ``server`` (the aiohttp routes and the
loop). Its frozen config is :class:`~streamer.config.stages.WebConfig`.
"""

from __future__ import annotations

import multiprocessing.synchronize
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.config.web import WebConfig
    from streamer.stages.health import Health


def run(config: WebConfig, stop: multiprocessing.synchronize.Event, listener: socket.socket | None = None,
        health: Health | None = None) -> int:
    """Serve until ``stop`` is set; ``listener`` is the socket the supervisor bound (None: bind here).
    ``health`` (``--health``) is ready once the page is served."""
    from streamer.stages.health import Health
    from streamer.stages.web.server import serve  # aiohttp only in the web stage's process

    return serve(config, stop, listener, health or Health("web"))
