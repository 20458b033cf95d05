"""load_model against real checkpoints: Hugging Face folders, official .pyth files and our own format."""

import json
import pickle
import random
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from streamer.errors import CheckpointError
from tests.hf_models import hf_logits, make_hf_folder, write_official_pyth
from workers.model import Preprocess, load_model, save_model
from workers.timesformer import TimeSformer, TimeSformerConfig

ATTENTION_TYPES = ["divided_space_time", "joint_space_time", "space_only"]


@pytest.fixture(scope="module", params=ATTENTION_TYPES)
def hf_checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, make_hf_folder(folder, request.param)


def test_hf_folder_matches_transformers_logits(hf_checkpoint):
    folder, hf_model = hf_checkpoint
    model = load_model(folder)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model(x)
    assert ours.shape == (2, 7) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, hf_logits(hf_model, x), atol=1e-4, rtol=1e-4)
    assert model.labels == [f"action {i}" for i in range(7)]
    assert model.config.attention_type == hf_model.config.attention_type
    assert not model.training


def test_official_pyth_loads_to_same_logits(hf_checkpoint, tmp_path):
    folder, hf_model = hf_checkpoint
    pyth = write_official_pyth(hf_model, tmp_path / "official.pyth")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(pyth, num_heads=4)(x), hf_logits(hf_model, x), atol=1e-4, rtol=1e-4)


def test_heads_default_to_width_over_64(tmp_path):
    hf_model = make_hf_folder(tmp_path / "hf", "divided_space_time", hidden_size=128, heads=2)
    model = load_model(write_official_pyth(hf_model, tmp_path / "o.pyth"))
    assert model.config.num_heads == 2 and model.config.embed_dim == 128
    assert model.config.depth == 2 and model.config.patch_size == 8 and model.config.img_size == 32


def test_own_format_round_trip_keeps_labels_and_preprocessing(hf_checkpoint, tmp_path):
    folder, hf_model = hf_checkpoint
    model = load_model(folder)
    pre = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25), size=32, num_frames=4, frame_interval=3)
    path = save_model(model, tmp_path / "m.safetensors", labels=model.labels, preprocess=pre)
    again = load_model(path)
    assert again.labels == model.labels and again.preprocess == pre and again.config == model.config
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_400_class_checkpoint_without_labels_gets_kinetics_names(tmp_path):
    hf_model = make_hf_folder(tmp_path / "hf", "divided_space_time", num_labels=400)
    model = load_model(write_official_pyth(hf_model, tmp_path / "k400.pyth"))
    assert len(model.labels) == 400
    assert model.labels[0] == "abseiling" and model.labels[-1] == "zumba"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fast_path_takes_and_returns_float32_and_agrees(hf_checkpoint, precision):
    folder, _ = hf_checkpoint
    exact, fast = load_model(folder), load_model(folder, precision=precision)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        a, b = exact(x), fast(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    torch.testing.assert_close(b, a, atol=0.1, rtol=0.1)


def test_forced_bf16_weights_agree_with_fp32(hf_checkpoint):
    """The bf16 arithmetic itself (as on CPUs with bf16 units), whatever this CPU has."""
    folder, _ = hf_checkpoint
    exact = load_model(folder)
    fast = load_model(folder).to(torch.bfloat16).fuse()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), exact(x), atol=0.15, rtol=0.1)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pyth: no such file"):
        load_model(tmp_path / "nope.pyth")


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pth: not a readable PyTorch checkpoint"):
        load_model(bad)


@pytest.mark.parametrize("head", [b"", b"\x80", b"\x80\x02", b"PK\x03\x04"])
def test_damaged_checkpoints_are_refused_not_crashed(tmp_path, head):
    """Random bytes behind a pickle or zip header trip torch's unpickler in many ways: each is one CheckpointError."""
    rng = random.Random(head)
    bad = tmp_path / "damaged.pyth"
    for _ in range(300):
        bad.write_bytes(head + rng.randbytes(256))
        with pytest.raises(CheckpointError, match=r"damaged\.pyth: "):
            load_model(bad)


CONFIG_DAMAGE = {  # config.json of the wrong shape, as a hand edit or another tool might leave it
    "a list": [],
    "a string for a number": {"num_frames": "eight"},
    "null size": {"image_size": None},
    "labels not keyed by index": {"id2label": {"a": "walking"}},
    "labels as a list": {"id2label": [1, 2]},
    "heads as text": {"num_attention_heads": "two"},
}


