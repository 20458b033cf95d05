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
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from streamer.synthetic import scenes as synthetic
from streamer.errors import ConfigError, PipelineError, UsageParser
from streamer.video.frames import to_model_frame
from workers.training import actor_clips, data, evaluate
from workers.flips import FLIP_VIEWS
from workers.model import Preprocess, load_model, save_model
from workers.training.motion_init import FROZEN, motion_init, sinusoid_table
from workers.preprocess import to_model_input
from workers.timesformer import Block, TimeSformer, TimeSformerConfig, init_layers

TRAIN_STREAM = 0x7EA1  # synthetic training scenes come from rng([TRAIN_STREAM, seed, n]); test videos never do


# ---------------------------------------------------------------- data


def synthetic_clips(seed: int, pre: Preprocess, cut_p: float, per_scene: int = 6,
                    easy_p=lambda: 0.0) -> Iterator[tuple[np.ndarray, int]]:
    """Endless ``(clip uint8 (T, size, size, 3), class)`` from fresh random scene pairs.

    Each scene pair is a segment and the one before it; a clip ends inside the second
    and is labelled by it. With probability ``cut_p`` the clip is made to straddle the
    cut, so the model learns what the pipeline scores: the label of a window's last frame.
    ``easy_p()`` is the current share of plain, noise-free scenes (the curriculum).
    """
    counter = 0
    while True:
        rng = np.random.default_rng([TRAIN_STREAM, seed, counter])
        counter += 1
        fps = 30.0 if rng.uniform() < 0.8 else 25.0
        easy = bool(rng.uniform() < easy_p())
        first = synthetic.sample_segment(rng, 0, fps, easy=easy)
        second = synthetic.sample_segment(rng, first.end_frame + 1, fps, easy=easy)
        segs = [first, second]
        short = int(rng.integers(pre.size, 3 * pre.size + 1))
        aspect = float(rng.choice([1.0, 4 / 3, 16 / 9]))
        width, height = (round(short * aspect), short) if rng.uniform() < 0.8 else (short, round(short * aspect))
        for _ in range(per_scene):
            if rng.uniform() < cut_p:
                end = second.start_frame + int(rng.integers(0, pre.span - 1))
            else:
                end = int(rng.integers(second.start_frame, second.end_frame + 1))
            indices = data.window_indices(end, pre)
            frames = [to_model_frame(f, pre.size) for f in synthetic.render_clip(segs, indices, width, height)]
            yield np.stack(frames), synthetic.CLASSES.index(second.label)


def video_clips(pairs: list[tuple[Path, int]], seed: int, pre: Preprocess) -> Iterator[tuple[np.ndarray, int]]:
    """Endless random windows of labelled video files (decoded once, kept as model frames)."""
    cache: dict[Path, np.ndarray] = {}
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    while True:
        for i in rng.permutation(len(pairs)):
            path, label = pairs[i]
            if path not in cache:
                cache[path] = np.stack(data.read_frames(path, pre.size))
            frames = cache[path]
            end = int(rng.integers(min(pre.span - 1, len(frames) - 1), len(frames)))
            clip = frames[data.window_indices(end, pre)]
            yield augment(clip, rng), label


def augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same random brightness/contrast and a small shifted crop for every frame of a clip (order kept)."""
    size = clip.shape[1]
    pad = max(1, size // 16)
    padded = np.pad(clip, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, 2)
    out = padded[:, dy:dy + size, dx:dx + size].astype(np.float32)
    out = (out - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)
    return np.clip(out, 0, 255).astype(np.uint8)


class ClipStream(torch.utils.data.IterableDataset):
    """Endless clips; each DataLoader worker draws from its own seed."""

    def __init__(self, source: str, pairs: list[tuple[Path, int]], seed: int, pre: Preprocess, cut_p: float,
                 actor_p: float = 0.0) -> None:
        super().__init__()
        self.source, self.pairs, self.seed, self.pre, self.cut_p = source, pairs, seed, pre, cut_p
        self.actor_p = actor_p  # share of synthetic clips cut around one actor of a multi-actor scene
        self.easy = mp.Value("d", 0.0, lock=False)  # shared with worker processes; the loop sets it

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = self.seed * 1000 + (info.id if info else 0)
        clips = synthetic_clips(seed, self.pre, self.cut_p, easy_p=lambda: self.easy.value) \
            if self.source == "synthetic" else \
            video_clips(self.pairs, seed, self.pre)
        if self.source == "synthetic" and self.actor_p > 0:
            clips = _mixed(clips, actor_clips.actor_clips(seed, self.pre, self.cut_p / 2), self.actor_p, seed)
        for clip, label in clips:
            yield torch.from_numpy(clip), label


def _mixed(whole: Iterator, around_actors: Iterator, actor_p: float, seed: int) -> Iterator:
    """Clips from ``around_actors`` with probability ``actor_p``, else from ``whole``."""
    rng = np.random.default_rng([TRAIN_STREAM, seed, 0xA])
    while True:
        yield next(around_actors if rng.uniform() < actor_p else whole)


# ---------------------------------------------------------------- model


def build_model(args: argparse.Namespace, labels: list[str]):
    """A fresh TimeSformer (sinusoidal time embedding) or a loaded one with its head fitted to ``labels``."""
    if args.init:
        overrides = {k: v for k, v in (("num_frames", args.num_frames), ("img_size", args.img_size)) if v}
        model = load_model(args.init, **overrides)
        pre = model.preprocess
        if model.labels != labels:
            dim = model.config.embed_dim
            model.head = nn.Linear(dim, len(labels))
            nn.init.trunc_normal_(model.head.weight, std=0.02)
            nn.init.zeros_(model.head.bias)
            model.config = replace(model.config, num_classes=len(labels))
        pre = Preprocess(mean=tuple(pre.mean), std=tuple(pre.std), size=model.config.img_size,
                         num_frames=model.config.num_frames, frame_interval=args.frame_interval or pre.frame_interval,
                         flip_views=mirror_views(args))
        if args.add_blocks:
            add_identity_blocks(model, args.add_blocks)
        model = model.float().train()
        return model, pre
    try:
        config = TimeSformerConfig(
            img_size=args.img_size or 48, patch_size=args.patch_size, num_classes=len(labels),
            num_frames=args.num_frames or 8, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
            drop_path_rate=args.drop_path,
        )
    except ValueError as err:  # e.g. a size that is not a multiple of the patch
        raise ConfigError(f"architecture flags: {err}") from None
    model = TimeSformer(config)
    with torch.no_grad():
        model.time_embed.copy_(sinusoid_table(config.num_frames, config.embed_dim))
    if args.motion_init:
        motion_init(model)
    pre = Preprocess(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), size=config.img_size,
                     num_frames=config.num_frames, frame_interval=args.frame_interval or 4, flip_views=mirror_views(args))
    return model, pre


def mirror_views(args: argparse.Namespace) -> tuple[str, ...]:
    """Flips the trained classes allow averaging over at test time: known for the synthetic actions;
    for clips of your own, set ``[model] flip_views`` in the pipeline's config if they allow it."""
    return FLIP_VIEWS if args.data == "synthetic" else ()


def add_identity_blocks(model, count: int) -> None:
    """Append ``count`` blocks whose residual branches start at zero, so the deeper model computes
    exactly what the trained one did and training can only build on it (more depth for a model
    whose accuracy has levelled off, without starting over)."""
    config = replace(model.config, depth=model.config.depth + count)
    for _ in range(count):
        block = Block(config, 0.0)
        init_layers(block)
        for layer in (block.attn.proj, block.mlp.fc2, getattr(block, "temporal_fc", None)):
            if layer is not None:
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
        model.blocks.append(block)
    model.config = config


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


@torch.no_grad()
def _features(model, clips: torch.Tensor, pre, device: torch.device, chunk: int = 256) -> torch.Tensor:
    return torch.cat([model.forward_features(to_model_input(clips[i:i + chunk].to(device), pre.mean, pre.std))
                      for i in range(0, len(clips), chunk)])


