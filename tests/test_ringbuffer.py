"""Ring buffer and window schedule: exactly the right frames, never across a gap."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.video.ringbuffer import RingBuffer, WindowSchedule
from workers.sampling import window_span

H, W = 6, 5


def frame(index: int) -> np.ndarray:
    """A frame whose pixels encode its index, so a window's content can be checked."""
    return np.full((H, W, 3), index % 251, np.uint8)


def feed(indices, num_frames: int, frame_interval: int, hop: int, capacity: int | None = None) -> list:
    """Push ``indices`` in order; return (index, window) for every index the schedule says is due."""
    ring = RingBuffer(capacity or window_span(num_frames, frame_interval), H, W)
    schedule = WindowSchedule(num_frames, frame_interval, hop)
    out = []
    for i in indices:
        ring.push(i, 1000.0 + i / 30, frame(i))
        if schedule.due(i):
            window = ring.window(num_frames, frame_interval)
            assert window is not None, f"schedule said a window is due at {i} but the buffer has none"
            out.append((i, window))
    return out


@pytest.mark.parametrize("num_frames, interval, hop, expected", [
    (8, 32, 8, [(224, tuple(range(0, 225, 32))), (232, tuple(range(8, 233, 32))), (240, tuple(range(16, 241, 32)))]),
    (4, 2, 3, [(6, (0, 2, 4, 6)), (9, (3, 5, 7, 9)), (12, (6, 8, 10, 12))]),
    (3, 1, 1, [(2, (0, 1, 2)), (3, (1, 2, 3)), (4, (2, 3, 4))]),
    (1, 5, 2, [(0, (0,)), (2, (2,)), (4, (4,))]),
])
def test_windows_hold_exactly_the_right_source_indices(num_frames, interval, hop, expected) -> None:
    got = feed(range(300), num_frames, interval, hop)
    assert [(i, w[0]) for i, w in got[:3]] == expected
    for i, (indices, stamps, frames) in got:
        assert indices[-1] == i and len(indices) == num_frames
        assert stamps == tuple(1000.0 + j / 30 for j in indices)
        assert frames.shape == (num_frames, H, W, 3) and frames.flags.c_contiguous
        assert [int(f[0, 0, 0]) for f in frames] == [j % 251 for j in indices]
    assert [i for i, _ in got] == list(range(expected[0][0], 300, hop))


def test_no_window_before_the_buffer_holds_a_full_span() -> None:
    ring = RingBuffer(window_span(4, 3), H, W)
    schedule = WindowSchedule(4, 3, 1)
    for i in range(9):
        ring.push(i, float(i), frame(i))
        assert ring.window(4, 3) is None
        assert not schedule.due(i)
    ring.push(9, 9.0, frame(9))
    assert schedule.due(9)
    assert ring.window(4, 3)[0] == (0, 3, 6, 9)


def test_an_index_jump_means_no_window_until_the_buffer_refills() -> None:
    # Frames 0..49, then a reconnect resumes at 60: windows (4 every 3, span 10) stop until 69.
    got = feed([*range(50), *range(60, 100)], 4, 3, 1)
    due = [i for i, _ in got]
    assert due == [*range(9, 50), *range(69, 100)]
    for _, (indices, _, _) in got:
        assert not (indices[0] < 60 <= indices[-1]), f"window {indices} spans the gap"


def test_a_small_gap_between_sampled_frames_still_breaks_the_window() -> None:
    # Frame 31 is lost: a window every 32 frames could pick 0 and 32 and miss it; it must not.
    ring = RingBuffer(window_span(2, 32), H, W)
    for i in [*range(31), *range(32, 64)]:
        ring.push(i, float(i), frame(i))
    assert ring.window(2, 32) is None
    for i in range(64, 96):
        ring.push(i, float(i), frame(i))
    assert ring.window(2, 32)[0] == (63, 95)


def test_reset_empties_the_buffer() -> None:
    ring = RingBuffer(window_span(2, 1), H, W)
    schedule = WindowSchedule(2, 1, 1)
    for i in range(5):
        ring.push(i, float(i), frame(i))
        schedule.due(i)
    assert ring.window(2, 1) is not None
    ring.reset()
    schedule.reset()
    assert ring.window(2, 1) is None and len(ring) == 0 and ring.newest is None
    ring.push(5, 5.0, frame(5))  # consecutive index, but after a reset: a new run
    assert not schedule.due(5) and ring.window(2, 1) is None
    ring.push(6, 6.0, frame(6))
    assert schedule.due(6) and ring.window(2, 1)[0] == (5, 6)


def test_a_restarted_index_starts_a_new_run() -> None:
    got = feed([*range(20), *range(0, 20)], 3, 2, 1)
    assert [i for i, _ in got] == [*range(4, 20), *range(4, 20)]


def test_returned_frames_are_a_copy_that_later_pushes_do_not_change() -> None:
    ring = RingBuffer(window_span(3, 1), H, W)
    for i in range(3):
        ring.push(i, float(i), frame(i))
    _, _, frames = ring.window(3, 1)
    before = frames.copy()
    for i in range(3, 10):
        ring.push(i, float(i), frame(i))
    np.testing.assert_array_equal(frames, before)
    frames[:] = 0  # and writing to it leaves the buffer alone
    assert int(ring.window(3, 1)[2][0, 0, 0, 0]) == 7


def test_push_copies_the_frame_in() -> None:
    ring = RingBuffer(1, H, W)
    rgb = frame(3)
    ring.push(0, 0.0, rgb)
    rgb[:] = 99
    assert int(ring.window(1, 1)[2][0, 0, 0, 0]) == 3


@pytest.mark.parametrize("make, words", [
    (lambda: RingBuffer(0, H, W), "capacity = 0"),
    (lambda: RingBuffer(10, 0, W), "frame height = 0"),
    (lambda: RingBuffer(10, H, 5000), "frame width = 5000"),
    (lambda: WindowSchedule(0, 32, 8), "num_frames = 0"),
    (lambda: WindowSchedule(8, -1, 8), "frame_interval = -1"),
    (lambda: WindowSchedule(8, 32, 2.5), "hop = 2.5"),
    (lambda: RingBuffer(10, H, W).window(8, 32), "capacity 10"),
    (lambda: RingBuffer(10, H, W).push(0, 0.0, np.zeros((H, W + 1, 3), np.uint8)), "resize frames"),
])
def test_bad_arguments_raise_config_error_naming_the_value(make, words) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        make()
