"""The frames of one stream, kept for windows: a preallocated ring and the schedule that cuts windows.

A window is ``num_frames`` frames taken every ``frame_interval`` source frames,
ending at the newest one. It is cut only from one *run* of consecutive source
indices: a frame whose index is not the previous one plus one (a reconnect, a
skipped frame, a restarted source) starts a new run, so a window never spans a
gap in time. Capture therefore pushes every frame it reads, and calls
:meth:`RingBuffer.reset` (or jumps the index) when a source comes back.
"""

from __future__ import annotations

import numpy as np

from streamer.errors import ConfigError
from workers.sampling import window_span

MAX_SIDE = 4096

WindowData = tuple[tuple[int, ...], tuple[float, ...], np.ndarray]  # indices, capture times, (T, H, W, 3) frames


def _positive(name: str, value: object, hi: int | None = None) -> int:
    if type(value) is not int or value < 1 or (hi is not None and value > hi):
        limit = f"an integer from 1 to {hi}" if hi else "a positive integer"
        raise ConfigError(f"{name} = {value!r}: must be {limit}")
    return value


class RingBuffer:
    """The newest ``capacity`` frames of one stream, (H, W, 3) uint8 RGB each, in memory allocated once.

    Every push gets the next serial number and the slot ``serial % capacity``, so a slot's
    serial says exactly which frame it holds (shared-memory readers check it).

    Args:
        capacity: frames kept; ``window_span(num_frames, frame_interval)`` is enough.
        height, width: size of every frame pushed (the model's input size).
        store: a :class:`~streamer.transport.framestore.FrameStore` to keep the frames in (shared with
            workers); None keeps them in private memory.
    """

    def __init__(self, capacity: int, height: int, width: int, store=None) -> None:
        _positive("ring buffer capacity", capacity, 1 << 20)
        _positive("frame height", height, MAX_SIDE)
        _positive("frame width", width, MAX_SIDE)
        self.capacity = capacity
        self.shape = (height, width, 3)
        if store is not None:
            if store.frames.shape != (capacity, height, width, 3):
                raise ConfigError(f"frame store of {store.frames.shape} for a ring of {(capacity, height, width, 3)}")
            self._frames, self._serials = store.frames, store.serials
        else:
            self._frames = np.zeros((capacity, height, width, 3), np.uint8)
            self._serials = np.full(capacity, -1, np.int64)
        self._ts = np.zeros(capacity, np.float64)
        self._serial = -1  # of the newest frame
        self.reset()

    def reset(self) -> None:
        """Forget every frame (a source was lost): the next window needs a full refill."""
        self._newest = -1  # index of the newest frame, -1 when empty
        self._run_start = 0  # first index of the run of consecutive indices ending at _newest

    def __len__(self) -> int:
        """Frames of the current run still held."""
        return 0 if self._newest < 0 else min(self.capacity, self._newest - self._run_start + 1)

    @property
    def newest(self) -> int | None:
        """Index of the newest frame, or None when empty."""
        return None if self._newest < 0 else self._newest

    def push(self, index: int, ts: float, rgb: np.ndarray | None) -> None:
        """Copy in frame ``index`` captured at ``ts``; an index that does not follow the newest starts a new run.

        ``rgb`` None records the frame without its pixels: one no window will take
        (:meth:`WindowSchedule.wanted`), so it was never converted; its slot is marked empty.
        """
        if rgb is not None and (rgb.shape != self.shape or rgb.dtype != np.uint8):
            raise ConfigError(
                f"frame of shape {rgb.shape} {rgb.dtype} pushed to a ring buffer of {self.shape} uint8; "
                "resize frames to the model input before buffering")
        if index < 0:
            raise ConfigError(f"frame index {index} is negative; source indices count from 0")
        if self._newest < 0 or index != self._newest + 1:
            self._run_start = index
        self._serial += 1
        slot = self._serial % self.capacity
        self._serials[slot] = -1  # "being written" (or empty), for readers of a shared store
        self._ts[slot] = ts
        if rgb is not None:
            self._frames[slot] = rgb
            self._serials[slot] = self._serial
        self._newest = index

    def window(self, num_frames: int, frame_interval: int) -> WindowData | None:
        """The window ending at the newest frame, oldest first, or None if the current run is too short.

        Returns:
            (source indices, capture times, frames (T, H, W, 3) uint8 — a contiguous copy).
        """
        found = self.window_serials(num_frames, frame_interval)
        if found is None:
            return None
        indices, stamps, serials = found
        return indices, stamps, self.frames_at(serials)

    def frames_at(self, serials: tuple[int, ...]) -> np.ndarray:
        """A contiguous copy of the frames with these serial numbers (from :meth:`window_serials`)."""
        return self._frames[np.asarray(serials) % self.capacity]  # fancy indexing: a copy

    def window_serials(self, num_frames: int, frame_interval: int) -> tuple[tuple[int, ...], tuple[float, ...],
                                                                             tuple[int, ...]] | None:
        """Like :meth:`window`, with the frames' serial numbers instead of a copy of them."""
        span = window_span(num_frames, frame_interval)
        if span > self.capacity:
            raise ConfigError(
                f"a window of {num_frames} frames every {frame_interval} spans {span} frames, "
                f"more than the ring buffer's capacity {self.capacity}")
        if self._newest < 0 or self._newest - span + 1 < self._run_start:
            return None
        back = range(span - 1, -1, -frame_interval)  # how far each frame is behind the newest, oldest first
        serials = tuple(self._serial - k for k in back)
        slots = [s % self.capacity for s in serials]
        return (tuple(self._newest - k for k in back), tuple(float(self._ts[s]) for s in slots), serials)


class WindowSchedule:
    """When to cut a window: every ``hop`` source frames, from the first moment a run holds one.

    Call :meth:`due` once for every pushed index, in order; it follows runs of
    consecutive indices exactly as :class:`RingBuffer` does, so a window that is
    due is always available.
    """

    def __init__(self, num_frames: int, frame_interval: int, hop: int) -> None:
        self.span = window_span(num_frames, frame_interval)
        self.interval = frame_interval
        self.hop = _positive("hop", hop)
        self.reset()

    def reset(self) -> None:
        """Start over (with :meth:`RingBuffer.reset`)."""
        self._last = -1
        self._run_start = 0

    def due(self, index: int) -> bool:
        """Whether a window ending at ``index`` should be emitted now."""
        if self._last < 0 or index != self._last + 1:
            self._run_start = index
        self._last = index
        first = self._run_start + self.span - 1  # first index with a full window in this run
        return index >= first and (index - first) % self.hop == 0

    def wanted(self, index: int) -> bool:
        """Whether a window of the current run will hold frame ``index`` (call after :meth:`due` for it).

        A window ends at ``e = first + m·hop`` and holds ``e, e - interval, …, e - span + 1``: the frame is
        wanted when some such ``e`` lies in ``[index, index + span - 1]`` at a multiple of ``interval``
        from it. With K400's 8 frames every 32 and a hop of 32, one frame in 32 is.
        """
        first = self._run_start + self.span - 1
        steps = max(0, -(-(index - first) // self.hop))  # the first window ending at or after index
        for end in range(first + steps * self.hop, index + self.span, self.hop):
            if (end - index) % self.interval == 0:
                return True
        return False
