"""workers.views: mirror images relabelled by their words, averaged so a mirrored clip gets the mirrored answer."""

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.synthetic import scenes as synthetic
from streamer.config.loader import Overrides, load_config
from streamer.config.network import Endpoints
from streamer.config.stages import WorkerConfig
from streamer.errors import CheckpointError
from workers.flips import FLIP_VIEWS
from workers.training import evaluate, train
from workers.model import Preprocess, describe_checkpoint, load_model, save_model
from workers.preprocess import to_model_input
from workers.timesformer import TimeSformer, TimeSformerConfig
from workers.flips import FLIPS, mirror_map, mirrored
from workers.views import FlipViews
from streamer.stages.worker import Predictor

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.safetensors"


def test_flips_relabel_by_direction_words_and_keep_the_rest():
    classes = synthetic.CLASSES
    swapped = lambda flip: {classes[c]: classes[m] for c, m in enumerate(mirror_map(classes, flip)) if m != c}  # noqa: E731
    assert swapped("horizontal") == {"moving_left": "moving_right", "moving_right": "moving_left",
                                     "rotating_clockwise": "rotating_anticlockwise",
                                     "rotating_anticlockwise": "rotating_clockwise"}
    assert swapped("vertical") == {"moving_up": "moving_down", "moving_down": "moving_up",
                                   "rotating_clockwise": "rotating_anticlockwise",
                                   "rotating_anticlockwise": "rotating_clockwise"}
    assert mirrored("Pushing something from left to right", "horizontal") == "Pushing something from right to left"
    assert mirrored("Left hand waving", "horizontal") == "Right hand waving"
    assert mirrored("sliding", "horizontal") == "sliding"  # no direction word: its own mirror
    assert mirror_map(["moving_left", "still"], "horizontal") == [0, 1]  # mirror not a label: kept
    assert set(FLIPS) == set(FLIP_VIEWS)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    model = TimeSformer(TimeSformerConfig(img_size=16, patch_size=8, num_classes=len(synthetic.CLASSES),
                                          num_frames=4, embed_dim=32, depth=1, num_heads=2))
    pre = Preprocess(size=16, num_frames=4, frame_interval=2)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", labels=synthetic.CLASSES,
                      preprocess=pre)


@pytest.mark.parametrize("flip", sorted(FLIPS))
def test_a_mirrored_clip_gets_exactly_the_mirrored_answer(tiny_model, flip):
    """Averaging over a flip makes any model, even an untrained one, answer a mirror image with the mirror
    of its answer, and leaves probabilities that sum to one."""
    model = load_model(tiny_model)
    views = FlipViews(model.labels, (flip,))
    x = torch.randn(3, 3, 4, 16, 16)
    with torch.no_grad():
        probs, probs_of_mirror = views(model, x), views(model, x.flip(FLIPS[flip][0]))
    assert torch.allclose(probs_of_mirror, probs[:, mirror_map(model.labels, flip)], atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-6)
    with torch.no_grad():
        plain = FlipViews(model.labels)(model, x)
    assert torch.allclose(plain, model(x).softmax(1), atol=1e-7)
    assert not torch.allclose(plain, probs, atol=1e-3)  # the views do change the answer of a random model


def test_worker_averages_the_views_its_config_names(tiny_model):
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    model = load_model(tiny_model)
    for flips in ((), ("horizontal", "vertical")):
        config = WorkerConfig(name="w", endpoints=Endpoints("ipc:///tmp/w", "ipc:///tmp/k", "ipc:///tmp/r", "ipc:///tmp/d"), checkpoint=str(tiny_model), device="cpu",
                              precision="fp32", threads=1, flip_views=flips)
        probs, _, _ = Predictor(config).predict(frames)
        expected = evaluate.predict(model, frames, model.preprocess.mean, model.preprocess.std, flips=flips)
        assert np.allclose(probs, expected.numpy(), atol=1e-5)


def test_the_checkpoint_says_which_flips_its_classes_allow_and_the_config_can_override(tmp_path, tiny_model):
    model = load_model(tiny_model)
    pre = Preprocess(size=16, num_frames=4, frame_interval=2, flip_views=("horizontal",))
    flipped = save_model(model, tmp_path / "flipped.safetensors", labels=model.labels, preprocess=pre)
    assert load_model(flipped).preprocess.flip_views == ("horizontal",)

    def workers_flips(checkpoint: Path, model_table: str) -> set[tuple[str, ...]]:
        path = tmp_path / "c.toml"
        path.write_text(f"{model_table}\n[[sources]]\nspec = 'synthetic:'\n")
        config = load_config(Overrides(config=str(path), checkpoint=str(checkpoint), headless=True),
                             describe_checkpoint)
        return {w.flip_views for w in config.workers}

    assert workers_flips(flipped, "") == {("horizontal",)}
    assert workers_flips(tiny_model, "") == {()}  # a checkpoint that says nothing: no flips
    assert workers_flips(flipped, "[model]\nflip_views = []") == {()}
    assert workers_flips(tiny_model, "[model]\nflip_views = ['vertical']") == {("vertical",)}
    # a model trained on the synthetic actions records that both flips are safe for it
    args = train.parse_args(["--data", "synthetic", "--out", str(tmp_path / "run")])
    assert train.build_model(args, synthetic.CLASSES)[1].flip_views == FLIP_VIEWS == ("horizontal", "vertical")


def test_a_checkpoint_naming_an_unknown_flip_is_refused(tmp_path, tiny_model):
    model = load_model(tiny_model)
    bad = save_model(model, tmp_path / "bad.safetensors", labels=model.labels,
                     preprocess=Preprocess(size=16, num_frames=4, frame_interval=2, flip_views=("diagonal",)))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: metadata: 'flip_views' entry 'diagonal' is not"):
        load_model(bad)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not DEMO.is_file(), reason="models/demo.safetensors is not there")
def test_shipped_model_names_the_mirror_image_of_an_action_as_the_mirrored_action():
    """The premise of flip views, on the real model and real rendered clips: flipping a moving-left clip
    makes the model say moving right, and so on, for nearly every clip."""
    model = load_model(DEMO)
    pre = model.preprocess
    spec = evaluate.WindowSpec(pre.num_frames, pre.frame_interval, 8)
    windows = evaluate.synthetic_windows(515151, 30.0, pre.size, spec, model.labels)  # never trained on
    inside = windows.frames[windows.whole]
    x = to_model_input(torch.from_numpy(inside), pre.mean, pre.std)
    for flip, (axis, _) in FLIPS.items():
        with torch.no_grad():
            answer, answer_of_mirror = model(x).argmax(1), model(x.flip(axis)).argmax(1)
        expected = torch.as_tensor(mirror_map(model.labels, flip))[answer]
        assert float((answer_of_mirror == expected).float().mean()) >= 0.8, flip
