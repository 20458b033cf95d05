"""uint8 windows → normalised float model input, on whatever device the model lives."""

import torch


def to_model_input(frames: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Turn a batch of RGB uint8 windows into the float tensor the model takes.

    Args:
        frames: (B, T, H, W, 3) uint8, RGB, on the model's device.
        mean, std: per-channel statistics in 0..1 pixel units (the checkpoint's preprocessing).
    Returns:
        (B, 3, T, H, W) float32, ``(pixel / 255 - mean) / std``.
    """
    x = frames.permute(0, 4, 1, 2, 3).float()  # (B, 3, T, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1) * 255.0
    return ((x - mean_t) / std_t).contiguous()


@torch.no_grad()
def fold_normalisation(model: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Make ``model`` take raw 0..255 RGB: ``(x / 255 - mean) / std`` folded into ``patch_embed.proj``.

    The patch embedding is a convolution without padding, so for every output
    ``W·((x/255 - m)/s) + b = (W / (255 s))·x + (b - Σ W·m/s)``: exact up to rounding, and the
    worker no longer makes two full passes over every window to normalise it.
    """
    proj = model.patch_embed.proj
    std_t = torch.tensor(std, dtype=torch.float64, device=proj.weight.device)
    mean_t = torch.tensor(mean, dtype=torch.float64, device=proj.weight.device)
    weight = proj.weight.double()                                             # (D, 3, p, p)
    bias = proj.bias.double() - (weight.sum(dim=(2, 3)) * (mean_t / std_t)).sum(dim=1)
    proj.weight.copy_((weight / (255.0 * std_t).view(1, -1, 1, 1)).to(proj.weight.dtype))
    proj.bias.copy_(bias.to(proj.bias.dtype))


def to_raw_input(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 → (B, 3, T, H, W) float 0..255, for a model with the normalisation folded in."""
    return frames.permute(0, 4, 1, 2, 3).float()

