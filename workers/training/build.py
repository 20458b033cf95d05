"""The model a training run starts from: a fresh TimeSformer (sinusoidal time embedding, optionally
the hand-set motion features) or a loaded checkpoint with its head fitted to the labels, optionally
deepened by identity blocks; and the head's start as a linear probe of the body's features."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from streamer.errors import ConfigError
from workers.flips import FLIP_VIEWS
from workers.model import Preprocess, load_model
from workers.preprocess import to_model_input
from workers.timesformer import Block, TimeSformer, TimeSformerConfig, init_layers, resize_pos_embed
from workers.training.motion_init import motion_init, sinusoid_table


def build_model(args: argparse.Namespace, labels: list[str]):
    """A fresh TimeSformer (sinusoidal time embedding) or a loaded one with its head fitted to ``labels``."""
    if args.init:
        model = load_model(args.init, **({"num_frames": args.num_frames} if args.num_frames else {}))
        if args.img_size and args.img_size != model.config.img_size:
            resize_input(model, args.img_size)
        pre = model.preprocess
        if model.labels != labels:
            dim = model.config.embed_dim
            model.head = nn.Linear(dim, len(labels))
            nn.init.trunc_normal_(model.head.weight, std=0.02)
            nn.init.zeros_(model.head.bias)
            model.config = replace(model.config, num_classes=len(labels))
        pre = Preprocess(mean=tuple(pre.mean), std=tuple(pre.std), size=model.config.img_size,
                         num_frames=model.config.num_frames, frame_interval=args.frame_interval or pre.frame_interval,
                         flip_views=allowed_flips(args))
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
                     num_frames=config.num_frames, frame_interval=args.frame_interval or 4, flip_views=allowed_flips(args))
    return model, pre


def resize_input(model: TimeSformer, size: int) -> None:
    """Fine-tune at another input side: the position embedding takes the new patch grid as the model would
    resize it at run time (so step 0 predicts as the checkpoint does at that size), then trains as its own."""
    grid = size // model.config.patch_size
    if grid * model.config.patch_size != size:
        raise ConfigError(f"--img-size {size}: not a multiple of the patch ({model.config.patch_size} px)")
    with torch.no_grad():
        model.pos_embed = nn.Parameter(resize_pos_embed(model.pos_embed, grid, grid).clone())
    model.config = replace(model.config, img_size=size)


def allowed_flips(args: argparse.Namespace) -> tuple[str, ...]:
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


@torch.no_grad()
def _features(model, clips: torch.Tensor, pre, device: torch.device, chunk: int = 256) -> torch.Tensor:
    return torch.cat([model.forward_features(to_model_input(clips[i:i + chunk].to(device), pre.mean, pre.std))
                      for i in range(0, len(clips), chunk)])


def probe_head(model, stream: Iterable[tuple[torch.Tensor, int]], count: int, pre, device: torch.device, iterations: int = 500) -> float:
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
