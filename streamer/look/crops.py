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

from typing import Sequence

import cv2
import numpy as np

from streamer.errors import ConfigError
from streamer.video.frames import to_model_frame

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
