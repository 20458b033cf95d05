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
