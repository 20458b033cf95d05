"""Flip views: a window's prediction averaged with those of its mirror images (test-time augmentation).

A mirror image of a clip shows the mirrored action: moving left becomes moving right under a
horizontal flip, clockwise becomes anticlockwise under either flip. The model is asked about
each flipped copy, its answer is mapped back through that relabelling, and the views' class
probabilities are averaged. For the demo model two flips add 1.7 points of top-1 (93.9% → 95.6%)
for three times the compute. Which label a flip turns into which is read from the labels' own words
(left/right, up/down, clockwise/anticlockwise); a label without such a word is its own mirror.
Vertical flips suit only scenes without gravity: people do not climb down when a video of them
climbing is turned upside down.
"""

from __future__ import annotations

import torch

from workers.flips import FLIPS, mirror_map


class FlipViews:
    """Class probabilities of a batch, averaged over the clip and its ``flips`` (one forward for all views)."""

    def __init__(self, labels: list[str], flips: tuple[str, ...] = (), device: str | torch.device = "cpu") -> None:
        self.flips = tuple(flips)
        self.maps = [torch.as_tensor(mirror_map(labels, flip), device=device) for flip in self.flips]

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, T, H, W) model input → (B, classes) float32 probabilities."""
        return self.average(model(self.stack(x)).float().softmax(dim=-1))

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (V·B, ...): the clips, then each flip of them (one forward for all views)."""
        return torch.cat([x, *(x.flip(FLIPS[flip][0]) for flip in self.flips)]) if self.flips else x

    def average_windows(self, probs: torch.Tensor) -> torch.Tensor:
        """Like :meth:`average`, for rows that are window-major (each window's views adjacent, as
        :func:`workers.training.teaching.embed` and the kept embeddings hold them): (B·V, classes) or (B, V, classes)."""
        views = len(self.flips) + 1
        probs = probs.reshape(-1, views, probs.shape[-1])
        return self.average(probs.transpose(0, 1).reshape(-1, probs.shape[-1]))

    def average(self, probs: torch.Tensor) -> torch.Tensor:
        """(V·B, classes) probabilities of :meth:`stack`'s views → (B, classes), each mirror's mapped back."""
        if not self.flips:
            return probs
        probs = probs.view(len(self.flips) + 1, -1, probs.shape[-1])
        total = probs[0].clone()
        for view, index in zip(probs[1:], self.maps):
            total += view[:, index]  # P(class c) = P(the mirror shows map[c])
        return total / (len(self.flips) + 1)
