"""workers.train: learns on a tiny real dataset, checkpoints our format, resumes, fine-tunes a Hugging Face model."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamer.synthetic import scenes as synthetic
from streamer.errors import ConfigError
from streamer.synthetic.actors import ActorVideo
from workers.training import actor_clips, build, clips, flags, train
from workers.model import Preprocess, load_model

TINY = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "1", "--heads", "2",
        "--num-frames", "4", "--frame-interval", "2", "--batch-size", "8", "--workers", "0", "--threads", "1",
        "--warmup", "5", "--bar-interval", "60"]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def two_class_list(tmp_path_factory) -> Path:
    """A list file of 'path label' lines: dark clips with a bright moving square vs. bright clips."""
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for i in range(3):
        for label, level in (("dark", 40), ("bright", 210)):
            frames = []
            for t in range(20):
                frame = np.full((24, 32, 3), level, np.uint8)
                cv2.rectangle(frame, (4 + t % 10, 8), (10 + t % 10, 14), (255 - level,) * 3, -1)
                frames.append(frame)
            write_video(root / f"{label}{i}.mp4", frames)
            lines.append(f"{label}{i}.mp4 {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt"


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.timeout(120)
def test_short_run_lowers_loss_and_writes_checkpoint_load_model_reads(tmp_path, two_class_list):
    out = tmp_path / "run"
    args = ["--data", str(two_class_list), "--val-data", str(two_class_list), "--out", str(out),
            "--epochs", "3", "--steps-per-epoch", "12", "--lr", "3e-3", *TINY]
    assert train.main(args) == 0
    log = log_lines(out)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["val_top1"] == 1.0
    model = load_model(out / "best.safetensors")
    assert model.labels == ["bright", "dark"]
    assert (model.preprocess.size, model.preprocess.num_frames, model.preprocess.frame_interval) == (16, 4, 2)
    assert model(torch.zeros(1, 3, 4, 16, 16)).shape == (1, 2)
    resume = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert resume["step"] == 36 and "state" in resume["optimizer"]


@pytest.mark.timeout(120)
def test_added_blocks_start_as_identity_and_train_into_a_deeper_checkpoint(tmp_path, two_class_list):
    """--add-blocks: at step 0 the deeper model gives the trained one's logits; after training, load_model
    reads the deeper checkpoint and the new blocks have moved away from zero."""
    common = ["--data", str(two_class_list), "--steps-per-epoch", "4", "--epochs", "1", *TINY]
    first = tmp_path / "first"
    assert train.main([*common, "--out", str(first)]) == 0
    trained = load_model(first / "last.safetensors")
    args = flags.parse_args([*common, "--init", str(first / "last.safetensors"), "--out", str(tmp_path / "x"),
                             "--add-blocks", "2"])
    deeper, _ = build.build_model(args, trained.labels)
    clip = torch.randn(2, 3, 4, 16, 16)
    assert len(deeper.blocks) == 3
    assert torch.equal(deeper.eval()(clip), trained(clip))
    out = tmp_path / "deeper"
    assert train.main([*common, "--init", str(first / "last.safetensors"), "--out", str(out), "--add-blocks", "2",
                       "--lr", "1e-2"]) == 0
    model = load_model(out / "last.safetensors")
    assert model.config.depth == 3 and model.labels == trained.labels
    assert float(model.blocks[2].mlp.fc2.weight.detach().abs().max()) > 0


@pytest.mark.timeout(120)
def test_fine_tuning_at_another_input_side_starts_where_the_checkpoint_is_and_saves_the_new_side(tmp_path,
                                                                                              two_class_list):
    """--init with --img-size: at step 0 the model predicts as the checkpoint does when fed that side (the position
    embedding takes the new grid as the model would resize it); the saved checkpoint is read at the new side."""
    common = ["--data", str(two_class_list), "--steps-per-epoch", "4", "--epochs", "1", *TINY]
    first = tmp_path / "first"
    assert train.main([*common, "--out", str(first)]) == 0
    trained = load_model(first / "last.safetensors")
    side = trained.config.img_size + 2 * trained.config.patch_size
    args = flags.parse_args([*common, "--init", str(first / "last.safetensors"), "--out", str(tmp_path / "x"),
                             "--img-size", str(side)])
    larger, pre = build.build_model(args, trained.labels)
    clip = torch.randn(2, 3, 4, side, side)
    assert pre.size == side and larger.pos_embed.shape[1] == 1 + (side // trained.config.patch_size) ** 2
    assert torch.equal(larger.eval()(clip), trained(clip))
    out = tmp_path / "larger"
    assert train.main([*common, "--init", str(first / "last.safetensors"), "--out", str(out), "--img-size",
                       str(side)]) == 0
    model = load_model(out / "last.safetensors")
    assert model.config.img_size == side and model.preprocess.size == side


@pytest.mark.timeout(120)
def test_resume_continues_from_saved_epoch_and_step(tmp_path, two_class_list):
    out = tmp_path / "run"
    common = ["--data", str(two_class_list), "--out", str(out), "--steps-per-epoch", "4", *TINY]
    assert train.main([*common, "--epochs", "1"]) == 0
    first = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert train.main([*common, "--epochs", "2", "--resume"]) == 0
    log = log_lines(out)
    assert [(r["epoch"], r["step"]) for r in log] == [(1, 4), (2, 8)]
    second = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert not torch.equal(first["model"]["head.weight"], second["model"]["head.weight"])


@pytest.mark.timeout(180)
def test_continuing_a_model_keeps_or_slows_its_motion_init_layers(tmp_path, two_class_list):
    """--init with --freeze-init leaves the hand-set layers exactly as they were; --init-lr-mult moves them less."""
    common = ["--data", str(two_class_list), "--steps-per-epoch", "4", "--epochs", "1", *TINY[TINY.index("--batch-size"):]]
    first = tmp_path / "first"
    assert train.main([*common, *TINY[:TINY.index("--batch-size")], "--out", str(first)]) == 0
    start = load_model(first / "last.safetensors").state_dict()

    def moved(*flags: str) -> tuple[float, float]:
        out = tmp_path / ("".join(flags).replace("-", "") or "plain")
        assert train.main([*common, "--init", str(first / "last.safetensors"), "--out", str(out), "--lr", "1e-2",
                           *flags]) == 0
        end = load_model(out / "last.safetensors").state_dict()
        diff = lambda keys: max(float((end[k] - start[k]).abs().max()) for k in keys)  # noqa: E731
        return (diff([k for k in start if k.startswith(train.FROZEN)]),
                diff([k for k in start if k.startswith("head.")]))

    frozen_init, frozen_head = moved("--freeze-init")
    assert frozen_init == 0.0 and frozen_head > 0
    slow_init, _ = moved("--init-lr-mult", "0.01")
    full_init, _ = moved()
    assert 0 < slow_init < full_init / 5


def test_from_scratch_time_embedding_starts_as_unit_sinusoids():
    args = flags.parse_args(["--data", "synthetic", "--out", "x", "--embed-dim", "32", "--heads", "2", "--num-frames", "8"])
    model, pre = build.build_model(args, synthetic.CLASSES)
    table = model.time_embed.detach()[0]  # (T, D)
    assert table.abs().max() <= 1.0 and table.abs().max() > 0.9
    assert not torch.allclose(table[0], table[1])
    assert pre.num_frames == 8 and pre.frame_interval == 4 and pre.size == 48


def test_synthetic_clips_are_labelled_by_their_last_frame_and_match_window_shape():
    pre = Preprocess(size=24, num_frames=4, frame_interval=3)
    stream = clips.synthetic_clips(1, pre, cut_p=1.0, per_scene=2)  # every clip straddles a cut
    for _ in range(4):
        clip, label = next(stream)
        assert clip.shape == (4, 24, 24, 3) and clip.dtype == np.uint8
        assert 0 <= label < len(synthetic.CLASSES)


def test_a_turning_disc_recast_turns_in_place_and_leaves_the_rest_of_the_scene():
    """The recast segment is a circle labelled turning, turning on the spot over the segment's own frames; every
    other segment, and the background, is the scene's own."""
    video = ActorVideo(77, 3, 300, 30.0, 320, 240)
    actor, seg = 1, video.segments[1][0]
    recast = actor_clips.turning_disc(video, actor, seg, np.random.default_rng(3))
    disc = recast.segments[actor][0]
    assert disc.label.startswith("rotating_") and disc.actors[0].shape == "circle"
    assert (disc.start_frame, disc.end_frame) == (seg.start_frame, seg.end_frame)
    assert recast.segments[0] == video.segments[0] and recast.segments[actor][1:] == video.segments[actor][1:]
    assert recast.box(actor, 0) == pytest.approx(recast.box(actor, 20), abs=1)  # it turns on the spot
    a, b = recast.render(0), recast.render(20)
    stage = recast.stages[actor]
    inside = np.s_[stage.y0:stage.y0 + stage.side, stage.x0:stage.x0 + stage.side]
    others = np.ones(a.shape[:2], bool)
    others[inside] = False
    assert np.abs(a[inside].astype(int) - b[inside]).max() > 60  # its marker went round
    assert np.array_equal(a[others], video.render(0)[others])  # the rest of the frame is the scene's own


