"""Actions the demo model never saw (issue 24): behind a flag, told apart only by their motion, every existing
seed's pixels unchanged, and folders of clips to teach them from."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.synthetic import actors, drawing, files, scenes
from streamer.synthetic.new_actions import NEW_ACTIONS
from workers.flips import FLIP_VIEWS, mirrored

REPO = Path(__file__).resolve().parents[1]
W, H = 160, 120  # stage: the centre 120 px square


def one_actor_video_hash(seed: int, seconds: float = 20, width: int = 160, height: int = 120) -> str:
    """sha256 of a seed's segments and of every third frame's pixels."""
    n = round(seconds * 30)
    segs = scenes.segments_for(seed, n)
    digest = hashlib.sha256(json.dumps([(s.label, s.start_frame, s.end_frame) for s in segs]).encode())
    for i in range(0, n, 3):
        digest.update(drawing.render_frame(scenes.segment_at(segs, i), i, width, height).tobytes())
    return digest.hexdigest()


def actors_video_hash(seed: int, count: int = 3, seconds: int = 8) -> str:
    video = actors.ActorVideo(seed, count, seconds * 30, 30.0, 320, 240)
    digest = hashlib.sha256(json.dumps(video.labels()).encode())
    for i in range(0, video.num_frames, 5):
        digest.update(video.render(i).tobytes())
    return digest.hexdigest()


def test_existing_seeds_draw_the_same_pixels_and_labels_as_before_the_new_actions():
    # Computed on main at 51ead5d, before the new actions existed (a new OpenCV or numpy that draws
    # differently would change them too: re-derive them there, then compare).
    assert one_actor_video_hash(11) == "23160ba1829c7a3c524136f69f7fc96f13c1ccf8a5936ad387dcbf6d120bbe0f"
    assert actors_video_hash(5) == "a88cec45f6449a155f8b5721a4c0d0cfd8e847e2264271eacac1ede42e8518e2"
    assert scenes.CLASSES == ["moving_left", "moving_right", "moving_up", "moving_down", "rotating_clockwise",
                              "rotating_anticlockwise", "growing", "shrinking", "blinking", "still"]
    assert not set(NEW_ACTIONS) & set(scenes.CLASSES)


def lone_actor(label: str, index: int = 0) -> scenes.Segment:
    """A segment of ``label`` with its first actor alone: no noise, no distractors."""
    seg = scenes.sample_segment(np.random.default_rng([77, index]), 0, 30.0, label)
    return replace(seg, actors=seg.actors[:1], distractors=(), noise=0.0)


def centre(seg: scenes.Segment, frame: int) -> np.ndarray:
    """The actor's centre in pixels, from the pixels that differ from the empty scene."""
    with_actor = drawing.render_frame(seg, frame, W, H).astype(np.int16)
    without = drawing.render_frame(replace(seg, actors=()), frame, W, H).astype(np.int16)
    ys, xs = np.nonzero(np.abs(with_actor - without).sum(axis=2) > 30)
    assert len(xs) > 20, f"{seg.label}: actor not drawn in frame {frame}"
    return np.array([xs.mean(), ys.mean()])


def sign_changes(values: np.ndarray) -> int:
    steps = np.sign(np.diff(values))
    steps = steps[steps != 0]
    return int((steps[1:] != steps[:-1]).sum())


@pytest.mark.parametrize("index", range(3))
def test_bouncing_goes_up_and_down_in_place(index):
    seg = lone_actor("bouncing", index)
    path = np.array([centre(seg, f) for f in range(0, 30, 2)])  # one second
    assert np.ptp(path[:, 0]) < 1.5, "no sideways drift"
    assert np.ptp(path[:, 1]) > 20, f"bobs by {np.ptp(path[:, 1]):.1f} px"
    assert sign_changes(path[:, 1]) >= 2, "up and down again within a second"


@pytest.mark.parametrize("index", range(3))
def test_orbiting_goes_round_a_circle_one_way(index):
    seg = lone_actor("orbiting", index)
    path = np.array([centre(seg, f) for f in range(0, 45, 3)])  # 1.5 s: more than one turn
    middle = (path.max(axis=0) + path.min(axis=0)) / 2
    radius = np.hypot(*(path - middle).T)
    assert radius.min() > 9 and radius.max() - radius.min() < 3, radius  # 0.1-0.16 stage = 12-19 px
    turns = np.diff(np.unwrap(np.arctan2(*(path - middle).T[::-1])))
    assert (np.sign(turns) == np.sign(turns[0])).all(), "always the same sense"


@pytest.mark.parametrize("index", range(3))
def test_shaking_jumps_left_and_right_even_at_the_models_sampling(index):
    seg = lone_actor("shaking", index)
    path = np.array([centre(seg, f) for f in range(0, 29, 4)])  # the demo model's 8 frames every 4
    assert np.ptp(path[:, 1]) < 1.5, "no vertical motion"
    assert np.ptp(path[:, 0]) > 5 and sign_changes(path[:, 0]) >= 2, path[:, 0]
    mean_x = np.array([centre(seg, f)[0] for f in range(0, 300, 7)]).mean()
    assert abs(mean_x - path[0, 0]) < 8, "it stays where it is"


