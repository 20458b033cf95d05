"""Taught actions (contract 9): new labels as extra classes beside a checkpoint's own, on its frozen features.

An adapter is one linear layer over the window's embedding (the normalised class token the checkpoint's head
reads): the taught labels' logits, put after the checkpoint's own so that one softmax covers both. The
checkpoint's logits are never touched. It is trained in that same softmax with the old logits held fixed
(:mod:`workers.training.teaching`), which is what makes a taught label's probability mean what an old label's
does: the top list, the thresholds and the events need nothing new.

A linear layer alone lets a taught label take windows of old actions that its few examples happen to point
towards (the demo's taught "bouncing" takes shots of shapes blinking at different heights). So the adapter also
keeps the rows it was taught on, normalised (its examples and the negatives, by class: ``neighbours``), and a
taught label keeps its logit only where at least ``AGREE`` of a window's ``NEIGHBOURS`` nearest rows (cosine) are
its own examples; elsewhere its logit is ``VETOED``. Measured in BENCHMARKS.md ("the neighbours' vote").

The file is safetensors: the weight and bias (and the neighbours, float16), and as metadata the labels, the
checkpoint's SHA-256 (an adapter runs only on the checkpoint it was taught on), its held-out check and how many
neighbours each class has. Numpy only: the dispatcher and the web stage read and hand adapters on without torch;
:mod:`workers.heads` runs one inside a model.
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
FORMAT_VERSION = "2"  # 2: the neighbours (version 1 files, without them, still load: no vote)
NEIGHBOURS = 10  # the nearest taught-on rows that vote on a window's taught labels
AGREE = 0.7  # the share of them that must be a label's own examples for it to keep its logit
VETOED = -1e4  # a voted-down label's logit: no probability left (finite, for float16 and any softmax)
MAX_NEIGHBOURS = 4096  # rows kept a class (each taught label, the negatives): a few MB for a base-size model


@dataclass(frozen=True)
class Adapter:
    """Taught labels and the layer that scores them.

    Args:
        labels: the taught labels, in class order after the checkpoint's.
        weight, bias: ``(K, D)`` and ``(K,)`` float32: logits of the taught labels from a ``(D,)`` embedding.
        checkpoint: SHA-256 of the checkpoint it was taught on (:func:`checkpoint_digest`).
        checks: per taught label, its held-out check: ``precision``, ``recall`` and ``windows`` (examples it
            was not trained on).
        neighbours: ``(N, D)`` float16 unit rows it was taught on, by class: the negatives first, then each
            taught label's examples in label order (``neighbour_counts`` says how many of each). None: no vote.
        neighbour_counts: ``K + 1`` counts: the negatives', then each label's.
    """

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    checkpoint: str
    checks: dict[str, dict[str, float]] = field(default_factory=dict)
    neighbours: np.ndarray | None = None
    neighbour_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", np.ascontiguousarray(np.asarray(self.weight, np.float32)))
        object.__setattr__(self, "bias", np.ascontiguousarray(np.asarray(self.bias, np.float32)))
        if self.neighbours is not None:
            object.__setattr__(self, "neighbours", np.ascontiguousarray(np.asarray(self.neighbours, np.float16)))
            object.__setattr__(self, "neighbour_counts", tuple(int(n) for n in self.neighbour_counts))

    @functools.cached_property
    def key(self) -> str:
        """What tells two adapters apart (its labels and weights): the workers and the dispatcher compare it."""
        digest = hashlib.sha256(json.dumps(list(self.labels)).encode())
        digest.update(self.weight.tobytes())
        digest.update(self.bias.tobytes())
        if self.neighbours is not None:
            digest.update(json.dumps(self.neighbour_counts).encode())
            digest.update(self.neighbours.tobytes())
        return digest.hexdigest()[:16]

    @functools.cached_property
    def _vote(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The neighbours as float32 rows, each row's class (-1: a negative), and how many of a window's
        ``NEIGHBOURS`` nearest each label needs (``AGREE`` of as many as it has, if fewer): once an adapter."""
        if self.neighbours is None or len(self.neighbours) < NEIGHBOURS:
            return None
        classes = np.repeat(np.arange(-1, len(self.neighbour_counts) - 1), self.neighbour_counts)
        needed = np.ceil(AGREE * np.minimum(NEIGHBOURS, self.neighbour_counts[1:]) - 1e-6)
        return self.neighbours.astype(np.float32), classes, needed

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(..., D)`` embeddings → ``(..., K)`` the taught labels' logits, each ``VETOED`` where fewer than
        ``AGREE`` of the row's nearest neighbours are that label's examples (of as many as it has, if fewer)."""
        features = np.asarray(features, np.float32)
        logits = features @ self.weight.T + self.bias
        if self._vote is None or not self.labels:
            return logits
        rows, classes, needed = self._vote
        flat = features.reshape(-1, features.shape[-1])
        near = np.argpartition(-(flat @ rows.T), NEIGHBOURS - 1, axis=1)[:, :NEIGHBOURS]  # cosine: rows are unit
        votes = (classes[near][:, :, None] == np.arange(len(self.labels))).sum(axis=1)  # (M, K) rows of each label
        keep = (votes >= needed).reshape(logits.shape)
        return np.where(keep, logits, np.float32(VETOED)).astype(np.float32)

    def describe(self) -> str:
        """The labels with their held-out check, for a log line."""
        parts = []
        for label in self.labels:
            c = self.checks.get(label)
            parts.append(f"{label} (held-out precision {c['precision']:.2f}, recall {c['recall']:.2f} on "
                         f"{int(c['windows'])} windows)" if c else label)
        return ", ".join(parts) or "no labels"


def neighbours_from(features: np.ndarray, classes: np.ndarray, labels: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The rows a layer was taught on as an adapter's neighbours: ``features`` ``(N, D)`` made unit, grouped by
    ``classes`` (-1: a negative, then each of ``labels``), at most ``MAX_NEIGHBOURS`` of each, evenly spread."""
    features = np.asarray(features, np.float32)
    unit = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    parts = []
    for cls in range(-1, labels):
        rows = unit[classes == cls]
        if len(rows) > MAX_NEIGHBOURS:
            rows = rows[np.linspace(0, len(rows) - 1, MAX_NEIGHBOURS).round().astype(int)]
        parts.append(rows)
    return np.concatenate(parts).astype(np.float16), tuple(len(rows) for rows in parts)


