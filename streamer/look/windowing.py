"""What one capture's frames become: the streams of windows it sends (contract 7).

A capture has one *feed* per stream it sends: the whole frame (the checkpoint's centre crop, the
fast path of :func:`streamer.video.frames.model_frame` and the shared frame store), a named region or a
crop mode other than the centre (cut from the full-resolution frame, :mod:`streamer.look.crops`), or the
tracked actors of the frame (:class:`TrackFeed`). One decode serves them all: a frame's full-size
BGR copy is made at most once (:class:`FrameView`), and only for frames a window will hold.
(What the web stage sends its viewers is another thing: :mod:`streamer.stages.web.feeds`.)
"""

from __future__ import annotations

import time
from functools import cached_property

import numpy as np

from streamer.config.look import LookConfig, TrackingConfig
from streamer.look.crops import model_view, region_box, view_boxes
from streamer.video.frames import Picture, bgr_of, display_image, is_array, model_frame
from streamer.transport.framestore import FrameRef
from streamer.transport.message_types import Window
from streamer.video.ringbuffer import RingBuffer, WindowSchedule
from workers.sampling import window_span
from streamer.look.motion import Detector, MotionDetector, small_copy
from streamer.look.tracking import Presence, Tracker, window_box

SLIVER = 0.25  # a track's box narrower than this share of its length shows too little of its actor to label
TRACK_SEEN = 0.5  # a track gets windows once it has boxes for this share of a window's frames (the newest):
                  # a new actor is labelled half a window sooner, its crop the square around what was seen
UNSEEN_S = 0.1  # a track not seen for longer gets no windows (still shown while it coasts): its box shows where its
                # actor was, and at a cut or an exit that is ground
TRACK_MARGIN = 0.15  # a track's window square reaches this far (of its path's size) beyond the path


class FrameView:
    """One decoded frame and what is made of it on demand, once: its full-size BGR array."""

    def __init__(self, index: int, ts: float, picture: Picture) -> None:
        self.index, self.ts, self.picture = index, ts, picture
        self.width, self.height = ((picture.shape[1], picture.shape[0]) if is_array(picture)
                                   else (picture.width, picture.height))

    @cached_property
    def bgr(self) -> np.ndarray:
        return bgr_of(self.picture)


class Feed:
    """The windows of one stream: a ring per crop (:func:`streamer.look.crops.view_boxes`), the schedule, the
    window counter."""

    def __init__(self, stream: str, size: int, num_frames: int, frame_interval: int, hop: int,
                 capacity: int = 0, store=None, crops: int = 1) -> None:
        self.stream, self.size, self.num_frames, self.interval = stream, size, num_frames, frame_interval
        span = window_span(num_frames, frame_interval)
        self.store = store if crops == 1 else None  # a shared store holds one crop's frames
        self.rings = [RingBuffer(capacity or span, size, size, store=self.store if k == 0 else None)
                      for k in range(crops)]
        self.schedule = WindowSchedule(num_frames, frame_interval, hop)
        self.seq = 0

    def reset(self) -> None:
        for ring in self.rings:
            ring.reset()
        self.schedule.reset()

    def model_frames(self, frame: FrameView) -> list[np.ndarray]:
        """The frame as each crop's (size, size, 3) RGB model frame: here the checkpoint's centre crop."""
        return [model_frame(frame.picture, self.size)]

    def push(self, frame: FrameView) -> tuple[bool, list[Window]]:
        """Take one frame; return whether it was converted for the model and the windows due now."""
        due, wanted = self.schedule.due(frame.index), self.schedule.wanted(frame.index)
        pictures = self.model_frames(frame) if wanted else [None] * len(self.rings)
        for ring, picture in zip(self.rings, pictures):
            ring.push(frame.index, frame.ts, picture)
        if not due:
            return wanted, []
        found = self.rings[0].window_serials(self.num_frames, self.interval)
        if found is None:
            return wanted, []
        indices, stamps, serials = found
        seq, self.seq = self.seq, self.seq + 1
        if self.store is not None:
            ref = FrameRef(self.store.name, serials, (self.num_frames, self.size, self.size, 3), self.store.server)
            return wanted, [Window(self.stream, seq, indices, stamps, None, time.time(), ref)]
        frames = self.rings[0].frames_at(serials) if len(self.rings) == 1 else \
            np.concatenate([ring.frames_at(serials) for ring in self.rings])  # crops one after another
        return wanted, [Window(self.stream, seq, indices, stamps, frames, time.time(), views=len(self.rings))]

    def display(self, frame: FrameView, width: int) -> tuple[np.ndarray, tuple]:
        """What people see of this stream: the frame, no wider than ``width``, and no track boxes."""
        return display_image(frame.picture, width), ()


class CutFeed(Feed):
    """A region of the frame, or a crop mode other than the centre: cut from the full-resolution frame."""

    def __init__(self, stream: str, box: tuple[int, int, int, int], crop: str, **kwargs) -> None:
        self.box, self.crop = box, crop
        x0, y0, x1, y1 = box
        self.crop_boxes = [(x0 + a, y0 + b, x0 + c, y0 + d) for a, b, c, d in view_boxes(crop, x1 - x0, y1 - y0)]
        super().__init__(stream, crops=len(self.crop_boxes), **kwargs)

    def model_frames(self, frame: FrameView) -> list[np.ndarray]:
        return [model_view(frame.bgr, box, self.size, pad=self.crop == "full") for box in self.crop_boxes]

    def display(self, frame: FrameView, width: int) -> tuple[np.ndarray, tuple]:
        x0, y0, x1, y1 = self.box
        if (x0, y0, x1, y1) == (0, 0, frame.width, frame.height):
            return super().display(frame, width)
        return display_image(np.ascontiguousarray(frame.bgr[y0:y1, x0:x1]), width), ()


