"""Dispatcher stage: the hub between captures, workers, the event log and the overlay.

Workers pull: a worker says "ready for n" and gets at once the newest waiting window of
up to n streams (one message, batched across streams). Live, each stream keeps only its
newest window; an overtaken one is dropped and counted, so no window waits longer than
one inference. Offline, windows queue and each taken window returns a credit to its
capture, so nothing is dropped. Results become event-log lines here, as they arrive.

``rules`` (what waits, what is dropped, who gets what), ``tracker`` (predictions → action
events), ``event_log`` (the file, never a torn line), ``hub`` (the sockets and the loop).
"""

from __future__ import annotations

import multiprocessing.synchronize
from typing import TYPE_CHECKING

from streamer.stages.dispatcher.hub import Hub
from streamer.stages.dispatcher.rules import Dispatcher

if TYPE_CHECKING:
    from streamer.config.stages import DispatchConfig
    from streamer.stages.health import Health

__all__ = ["Dispatcher", "run"]


def run(config: DispatchConfig, stop: multiprocessing.synchronize.Event, health: Health | None = None) -> int:
    """Serve until ``stop`` is set, or until every file source has ended and been predicted (returns 0).
    ``health`` hears that it is ready (bound) and gets its counts (``--health``)."""
    return Hub(config, health).serve(stop)