def neighbour_groups(adapter: Adapter) -> list[np.ndarray]:
    """An adapter's neighbours by class: the negatives', then each label's (empty without neighbours)."""
    if adapter.neighbours is None:
        return [np.zeros((0, adapter.weight.shape[1]), np.float16) for _ in range(len(adapter.labels) + 1)]
    return np.split(adapter.neighbours, np.cumsum(adapter.neighbour_counts)[:-1])


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
    tensors = {"weight": adapter.weight, "bias": adapter.bias}
    if adapter.neighbours is not None:
        tensors["neighbours"] = adapter.neighbours
        meta["neighbour_counts"] = json.dumps(list(adapter.neighbour_counts))
    return save(tensors, metadata=meta)


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
    if meta.get("format") != FORMAT_NAME or set(tensors) - {"neighbours"} != {"weight", "bias"}:
        raise CheckpointError(f"{what}: not an adapter file (made by python -m workers.teach)")
    try:
        labels = tuple(json.loads(meta["labels"]))
        checks = json.loads(meta.get("checks", "{}"))
        counts = tuple(json.loads(meta.get("neighbour_counts", "[]")))
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{what}: its labels are unreadable; teach it again") from None
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0] \
            or not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise CheckpointError(f"{what}: {len(labels)} labels for a {tuple(weight.shape)} weight; teach it again")
    neighbours = tensors.get("neighbours")
    problem = neighbour_problem(neighbours, counts, len(labels), weight.shape[1])
    if problem:
        raise CheckpointError(f"{what}: {problem}; teach it again")
    return Adapter(labels, weight, bias, meta.get("checkpoint_sha256", ""), checks if isinstance(checks, dict) else {},
                   neighbours, counts)


def neighbour_problem(neighbours: np.ndarray | None, counts: tuple, labels: int, width: int) -> str:
    """What is wrong with an adapter's neighbours (a file's, a message's), or "" when nothing is."""
    if neighbours is None:
        return "neighbour counts without their rows" if counts else ""
    if neighbours.ndim != 2 or neighbours.shape[1] != width or neighbours.dtype != np.float16:
        return f"its neighbours are not float16 rows of {width} values"
    if len(counts) != labels + 1 or not all(isinstance(n, int) and 0 <= n <= MAX_NEIGHBOURS for n in counts) \
            or sum(counts) != len(neighbours):
        return f"{len(neighbours)} neighbours do not match their counts by class"
    if not np.isfinite(neighbours).all():
        return "its neighbours are not all finite"
    return ""


def check_fits(adapter: Adapter, what: str, checkpoint: str | Path | None = None,
               checkpoint_labels: list[str] | None = None) -> None:
    """CheckpointError (one line) unless ``adapter`` was taught on ``checkpoint`` and adds no label it has."""
    if checkpoint is not None and adapter.checkpoint != checkpoint_digest(checkpoint):
        raise CheckpointError(f"{what} was taught on another checkpoint than {checkpoint}; teach it "
                              "again on this one (python -m workers.teach --checkpoint ...)")
    clash = sorted(set(adapter.labels) & set(checkpoint_labels or ()))
    if clash:
        raise CheckpointError(f"{what}: {clash[0]!r} is a label of the checkpoint already")
