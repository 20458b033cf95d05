"""Where in a frame the model looks: named regions, the crop modes, and a tracked actor's window box.

A frame reaches the model as one or more squares cut from the *full-resolution* frame and resized
once to the model's input: ``centre`` is the checkpoint's own test crop (short side, centre square),
``full`` pads the whole frame to a square so nothing at its edges is lost, and ``three`` is the
official three-crop test (left, centre and right squares along the long side, answers averaged).
A region is cut first and the crop mode applies within it. A tracked actor's window is one fixed
square over the whole window (:func:`streamer.look.tracking.window_box`): a crop that moved with the actor would erase
the very motion the model must see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Sequence

import cv2
import numpy as np

from streamer.errors import ConfigError
from streamer.video.frames import to_model_frame
from streamer.look.tracking import TrackingConfig

CROP_MODES = ("centre", "full", "three")


def region_box(box: Sequence[float], width: int, height: int, where: str) -> tuple[int, int, int, int]:
    """A region's ``[x0, y0, x1, y1]`` in source pixels (fractions of the frame when every number is ≤ 1).

    Raises ConfigError naming ``where`` when the box is not four numbers, is empty, or leaves the frame.
    """
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(type(v) in (int, float) and np.isfinite(v) for v in box)):
        raise ConfigError(f"{where}: box = {box!r}: must be [x0, y0, x1, y1], four numbers")
    fractions = all(0 <= v <= 1 for v in box)
    x0, y0, x1, y1 = (box[0] * width, box[1] * height, box[2] * width, box[3] * height) if fractions else box
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ConfigError(f"{where}: box = {list(box)} is empty (x1 must exceed x0 and y1 exceed y0)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ConfigError(f"{where}: box = {list(box)} lies outside the {width}×{height} frame; "
                          "give pixels inside it or fractions from 0 to 1")
    return x0, y0, x1, y1


def view_boxes(mode: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The squares (or, for ``full``, the whole frame) a crop mode cuts from a ``width``×``height`` picture."""
    if mode == "full":
        return [(0, 0, width, height)]
    side = min(width, height)
    if mode == "centre":
        x0, y0 = (width - side) // 2, (height - side) // 2
        return [(x0, y0, x0 + side, y0 + side)]
    if width >= height:  # three: left, centre, right along the long side
        return [(x, 0, x + side, side) for x in (0, (width - side) // 2, width - side)]
    return [(0, y, side, y + side) for y in (0, (height - side) // 2, height - side)]


def model_view(bgr: np.ndarray, box: tuple[int, int, int, int], size: int, pad: bool = False) -> np.ndarray:
    """``box`` of a BGR frame as a (size, size, 3) RGB model frame; ``pad``: a non-square box is padded
    (black, centred) to its long side instead of centre-cropped."""
    x0, y0, x1, y1 = box
    part = bgr[y0:y1, x0:x1]
    h, w = part.shape[:2]
    if pad and h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        part = cv2.copyMakeBorder(part, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    return to_model_frame(np.ascontiguousarray(part), size)


# ---------------------------------------------------------------- per-source config (contract 7)

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a region's name becomes part of a stream name and of URLs
LOOK_KEYS = ("regions", "crop", "track", "tracking")


@dataclass(frozen=True)
class Region:
    """A named part of a camera's frame, watched as its own stream ``<stream>/<name>``."""

    name: str
    box: tuple[float, float, float, float]  # pixels, or fractions of the frame when every number is ≤ 1


@dataclass(frozen=True)
class LookConfig:
    """Where the model looks in one source's frames: regions, the crop mode, tracked actors."""

    regions: tuple[Region, ...] = ()
    crop: str = "centre"
    tracking: TrackingConfig | None = None  # track = "motion"

    def streams(self, stream: str) -> tuple[str, ...]:
        """The streams this source's windows and events go out as."""
        return tuple(f"{stream}/{r.name}" for r in self.regions) if self.regions else (stream,)


def load_look(table: dict, where: str, fps: float = 30.0) -> LookConfig:
    """A ``[[sources]]`` table's ``regions``, ``crop``, ``track`` and ``tracking``; bad values are one ConfigError."""
    crop = table.get("crop", "centre")
    if crop not in CROP_MODES:
        raise ConfigError(f"{where}: crop = {crop!r} is not one of {', '.join(map(repr, CROP_MODES))}")
    raw_regions = table.get("regions", [])
    if not isinstance(raw_regions, list):
        raise ConfigError(f"{where}: regions must be a list: regions = [{{name = \"door\", box = [x0, y0, x1, y1]}}]")
    regions, names = [], set()
    for i, item in enumerate(raw_regions):
        here = f"{where} region #{i + 1}"
        if not isinstance(item, dict) or set(item) - {"name", "box"} or "name" not in item or "box" not in item:
            raise ConfigError(f"{here}: write it as {{name = \"door\", box = [x0, y0, x1, y1]}}")
        name = item["name"]
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{here}: name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        here = f"{where} region {name!r}"
        if name in names:
            raise ConfigError(f"{here}: two regions are named {name!r}; give each its own name")
        names.add(name)
        box = item["box"]
        if isinstance(box, list) and any(type(v) in (int, float) and v < 0 for v in box):
            raise ConfigError(f"{here}: box = {box} has a negative number; give pixels inside the frame "
                              "or fractions from 0 to 1")
        region_box(box, 1 << 30, 1 << 30, here)  # its shape and emptiness now; the frame's own size once known
        regions.append(Region(name, tuple(float(v) for v in box)))
    track = table.get("track", "")
    if track not in ("", "motion"):
        raise ConfigError(f"{where}: track = {track!r}: the one tracker is \"motion\" (leave it out for none)")
    options = table.get("tracking", {})
    if not isinstance(options, dict) or (options and not track):
        raise ConfigError(f"{where}: tracking = {{...}} sets the tracker's options and needs track = \"motion\"")
    unknown = set(options) - {f.name for f in fields(TrackingConfig)} - {"fps"}
    if unknown or "fps" in options:
        raise ConfigError(f"{where}: tracking has no option {sorted(unknown or {'fps'})[0]!r}; it takes "
                          + ", ".join(f.name for f in fields(TrackingConfig) if f.name != "fps"))
    if track and regions:
        raise ConfigError(f"{where}: use regions or track = \"motion\", not both (track the whole frame, or watch "
                          "fixed regions)")
    if track and crop != "centre":
        raise ConfigError(f"{where}: crop = {crop!r} does not apply to tracked actors (each gets its own square)")
    try:
        tracking = TrackingConfig(**options, fps=fps) if track else None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return LookConfig(tuple(regions), crop, tracking)