@pytest.mark.parametrize("damage", CONFIG_DAMAGE, ids=list(CONFIG_DAMAGE))
def test_damaged_hf_config_is_one_error(tmp_path, damage):
    folder = tmp_path / "hf"
    make_hf_folder(folder, "divided_space_time")
    good = json.loads((folder / "config.json").read_text())
    edit = CONFIG_DAMAGE[damage]
    (folder / "config.json").write_text(json.dumps({**good, **edit} if isinstance(edit, dict) else edit))
    with pytest.raises(CheckpointError, match=r"hf: config\.json or preprocessor_config\.json is damaged"):
        load_model(folder)


def test_hf_preprocessor_with_bad_statistics_is_refused(tmp_path):
    folder = tmp_path / "hf"
    make_hf_folder(folder, "divided_space_time")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": "0.45", "image_std": [0.2] * 3}))
    with pytest.raises(CheckpointError, match=r"hf: preprocessing in its metadata is damaged"):
        load_model(folder)


METADATA_DAMAGE = {  # our format's metadata, edited by hand or written by another tool
    "labels not a list": {"labels": '"walking"'},
    "config not an object": {"config": "[1]"},
    "preprocess not an object": {"preprocess": "[1]"},
    "unknown preprocess field": {"preprocess": '{"gamma": 2}'},
    "two numbers for a mean": {"preprocess": '{"mean": [0.5, 0.5]}'},
    "zero std": {"preprocess": '{"std": [0, 0.2, 0.2]}'},
    "text for a size": {"preprocess": '{"size": "big"}'},
    "a flip as text": {"preprocess": '{"flip_views": "horizontal"}'},
    "a flip twice": {"preprocess": '{"flip_views": ["vertical", "vertical"]}'},
}


@pytest.mark.parametrize("damage", METADATA_DAMAGE, ids=list(METADATA_DAMAGE))
def test_damaged_metadata_of_our_format_is_one_error(tmp_path, damage):
    model = TimeSformer(TimeSformerConfig(img_size=32, patch_size=16, num_frames=2, num_classes=3, embed_dim=32,
                                          depth=1, num_heads=2))
    path = save_model(model, tmp_path / "m.safetensors", labels=["a", "b", "c"])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, **METADATA_DAMAGE[damage]})
    with pytest.raises(CheckpointError, match=r"m\.safetensors: (metadata|preprocessing in its metadata)"):
        load_model(path)


def test_weights_named_right_but_shaped_wrong_are_refused(tmp_path):
    """A bad conversion: TimeSformer's names on tensors of other shapes (even empty or 0-d) is one CheckpointError."""
    model = TimeSformer(TimeSformerConfig(img_size=32, patch_size=16, num_frames=2, num_classes=3, embed_dim=32,
                                          depth=1, num_heads=2))
    good = {k: v for k, v in model.state_dict().items() if ".temporal_out." not in k}
    rng = random.Random(7)
    path = tmp_path / "misshaped.safetensors"
    for _ in range(150):
        state = dict(good)
        for key in rng.sample(sorted(state), 2):
            state[key] = torch.zeros([rng.randint(0, 4) for _ in range(rng.randint(0, 4))])
        save_file(state, str(path))
        with pytest.raises(CheckpointError, match=r"misshaped\.safetensors: "):
            load_model(path)


def test_garbage_safetensors_is_refused(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"{}" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors: not a readable safetensors"):
        load_model(bad)


def test_other_architecture_is_refused(tmp_path):
    torch.save({"model_state": {"model.conv1.weight": torch.zeros(3, 3)}}, tmp_path / "resnet.pyth")
    with pytest.raises(CheckpointError, match=r"resnet\.pyth: not a TimeSformer checkpoint"):
        load_model(tmp_path / "resnet.pyth")


def test_shape_mismatch_is_refused(hf_checkpoint, tmp_path):
    folder, hf_model = hf_checkpoint
    path = write_official_pyth(hf_model, tmp_path / "o.pyth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_state"]["model.blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"o\.pyth: weights do not fit"):
        load_model(path)


class RunsCodeOnLoad:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_that_runs_code_on_load_is_refused(tmp_path):
    path = tmp_path / "evil.pyth"
    marker = tmp_path / "ran"
    # A pickle whose loading would create a file: weights_only must refuse before anything runs.
    payload = {"model_state": {}, "x": RunsCodeOnLoad()}
    with open(path, "wb") as f:
        torch.save(payload, f)
    with pytest.raises(CheckpointError, match=r"evil\.pyth: refused: it holds Python objects"):
        load_model(path)
    evil = tmp_path / "evil2.pth"
    evil.write_bytes(pickle.dumps(subprocess_touch(marker)))
    with pytest.raises(CheckpointError, match=r"evil2\.pth"):
        load_model(evil)
    assert not marker.exists()


class subprocess_touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.path],))


def test_bad_override_names_it(hf_checkpoint):
    folder, _ = hf_checkpoint
    with pytest.raises(CheckpointError, match="unknown override 'num_layers'"):
        load_model(folder, num_layers=3)
