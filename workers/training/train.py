"""Train a TimeSformer from scratch or fine-tune any checkpoint ``load_model`` reads.

Data: ``synthetic`` (endless clips from ``streamer.synthetic``), a folder of clips
laid out one folder per class, or a list file of ``path label`` lines. Clips are
sampled exactly like the pipeline's windows (``num_frames`` frames every
``frame_interval`` source frames) and go through the same ``to_model_frame``.
Each epoch writes ``last.safetensors`` (our format, with labels and preprocessing),
``best.safetensors`` (best held-out top-1) and ``resume.pt`` (tensors and numbers
only, read back with ``weights_only=True``).

    python -m workers.train --data synthetic --out runs/demo --epochs 20
    python -m workers.train --data clips/ --init k400.pyth --out runs/ft --resume
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from streamer.errors import ConfigError, run_command
from streamer.synthetic.scenes import CLASSES
from workers.model import Preprocess, save_model
from workers.preprocess import to_model_input
from workers.training import data, evaluate
from workers.training.flags import parse_args
from workers.training.build import build_model, probe_head
from workers.training.clips import NO_CLASS, ClipStream
from workers.training.motion_targets import MOTION_MEASURES
from workers.training.motion_init import FROZEN

DESCRIBER_LR_MULT = 10.0  # the side task's layer learns at least this many times the body's rate


def param_groups(model: nn.Module, weight_decay: float, head_lr_mult: float,
                 init_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on embeddings, norms and biases; the head (and final norm) and the
    motion-init weights (``FROZEN``) each at their own rate.

    A faster head reads the features the body already has while the body changes slowly;
    with Adam every weight moves about ``lr`` a step, so a fast body scrambles them early,
    and hand-set weights are scrambled by the body's rate: they get a small share of it.
    """
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name.startswith(("head.", "norm.")) else "init" if name.startswith(FROZEN) else "body"
        decay = param.ndim >= 2 and "embed" not in name and "token" not in name
        groups.setdefault((part, decay), []).append(param)
    mults = {"head": head_lr_mult, "init": init_lr_mult, "body": 1.0}
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_mult": mults[part],
             "head": part == "head"} for (part, decay), params in sorted(groups.items())]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 1% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def held_out(args: argparse.Namespace, labels: list[str], pre, pairs_val) -> data.WindowSet | None:
    """Windows of data never used in training: synthetic seeds from ``--val-seeds`` or ``--val-data``."""
    spec = data.WindowSpec(pre.num_frames, pre.frame_interval, args.val_hop or pre.frame_interval)
    if args.data == "synthetic":
        return data.concat([data.synthetic_windows(s, args.val_seconds, pre.size, spec, labels)
                                for s in args.val_seeds])
    if args.val_data:
        return data.dataset_windows(args.val_data, pre.size, spec, labels)
    return None


@dataclass
class Run:
    """What one training run works with; ``state`` (epoch, step, best held-out top-1) is what resumes."""

    args: argparse.Namespace
    labels: list[str]
    model: nn.Module
    pre: Preprocess
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str
    out: Path
    state: dict
    describer: nn.Module | None = None  # --describe-motion: the side task's linear layer on the class token


def train(args: argparse.Namespace) -> dict:
    """Train for ``args.epochs``; each epoch's record (loss, accuracy, held-out scores) is printed, appended
    to ``OUT/log.jsonl`` and saved with the checkpoints. Returns the last record."""
    run, pairs = start(args)
    val = held_out(args, run.labels, run.pre, pairs)
    stream = ClipStream(args.data if args.data == "synthetic" else "videos", pairs, args.seed + 7919 * run.state["epoch"],
                        run.pre, args.cut_p, args.actor_p, args.wander_p, describe=run.describer is not None)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=args.batch_size, num_workers=args.workers, persistent_workers=False,
        prefetch_factor=4 if args.workers else None)
    if args.probe_head and run.state["step"] == 0:
        accuracy = probe_head(run.model, ClipStream(stream.source, pairs, args.seed + 104729, run.pre, args.cut_p),
                              args.probe_head, run.pre, run.device)
        print(f"head from a linear probe on {args.probe_head} clips: train top-1 {accuracy:.1%}", flush=True)
    batches = iter(loader)
    summary = {}
    with (run.out / "log.jsonl").open("a") as log:
        while run.state["epoch"] < args.epochs:
            record = epoch(run, batches, stream)
            if val is not None:
                record.update(validate(run, val))
            save_checkpoints(run.model, run.optimizer, run.state, record, run.labels, run.pre, run.out,
                             run.describer)
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            summary = record
    return summary


def start(args: argparse.Namespace) -> tuple[Run, list[tuple[Path, int]]]:
    """The run's model, optimiser and state (resumed from ``OUT/resume.pt`` with ``--resume``), and the
    labelled video files for folder or list data."""
    if args.describe_motion > 0 and args.data != "synthetic":
        raise ConfigError("--describe-motion needs --data synthetic: the motion measures come from its scenes")
    torch.manual_seed(args.seed)
    # OpenCV's thread pool must not exist when the DataLoader forks its workers: a child
    # inherits the pool's locks but not its threads and hangs in a futex at its first cv2 call.
    cv2.setNumThreads(1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if args.data == "synthetic":
        labels, pairs = list(CLASSES), []
    else:
        videos = data.labelled_videos(Path(args.data))
        labels = data.class_names(videos)
        pairs = [(p, labels.index(l)) for p, l in videos]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot make this folder ({err.strerror}); pick a writable path") from None
    model, pre = build_model(args, labels)
    if args.freeze_init:
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(FROZEN))
    groups = param_groups(model, args.weight_decay, args.head_lr_mult, args.init_lr_mult)
    describer = None
    if args.describe_motion > 0:
        describer = nn.Linear(model.head.in_features, len(MOTION_MEASURES))
        # a fresh layer on a trained body: at the body's rate it would take the whole run to find its scale
        groups.append({"params": list(describer.parameters()), "weight_decay": 0.0,
                       "lr_mult": max(args.head_lr_mult, DESCRIBER_LR_MULT), "head": True})
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    state = resume(out / "resume.pt", model, optimizer, describer) if args.resume else None
    model.to(device)
    if describer is not None:
        describer.to(device)
    return Run(args, labels, model, pre, optimizer, device, precision, out,
               state or {"epoch": 0, "step": 0, "best": -1.0}, describer), pairs


