"""Taught actions (contract 9): new labels as extra classes beside a checkpoint's own, on its frozen features.

An adapter is one linear layer over the window's embedding (the normalised class token the checkpoint's head
reads): the taught labels' logits, put after the checkpoint's own so that one softmax covers both. The
checkpoint's logits are never touched. It is trained in that same softmax with the old logits held fixed
(:mod:`workers.training.teaching`), which is what makes a taught label's probability mean what an old label's
does: the top list, the thresholds and the events need nothing new.

The file is safetensors: the weight and bias, and as metadata the labels, the checkpoint's SHA-256 (an adapter
runs only on the checkpoint it was taught on) and its held-out check. Numpy only: the dispatcher and the web
stage read and hand adapters on without torch; :mod:`workers.heads` runs one inside a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load, save

from streamer.errors import CheckpointError

FORMAT_NAME = "timesformer-stream-adapter"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Adapter:
    """Taught labels and the layer that scores them.

    Args:
        labels: the taught labels, in class order after the checkpoint's.
        weight, bias: ``(K, D)`` and ``(K,)`` float32: logits of the taught labels from a ``(D,)`` embedding.
        checkpoint: SHA-256 of the checkpoint it was taught on (:func:`checkpoint_digest`).
        checks: per taught label, its held-out check: ``precision``, ``recall`` and ``windows`` (examples it
            was not trained on).
    """

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    checkpoint: str
    checks: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", np.ascontiguousarray(np.asarray(self.weight, np.float32)))
        object.__setattr__(self, "bias", np.ascontiguousarray(np.asarray(self.bias, np.float32)))

    @functools.cached_property
    def key(self) -> str:
        """What tells two adapters apart (its labels and weights): the workers and the dispatcher compare it."""
        digest = hashlib.sha256(json.dumps(list(self.labels)).encode())
        digest.update(self.weight.tobytes())
        digest.update(self.bias.tobytes())
        return digest.hexdigest()[:16]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(..., D)`` embeddings → ``(..., K)`` the taught labels' logits."""
        return features @ self.weight.T + self.bias

    def describe(self) -> str:
        """The labels with their held-out check, for a log line."""
        parts = []
        for label in self.labels:
            c = self.checks.get(label)
            parts.append(f"{label} (held-out precision {c['precision']:.2f}, recall {c['recall']:.2f} on "
                         f"{int(c['windows'])} windows)" if c else label)
        return ", ".join(parts) or "no labels"


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights: the file, or a Hugging Face folder's ``model.safetensors``."""
    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    stat = weights.stat()
    return _digest(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once a process per file version (a base-size checkpoint takes a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_bytes(adapter: Adapter) -> bytes:
    """The adapter as the bytes of its file."""
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "labels": json.dumps(list(adapter.labels)),
            "checkpoint_sha256": adapter.checkpoint, "checks": json.dumps(adapter.checks)}
    return save({"weight": adapter.weight, "bias": adapter.bias}, metadata=meta)


def save_adapter(adapter: Adapter, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(adapter_bytes(adapter))
    os.replace(tmp, path)  # atomic: a stage loading it never reads half a file
    return path


def load_adapter(path: str | Path, checkpoint: str | Path | None = None,
                 checkpoint_labels: list[str] | None = None) -> Adapter:
    """An adapter file, checked against the checkpoint it is to run on (its digest, and labels that would
    collide). Raises CheckpointError (one line) for anything wrong."""
    path = Path(path)
    try:
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"adapter {path}: no such file; make one with python -m workers.teach") from None
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"adapter {path}: not an adapter file ({err})") from None
    adapter = _adapter(tensors, meta, f"adapter {path}")
    check_fits(adapter, f"adapter {path}", checkpoint, checkpoint_labels)
    return adapter


def parse_adapter(data: bytes, what: str = "adapter") -> Adapter:
    """An adapter from its file's bytes (as the action store keeps them); CheckpointError if it is not one."""
    try:
        tensors = load(data)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    except (SafetensorError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{what}: not an adapter file ({err})") from None
    return _adapter(tensors, meta, what)


def _adapter(tensors: dict[str, np.ndarray], meta: dict[str, str], what: str) -> Adapter:
    if meta.get("format") != FORMAT_NAME or set(tensors) != {"weight", "bias"}:
        raise CheckpointError(f"{what}: not an adapter file (made by python -m workers.teach)")
    try:
        labels = tuple(json.loads(meta["labels"]))
        checks = json.loads(meta.get("checks", "{}"))
    except (KeyError, ValueError):
        raise CheckpointError(f"{what}: its labels are unreadable; teach it again") from None
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0] \
            or not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise CheckpointError(f"{what}: {len(labels)} labels for a {tuple(weight.shape)} weight; teach it again")
    return Adapter(labels, weight, bias, meta.get("checkpoint_sha256", ""), checks if isinstance(checks, dict) else {})


def check_fits(adapter: Adapter, what: str, checkpoint: str | Path | None = None,
               checkpoint_labels: list[str] | None = None) -> None:
    """CheckpointError (one line) unless ``adapter`` was taught on ``checkpoint`` and adds no label it has."""
    if checkpoint is not None and adapter.checkpoint != checkpoint_digest(checkpoint):
        raise CheckpointError(f"{what} was taught on another checkpoint than {checkpoint}; teach it "
                              "again on this one (python -m workers.teach --checkpoint ...)")
    clash = sorted(set(adapter.labels) & set(checkpoint_labels or ()))
    if clash:
        raise CheckpointError(f"{what}: {clash[0]!r} is a label of the checkpoint already")
