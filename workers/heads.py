"""Heads a worker puts on a TimeSformer: the checkpoint's logits and the window's embedding out of one forward
(:class:`FeaturesHead`), or the checkpoint's head with an adapter's labels beside it (:class:`AdaptedHead`)."""

from __future__ import annotations

import torch
from torch import nn

from streamer.errors import CheckpointError
from workers.adapter import Adapter


class FeaturesHead(nn.Module):
    """``[head(f), f]``: the checkpoint's logits, untouched, followed by the embedding ``f`` they came from.

    One output tensor, so every runtime (torch, OpenVINO, int8) carries it as it carries logits; the worker
    splits it (:func:`split`) and scores taught labels on the embedding without converting anything again.
    """

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(features), features.to(self.head.weight.dtype)], dim=-1)


def with_features(model: nn.Module) -> nn.Module:
    """``model`` answering ``[logits, embedding]`` (see :class:`FeaturesHead`); its labels stay the checkpoint's."""
    model.head = FeaturesHead(model.head)
    return model


class AdaptedHead(nn.Module):
    """The checkpoint's head and an adapter side by side: ``[head(f), adapter(f)]`` (the adapter's logits as
    :meth:`Adapter.logits` makes them, its neighbours' vote included, as a worker does)."""

    def __init__(self, head: nn.Linear, adapter: Adapter) -> None:
        super().__init__()
        self.head = head
        self.adapter = adapter

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        taught = torch.from_numpy(self.adapter.logits(features.detach().float().cpu().numpy()))
        return torch.cat([self.head(features), taught.to(features.device, self.head.weight.dtype)], dim=-1)


def adapt(model: nn.Module, adapter: Adapter) -> nn.Module:
    """``model`` (a TimeSformer with ``labels``) with the adapter's labels added after its own; its own
    logits are unchanged (computed by the same head)."""
    if adapter.weight.shape[1] != model.head.in_features:
        raise CheckpointError(f"adapter for {adapter.weight.shape[1]}-wide features on a "
                              f"{model.head.in_features}-wide checkpoint; teach it again on this one")
    model.head = AdaptedHead(model.head, adapter)
    model.labels = [*(model.labels or [str(i) for i in range(model.head.head.out_features)]), *adapter.labels]
    return model
