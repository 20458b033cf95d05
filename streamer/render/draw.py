"""What the user sees: a label panel drawn over a frame, and a grid of streams. Pure functions, no window.

Sizes scale with the frame so the panel reads the same at 320×240 and at
1280×720; the panel is blended only over its own region, so drawing costs
well under a millisecond at 720p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from streamer.render.words import label_words

FONT = cv2.FONT_HERSHEY_SIMPLEX
PANEL_ALPHA = 0.7  # opacity of the panel's dark background
WHITE = (245, 245, 245)
GREY = (200, 200, 200)
BAR_BG = (70, 70, 70)
BAR_TOP = (80, 200, 90)  # BGR green: the best label
BAR_REST = (200, 150, 60)  # BGR steel blue: the others
STATUS = (60, 110, 255)  # BGR orange-red: source lost, worker restarted...


@dataclass(frozen=True)
class _Metrics:
    """Font and spacing for one frame size."""

    scale: float
    thick: int
    line: int  # height of one text line, pixels
    pad: int

    @staticmethod
    def for_frame(height: int, width: int) -> _Metrics:
        # 0.45 at 360 px tall; never below 0.4 (Hershey turns to noise under it).
        scale = max(0.4, min(height / 720, width / 1280) * 0.9)
        thick = 1 if scale < 0.7 else 2
        (_, text_h), base = cv2.getTextSize("Ag", FONT, scale, thick)
        line = int(round((text_h + base) * 1.55))
        return _Metrics(scale, thick, line, max(4, line // 3))


def _fit(text: str, max_width: int, m: _Metrics) -> str:
    """``text`` cut with an ellipsis to fit ``max_width`` pixels."""
    if cv2.getTextSize(text, FONT, m.scale, m.thick)[0][0] <= max_width:
        return text
    while text and cv2.getTextSize(text + "...", FONT, m.scale, m.thick)[0][0] > max_width:
        text = text[:-1]
    return text.rstrip() + "..." if text else ""


def _put(image: np.ndarray, text: str, x: int, y: int, m: _Metrics, color: tuple, bold: bool = False) -> None:
    cv2.putText(image, text, (x, y), FONT, m.scale, color, m.thick + (1 if bold else 0), cv2.LINE_AA)


def draw_panel(image_bgr: np.ndarray, stream: str, top: Sequence[tuple[str, float]], fps: float,
               latency_ms: float | None, status: str | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with the label panel in its top-left corner.

    The panel holds the stream name, fps and latency, an optional status line
    (e.g. "source lost"), and one row per ``(label, prob)`` of ``top`` with a
    score bar. The input is left untouched (decoded frames are read-only).
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    out = image_bgr.copy()
    height, width = out.shape[:2]
    m = _Metrics.for_frame(height, width)
    rows = len(top) + (1 if status else 0)
    panel_w, panel_h = panel_size(height, width, rows)
    x0, text_w = m.pad, panel_w - 2 * m.pad

    roi = out[:panel_h, :panel_w]
    roi[:] = cv2.addWeighted(roi, 1.0 - PANEL_ALPHA, np.zeros_like(roi), PANEL_ALPHA, 0.0)

    y = m.pad + m.line - m.line // 4  # baseline of the first line
    info = f"{fps:.1f} fps" + (f"  {latency_ms:.0f} ms" if latency_ms is not None else "")
    info_w = cv2.getTextSize(info, FONT, m.scale, m.thick)[0][0]
    _put(out, _fit(stream, text_w - info_w - m.pad, m), x0, y, m, WHITE, bold=True)
    _put(out, info, panel_w - m.pad - info_w, y, m, GREY)
    if rows:
        cv2.line(out, (x0, y + m.pad), (panel_w - m.pad, y + m.pad), BAR_BG, 1, cv2.LINE_AA)
        y += m.pad
    if status:
        y += m.line
        _put(out, _fit(status.upper(), text_w, m), x0, y, m, STATUS, bold=True)

    pct_w = cv2.getTextSize("100%", FONT, m.scale, m.thick)[0][0]
    bar_h = max(2, m.line // 6)
    for rank, (label, prob) in enumerate(top):
        y += m.line
        prob = float(min(1.0, max(0.0, prob))) if math.isfinite(prob) else 0.0
        color = BAR_TOP if rank == 0 else BAR_REST
        _put(out, _fit(label_words(label), text_w - pct_w - m.pad, m), x0, y - bar_h, m, WHITE if rank == 0 else GREY)
        pct = f"{prob * 100:.0f}%"
        _put(out, pct, panel_w - m.pad - cv2.getTextSize(pct, FONT, m.scale, m.thick)[0][0], y - bar_h, m, color)
        bar_y = y + bar_h // 2
        cv2.rectangle(out, (x0, bar_y), (x0 + text_w, bar_y + bar_h), BAR_BG, -1)
        cv2.rectangle(out, (x0, bar_y), (x0 + int(round(text_w * prob)), bar_y + bar_h), color, -1)
    return out


def panel_size(height: int, width: int, rows: int) -> tuple[int, int]:
    """(width, height) of the label panel with ``rows`` rows below its title, in a frame of that size."""
    m = _Metrics.for_frame(height, width)
    panel_w = min(width, max(int(width * 0.42), int(m.line * 9.5)))
    return panel_w, min(height, m.pad * 2 + m.line * (1 + rows) + (m.pad if rows else 0))


def draw_boxes(image_bgr: np.ndarray, boxes: Sequence[tuple[int, tuple, str, float]],
               panel: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A copy of ``image_bgr`` with each tracked actor's box and a tag above it (below it when the label panel,
    ``panel`` = its width and height, or the frame's top is in the way): ``#id label score``."""
    out = image_bgr.copy()
    height, width = out.shape[:2]
    m = _Metrics.for_frame(height, width)
    for track, (x0, y0, x1, y1), label, score in boxes:
        p0 = (int(round(max(0, x0))), int(round(max(0, y0))))
        p1 = (int(round(min(width - 1, x1))), int(round(min(height - 1, y1))))
        cv2.rectangle(out, p0, p1, BAR_TOP, m.thick + 1, cv2.LINE_AA)
        tag = f"#{track} {label_words(label)} {score * 100:.0f}%"
        (tw, th), base = cv2.getTextSize(tag, FONT, m.scale, m.thick)
        tx = min(p0[0], max(0, width - tw - 2 * m.pad))
        ty = p0[1] - base - 2
        if ty - th - 2 < 0 or (tx < panel[0] and ty - th - 2 < panel[1]):
            ty = min(height - base - 1, p1[1] + th + 4)
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 4, ty + base), (20, 20, 20), -1)
        _put(out, tag, tx + 2, ty, m, WHITE)
    return out


