"""How much a checkpoint's window embedding (the normalised class token that taught labels are fitted on) tells
apart: a linear probe over the demo's ten classes and the three actions it never saw, fitted on windows of some
clips and scored on windows of others. Several checkpoints are compared in one run, on the same windows.

    python bench/embedding_probe.py models/demo.safetensors runs/demo_describe/last.safetensors

A taught label is one more linear class on this embedding, so what a probe cannot separate here, teaching
cannot either. Rows of the report: each action's share of held-out windows the probe gets right, and for
blinking (where taught labels took the demo's windows before) which actions its misses went to.
"""

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.new_actions import windows  # noqa: E402
from streamer.synthetic.new_actions import NEW_ACTIONS  # noqa: E402
from streamer.synthetic.scenes import CLASSES  # noqa: E402
from workers.model import load_model  # noqa: E402
from workers.training.teaching import embed  # noqa: E402

ACTIONS = (*CLASSES, *NEW_ACTIONS)


def features(model, frames: np.ndarray) -> np.ndarray:
    """One row a window: its embedding averaged over the checkpoint's flip views (as the workers score it)."""
    flips = tuple(model.preprocess.flip_views)
    rows, _ = embed(model, frames, flips)
    return rows.numpy().reshape(len(frames), 1 + len(flips), -1).mean(axis=1)


def probe(checkpoint: str, clips: int, per_clip: int, seeds: tuple[int, int]) -> dict:
    """Held-out accuracy of a linear probe per action, and where blinking's misses went."""
    model = load_model(checkpoint)
    pre = model.preprocess
    sets = {}
    for part, seed in zip(("fit", "test"), seeds):
        xs, ys = [], []
        for k, label in enumerate(ACTIONS):
            xs.append(features(model, windows(label, clips, per_clip, seed, pre)))
            ys.append(np.full(len(xs[-1]), k))
        sets[part] = np.concatenate(xs), np.concatenate(ys)
    fitted = LogisticRegression(C=10.0, max_iter=3000).fit(*sets["fit"])
    x, y = sets["test"]
    said = fitted.predict(x)
    right = {label: float((said[y == k] == k).mean()) for k, label in enumerate(ACTIONS)}
    blink = ACTIONS.index("blinking")
    misses = Counter(ACTIONS[s] for s in said[(y == blink) & (said != blink)])
    return {"right": right, "blinking_misses": dict(misses), "demo_mean": float(np.mean([right[c] for c in CLASSES])),
            "new_mean": float(np.mean([right[c] for c in NEW_ACTIONS]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--clips", type=int, default=10, help="clips per action, for fitting and again for testing")
    parser.add_argument("--windows", type=int, default=4, help="windows per clip")
    parser.add_argument("--seeds", type=int, nargs=2, default=(31, 32), help="fitting seed, testing seed")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        started = time.perf_counter()
        result = probe(checkpoint, args.clips, args.windows, tuple(args.seeds))
        row = ", ".join(f"{label} {result['right'][label]:.0%}" for label in (*NEW_ACTIONS, "blinking"))
        print(f"{checkpoint}: new actions {result['new_mean']:.1%} (of held-out windows right), demo classes "
              f"{result['demo_mean']:.1%}; {row}; blinking's misses {result['blinking_misses']} "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
