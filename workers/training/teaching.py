"""Teaching new labels from a few examples (contract 9): windows → embeddings → an :class:`~workers.adapter.Adapter`.

The backbone runs once over each example window (and its flip views, which the pipeline averages in) and is
never trained. :func:`fit` then trains the taught labels' layer in the softmax it will run in: beside the
checkpoint's own logits, held fixed. A window of a taught label should win that softmax; any other window
(the ``none`` examples, windows marked wrong, the other taught labels' examples) should keep the distribution
the checkpoint gives it, so the taught labels take probability only where they are seen. That is what makes
their scores comparable with the old labels' under the same thresholds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from streamer.errors import SourceError
from workers.adapter import Adapter, neighbour_groups, neighbours_from
from workers.flips import FLIPS
from workers.preprocess import to_model_input
from workers.training.data import WindowSpec, read_frames, window_ends, window_indices
from workers.views import FlipViews

if TYPE_CHECKING:
    from workers.model import CheckpointHead

NONE = "none"  # the folder (and label) of examples of nothing new: negatives
WINDOWS_PER_CLIP = 24  # at most, evenly spread: a long clip adds little a short one does not


@dataclass(frozen=True)
class Examples:
    """Embeddings of example windows, each view its own row.

    Args:
        features: ``(N, D)`` the normalised class tokens.
        logits: ``(N, C)`` the checkpoint's own logits for them.
        targets: ``(N,)`` the taught label's index, or -1 for a negative.
        groups: ``(N,)`` which example (clip or span) each row came from: a held-out check leaves whole ones out.
    """

    features: torch.Tensor
    logits: torch.Tensor
    targets: np.ndarray
    groups: np.ndarray

    def subset(self, keep: np.ndarray) -> Examples:
        index = torch.from_numpy(np.flatnonzero(keep))
        return Examples(self.features[index], self.logits[index], self.targets[keep], self.groups[keep])


@torch.inference_mode()
def embed(model: torch.nn.Module, frames: np.ndarray, flips: tuple[str, ...] = (), batch: int = 32
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``(N, T, H, W, 3)`` uint8 → (features ``(N·V, D)``, the checkpoint's logits ``(N·V, C)``), V being
    1 + the flip views: each window, then each of its mirror images (one row each)."""
    pre = model.preprocess
    features, logits = [], []
    for start in range(0, len(frames), batch):
        x = to_model_input(torch.from_numpy(frames[start:start + batch]), pre.mean, pre.std)
        views = [model.forward_features(v).float() for v in (x, *(x.flip(FLIPS[flip][0]) for flip in flips))]
        f = torch.stack(views, dim=1).flatten(0, 1)  # window-major: a window's views are adjacent rows
        features.append(f)
        logits.append(model.head(f).float())
    return torch.cat(features), torch.cat(logits)


