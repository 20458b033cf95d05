"""The label panel and the grid, checked on the pixels of real frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.render.words import label_words
from streamer.render.draw import BAR_TOP, STATUS, draw_panel, letterbox, placeholder, tile

TOP = [("playing basketball", 0.5), ("dribbling basketball", 0.25), ("shooting basketball", 0.125),
       ("dunking basketball", 0.0625), ("passing American football (not in game)", 0.03)]


def scene(width: int, height: int, tmp_path: Path) -> np.ndarray:
    """A mid-grey textured frame, written to PNG and read back as a camera frame would arrive (BGR)."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(128, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    cv2.circle(image, (width * 2 // 3, height // 2), min(width, height) // 4, (150, 150, 150), -1)
    path = tmp_path / f"scene_{width}x{height}.png"
    cv2.imwrite(str(path), image)
    return cv2.imread(str(path))


def panel_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(height, width) of the region the panel changed, anchored at the top-left corner."""
    changed = np.any(before != after, axis=2)
    rows, cols = np.nonzero(changed)
    return int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("width, height", [(320, 240), (640, 480), (1280, 720)])
def test_panel_darkens_its_region_and_draws_readable_text_and_bars(width, height, tmp_path: Path) -> None:
    frame = scene(width, height, tmp_path)
    original = frame.copy()
    out = draw_panel(frame, "cam0", TOP, fps=29.97, latency_ms=183.0)
    cv2.imwrite(str(tmp_path / "panel.png"), out)
    out = cv2.imread(str(tmp_path / "panel.png"))
    np.testing.assert_array_equal(frame, original)  # the input is left alone

    ph, pw = panel_box(original, out)
    assert 0.25 * width <= pw <= 0.75 * width and ph <= 0.8 * height
    assert np.array_equal(out[ph:], original[ph:]) and np.array_equal(out[:, pw:], original[:, pw:])
    gray = cv2.cvtColor(out[:ph, :pw], cv2.COLOR_BGR2GRAY)
    assert np.median(gray) < 60  # dark background behind the text (the frame is ~128)

    # Text: bright strokes, at least 7 px tall in the header line (readable), in every row of the panel.
    bright_rows = np.nonzero((gray > 190).sum(axis=1) >= 2)[0]
    runs = np.split(bright_rows, np.nonzero(np.diff(bright_rows) > 1)[0] + 1)
    assert len(runs) >= 1 + len(TOP) and len(runs[0]) >= 7

    # The best label's bar (50%) is a green row about half the panel wide.
    green = np.all(np.abs(out[:ph, :pw].astype(int) - BAR_TOP) < 30, axis=2)
    assert 0.4 * pw <= green.sum(axis=1).max() <= 0.55 * pw


def test_labels_are_drawn_as_words(tmp_path: Path) -> None:
    """A class name with underscores is drawn exactly as its words would be (people read the panel)."""
    frame = scene(640, 360, tmp_path)
    assert label_words("rotating_anticlockwise") == "rotating anticlockwise"
    assert label_words(" moving__left ") == "moving left"
    as_named = draw_panel(frame, "cam", [("rotating_anticlockwise", 0.9), ("moving_left", 0.1)], 30.0, 40.0)
    as_words = draw_panel(frame, "cam", [("rotating anticlockwise", 0.9), ("moving left", 0.1)], 30.0, 40.0)
    assert np.array_equal(as_named, as_words)


def test_status_line_is_drawn_in_the_status_colour(tmp_path: Path) -> None:
    frame = scene(640, 360, tmp_path)
    without = draw_panel(frame, "cam0", TOP[:2], fps=30.0, latency_ms=None)
    with_status = draw_panel(frame, "cam0", TOP[:2], fps=30.0, latency_ms=None, status="source lost")
    status_px = np.all(np.abs(with_status.astype(int) - STATUS) < 40, axis=2).sum()
    assert status_px > 50 and np.all(np.abs(without.astype(int) - STATUS) < 40, axis=2).sum() == 0
    assert panel_box(frame, with_status)[0] > panel_box(frame, without)[0]  # one more line


def test_panel_draws_on_a_read_only_decoded_frame(tmp_path: Path) -> None:
    frame = scene(320, 240, tmp_path)
    frame.flags.writeable = False
    out = draw_panel(frame, "a very long stream name that cannot fit " * 3, [], fps=0.0, latency_ms=5.0)
    assert out.flags.writeable and not np.array_equal(out, frame)


def test_tile_puts_each_image_in_an_equal_letterboxed_cell() -> None:
    red = np.full((100, 200, 3), (0, 0, 255), np.uint8)
    green = np.full((200, 100, 3), (0, 255, 0), np.uint8)
    blue = np.full((100, 200, 3), (255, 0, 0), np.uint8)
    grid = tile([red, green, blue])
    assert grid.shape == (400, 400, 3)  # 2×2 cells of 200×200
    assert tuple(grid[100, 100]) == (0, 0, 255) and tuple(grid[10, 100]) == (0, 0, 0)  # red, bars above
    assert tuple(grid[100, 300]) == (0, 255, 0) and tuple(grid[100, 210]) == (0, 0, 0)  # green, bars beside
    assert tuple(grid[300, 100]) == (255, 0, 0) and not grid[200:, 200:].any()  # empty fourth cell
    assert tile([red, green, blue], cols=3, cell_size=(64, 48)).shape == (48, 192, 3)


def test_letterbox_and_placeholder_sizes() -> None:
    assert letterbox(np.zeros((10, 40, 3), np.uint8), 100, 100).shape == (100, 100, 3)
    card = placeholder(320, 240, "cam1: waiting for frames")
    assert card.shape == (240, 320, 3) and (card > 150).any()


def test_example_overlay_png_is_written(tmp_path: Path) -> None:
    frame = scene(1280, 720, tmp_path)
    out = draw_panel(frame, "cam0 front door", TOP, fps=29.7, latency_ms=183.4)
    path = tmp_path / "overlay_example.png"
    assert cv2.imwrite(str(path), out) and cv2.imread(str(path)).shape == (720, 1280, 3)