def test_actor_clips_recast_their_share_as_turning_discs(monkeypatch):
    """The training stream uses the recast: with every clip a disc, every label is a turning one."""
    monkeypatch.setattr(actor_clips, "TURNING_DISC_P", 1.0)
    stream = actor_clips.actor_clips(5, Preprocess(size=24, num_frames=4, frame_interval=3), cut_p=0.0, per_scene=1)
    labels = [synthetic.CLASSES[next(stream)[1]] for _ in range(8)]
    assert all(label.startswith("rotating_") for label in labels), labels


@pytest.mark.timeout(120)
def test_fine_tune_from_hugging_face_folder_replaces_head(tmp_path, two_class_list):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(image_size=16, patch_size=8, num_channels=3, num_frames=4, hidden_size=32,
                               num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               id2label={i: f"k{i}" for i in range(5)}, label2id={f"k{i}": i for i in range(5)})
    torch.manual_seed(0)
    hf = TimesformerForVideoClassification(config)
    hf.save_pretrained(tmp_path / "hf")
    before = load_model(tmp_path / "hf")
    assert before.labels == [f"k{i}" for i in range(5)]
    out = tmp_path / "ft"
    args = ["--data", str(two_class_list), "--init", str(tmp_path / "hf"), "--out", str(out), "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "4", "--lr", "1e-5", "--frame-interval", "2",
            "--workers", "0", "--warmup", "1", "--bar-interval", "60"]
    assert train.main(args) == 0
    tuned = load_model(out / "last.safetensors")
    assert tuned.labels == ["bright", "dark"]
    assert tuned.head.weight.shape == (2, 32)
    # the backbone is the Hugging Face model's, only nudged by two tiny steps
    qkv_before, qkv_after = before.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight
    assert torch.allclose(qkv_before, qkv_after, atol=1e-3)
    assert tuned.preprocess.frame_interval == 2 and tuned.preprocess.num_frames == 4


