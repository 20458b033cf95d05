"""Where the model looks in one source's frames (contract 7): named regions, the crop mode, tracked actors.

The stage configs of :mod:`streamer.look`; what the model sees of a frame is there (:mod:`streamer.look.crops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.config.checks import check
from streamer.config.tables import (Box, Crop, DetectWidth, Fps, IouGate, KeepStill, MaxTracks, MinArea, MinHits,
                                    RegionName)
from streamer.errors import ConfigError


@dataclass(frozen=True)
class Region:
    """A named part of a camera's frame, watched as its own stream ``<stream>/<name>``."""

    name: RegionName
    box: Box  # pixels, or fractions of the frame when every number is ≤ 1

    def __post_init__(self) -> None:
        check(self)
        scale = 1 << 30 if all(v <= 1 for v in self.box) else 1  # the frame's own size is known at its first frame
        x0, y0, x1, y1 = (round(v * scale) for v in self.box)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ConfigError(f"region {self.name!r}: box = {list(self.box)} is empty (x1 must exceed x0 and y1 "
                              "exceed y0)")


@dataclass(frozen=True)
class TrackingConfig:
    """How motion is found and followed in one stream (``track = "motion"``); ``fps`` is the source's."""

    detect_width: DetectWidth = 320
    min_area: MinArea = 0.0015
    max_tracks: MaxTracks = 8
    keep_still_s: KeepStill = 4.0
    min_hits: MinHits = 3
    iou_gate: IouGate = 0.1
    fps: Fps = 30.0

    def __post_init__(self) -> None:
        check(self)

    def frames(self, seconds: float) -> int:
        """Whole frames in ``seconds`` at this source's rate."""
        return round(seconds * self.fps)


@dataclass(frozen=True)
class LookConfig:
    """Where the model looks in one source's frames: regions, the crop mode, tracked actors."""

    regions: tuple[Region, ...] = ()
    crop: Crop = "centre"
    tracking: TrackingConfig | None = field(default=None)  # track = "motion"

    def __post_init__(self) -> None:
        check(self)
        names = [region.name for region in self.regions]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ConfigError(f"two regions are named {twice!r}; give each its own name")
        if self.tracking is not None and self.regions:
            raise ConfigError("use regions or track = \"motion\", not both (track the whole frame, or watch "
                              "fixed regions)")
        if self.tracking is not None and self.crop != "centre":
            raise ConfigError(f"crop = {self.crop!r} does not apply to tracked actors (each gets its own square)")

    def streams(self, stream: str) -> tuple[str, ...]:
        """The streams this source's windows and events go out as."""
        return tuple(f"{stream}/{r.name}" for r in self.regions) if self.regions else (stream,)