def by_window(features: torch.Tensor, views: int) -> np.ndarray:
    """Rows of :func:`embed` (each window's ``views`` adjacent) as the store keeps them: ``(windows, views,
    width)``."""
    return features.numpy().reshape(len(features) // views, views, -1)


def clip_windows(path: Path, size: int, spec: WindowSpec) -> np.ndarray:
    """The pipeline's windows over a clip (``(n, T, size, size, 3)`` uint8), at most WINDOWS_PER_CLIP; SourceError
    for a clip that is not a video or is shorter than one window."""
    frames = read_frames(path, size)
    ends = window_ends(len(frames), spec)
    if not ends:
        raise SourceError(f"{path}: {len(frames)} frame(s), fewer than one window spans "
                          f"({spec.span}); give a longer clip")
    if len(ends) > WINDOWS_PER_CLIP:
        ends = [ends[round(i)] for i in np.linspace(0, len(ends) - 1, WINDOWS_PER_CLIP)]
    frames = np.stack(frames)
    return np.stack([frames[window_indices(end, spec)] for end in ends])


def embed_clip(model: torch.nn.Module, path: Path, hop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip's windows, read with the checkpoint's own sampling (every ``hop`` frames; by default its frame
    interval), through :func:`embed`."""
    pre = model.preprocess
    spec = WindowSpec(pre.num_frames, pre.frame_interval, hop or max(1, pre.frame_interval))
    return embed(model, clip_windows(path, pre.size, spec), pre.flip_views)


FALSE_TOP = 0.01  # the share of unseen negative windows a taught label may still win (see :func:`fit`): about the
                  # points of the old labels' accuracy it costs; 0.005 finds too few (BENCHMARKS.md, "Taught actions")
CALIBRATION_FOLDS = 5  # negatives cut into this many runs of windows when they are one example


def fit(examples: Examples, labels: tuple[str, ...], checkpoint: str, *, decay: float = 1e-4,
        steps: int = 200, false_top: float | None = FALSE_TOP) -> Adapter:
    """The taught labels' layer, trained in the softmax beside the checkpoint's fixed logits (L-BFGS, full
    batch: a few thousand rows train in well under a second).

    Each taught label and the negatives weigh the same in the loss, however many windows each has. That
    balance suits the examples, not a stream, where a taught action is rare and the negatives it will meet are
    more varied than a few clips: trained alone, a label wins 5-25% of the windows of ordinary actions it was
    not shown. So each label's bias is then lowered (never raised) until it wins the top-1 on no more than
    ``false_top`` of the negative rows *it was not trained on*: the negatives are left out an example at a
    time (or, when they are one example, a run of windows at a time), the layer trained without them scores
    them, and the bias takes the ``1 - false_top`` quantile of how far the label beat the checkpoint's best logit
    there. ``false_top=None`` (or too few negatives) skips it. The weight decay is low, so that the layer
    is sharp: a window far from the examples scores far below them, and lowering the bias costs the
    examples' own windows little.
    """
    weight, bias = _train(examples, len(labels), decay, steps)
    if false_top is not None:
        bias = bias - _calibration(examples, len(labels), decay, steps, false_top)
    neighbours, counts = neighbours_from(examples.features.numpy(), examples.targets, len(labels))
    return Adapter(tuple(labels), weight.numpy(), bias.numpy(), checkpoint, {}, neighbours, counts)


def _train(examples: Examples, k: int, decay: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    f, old = examples.features, examples.logits
    targets = torch.from_numpy(examples.targets)
    weights = torch.zeros(len(f))
    for cls in range(-1, k):
        members = targets == cls
        if members.any():
            weights[members] = 1.0 / members.sum()
    weights /= weights.sum()
    # the taught part of each row's target: one-hot for its label, nothing for a negative; the old part:
    # the checkpoint's own distribution for a negative, nothing for a taught window
    wanted_new = torch.zeros(len(f), k)
    positive = targets >= 0
    wanted_new[positive, targets[positive]] = 1.0
    wanted_old = torch.where(positive[:, None], torch.zeros_like(old), old.softmax(-1))
    start = _centroid_init(f, targets, k)
    weight = start[0].clone().requires_grad_(True)
    bias = start[1].clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        optimiser.zero_grad()
        log_p = torch.cat([old, f @ weight.T + bias], dim=1).log_softmax(dim=1)
        loss = -(weights[:, None] * torch.cat([wanted_old, wanted_new], dim=1) * log_p).sum()
        loss = loss + decay * (weight ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(loss_fn)
    return weight.detach(), bias.detach()


def _calibration(examples: Examples, k: int, decay: float, steps: int, false_top: float) -> torch.Tensor:
    """``(k,)`` how far to lower each label's bias (≥ 0): see :func:`fit`."""
    negative = np.flatnonzero(examples.targets < 0)
    groups = np.unique(examples.groups[negative])
    if len(groups) >= 3:
        folds = [negative[examples.groups[negative] == g] for g in groups]
    elif len(negative) >= 2 * CALIBRATION_FOLDS:  # one example of negatives: runs of its windows (view rows kept
        folds = np.array_split(negative, CALIBRATION_FOLDS)  # together but for a run's edge)
    else:
        return torch.zeros(k)
    margins = []
    for fold in folds:
        keep = np.ones(len(examples.targets), bool)
        keep[fold] = False
        weight, bias = _train(examples.subset(keep), k, decay, steps)
        index = torch.from_numpy(fold)
        new = examples.features[index] @ weight.T + bias  # (n, k)
        best_old = examples.logits[index].max(dim=1, keepdim=True).values
        margins.append(new - best_old)  # > 0: the label would win this row's top-1 (beside the old labels)
    quantile = torch.quantile(torch.cat(margins), 1.0 - false_top, dim=0)
    return quantile.clamp(min=0.0)


def _centroid_init(f: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A start: each label's weight points from the mean of all rows to its own mean; biases low."""
    centre = f.mean(0)
    weight = torch.stack([(f[targets == c].mean(0) - centre) if (targets == c).any() else torch.zeros_like(centre)
                          for c in range(k)])
    return weight, torch.full((k,), -5.0)


def check(adapter: Adapter, held_out: Examples, names: list[str], flips: tuple[str, ...]
          ) -> dict[str, dict[str, float]]:
    """Precision and recall of each taught label on windows it was not trained on, each window's views averaged
    as the pipeline averages them (the softmax over the checkpoint's and the taught labels together, each mirror
    image's classes mapped back). ``names``: the labels of ``held_out.logits``' columns; ``flips``: its views."""
    old_classes, views = held_out.logits.shape[1], 1 + len(flips)
    logits = torch.cat([held_out.logits, torch.from_numpy(adapter.logits(held_out.features.numpy()))], dim=1)
    probs = FlipViews([*names, *adapter.labels], flips).average_windows(logits.softmax(-1))  # rows: see embed
    predicted = probs.argmax(1).numpy() - old_classes  # ≥ 0: a taught label
    truth = held_out.targets.reshape(-1, views)[:, 0]
    out = {}
    for cls, label in enumerate(adapter.labels):
        said, real = predicted == cls, truth == cls
        out[label] = {"precision": float((said & real).sum() / max(1, said.sum())),
                      "recall": float((said & real).sum() / max(1, real.sum())), "windows": float(real.sum())}
    return out


def rows(windows: np.ndarray, head: CheckpointHead, current: Adapter | None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept windows' embeddings ``(N, V, D)`` → (features ``(N·V, D)``, logits ``(N·V, C + K)``): the checkpoint's
    head and the taught labels already in force, the logits a new label is trained beside."""
    f = torch.from_numpy(np.ascontiguousarray(windows, np.float32).reshape(-1, windows.shape[-1]))
    logits = f @ torch.from_numpy(head.weight).T + torch.from_numpy(head.bias)
    if current is not None and current.labels:
        logits = torch.cat([logits, torch.from_numpy(current.logits(f.numpy()))], dim=1)
    return f, logits


def teach_label(label: str, examples: list[np.ndarray], negatives: np.ndarray, head: CheckpointHead,
                current: Adapter | None, checkpoint: str) -> Adapter:
    """``current`` with ``label`` taught (or taught again) from kept windows: ``examples``, one ``(N, V, D)`` array
    of embeddings per example (a span, an action), and ``negatives`` ``(M, V, D)``. The other taught labels keep
    their rows; the new one is trained beside them and the checkpoint's, held fixed (:func:`fit`). Every fourth
    example (with one example: the last quarter of its windows) and every fourth negative are held out to check
    it first."""
    if current is not None and label in current.labels:
        current = without(current, label)
    views = examples[0].shape[1]
    parts, held = [], []
    for number, windows in enumerate(examples):
        out = np.zeros(len(windows), bool)
        if len(examples) == 1:
            out[len(windows) - max(1, len(windows) // 4):] = len(windows) > 1
        else:
            out[:] = number % 4 == 3 or (len(examples) < 4 and number == len(examples) - 1)
        parts.append((windows, np.zeros(len(windows), int), np.full(len(windows), number)))
        held.append(out)
    parts.append((negatives, np.full(len(negatives), -1), np.full(len(negatives), len(examples))))
    held.append(np.arange(len(negatives)) % 4 == 3)
    features, logits = rows(np.concatenate([p[0] for p in parts]), head, current)

    def per_row(values: np.ndarray) -> np.ndarray:  # each window has ``views`` rows, window-major
        return np.repeat(values, views)

    everything = Examples(features, logits, per_row(np.concatenate([p[1] for p in parts])),
                          per_row(np.concatenate([p[2] for p in parts])))
    left_out = per_row(np.concatenate(held))
    names = [*head.labels, *(current.labels if current is not None else ())]
    checks = check(fit(everything.subset(~left_out), (label,), checkpoint), everything.subset(left_out), names,
                   head.flips) if left_out.any() and (~left_out & (everything.targets == 0)).any() else {}
    new = fit(everything, (label,), checkpoint)
    if current is None or not current.labels:
        return dataclasses.replace(new, checks=checks)
    # the neighbours: both adapters' negatives, the labels' examples as they were, then the new label's
    old_groups, new_groups = neighbour_groups(current), neighbour_groups(new)
    groups = [np.concatenate([old_groups[0], new_groups[0]]), *old_groups[1:], new_groups[1]]
    neighbours, counts = neighbours_from(np.concatenate(groups), np.repeat(np.arange(-1, len(groups) - 1),
                                                                           [len(g) for g in groups]), len(groups) - 1)
    return Adapter((*current.labels, label), np.concatenate([current.weight, new.weight]),
                   np.concatenate([current.bias, new.bias]), checkpoint, {**current.checks, **checks},
                   neighbours, counts)


def without(current: Adapter, label: str) -> Adapter | None:
    """``current`` with ``label`` forgotten, its examples too (None when it was the last)."""
    keep = [i for i, name in enumerate(current.labels) if name != label]
    if not keep:
        return None
    neighbours, counts = current.neighbours, current.neighbour_counts
    if neighbours is not None:
        groups = neighbour_groups(current)
        groups = [groups[0], *(groups[1 + i] for i in keep)]
        neighbours, counts = np.concatenate(groups), tuple(len(g) for g in groups)
    return Adapter(tuple(current.labels[i] for i in keep), current.weight[keep], current.bias[keep],
                   current.checkpoint, {k: v for k, v in current.checks.items() if k != label}, neighbours, counts)
