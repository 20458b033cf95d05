"""The names shared by the writers and the readers of event-log lines, status messages and stream states.

Each is a ``StrEnum``: a member is its string (``LineKind.START == "start"``, ``json.dumps`` writes
``"start"``), so the event log and the wire read exactly as before, and a reader may compare a
decoded plain string with a member. This module imports nothing of the project (the lowest layer).
"""

from __future__ import annotations

from enum import StrEnum


class StageKind(StrEnum):
    """The kinds of process the supervisor runs (one ``run(config, stop)`` each, in ``streamer.stages``)."""

    CAPTURE = "capture"
    DISPATCHER = "dispatcher"
    WORKER = "worker"
    OVERLAY = "overlay"
    WEB = "web"
    SINKS = "sinks"
    CLIPS = "clips"


class LineKind(StrEnum):
    """The ``"kind"`` of an event-log line (contract 3) and of a :class:`Status` message.

    A status a capture, a worker or the supervisor sends is written to the event log as a line of
    the same kind, except ``end_of_stream`` and ``window_stale``, which only the dispatcher reads.
    A reader skips kinds it does not know.
    """

    # what the dispatcher makes of the results
    PREDICTION = "prediction"
    START = "start"
    END = "end"
    PAD = "pad"  # a filler the event log writes so that no line crosses a page boundary
    # what the sources say (through their capture)
    SOURCE_LOST = "source_lost"
    SOURCE_RESTORED = "source_restored"
    END_OF_STREAM = "end_of_stream"
    TRACK_ENDED = "track_ended"
    # workers
    WINDOW_STALE = "window_stale"  # a window whose frames a worker could not read (not logged)
    WORKER_LOST = "worker_lost"  # silent past the heartbeat timeout, as the dispatcher sees it
    WORKER_HUNG = "worker_hung"  # its heartbeat stopped, as the supervisor sees it (it is killed)
    # the supervisor restarted a stage that died
    CAPTURE_RESTARTED = "capture_restarted"
    DISPATCHER_RESTARTED = "dispatcher_restarted"
    WORKER_RESTARTED = "worker_restarted"
    OVERLAY_RESTARTED = "overlay_restarted"
    WEB_RESTARTED = "web_restarted"
    SINKS_RESTARTED = "sinks_restarted"
    CLIPS_RESTARTED = "clips_restarted"


ACTION_KINDS = (LineKind.START, LineKind.END)  # the lines that begin and finish an action

RESTARTED: dict[StageKind, LineKind] = {
    StageKind.CAPTURE: LineKind.CAPTURE_RESTARTED,
    StageKind.DISPATCHER: LineKind.DISPATCHER_RESTARTED,
    StageKind.WORKER: LineKind.WORKER_RESTARTED,
    StageKind.OVERLAY: LineKind.OVERLAY_RESTARTED,
    StageKind.WEB: LineKind.WEB_RESTARTED,
    StageKind.SINKS: LineKind.SINKS_RESTARTED,
    StageKind.CLIPS: LineKind.CLIPS_RESTARTED,
}
RESTARTED_STAGE: dict[LineKind, StageKind] = {line: stage for stage, line in RESTARTED.items()}


class StreamState(StrEnum):
    """What the web view says of a stream (``/api/streams`` ``"state"``)."""

    STARTING = "starting"  # no frame yet
    LIVE = "live"
    LOST = "lost"  # its source is lost, or sent no frame for a while
    ENDED = "ended"  # a file or a finite source that reached its end
