"""``python -m workers.train``'s flags: the data, the architecture of a new model, the optimisation and
the run; each checked here, so a bad one is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamer.errors import UsageParser

DESCRIPTION = "Train a TimeSformer from scratch or fine-tune any checkpoint ``load_model`` reads."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = UsageParser(prog="python -m workers.train", description=DESCRIPTION)
    _data_flags(parser)
    _architecture_flags(parser.add_argument_group("architecture (from scratch)"))
    _optimisation_flags(parser.add_argument_group("optimisation"))
    _run_flags(parser.add_argument_group("run"))
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _data_flags(group) -> None:
    """What to train on, where to write, what to start from."""
    group.add_argument("--data", required=True, help="'synthetic', a class-per-folder tree, or a 'path label' list file")
    group.add_argument("--val-data", type=Path, help="held-out folder or list file (for folder/list data)")
    group.add_argument("--out", required=True, help="folder for checkpoints and log.jsonl")
    group.add_argument("--init", help="fine-tune from this checkpoint (official, Hugging Face folder, ours)")
    group.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt if it exists")


def _architecture_flags(group) -> None:
    """A new model's shape (a checkpoint's own with --init)."""
    group.add_argument("--img-size", type=int, default=0, help="model input side (default 48, or the checkpoint's)")
    group.add_argument("--patch-size", type=int, default=8)
    group.add_argument("--embed-dim", type=int, default=96)
    group.add_argument("--depth", type=int, default=4)
    group.add_argument("--heads", type=int, default=4)
    group.add_argument("--num-frames", type=int, default=0, help="frames per window (default 8, or the checkpoint's)")
    group.add_argument("--frame-interval", type=int, default=0, help="source frames between window frames (default 4)")
    group.add_argument("--motion-init", action="store_true",
                       help="start block 0 as a frame-difference detector whose motion energy is pooled into cls")
    group.add_argument("--freeze-init", action="store_true",
                       help="keep the hand-set motion-init weights (embeddings, block 0, block 1 spatial attention) "
                            "fixed; with --init, continue a model trained that way")
    group.add_argument("--drop-path", type=float, default=0.0)
    group.add_argument("--add-blocks", type=int, default=0, metavar="N",
                       help="with --init: append N blocks that start as the identity (more depth, same outputs at step 0)")


def _optimisation_flags(group) -> None:
    """Steps, rates and the curriculum."""
    group.add_argument("--epochs", type=int, default=20)
    group.add_argument("--steps-per-epoch", type=int, default=200)
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--weight-decay", type=float, default=0.05)
    group.add_argument("--head-lr-mult", type=float, default=1.0, help="learning-rate factor for the head")
    group.add_argument("--init-lr-mult", type=float, default=1.0,
                       help="learning-rate factor for the motion-init weights (see --freeze-init), e.g. 0.05 to "
                            "let them adapt without losing what was hand-set")
    group.add_argument("--probe-head", type=int, default=0, metavar="CLIPS",
                       help="start the head as a linear probe of the initial features on this many clips")
    group.add_argument("--freeze-body-steps", type=int, default=0,
                       help="train only the head (and final norm) for this many steps first")
    group.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    group.add_argument("--label-smoothing", type=float, default=0.0)
    group.add_argument("--easy-steps", type=int, default=0,
                       help="curriculum: plain, noise-free synthetic scenes fade from all to none over these steps")
    group.add_argument("--actor-p", type=float, default=0.0,
                       help="share of synthetic clips cut around one actor of a multi-actor scene (tracked windows)")
    group.add_argument("--cut-p", type=float, default=0.2, help="share of synthetic clips that straddle a cut")
    group.add_argument("--describe-motion", type=float, default=0.0, metavar="WEIGHT",
                       help="synthetic: weight of a side task, saying each window's motion measures from the class "
                            "token (workers.training.motion_targets), so the embedding describes more than the classes")
    group.add_argument("--wander-p", type=float, default=0.0,
                       help="with --describe-motion: share of synthetic scenes ending in a wandering shot (no class)")


def _run_flags(group) -> None:
    """Seeds, held-out data, processes and the device."""
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--val-seeds", type=int, nargs="+", default=[1000, 1001], help="held-out synthetic video seeds")
    group.add_argument("--val-seconds", type=float, default=60.0)
    group.add_argument("--val-hop", type=int, default=0, help="frames between held-out windows (default frame_interval)")
    group.add_argument("--workers", type=int, default=1, help="DataLoader processes rendering/decoding clips")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="bf16 autocast (auto: on for CUDA only; CPUs without bf16 units run it slower)")
    group.add_argument("--bar-interval", type=float, default=1.0, help="seconds between progress-bar updates")


def _check(parser: UsageParser, args: argparse.Namespace) -> None:
    """What argparse cannot check alone: bounds and flags that need each other."""
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
