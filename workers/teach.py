"""``python -m workers.teach --checkpoint CKPT --clips DIR --out ADAPTER.safetensors`` (contract 9).

Teaches new labels from folders of clips without training the model: ``DIR/<label>/`` holds clips of one new
action each, ``DIR/none/`` (optional) clips of nothing new. Each clip is read with the checkpoint's own window
sampling, the backbone embeds its windows once, and an adapter for the new labels is trained beside the
checkpoint's head (:mod:`workers.training.teaching`). Every fourth clip of each label is held out first to
check it (precision and recall printed, and kept in the file); the adapter written is then trained on all.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamer.errors import ConfigError, UsageParser, run_command
from workers.adapter import checkpoint_digest, save_adapter
from workers.model import load_model
from workers.training.data import labelled_videos
from workers.training.teaching import NONE, Examples, check, embed_clip, fit

def folders(clips: Path, known: list[str]) -> tuple[tuple[str, ...], list[tuple[Path, str]]]:
    """The new labels (sorted) and the ``(clip, label)`` pairs; ConfigError for a folder that cannot teach."""
    if not clips.is_dir():
        raise ConfigError(f"{clips}: not a folder; give a folder with one sub-folder of clips per new label "
                          f"(and {NONE}/ for clips of nothing new)")
    pairs = labelled_videos(clips)
    labels = tuple(sorted({label for _, label in pairs} - {NONE}))
    if not labels:
        raise ConfigError(f"{clips}: only {NONE}/ holds clips; add a folder of clips for each new label")
    for label in labels:
        if label in known:
            raise ConfigError(f"{clips / label}: {label!r} is a label of the checkpoint already; name the new "
                              "action otherwise")
        count = sum(1 for _, name in pairs if name == label)
        if count < 2:
            raise ConfigError(f"{clips / label}: {count} clip; teaching needs at least 2 of each label (one to "
                              "learn from, one to check on), better 5 or more")
    return labels, pairs


def held_out(groups: np.ndarray, group_labels: list[str]) -> np.ndarray:
    """Rows of every fourth clip of each label (at least one), ``none`` included: left out to check. Spread
    over the folder rather than its end, so that a folder sorted by kind is checked on each kind."""
    out = np.zeros(len(groups), bool)
    for label in set(group_labels):
        members = [g for g, name in enumerate(group_labels) if name == label]
        if len(members) >= 2:
            out |= np.isin(groups, members[3::4] or members[-1:])
    return out


def teach(checkpoint: str, clips: Path, out: Path, hop: int = 0) -> str:
    """Make the adapter; returns the line to print."""
    started = time.perf_counter()
    model = load_model(checkpoint)
    pre = model.preprocess
    if model.labels is None:
        raise ConfigError(f"{checkpoint}: holds no label names; an adapter adds labels after the checkpoint's own")
    labels, pairs = folders(clips, list(model.labels))
    views = 1 + len(pre.flip_views)
    parts, group_labels = [], []
    for group, (path, label) in enumerate(pairs):
        features, logits = embed_clip(model, path, hop)
        target = -1 if label == NONE else labels.index(label)
        parts.append((features, logits, np.full(len(features), target), np.full(len(features), group)))
        group_labels.append(label)
    examples = Examples(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                        np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))
    digest = checkpoint_digest(checkpoint)
    left_out = held_out(examples.groups, group_labels)
    checks = check(fit(examples.subset(~left_out), labels, digest), examples.subset(left_out), list(model.labels),
                   pre.flip_views)
    adapter = fit(examples, labels, digest)
    adapter = dataclasses.replace(adapter, checks=checks)
    save_adapter(adapter, out)
    return (f"wrote {out}: taught {adapter.describe()}; from {len(pairs)} clips "
            f"({len(examples.targets) // views} windows) in {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(prog="python -m workers.teach", description=(
        "Teach new labels from folders of clips, without training the model: writes an adapter for "
        "run_pipeline.py --adapter (contract 9)."))
    parser.add_argument("--checkpoint", required=True, help="the checkpoint the pipeline runs (any load_model reads)")
    parser.add_argument("--clips", type=Path, required=True, help="DIR/<label>/ clips per new label, DIR/none/")
    parser.add_argument("--out", type=Path, required=True, help="the adapter to write (.safetensors)")
    parser.add_argument("--hop", type=int, default=0, help="source frames between windows (default frame_interval)")
    args = parser.parse_args(argv)
    if args.hop < 0:
        parser.error("--hop must be ≥ 0")
    return run_command(lambda: print(teach(args.checkpoint, args.clips, args.out, args.hop)))


if __name__ == "__main__":
    sys.exit(main())
