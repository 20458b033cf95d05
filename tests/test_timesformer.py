"""The TimeSformer module itself: embedding resizing, token layout, autocast and the fused fast path."""

from dataclasses import replace

import pytest
import torch

from workers.timesformer import TimeSformer, TimeSformerConfig, resize_pos_embed, resize_time_embed

SMALL = TimeSformerConfig(img_size=32, patch_size=8, num_classes=5, num_frames=4, embed_dim=32, depth=2, num_heads=2)
ATTENTION_TYPES = ["divided_space_time", "joint_space_time", "space_only"]


def small_model(attention_type: str, seed: int = 0) -> TimeSformer:
    torch.manual_seed(seed)
    model = TimeSformer(replace(SMALL, attention_type=attention_type)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_pos_embed_resize_is_legacy_nearest():
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = resize_pos_embed(pos, 6, 3)
    assert out.shape == (1, 1 + 6 * 3, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[0, 1:].reshape(4, 4, 8)
    for i in range(6):
        for j in range(3):  # legacy nearest: source index floor(dst * in / out)
            assert torch.equal(out[0, 1 + i * 3 + j], grid[(i * 4) // 6, (j * 4) // 3])


def test_time_embed_resize_is_legacy_nearest():
    time = torch.randn(1, 8, 5)
    out = resize_time_embed(time, 3)
    assert out.shape == (1, 3, 5)
    for t in range(3):
        assert torch.equal(out[0, t], time[0, (t * 8) // 3])
    assert resize_time_embed(time, 8) is time


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("T,H,W", [(6, 32, 32), (4, 48, 24), (2, 16, 40)])
def test_other_input_sizes_use_resized_embeddings(attention_type, T, H, W):
    """A model fed another T×H×W equals a model built for that size with the resized embeddings."""
    model = small_model(attention_type)
    x = torch.randn(2, 3, T, H, W)
    reference = TimeSformer(replace(model.config, img_size=max(H, W), num_frames=T)).eval()
    state = dict(model.state_dict())
    state["pos_embed"] = resize_pos_embed(model.pos_embed, H // 8, W // 8)
    if "time_embed" in state:
        state["time_embed"] = resize_time_embed(model.time_embed, T)
    with torch.no_grad():
        ours = model(x)
        if H == W:
            reference.load_state_dict(state)
            torch.testing.assert_close(ours, reference(x), atol=1e-5, rtol=1e-5)
    assert ours.shape == (2, 5) and torch.isfinite(ours).all()


def test_divided_attention_takes_frames_from_input_not_config():
    """Temporal attention over the real T: frames beyond the trained count change the output."""
    model = small_model("divided_space_time")
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        full = model(x)
        x2 = x.clone()
        x2[:, :, 7] += 1.0   # only the last of 8 frames changes
        assert not torch.allclose(model(x2), full)


def test_cls_token_has_no_time_embedding():
    model = small_model("divided_space_time")
    tokens, B, T = model.embed(torch.randn(1, 3, 4, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(tokens[0, 0], (model.cls_token + model.pos_embed[:, :1])[0, 0])
    assert tokens.shape == (1, 1 + 16 * 4, 32)  # [cls] + (h w t)


def test_token_order_is_patch_major_time_fastest():
    model = small_model("joint_space_time")
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        tokens, _, _ = model.embed(x)
        patches = model.patch_embed(x)[0]           # (T, N, D)
        expected = patches[2, 5] + model.pos_embed[0, 1 + 5] + model.time_embed[0, 2]
    torch.testing.assert_close(tokens[0, 1 + 5 * 4 + 2], expected)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_runs_correctly_under_autocast(attention_type):
    model = small_model(attention_type)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, atol=0.1, rtol=0.1)


def test_fused_temporal_projection_is_exact_in_fp32():
    model = small_model("divided_space_time")
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        exact = model(x)
        fused = model.fuse()(x)
    torch.testing.assert_close(fused, exact, atol=1e-5, rtol=1e-5)


def test_training_gradients_reach_every_parameter():
    model = small_model("divided_space_time").train()
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_folded_normalisation_takes_raw_pixels_to_the_same_logits(attention_type):
    from workers.preprocess import fold_normalisation, to_model_input, to_raw_input

    model = small_model(attention_type)
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    mean, std = (0.45, 0.40, 0.35), (0.225, 0.25, 0.2)
    with torch.no_grad():
        expected = model(to_model_input(frames, mean, std))
        fold_normalisation(model, mean, std)
        folded = model(to_raw_input(frames))
    torch.testing.assert_close(folded, expected, atol=1e-4, rtol=1e-4)
