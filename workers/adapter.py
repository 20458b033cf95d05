"""Taught actions (contract 9): new labels as extra classes beside a checkpoint's own, on its frozen features.

An adapter is one linear layer over the window's embedding (the normalised class token the checkpoint's head
reads). :class:`AdaptedHead` puts it beside that head: the checkpoint's logits are computed by the same layer
as before, untouched, and the taught labels' logits follow them, so one softmax covers both. The adapter is
trained in that same softmax with the old logits held fixed (:func:`fit`), which is what makes a taught
label's probability mean what an old label's does: the top list, the thresholds and the events need nothing new.

The file is safetensors: the weight and bias, and as metadata the labels, the checkpoint's SHA-256 (an adapter
runs only on the checkpoint it was taught on) and its held-out check.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from streamer.errors import CheckpointError

FORMAT_NAME = "timesformer-stream-adapter"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Adapter:
    """Taught labels and the layer that scores them.

    Args:
        labels: the taught labels, in class order after the checkpoint's.
        weight, bias: ``(K, D)`` and ``(K,)``: logits of the taught labels from a ``(D,)`` embedding.
        checkpoint: SHA-256 of the checkpoint it was taught on (:func:`checkpoint_digest`).
        checks: per taught label, its held-out check: ``precision``, ``recall`` and ``windows`` (examples it
            was not trained on).
    """

    labels: tuple[str, ...]
    weight: torch.Tensor
    bias: torch.Tensor
    checkpoint: str
    checks: dict[str, dict[str, float]] = field(default_factory=dict)

    def describe(self) -> str:
        """The labels with their held-out check, for a log line."""
        parts = []
        for label in self.labels:
            c = self.checks.get(label)
            parts.append(f"{label} (held-out precision {c['precision']:.2f}, recall {c['recall']:.2f} on "
                         f"{int(c['windows'])} windows)" if c else label)
        return ", ".join(parts)


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights: the file, or a Hugging Face folder's ``model.safetensors``."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_adapter(adapter: Adapter, path: str | Path) -> Path:
    path = Path(path)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "labels": json.dumps(list(adapter.labels)),
            "checkpoint_sha256": adapter.checkpoint, "checks": json.dumps(adapter.checks)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({"weight": adapter.weight.detach().float().contiguous().cpu(),
               "bias": adapter.bias.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a worker loading it never reads half a file
    return path


def load_adapter(path: str | Path, checkpoint: str | Path | None = None,
                 checkpoint_labels: list[str] | None = None) -> Adapter:
    """An adapter file, checked against the checkpoint it is to run on (its digest, and labels that would
    collide). Raises CheckpointError (one line) for anything wrong."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"adapter {path}: no such file; make one with python -m workers.teach") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"adapter {path}: not an adapter file ({err})") from None
    if meta.get("format") != FORMAT_NAME or set(tensors) != {"weight", "bias"}:
        raise CheckpointError(f"adapter {path}: not an adapter file (made by python -m workers.teach)")
    try:
        labels = tuple(json.loads(meta["labels"]))
        checks = json.loads(meta.get("checks", "{}"))
    except (KeyError, ValueError):
        raise CheckpointError(f"adapter {path}: its labels are unreadable; teach it again") from None
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0]:
        raise CheckpointError(f"adapter {path}: {len(labels)} labels for a {tuple(weight.shape)} weight; teach it again")
    adapter = Adapter(labels, weight, bias, meta.get("checkpoint_sha256", ""), checks)
    if checkpoint is not None and adapter.checkpoint != checkpoint_digest(checkpoint):
        raise CheckpointError(f"adapter {path} was taught on another checkpoint than {checkpoint}; teach it "
                              "again on this one (python -m workers.teach --checkpoint ...)")
    clash = sorted(set(labels) & set(checkpoint_labels or ()))
    if clash:
        raise CheckpointError(f"adapter {path}: {clash[0]!r} is a label of the checkpoint already")
    return adapter


class AdaptedHead(nn.Module):
    """The checkpoint's head and the adapter side by side: ``[head(f), adapter(f)]``."""

    def __init__(self, head: nn.Linear, adapter: Adapter) -> None:
        super().__init__()
        self.head = head
        self.taught = nn.Linear(adapter.weight.shape[1], len(adapter.labels))
        with torch.no_grad():
            self.taught.weight.copy_(adapter.weight)
            self.taught.bias.copy_(adapter.bias)
        self.taught.to(head.weight.device, head.weight.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(features), self.taught(features)], dim=-1)


def adapt(model: nn.Module, adapter: Adapter) -> nn.Module:
    """``model`` (a TimeSformer with ``labels``) with the adapter's labels added after its own; its own
    logits are unchanged (computed by the same head)."""
    if adapter.weight.shape[1] != model.head.in_features:
        raise CheckpointError(f"adapter for {adapter.weight.shape[1]}-wide features on a "
                              f"{model.head.in_features}-wide checkpoint; teach it again on this one")
    model.head = AdaptedHead(model.head, adapter)
    model.labels = [*(model.labels or [str(i) for i in range(model.head.head.out_features)]), *adapter.labels]
    return model
