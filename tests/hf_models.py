"""Small Hugging Face TimeSformer checkpoints made by the tests, and an official-format twin of each."""

from pathlib import Path

import torch

from workers.model import hf_to_official


def make_hf_folder(folder: Path, attention_type: str, *, num_labels: int = 7, image_size: int = 32,
                   patch_size: int = 8, num_frames: int = 4, hidden_size: int = 64, layers: int = 2,
                   heads: int = 4, seed: int = 0):
    """Save a random-weight ``TimesformerForVideoClassification`` with ``save_pretrained``; return the HF model."""
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    torch.manual_seed(seed)
    config = TimesformerConfig(
        image_size=image_size, patch_size=patch_size, num_frames=num_frames, hidden_size=hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden_size * 4,
        attention_type=attention_type, num_labels=num_labels,
        id2label={i: f"action {i}" for i in range(num_labels)},
        label2id={f"action {i}": i for i in range(num_labels)},
    )
    model = TimesformerForVideoClassification(config).eval()
    with torch.no_grad():  # HF initialises these to zero or constants: randomise so parity means something
        for name, p in model.named_parameters():
            if "layernorm" in name or "embeddings" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def write_official_pyth(hf_model, path: Path, *, training_extras: bool = True) -> Path:
    """Write the HF weights as an official TimeSformer checkpoint: ``model_state`` with ``model.`` keys."""
    state = hf_to_official({k: v.clone() for k, v in hf_model.state_dict().items()})
    ckpt = {"model_state": {f"model.{k}": v for k, v in state.items()}, "epoch": 15}
    if training_extras:
        ckpt["optimizer_state"] = {"state": {}, "param_groups": [{"lr": 0.005, "params": [0, 1]}]}
        ckpt["cfg"] = "TRAIN:\n  ENABLE: True\n"
    torch.save(ckpt, path)
    return path


def hf_logits(hf_model, x: torch.Tensor) -> torch.Tensor:
    """HF logits for our (B, 3, T, H, W) input, made comparable for every attention type.

    HF takes (B, T, 3, H, W). For space-only it classifies every frame separately; the official
    model averages the frames' hidden states before the final norm, so we do that from HF's encoder.
    """
    pixels = x.permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        if hf_model.config.attention_type != "space_only":
            return hf_model(pixel_values=pixels).logits
        core = hf_model.timesformer
        hidden = core.encoder(core.embeddings(pixels)).last_hidden_state   # (B·T, 1+N, D)
        B, T = x.shape[0], x.shape[2]
        hidden = hidden.reshape(B, T, *hidden.shape[1:]).mean(dim=1)        # (B, 1+N, D)
        return hf_model.classifier(core.layernorm(hidden)[:, 0])
