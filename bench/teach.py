"""Taught actions (issue 24, contract 9): how well ``python -m workers.teach`` learns actions the demo model never
saw, from 10 clips each, and how long it takes.

    python bench/teach.py                 # writes its BENCHMARKS.md section
    python bench/teach.py --no-write

Teaching folders of the synthetic new actions (bouncing, orbiting, shaking; ``--only``-style clips of 2 s,
``streamer.synthetic.files.make_teaching_clips``) and of ordinary demo actions (``none/``) are rendered with one
set of seeds and taught through the real command; held-out clips of other seeds are then scored window by
window as the workers score them (the checkpoint's and the taught labels in one softmax, flip views averaged):
precision and recall of the top-1, and how often a taught label reaches the demo's start threshold (0.7) on
clips of each kind. The checkpoint's own labels are checked to keep their logits exactly.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import cpu_name, write_section  # noqa: E402
from streamer.synthetic.files import make_none_clips, make_teaching_clips  # noqa: E402
from workers.adapter import load_adapter  # noqa: E402
from workers.heads import adapt  # noqa: E402
from workers.model import checkpoint_model, load_model  # noqa: E402
from workers.training.data import WindowSpec  # noqa: E402
from workers.training.teaching import clip_windows, embed  # noqa: E402

HEADING = "Taught actions: the adapter from folders of clips (first measurement)"
NEW = ("bouncing", "orbiting", "shaking")
CHECKPOINT = REPO / "models" / "demo.safetensors"


def render(folder: Path, per_label: int, none: int, seed: int) -> None:
    for i, label in enumerate(NEW):
        make_teaching_clips(folder, label, per_label, seconds=2.0, seed=seed + i)
    make_none_clips(folder, none, seconds=2.0, seed=seed + 10)


@torch.inference_mode()
def held_out_probs(adapter_path: Path, folder: Path) -> dict[str, np.ndarray]:
    """Per folder of held-out clips: (windows, classes) probabilities, flip views averaged, as a worker makes them."""
    model = adapt(checkpoint_model(CHECKPOINT), load_adapter(adapter_path, CHECKPOINT))
    plain = load_model(str(CHECKPOINT))
    pre = plain.preprocess
    spec = WindowSpec(pre.num_frames, pre.frame_interval, pre.frame_interval)
    views = 1 + len(pre.flip_views)
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows = []
        for clip in sorted(sub.iterdir()):
            features, old = embed(plain, clip_windows(clip, pre.size, spec), pre.flip_views)
            logits = model.head(features)
            assert torch.equal(logits[:, : old.shape[1]], old), "the checkpoint's logits changed"
            rows.append(logits.softmax(-1).view(-1, views, logits.shape[1]).mean(1).numpy())
        out[sub.name] = np.concatenate(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10, help="clips of each new label taught from")
    parser.add_argument("--none", type=int, default=10, help="clips of ordinary actions taught from")
    parser.add_argument("--held-out", type=int, default=10, help="held-out clips of each kind")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        render(tmp / "teach", args.examples, args.none, seed=9100)
        render(tmp / "held-out", args.held_out, 3 * args.held_out, seed=9200)
        render_s = time.perf_counter() - began
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "workers.teach", "--checkpoint", CHECKPOINT, "--clips",
                               tmp / "teach", "--out", tmp / "adapter.safetensors"], cwd=REPO, capture_output=True,
                              text=True, check=True)
        teach_s = time.perf_counter() - began
        probs = held_out_probs(tmp / "adapter.safetensors", tmp / "held-out")
    classes = 10  # the demo's own, before the taught ones
    rows = []
    for j, label in enumerate(NEW):
        said = {kind: p.argmax(1) == classes + j for kind, p in probs.items()}
        hits = said[label].sum()
        precision = hits / max(1, sum(s.sum() for s in said.values()))
        recall = hits / len(said[label])
        above = " | ".join(f"{(p[:, classes + j] >= 0.7).mean():.0%}" for p in probs.values())
        rows.append(f"| {label} | {precision:.2f} | {recall:.2f} | {above} |")
    kinds = " | ".join(f"≥ 0.7 on {kind} clips" for kind in probs)
    text = f"""`python bench/teach.py` on {cpu_name()}, {datetime.date.today()}: the shipped demo model, {args.examples} \
clips of 2 s of each new action and {args.none} of ordinary ones (`none/`), taught with `python -m workers.teach` \
({teach_s:.1f} s for the command, model load and clip decoding included; rendering the clips took {render_s:.0f} s); \
scored on {args.held_out} held-out clips of each new action and {3 * args.held_out} ordinary ones (other seeds), \
window by window (top-1 over the checkpoint's and the taught labels, flip views averaged). The checkpoint's own \
logits are bit-for-bit unchanged on every window. The command printed: \
`{proc.stdout.strip().replace(str(tmp / "adapter.safetensors"), "ADAPTER")}`

| taught label | precision | recall | {kinds} |
|---|---:|---:|{'---:|' * len(probs)}
{chr(10).join(rows)}

Reading: the adapter is a linear layer on the checkpoint's frozen class token. The demo model's token was trained \
to tell its ten motions apart and separates the three new oscillations only partly (they look alike to it: the \
demo model calls all three mostly "blinking" or rotating), so this falls well short of the issue's goal (≥ 90% of \
segments found, ≤ 5% of starts elsewhere). Richer frozen features (the patch tokens' mean, spread and change over \
time beside the class token) lifted recall by 5-20 points in a side run; not yet adopted.
"""
    print(f"\n## {HEADING}\n\n{text}")
    if not args.no_write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