@pytest.mark.parametrize("label", NEW_ACTIONS)
def test_new_actions_keep_their_shape_and_are_their_own_mirror_image(label):
    seg = lone_actor(label)
    empty = drawing.render_frame(replace(seg, actors=()), 0, W, H).astype(np.int16)
    areas = [(np.abs(drawing.render_frame(seg, f, W, H).astype(np.int16) - empty).sum(axis=2) > 30).sum()
             for f in range(0, 60, 5)]
    assert max(areas) <= 1.1 * min(areas), areas  # only where it is changes, as in the demo's moving classes
    assert all(mirrored(label, flip) == label for flip in FLIP_VIEWS)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer.synthetic", *args], cwd=REPO, timeout=120,
                          capture_output=True, text=True)


def test_new_actions_flag_mixes_new_labels_into_the_labels_file(tmp_path):
    out = tmp_path / "mixed.mp4"
    proc = run_cli("--out", str(out), "--seconds", "10", "--seed", "3", "--new-actions", "--width", "96",
                   "--height", "64")
    assert proc.returncode == 0, proc.stderr
    labels = files.read_labels(files.labels_path(out))
    assert [s["label"] for s in labels] == ["bouncing", "shaking"]  # seed 3's first two shots
    assert labels[0]["start_frame"] == 0 and labels[-1]["end_frame"] == 299
    many = scenes.segments_for(5, 30 * 600, 30.0, scenes.ALL_ACTIONS)
    assert {s.label for s in many} == set(scenes.ALL_ACTIONS)
    capture = cv2.VideoCapture(str(out))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 300


@pytest.mark.parametrize("label", ["orbiting", "growing"])
def test_only_renders_that_action_throughout_in_new_scenes(tmp_path, label):
    out = tmp_path / f"{label}.mp4"
    proc = run_cli("--out", str(out), "--seconds", "12", "--seed", "1", "--only", label, "--width", "96",
                   "--height", "64")
    assert proc.returncode == 0, proc.stderr
    labels = files.read_labels(files.labels_path(out))
    assert len(labels) >= 2 and {s["label"] for s in labels} == {label}  # cuts, but the same action
    assert labels[-1]["end_frame"] == 359


def test_only_with_actors_gives_every_actor_that_action_inside_its_boxes(tmp_path):
    out = tmp_path / "yard.mp4"
    proc = run_cli("--out", str(out), "--seconds", "2", "--seed", "4", "--only", "bouncing", "--actors", "2")
    assert proc.returncode == 0, proc.stderr
    labels = files.read_labels(files.labels_path(out))
    assert {(s["actor"], s["label"]) for s in labels} == {(0, "bouncing"), (1, "bouncing")}
    for seg in labels:
        tops = [y0 for _, y0, _, _ in seg["boxes"]]
        assert np.ptp(tops) > 40, "the box follows the actor up and down"
        assert all(seg["actor"] * 320 <= x0 <= x1 <= (seg["actor"] + 1) * 320 for x0, _, x1, _ in seg["boxes"])
    mixed = actors.ActorVideo(0, 3, 30 * 60, 30.0, 640, 480, tuple(scenes.ALL_ACTIONS))
    assert {s.label for segs in mixed.segments for s in segs} & set(NEW_ACTIONS)


def test_only_an_unknown_action_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("--out", str(tmp_path / "x.mp4"), "--seconds", "1", "--seed", "1", "--only", "juggling")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "juggling" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_teaching_folders_hold_clips_of_the_label_and_of_ordinary_actions(tmp_path):
    shaking = files.make_teaching_clips(tmp_path, "shaking", 2, seconds=1.0, seed=0, width=64, height=48)
    held_out = files.make_teaching_clips(tmp_path, "shaking", 1, seconds=1.0, seed=1, width=64, height=48)
    none = files.make_none_clips(tmp_path, 3, seconds=1.0, seed=0, width=64, height=48, cuts=1)
    assert [p.parent for p in shaking + held_out] == [tmp_path / "shaking"] * 3
    assert [p.parent for p in none] == [tmp_path / "none"] * 4
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["shaking", "none", *(p.name for p in shaking + held_out + none)])  # videos only: the folder is the label
    firsts = []
    for path in shaking + held_out + none:
        capture = cv2.VideoCapture(str(path))
        frames = []
        while (ok := capture.read())[0]:
            frames.append(ok[1].astype(int))
        capture.release()
        assert len(frames) == (60 if path == none[-1] else 30) and frames[0].shape == (48, 64, 3)
        firsts.append(frames[0])
    assert all(np.abs(a - b).mean() > 5 for i, a in enumerate(firsts) for b in firsts[i + 1:]), "each its own scene"
    # the last of ``none`` is ordinary footage across a cut: a second of one action, then of another scene
    assert np.abs(frames[29] - frames[30]).mean() > 5 * np.abs(frames[28] - frames[29]).mean()
    with pytest.raises(ValueError, match="juggling"):
        files.make_teaching_clips(tmp_path, "juggling", 1)
