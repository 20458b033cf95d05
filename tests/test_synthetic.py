"""The synthetic action generator: deterministic, labels true to the pixels, a CLI that writes readable files."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.synthetic import drawing, files, scenes
from streamer.video.frames import to_model_frame

REPO = Path(__file__).resolve().parents[1]
W, H = 160, 120


def segment_of(label: str, index: int = 0) -> scenes.Segment:
    """A random segment of ``label`` without pixel noise (so differences are the actors)."""
    seg = scenes.sample_segment(np.random.default_rng([99, index]), 0, 30.0, label)
    return replace(seg, noise=0.0)


def actor_mask(seg: scenes.Segment, frame: int, width: int = W, height: int = H) -> np.ndarray:
    """Pixels where the actors are, measured by rendering the scene with and without them."""
    with_actors = drawing.render_frame(seg, frame, width, height).astype(np.int16)
    without = drawing.render_frame(replace(seg, actors=()), frame, width, height).astype(np.int16)
    return np.abs(with_actors - without).sum(axis=2) > 30


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_same_seed_gives_same_frames_and_labels():
    a, b, c = drawing.SyntheticStream(7, W, H), drawing.SyntheticStream(7, W, H), drawing.SyntheticStream(8, W, H)
    for _ in range(40):
        fa, la = a.next_frame()
        fb, lb = b.next_frame()
        fc, _ = c.next_frame()
        assert la == lb
        assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    assert fa.shape == (H, W, 3) and fa.dtype == np.uint8


def test_frame_is_pure_function_of_segment_and_index():
    seg = next(scenes.segments(3))
    late = drawing.render_frame(seg, 50, W, H)  # drawn without drawing frames 0..49
    stream = drawing.SyntheticStream(3, W, H)
    frames = [stream.next_frame()[0] for _ in range(51)]
    assert np.array_equal(late, frames[50])


def test_segments_are_contiguous_inclusive_and_cover_every_class():
    segs = scenes.segments_for(5, 30 * 600)
    assert segs[0].start_frame == 0 and segs[-1].end_frame == 30 * 600 - 1
    for prev, nxt in zip(segs, segs[1:]):
        assert nxt.start_frame == prev.end_frame + 1
        assert 3.0 <= prev.num_frames / 30 <= 8.0
    assert {s.label for s in segs} == set(scenes.CLASSES)
    assert len(scenes.CLASSES) >= 10


@pytest.mark.parametrize("label, direction", [
    ("moving_left", (-1, 0)), ("moving_right", (1, 0)), ("moving_up", (0, -1)), ("moving_down", (0, 1))])
def test_moving_actors_centre_moves_in_labelled_direction(label, direction):
    for index in range(5):
        seg = segment_of(label, index)
        seg = replace(seg, actors=seg.actors[:1])  # one actor: its centre is the mask's centre
        checked = 0
        for frame in range(0, seg.num_frames - 4, 7):
            a, b = actor_mask(seg, frame), actor_mask(seg, frame + 3)
            inner = lambda m: m.any() and not (m[:, :22].any() or m[:, -22:].any() or m[:2].any() or m[-2:].any())
            if not (inner(a) and inner(b)) or a.sum() != pytest.approx(b.sum(), rel=0.1):
                continue  # an actor is leaving or entering the stage: its centre is not its motion
            shift = centroid(b) - centroid(a)
            along = shift @ np.array(direction)
            assert along > 1.0, f"{label}: centre moved {shift} px in 0.1 s"
            assert abs(shift @ np.array(direction[::-1])) < along
            checked += 1
        assert checked > 0


@pytest.mark.parametrize("label, sign", [("rotating_clockwise", 1), ("rotating_anticlockwise", -1)])
def test_rotating_actor_turns_in_labelled_sense(label, sign):
    seg = segment_of(label)
    actor = replace(seg.actors[0], shape="arrow", color=(255, 0, 0), marker_color=(0, 0, 255), x=0.5, y=0.5, size=0.5)
    seg = replace(seg, actors=(actor,), distractors=(), background=(128, 128, 128), texture=0)
    angles = []
    for frame in range(0, 30, 3):
        rgb = to_model_frame(drawing.render_frame(seg, frame, W, H), 120)
        marker = centroid((rgb[..., 2] > 200) & (rgb[..., 0] < 60))  # the blue marker dot
        body = centroid(((rgb[..., 0] > 200) & (rgb[..., 2] < 60)) | ((rgb[..., 2] > 200) & (rgb[..., 0] < 60)))
        angles.append(math.degrees(math.atan2(*(marker - body)[::-1])))
    steps = [((b - a + 180) % 360) - 180 for a, b in zip(angles, angles[1:])]
    # image y points down: a clockwise turn on screen increases atan2(dy, dx)
    assert all(sign * s > 3 for s in steps), steps


@pytest.mark.parametrize("label, sign", [("growing", 1), ("shrinking", -1)])
def test_growing_and_shrinking_change_actor_area(label, sign):
    seg = segment_of(label)
    areas = [actor_mask(seg, f).sum() for f in range(0, seg.num_frames, 15)]
    assert all(sign * (b - a) > 0 for a, b in zip(areas, areas[1:])), areas


def test_blinking_actors_vanish_and_return_while_still_ones_do_not_change():
    seg = segment_of("blinking")
    visible = [actor_mask(seg, f).any() for f in range(0, 60, 2)]
    assert any(visible) and not all(visible)
    still = segment_of("still")
    frames = [drawing.render_frame(still, f, W, H) for f in (0, 17, 45)]
    assert all(np.array_equal(frames[0], f) for f in frames[1:])


def test_action_stays_in_centre_square_at_any_aspect():
    seg = replace(segment_of("moving_right"), noise=0.0)
    wide = to_model_frame(drawing.render_frame(seg, 20, 320, 240), 48).astype(int)
    square = to_model_frame(drawing.render_frame(seg, 20, 240, 240), 48).astype(int)
    assert np.abs(wide - square).mean() < 2.0


def test_cli_writes_mp4_and_inclusive_labels_that_opencv_and_pyav_read(tmp_path):
    out = tmp_path / "demo.mp4"
    cmd = [sys.executable, "-m", "streamer.synthetic", "--out", str(out), "--seconds", "9", "--seed", "4",
           "--width", "96", "--height", "64"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=60, capture_output=True)
    labels = json.loads(out.with_suffix(".labels.json").read_text())
    assert labels[0]["start_frame"] == 0 and labels[-1]["end_frame"] == 269
    assert all(b["start_frame"] == a["end_frame"] + 1 for a, b in zip(labels, labels[1:]))
    assert [s["label"] for s in labels] == [s.label for s in scenes.segments_for(4, 270)]

    capture = cv2.VideoCapture(str(out))
    frames = []
    while (ok := capture.read())[0]:
        frames.append(ok[1])
    capture.release()
    assert len(frames) == 270 and frames[0].shape == (64, 96, 3)
    expected = drawing.render_frame(scenes.segments_for(4, 270)[0], 0, 96, 64)
    assert np.abs(frames[0].astype(int) - expected).mean() < 8  # near-lossless encode of the same picture

    import av
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 270

    again = tmp_path / "again.mp4"
    subprocess.run(cmd[:4] + [str(again)] + cmd[5:], cwd=REPO, check=True, timeout=60, capture_output=True)
    assert again.with_suffix(".labels.json").read_text() == out.with_suffix(".labels.json").read_text()
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args", [["--seconds", "0", "--seed", "1"], ["--seconds", "x", "--seed", "1"],
                                  ["--seconds", "2"], ["--seconds", "2", "--seed", "1", "--width", "4"],
                                  ["--seconds", "2", "--seed", "-5"]])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(tmp_path / "x.mp4"), *args],
                          cwd=REPO, timeout=30, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_cli_unwritable_out_exits_2_with_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "x.mp4"
    proc = subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(out), "--seconds", "1",
                           "--seed", "1"], cwd=REPO, timeout=30, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "x.mp4" in proc.stderr, proc.stderr


def test_actors_cli_writes_each_actors_segments_and_a_box_per_frame(tmp_path):
    out = tmp_path / "yard.mp4"
    proc = subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(out), "--seconds", "3",
                           "--seed", "5", "--actors", "3"], cwd=REPO, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    labels = json.loads(files.labels_path(out).read_text())
    assert {s["actor"] for s in labels} == {0, 1, 2}
    for actor in range(3):
        mine = sorted((s for s in labels if s["actor"] == actor), key=lambda s: s["start_frame"])
        assert mine[0]["start_frame"] == 0 and mine[-1]["end_frame"] == 89
        assert all(a["end_frame"] + 1 == b["start_frame"] for a, b in zip(mine, mine[1:]))
        for seg in mine:
            assert seg["label"] in scenes.CLASSES
            assert len(seg["boxes"]) == seg["end_frame"] - seg["start_frame"] + 1
            assert all(0 <= x0 <= x1 <= 640 and 0 <= y0 <= y1 <= 480 for x0, y0, x1, y1 in seg["boxes"])
    # Apart: each actor keeps to its own third of the frame.
    for seg in labels:
        assert all(seg["actor"] * 213 <= x0 and x1 <= (seg["actor"] + 1) * 214 for x0, _, x1, _ in seg["boxes"])
    capture = cv2.VideoCapture(str(out))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (480, 640, 3)
    box = next(s for s in labels if s["actor"] == 1 and s["start_frame"] == 0)["boxes"][0]
    x0, y0, x1, y1 = (int(v) for v in box)
    inside = frame[y0:y1, x0:x1].reshape(-1, 3).astype(int)
    assert np.abs(inside - np.median(frame.reshape(-1, 3), axis=0)).max() > 60, "the actor is drawn inside its box"


def test_actors_cli_refuses_one_actor(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(tmp_path / "x.mp4"), "--seconds",
                           "1", "--seed", "1", "--actors", "1"], cwd=REPO, timeout=30, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--actors" in proc.stderr
