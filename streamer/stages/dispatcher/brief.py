"""Actions too short to tell anyone about (``[events] min_duration_s``): in the log, marked, and nowhere else.

A start line is written to the event log at once but held back from the subscribers (sinks, clips, web) until
its action has lasted ``min_duration_s`` on its stream's clock; an action that ends before then is never
published, and its end line says ``"brief": true``.
"""

from __future__ import annotations

from typing import Any

from streamer.kinds import LineKind


class BriefGate:
    """Which action lines the subscribers get, with ``min_duration_s`` (0: all of them, at once)."""

    def __init__(self, min_duration_s: float) -> None:
        self.min_duration_s = min_duration_s
        self.held: dict[str, tuple[dict[str, Any], float]] = {}  # id → (its start line, the start on its clock)

    def publish(self, line: dict[str, Any], clock: float | None) -> bool:
        """Whether ``line`` goes to the subscribers now; a held start's end is marked brief and goes nowhere."""
        kind, event_id = line.get("kind"), line.get("id")
        if not self.min_duration_s or kind not in (LineKind.START, LineKind.END):
            return True
        if kind == LineKind.START and clock is not None:
            self.held[event_id] = (line, clock)
            return False
        if kind == LineKind.END and self.held.pop(event_id, None) is not None:
            line["brief"] = True
            return False
        return True

    def lasted(self, stream: str, track: int | None, clock: float) -> list[dict[str, Any]]:
        """The held starts of ``(stream, track)`` whose action has now lasted long enough: publish them."""
        out = []
        for event_id, (line, started) in list(self.held.items()):
            if line["stream"] == stream and line.get("track") == track and clock - started >= self.min_duration_s:
                del self.held[event_id]
                out.append(line)
        return out