@pytest.mark.parametrize("argv", [["--embed-dim", "30", "--heads", "4"],
                                  ["--freeze-init"],  # freezing random weights: nothing hand-set to keep
                                  ["--motion-init", "--freeze-init", "--init", "x.pyth"],
                                  ["--probe-head", "-5"],
                                  ["--init-lr-mult", "-1"],
                                  ["--add-blocks", "1"],  # deepens a trained model only
                                  ["--add-blocks", "-1", "--init", "x.pyth"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_args(["--data", "synthetic", "--out", "x", *argv])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["size not a multiple of the patch", "--out under a file"])
def test_bad_setup_is_one_line_and_exit_2(tmp_path, capsys, problem):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / ("notes.txt/run" if problem == "--out under a file" else "run")
    size = "17" if problem == "size not a multiple of the patch" else "16"
    argv = ["--data", "synthetic", "--out", str(out), *TINY, "--img-size", size, "--epochs", "1", "--steps-per-epoch", "1"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert ("img_size 17" if size == "17" else "cannot make this folder") in err


def _motion_model():
    args = flags.parse_args(["--data", "synthetic", "--out", "x", "--img-size", "32", "--embed-dim", "96",
                             "--heads", "4", "--motion-init"])
    model, _ = build.build_model(args, synthetic.CLASSES)
    return model.eval()


def test_motion_init_marks_changed_patches_and_nothing_static():
    model = _motion_model()
    clip = torch.randn(1, 3, 1, 32, 32).repeat(1, 1, 8, 1, 1)  # a static clip with a busy background
    clip[:, :, 5:, 8:16, 8:16] += 2.0  # patch (1, 1) changes at frame 5
    tokens, batch, frames = model.embed(clip)
    with torch.no_grad():
        patches = model.blocks[0].temporal(tokens, batch, frames)  # (1, N·T, D), time fastest
    hd = 96 // 4
    energy = patches[0, :, hd:2 * hd].reshape(16, 8, hd).norm(dim=-1)  # (patch, frame)
    assert energy[5, 5] > 1.0  # the change, at the frame it happens
    others = torch.ones(16, dtype=torch.bool)
    others[5] = False
    assert energy[others].max() < 1e-4  # unchanged patches: exactly nothing, whatever the background
    assert energy[5, 1:5].max() < 0.1 * energy[5, 5]  # the changed patch before its change: (almost) nothing


def _moving_bar(dx: int, dy: int) -> torch.Tensor:
    """(1, 3, 8, 32, 32): a bright 6-px square on a textured background, 2 px a frame along (dx, dy)."""
    generator = torch.Generator().manual_seed(0)
    background = 0.3 * torch.randn(3, 1, 32, 32, generator=generator).repeat(1, 8, 1, 1)
    clip = background.clone()
    for t in range(8):
        x, y = 8 + dx * 2 * t, 8 + dy * 2 * t
        clip[:, t, y:y + 6, x:x + 6] = torch.tensor([2.0, -1.0, 1.5])[:, None, None]
    return clip[None]


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1)])
def test_motion_init_features_tell_direction_apart(dx, dy):
    """The pooled motion band, as the head sees it at step 0, flips sign with the direction of travel."""
    model = _motion_model()
    hd = 96 // 4
    with torch.no_grad():
        forward = model.forward_features(_moving_bar(dx, dy))[0, 2 * hd:3 * hd]
        backward = model.forward_features(_moving_bar(dx, dy).flip(2))[0, 2 * hd:3 * hd]  # same frames, reversed
        still = model.forward_features(_moving_bar(0, 0))[0, 2 * hd:3 * hd]
    axis = slice(0, 3) if dx else slice(3, 6)  # first channel's boundaries along the travel axis
    assert forward[axis].sum() * backward[axis].sum() < 0
    assert (forward[axis].sum() - backward[axis].sum()).abs() > 0.5
    energy = slice(18, 21)
    assert forward[energy].mean() > still[energy].mean() + 0.1  # moving has more change energy than still


def test_motion_init_refuses_a_model_it_cannot_set_up():
    args = flags.parse_args(["--data", "synthetic", "--out", "x", "--img-size", "32", "--embed-dim", "64",
                             "--heads", "4", "--motion-init"])
    with pytest.raises(ConfigError, match="motion init needs"):
        build.build_model(args, synthetic.CLASSES)
