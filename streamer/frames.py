"""The one place a source frame becomes a model frame: BGR → RGB, short side, centre crop.

Capture, training and evaluation all call :func:`to_model_frame`, so the
model sees the same pixels live as it saw in training.
"""

import cv2
import numpy as np


def to_model_frame(bgr: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side of a BGR frame to ``size``, centre-crop a square, return RGB uint8.

    Args:
        bgr: (H, W, 3) uint8 frame as OpenCV decodes it.
        size: side of the square the model takes.
    Returns:
        (size, size, 3) uint8 RGB, C-contiguous.
    """
    height, width = bgr.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        # INTER_AREA averages many pixels into one, so strong shrinking does not alias; down to half
        # size bilinear is as good (it is what the official training used) and ~5x faster (0.17 vs
        # 0.88 ms for 320x240 → 224), and that time is on every frame's way to the model.
        interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=interp)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = bgr[top:top + size, left:left + size]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)  # a contiguous copy; 40x faster than numpy's [..., ::-1] copy