def probe_head(model, stream: "ClipStream", count: int, pre, device: torch.device, iterations: int = 500) -> float:
    """Start the head as a linear probe of the body's features on ``count`` clips; returns its train top-1.

    A random head fed by a good body first spends thousands of small steps finding the
    scale of the features (and sends random gradients into the body meanwhile); a probe
    fitted on one full batch of features gets there in seconds.
    """
    clips, targets = zip(*(item for item, _ in zip(iter(stream), range(count))))
    model.eval()
    features = _features(model, torch.stack(clips), pre, device)
    targets = torch.tensor(targets, device=device)
    head = nn.Linear(features.shape[1], model.head.out_features).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-2)
    with torch.enable_grad():
        for _ in range(iterations):
            loss = F.cross_entropy(head(features), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
        return float((head(features).argmax(1) == targets).float().mean())


# ---------------------------------------------------------------- loop


def held_out(args: argparse.Namespace, labels: list[str], pre, pairs_val) -> data.WindowSet | None:
    """Windows of data never used in training: synthetic seeds from ``--val-seeds`` or ``--val-data``."""
    spec = data.WindowSpec(pre.num_frames, pre.frame_interval, args.val_hop or pre.frame_interval)
    if args.data == "synthetic":
        return data.concat([data.synthetic_windows(s, args.val_seconds, pre.size, spec, labels)
                                for s in args.val_seeds])
    if args.val_data:
        return data.dataset_windows(args.val_data, pre.size, spec, labels)
    return None


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    # OpenCV's thread pool must not exist when the DataLoader forks its workers: a child
    # inherits the pool's locks but not its threads and hangs in a futex at its first cv2 call.
    cv2.setNumThreads(1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if args.data == "synthetic":
        labels, pairs = list(synthetic.CLASSES), []
    else:
        videos = data.labelled_videos(Path(args.data))
        labels = data.class_names(videos)
        pairs = [(p, labels.index(l)) for p, l in videos]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot make this folder ({err.strerror}); pick a writable path") from None
    resume_file = out / "resume.pt"
    model, pre = build_model(args, labels)
    state = {"epoch": 0, "step": 0, "best": -1.0}
    if args.freeze_init:
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(FROZEN))
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, args.head_lr_mult, args.init_lr_mult),
                                  lr=args.lr)
    if args.resume and resume_file.is_file():
        saved = torch.load(resume_file, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in state}
        print(f"resumed from {resume_file} at epoch {state['epoch']}, step {state['step']}", flush=True)
    elif args.resume:
        print(f"no {resume_file} yet: starting fresh", flush=True)
    model.to(device)
    val = held_out(args, labels, pre, pairs)
    stream = ClipStream(args.data if args.data == "synthetic" else "videos", pairs, args.seed + 7919 * state["epoch"],
                        pre, args.cut_p, args.actor_p)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=args.batch_size, num_workers=args.workers, persistent_workers=False,
        prefetch_factor=4 if args.workers else None)
    if args.probe_head and state["step"] == 0:
        accuracy = probe_head(model, ClipStream(stream.source, pairs, args.seed + 104729, pre, args.cut_p),
                              args.probe_head, pre, device)
        print(f"head from a linear probe on {args.probe_head} clips: train top-1 {accuracy:.1%}", flush=True)
    batches = iter(loader)
    total = args.epochs * args.steps_per_epoch
    log = (out / "log.jsonl").open("a")
    summary = {}
    while state["epoch"] < args.epochs:
        model.train()
        seen, correct, loss_sum, started = 0, 0, 0.0, time.perf_counter()
        bar = tqdm(range(args.steps_per_epoch), desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                   mininterval=args.bar_interval, file=sys.stderr)
        for _ in bar:
            clips, targets = next(batches)
            lr = lr_at(state["step"], total, args.warmup, args.lr)
            stream.easy.value = max(0.0, 1.0 - state["step"] / args.easy_steps) if args.easy_steps else 0.0
            frozen = state["step"] < args.freeze_body_steps  # linear probe first, then fine-tune all
            for group in optimizer.param_groups:
                group["lr"] = 0.0 if frozen and not group["head"] else lr * group["lr_mult"]
            x = to_model_input(clips.to(device), pre.mean, pre.std)
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            state["step"] += 1
            seen += len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            loss_sum += float(loss.detach()) * len(targets)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", lr=f"{lr:.1e}", refresh=False)
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "step": state["step"], "train_loss": loss_sum / seen,
                  "train_acc": correct / seen, "clips_per_s": seen / (time.perf_counter() - started)}
        if val is not None:
            model.eval()
            scores = evaluate.score(evaluate.predict(model, val.frames, pre.mean, pre.std), val.targets, len(labels))
            record.update(val_top1=scores.top1, val_top5=scores.top5, val_windows=scores.count)
            print(evaluate.format_confusion(scores.confusion, labels), file=sys.stderr, flush=True)
        save_checkpoints(model, optimizer, state, record, labels, pre, out)
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)
        summary = record
    return summary


