"""What the shipped demo model makes of the actions it never saw (issue 24: taught actions need actions it
cannot already name). For each new action, its top-1 class over windows of held-out clips, and how sure it is.

    python bench/new_actions.py                      # 12 clips of each action, 4 windows each
    python bench/new_actions.py --clips 30 --seed 7

Windows are made as the workers make them: 8 frames every 4 (the checkpoint's sampling) from 320×240 frames,
short side resized to 48 and centre-cropped, probabilities averaged over the checkpoint's flip views. The demo's
own classes are scored the same way as a yardstick.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from streamer.synthetic.drawing import render_clip  # noqa: E402
from streamer.synthetic.new_actions import NEW_ACTIONS  # noqa: E402
from streamer.synthetic.scenes import CLASSES, segments_for  # noqa: E402
from streamer.video.frames import to_model_frame  # noqa: E402
from workers.model import load_model  # noqa: E402
from workers.training.evaluate import predict  # noqa: E402

BENCH_STREAM = 0xBE7  # rng([seed, BENCH_STREAM, ...]): clips no teaching helper or demo video draws


def windows(label: str, clips: int, per_clip: int, seed: int, pre) -> np.ndarray:
    """(clips * per_clip, T, size, size, 3) uint8 windows of ``label`` done throughout."""
    span = (pre.num_frames - 1) * pre.frame_interval + 1
    out = []
    for clip in range(clips):
        segs = segments_for(seed, span * per_clip, 30.0, [label], (BENCH_STREAM, clip))
        for w in range(per_clip):
            idx = [w * span + k * pre.frame_interval for k in range(pre.num_frames)]
            out.append(np.stack([to_model_frame(f, pre.size) for f in render_clip(segs, idx, 320, 240)]))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "demo.safetensors"))
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--windows", type=int, default=4, help="windows per clip, one after another")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    model = load_model(args.checkpoint)
    pre = model.preprocess
    for label in (*NEW_ACTIONS, *CLASSES):
        probs = predict(model, windows(label, args.clips, args.windows, args.seed, pre), pre.mean, pre.std,
                        flips=tuple(pre.flip_views)).numpy()
        top = Counter(model.labels[i] for i in probs.argmax(axis=1))
        spread = ", ".join(f"{name} {n / len(probs):.0%}" for name, n in top.most_common())
        best = probs.max(axis=1)
        print(f"{label:24s} n={len(probs)} top-1: {spread}; top-1 prob mean {best.mean():.2f}, "
              f"≥ 0.9 in {(best >= 0.9).mean():.0%}", flush=True)


if __name__ == "__main__":
    main()