def resume(resume_file: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
           describer: nn.Module | None = None) -> dict | None:
    """Load the weights, the optimiser and the state saved by :func:`save_checkpoints`; None when there is none yet."""
    if not resume_file.is_file():
        print(f"no {resume_file} yet: starting fresh", flush=True)
        return None
    saved = torch.load(resume_file, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    if describer is not None and "describer" in saved:
        describer.load_state_dict(saved["describer"])
    optimizer.load_state_dict(saved["optimizer"])
    state = {k: saved[k] for k in ("epoch", "step", "best")}
    print(f"resumed from {resume_file} at epoch {state['epoch']}, step {state['step']}", flush=True)
    return state


def epoch(run: Run, batches, stream: ClipStream) -> dict:
    """One epoch of ``steps_per_epoch`` steps; returns its record (train loss and accuracy, clips/s)."""
    args, state, model, optimizer = run.args, run.state, run.model, run.optimizer
    total = args.epochs * args.steps_per_epoch
    model.train()
    seen, correct, loss_sum, side_sum, started = 0, 0, 0.0, 0.0, time.perf_counter()
    bar = tqdm(range(args.steps_per_epoch), desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
               mininterval=args.bar_interval, file=sys.stderr)
    for _ in bar:
        clips, targets, *measures = next(batches)
        lr = lr_at(state["step"], total, args.warmup, args.lr)
        stream.easy.value = max(0.0, 1.0 - state["step"] / args.easy_steps) if args.easy_steps else 0.0
        frozen = state["step"] < args.freeze_body_steps  # linear probe first, then fine-tune all
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if frozen and not group["head"] else lr * group["lr_mult"]
        x = to_model_input(clips.to(run.device), run.pre.mean, run.pre.std)
        targets = targets.to(run.device)
        loss, logits, side = losses(run, x, targets, [m.to(run.device) for m in measures])
        side_sum += side
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        classed = targets != NO_CLASS
        seen += int(classed.sum())
        correct += int((logits.argmax(1) == targets)[classed].sum())
        loss_sum += float(loss.detach()) * int(classed.sum())
        bar.set_postfix(loss=f"{loss_sum / max(1, seen):.3f}", acc=f"{correct / max(1, seen):.1%}", lr=f"{lr:.1e}",
                        refresh=False)
    state["epoch"] += 1
    side = {"motion_loss": side_sum / args.steps_per_epoch} if run.describer is not None else {}
    return {**side, "epoch": state["epoch"], "step": state["step"], "train_loss": loss_sum / max(1, seen),
            "train_acc": correct / max(1, seen), "clips_per_s": args.steps_per_epoch * args.batch_size
            / (time.perf_counter() - started)}


def losses(run: Run, x: torch.Tensor, targets: torch.Tensor, measures: list[torch.Tensor]):
    """The batch's loss, logits and side-task loss (0 without): cross-entropy on the clips with a class, plus,
    with ``--describe-motion``, its weight times the side task's error on the clips with motion measures."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
        features = run.model.forward_features(x)
        logits = run.model.head(features).float()
    classed = targets != NO_CLASS
    loss = F.cross_entropy(logits[classed], targets[classed], label_smoothing=run.args.label_smoothing) \
        if bool(classed.any()) else logits.sum() * 0.0
    side = 0.0
    if run.describer is not None and measures:
        values, known = measures
        if bool(known.any()):
            error = F.smooth_l1_loss(run.describer(features.float()[known]), values[known], beta=0.5)
            loss, side = loss + run.args.describe_motion * error, float(error.detach())
    return loss, logits, side


def validate(run: Run, val: data.WindowSet) -> dict:
    """Top-1/top-5 on the held-out windows; the confusion matrix goes to stderr."""
    run.model.eval()
    scores = evaluate.score(evaluate.predict(run.model, val.frames, run.pre.mean, run.pre.std), val.targets,
                            len(run.labels))
    print(evaluate.format_confusion(scores.confusion, run.labels), file=sys.stderr, flush=True)
    return {"val_top1": scores.top1, "val_top5": scores.top5, "val_windows": scores.count}


def save_checkpoints(model, optimizer, state: dict, record: dict, labels: list[str], pre, out: Path,
                     describer: nn.Module | None = None) -> None:
    """last/best checkpoints in our format and an atomic resume file."""
    model.labels, model.preprocess = labels, pre
    save_model(model, out / "last.safetensors", labels=labels, preprocess=pre)
    metric = record.get("val_top1", record["train_acc"])
    if metric >= state["best"]:
        state["best"] = metric
        save_model(model, out / "best.safetensors", labels=labels, preprocess=pre)
    tmp = out / "resume.pt.tmp"
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}
    if describer is not None:
        saved["describer"] = describer.state_dict()
    torch.save(saved, tmp)
    tmp.replace(out / "resume.pt")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())