def save_checkpoints(model, optimizer, state: dict, record: dict, labels: list[str], pre, out: Path) -> None:
    """last/best checkpoints in our format and an atomic resume file."""

    model.labels, model.preprocess = labels, pre
    save_model(model, out / "last.safetensors", labels=labels, preprocess=pre)
    metric = record.get("val_top1", record["train_acc"])
    if metric >= state["best"]:
        state["best"] = metric
        save_model(model, out / "best.safetensors", labels=labels, preprocess=pre)
    tmp = out / "resume.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state}, tmp)
    tmp.replace(out / "resume.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = UsageParser(prog="python -m workers.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="'synthetic', a class-per-folder tree, or a 'path label' list file")
    parser.add_argument("--val-data", type=Path, help="held-out folder or list file (for folder/list data)")
    parser.add_argument("--out", required=True, help="folder for checkpoints and log.jsonl")
    parser.add_argument("--init", help="fine-tune from this checkpoint (official, Hugging Face folder, ours)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt if it exists")
    arch = parser.add_argument_group("architecture (from scratch)")
    arch.add_argument("--img-size", type=int, default=0, help="model input side (default 48, or the checkpoint's)")
    arch.add_argument("--patch-size", type=int, default=8)
    arch.add_argument("--embed-dim", type=int, default=96)
    arch.add_argument("--depth", type=int, default=4)
    arch.add_argument("--heads", type=int, default=4)
    arch.add_argument("--num-frames", type=int, default=0, help="frames per window (default 8, or the checkpoint's)")
    arch.add_argument("--frame-interval", type=int, default=0, help="source frames between window frames (default 4)")
    arch.add_argument("--motion-init", action="store_true",
                      help="start block 0 as a frame-difference detector whose motion energy is pooled into cls")
    arch.add_argument("--freeze-init", action="store_true",
                      help="keep the hand-set motion-init weights (embeddings, block 0, block 1 spatial attention) "
                           "fixed; with --init, continue a model trained that way")
    arch.add_argument("--drop-path", type=float, default=0.0)
    arch.add_argument("--add-blocks", type=int, default=0, metavar="N",
                      help="with --init: append N blocks that start as the identity (more depth, same outputs at step 0)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=20)
    opt.add_argument("--steps-per-epoch", type=int, default=200)
    opt.add_argument("--batch-size", type=int, default=32)
    opt.add_argument("--lr", type=float, default=1e-3)
    opt.add_argument("--weight-decay", type=float, default=0.05)
    opt.add_argument("--head-lr-mult", type=float, default=1.0, help="learning-rate factor for the head")
    opt.add_argument("--init-lr-mult", type=float, default=1.0,
                     help="learning-rate factor for the motion-init weights (see --freeze-init), e.g. 0.05 to "
                          "let them adapt without losing what was hand-set")
    opt.add_argument("--probe-head", type=int, default=0, metavar="CLIPS",
                     help="start the head as a linear probe of the initial features on this many clips")
    opt.add_argument("--freeze-body-steps", type=int, default=0,
                     help="train only the head (and final norm) for this many steps first")
    opt.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    opt.add_argument("--label-smoothing", type=float, default=0.0)
    opt.add_argument("--easy-steps", type=int, default=0,
                     help="curriculum: plain, noise-free synthetic scenes fade from all to none over these steps")
    opt.add_argument("--actor-p", type=float, default=0.0,
                     help="share of synthetic clips cut around one actor of a multi-actor scene (tracked windows)")
    opt.add_argument("--cut-p", type=float, default=0.2, help="share of synthetic clips that straddle a cut")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--val-seeds", type=int, nargs="+", default=[1000, 1001], help="held-out synthetic video seeds")
    run.add_argument("--val-seconds", type=float, default=60.0)
    run.add_argument("--val-hop", type=int, default=0, help="frames between held-out windows (default frame_interval)")
    run.add_argument("--workers", type=int, default=1, help="DataLoader processes rendering/decoding clips")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                     help="bf16 autocast (auto: on for CUDA only; CPUs without bf16 units run it slower)")
    run.add_argument("--bar-interval", type=float, default=1.0, help="seconds between progress-bar updates")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size", "patch_size", "embed_dim", "depth", "heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.embed_dim % args.heads:
        parser.error(f"--embed-dim {args.embed_dim} must divide by --heads {args.heads}")
    if not 0 <= args.actor_p <= 1:
        parser.error(f"--actor-p must be within 0..1, got {args.actor_p}")
    if not 0 <= args.cut_p <= 1:
        parser.error(f"--cut-p must be within 0..1, got {args.cut_p}")
    if args.init_lr_mult < 0 or args.head_lr_mult < 0:
        parser.error("--init-lr-mult and --head-lr-mult must be ≥ 0")
    if args.probe_head < 0:
        parser.error(f"--probe-head must be ≥ 0 clips, got {args.probe_head}")
    if args.freeze_init and not (args.motion_init or args.init):
        parser.error("--freeze-init keeps the hand-set weights of --motion-init fixed; use it with --motion-init, "
                     "or with --init to continue a model trained that way")
    if args.add_blocks and not args.init:
        parser.error("--add-blocks deepens a trained model; use it with --init (or set --depth for a new one)")
    if args.add_blocks < 0:
        parser.error(f"--add-blocks must be ≥ 0, got {args.add_blocks}")
    if args.motion_init and args.init:
        parser.error("--motion-init hand-sets a new model's first blocks; it cannot start from --init")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
