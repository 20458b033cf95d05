"""The side task that keeps the demo model's embedding descriptive: wandering scenes (training only) and the
motion measures a window's class token is trained to say (``workers.train --describe-motion``)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from streamer.synthetic import drawing, scenes
from streamer.synthetic.wandering import WANDERING
from workers.model import Preprocess
from workers.training import clips, train
from workers.training.motion_targets import MOTION_MEASURES, describe_window

TINY = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--heads", "2",
        "--num-frames", "4", "--frame-interval", "2", "--batch-size", "8", "--workers", "0", "--threads", "1",
        "--warmup", "2", "--bar-interval", "60"]


def measures(label: str, index: int = 0) -> dict[str, float]:
    seg = scenes.sample_segment(np.random.default_rng([91, index]), 0, 30.0, label)
    values = describe_window([seg], list(range(40, 72, 4)))
    return dict(zip(MOTION_MEASURES, values.tolist()))


@pytest.mark.parametrize("label,axis", [("moving_left", "x"), ("moving_down", "y")])
def test_a_straight_move_has_speed_and_travel_along_its_axis_only(label, axis):
    other = "y" if axis == "x" else "x"
    m = measures(label)
    assert m[f"speed_{axis}"] > 0.3 and m[f"travel_{axis}"] > 0.5
    assert m[f"speed_{other}"] == m[f"travel_{other}"] == 0.0
    assert m["jerk_x"] < 1e-6 and m["reversals_x"] == 0.0 and m["curving"] < 1e-6


def test_turning_growing_and_blinking_each_show_in_their_own_measure():
    assert measures("rotating_clockwise")["turning"] > 0.5
    assert measures("growing")["growing"] > 0.3 and measures("shrinking")["growing"] < -0.3
    assert max(measures("blinking", i)["blinking"] for i in range(3)) > 0.2
    assert not any(measures("still").values())


def test_a_window_across_a_cut_has_no_measures():
    rng = np.random.default_rng(5)
    first = scenes.sample_segment(rng, 0, 30.0, "still")
    second = scenes.sample_segment(rng, first.end_frame + 1, 30.0, "moving_up")
    assert describe_window([first, second], list(range(first.end_frame - 8, first.end_frame + 24, 4))) is None


def test_wandering_actors_stay_on_stage_and_paths_vary_from_scene_to_scene():
    kinds = []
    for index in range(12):
        seg = scenes.sample_segment(np.random.default_rng([92, index]), 0, 30.0, WANDERING)
        for actor in seg.actors:
            for t in np.linspace(0, seg.num_frames / 30.0, 40):
                x, y, size, *_ = scenes.actor_state(actor, WANDERING, float(t))
                assert size / 2 - 1e-9 <= x <= 1 - size / 2 + 1e-9 and size / 2 - 1e-9 <= y <= 1 - size / 2 + 1e-9
        kinds.append(describe_window([seg], list(range(0, 32, 4))))
    kinds = np.array(kinds)
    assert kinds[:, MOTION_MEASURES.index("speed_x")].std() > 0.1  # slow and fast
    assert kinds[:, MOTION_MEASURES.index("curving")].std() > 0.05  # straight and winding
    # drawn like any scene, the same at every render
    seg = replace(scenes.sample_segment(np.random.default_rng([92, 0]), 0, 30.0, WANDERING), noise=0.0)
    assert np.array_equal(drawing.render_frame(seg, 20, 64, 48), drawing.render_frame(seg, 20, 64, 48))


def test_wandering_clips_carry_no_class_and_measures_while_cut_straddling_ones_carry_no_measures():
    pre = Preprocess(size=16, num_frames=4, frame_interval=2)
    items = [next(stream) for stream in [clips.synthetic_clips(3, pre, cut_p=0.0, per_scene=1, wander_p=1.0,
                                                               describe=True)] for _ in range(3)]
    assert all(label == clips.NO_CLASS and values is not None for _, label, values in items)
    across = clips.synthetic_clips(3, pre, cut_p=1.0, per_scene=1, describe=True)
    assert all(next(across)[2] is None for _ in range(3))


@pytest.mark.timeout(120)
def test_describe_motion_trains_the_side_task_and_keeps_it_for_resuming(tmp_path):
    out = tmp_path / "run"
    argv = ["--data", "synthetic", "--out", str(out), *TINY, "--steps-per-epoch", "6", "--lr", "3e-3",
            "--describe-motion", "1", "--wander-p", "0.5", "--val-seeds", "7", "--val-seconds", "4"]
    assert train.main([*argv, "--epochs", "1"]) == 0
    assert train.main([*argv, "--epochs", "2", "--resume"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(np.isfinite(r["motion_loss"]) and r["motion_loss"] > 0 for r in log)
    saved = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["describer"]["weight"].shape == (len(MOTION_MEASURES), 32)


def test_describe_motion_on_video_folders_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), *TINY, "--describe-motion", "1"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--describe-motion needs --data synthetic" in err[0]