class TrackFeed:
    """Tracked actors: every frame's small copy → detector → tracker; each track's windows are one fixed square
    around its path over the window (:func:`streamer.look.tracking.window_box`), cut from full-resolution frames."""

    def __init__(self, stream: str, tracking: TrackingConfig, size: int, num_frames: int, frame_interval: int,
                 hop: int, detector: Detector | None = None) -> None:
        self.stream, self.tracking, self.size = stream, tracking, size
        self.num_frames, self.interval = num_frames, frame_interval
        self.span = window_span(num_frames, frame_interval)
        self.seen = max(1, round(TRACK_SEEN * num_frames))
        self.unseen = tracking.frames(UNSEEN_S)
        self.detector = detector or MotionDetector(tracking)
        self.tracker = Tracker(tracking, history=self.span + hop)
        self.presence = Presence(self.tracker)
        self.schedule = WindowSchedule(num_frames, frame_interval, hop)
        self.kept: dict[int, tuple[float, np.ndarray]] = {}  # frame index → (capture time, full BGR), wanted ones
        self.active: tuple = ()
        self.ended: list[int] = []  # track ids ended since the capture last asked
        self.seq = 0

    def reset(self) -> None:
        """The source was lost: every track ends, and the background is learnt afresh."""
        self.ended.extend(self.tracker.end_all())
        self.detector = MotionDetector(self.tracking) if isinstance(self.detector, MotionDetector) else self.detector
        self.schedule.reset()
        self.kept.clear()
        self.active = ()

    def push(self, frame: FrameView) -> tuple[bool, list[Window]]:
        due, wanted = self.schedule.due(frame.index), self.schedule.wanted(frame.index)
        small, scale = small_copy(frame.picture, self.tracking.detect_width)
        detections = self.detector.detect(small, scale)
        ghosts = getattr(self.detector, "ghosts", None)  # the motion detector's; a person detector has none
        update = self.tracker.update(frame.index, detections, None if ghosts is None else ~ghosts)
        gone = self.presence.gone(frame.index, small, scale, update.active, detections, ghosts)
        self.active = tuple(t for t in update.active if t.id not in gone)
        self.ended.extend(update.ended + tuple(gone))
        if wanted:
            self.kept[frame.index] = (frame.ts, frame.bgr)
        for old in [i for i in self.kept if i <= frame.index - self.span]:
            del self.kept[old]
        if not due:
            return wanted, []
        indices = [frame.index - k * self.interval for k in range(self.num_frames - 1, -1, -1)]
        if any(i not in self.kept for i in indices):
            return wanted, []
        windows = []
        for track in self.active:
            doubtful = self.presence.doubtful(track.id)
            if frame.index - track.last_active > self.unseen or doubtful or not track.covers(indices[-self.seen:]):
                continue
            x0, y0, x1, y1 = track.box_at(frame.index)
            if min(x1 - x0, y1 - y0) < SLIVER * max(x1 - x0, y1 - y0):
                continue  # the last of an actor leaving the picture (or the first of one coming in)
            square = window_box([b for i in indices if (b := track.box_at(i)) is not None], frame.width, frame.height,
                                TRACK_MARGIN)
            frames = np.stack([model_view(self.kept[i][1], square, self.size) for i in indices])
            windows.append(Window(self.stream, self.seq, tuple(indices), tuple(self.kept[i][0] for i in indices),
                                  frames, time.time(), track=track.id, box=tuple(track.box_at(frame.index))))
            self.seq += 1
        return wanted, windows

    def display(self, frame: FrameView, width: int) -> tuple[np.ndarray, tuple]:
        image = display_image(frame.picture, width)
        scale = image.shape[1] / frame.width
        return image, tuple((t.id, tuple(v * scale for v in t.box_at(frame.index))) for t in self.active
                            if self.live(t, frame.index) and not self.presence.doubtful(t.id))

    def live(self, track, index: int) -> bool:
        """Whether a track is moving now (or stopped a moment ago, coasting): it is shown. A frozen one (a still
        actor, or a place an actor left) is kept, unshown, until it moves again or ends. Windows want more: a
        track seen within UNSEEN_S."""
        return index - track.last_active <= self.tracker.coast


def make_feeds(stream: str, look: LookConfig, frame: FrameView, size: int, num_frames: int, frame_interval: int,
               hop: int, capacity: int = 0, store=None) -> list:
    """The feeds of one capture, made at its first frame: region boxes need the frame's size (a box that
    does not fit it is a ConfigError naming the source and the region)."""
    common = dict(size=size, num_frames=num_frames, frame_interval=frame_interval, hop=hop)
    if look.tracking is not None:
        return [TrackFeed(stream, look.tracking, **common)]
    if not look.regions and look.crop == "centre":
        return [Feed(stream, capacity=capacity, store=store, **common)]
    whole = (0, 0, frame.width, frame.height)
    return [CutFeed(stream, whole, look.crop, **common)] if not look.regions else [
        CutFeed(f"{stream}/{r.name}", region_box(r.box, frame.width, frame.height, f"source {stream} region {r.name!r}"),
                look.crop, **common) for r in look.regions]