def placeholder(width: int, height: int, text: str) -> np.ndarray:
    """A dark frame with ``text`` centred: a stream with no picture yet, or one whose source is lost."""
    out = np.full((height, width, 3), 24, np.uint8)
    m = _Metrics.for_frame(height, width)
    text = _fit(text, width - 2 * m.pad, m)
    (tw, th), _ = cv2.getTextSize(text, FONT, m.scale, m.thick)
    _put(out, text, (width - tw) // 2, (height + th) // 2, m, GREY)
    return out


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit ``width``×``height`` keeping its aspect, centred on black."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    cell = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    cell[top:top + new_h, left:left + new_w] = image
    return cell


def tile(images: Sequence[np.ndarray], cols: int | None = None,
         cell_size: tuple[int, int] | None = None) -> np.ndarray:
    """A grid of equal cells, one image each (letterboxed), row by row.

    Args:
        images: (H, W, 3) uint8 images, sizes may differ.
        cols: columns; default the smallest square grid that holds them all.
        cell_size: (width, height) of a cell; default the largest width and height among the images.
    """
    if not images:
        raise ValueError("tile() needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    if cols < 1:
        raise ValueError(f"cols = {cols}: must be at least 1")
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)
    if cell_size is None:
        cell_size = (max(i.shape[1] for i in images), max(i.shape[0] for i in images))
    cw, ch = cell_size
    grid = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, cols)
        grid[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = letterbox(image, cw, ch)
    return grid
