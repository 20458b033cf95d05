"""Top-1/top-5 accuracy and a confusion matrix on the same windows the pipeline makes.

A window is ``num_frames`` frames taken every ``frame_interval`` source frames; one
ends every ``hop`` frames, the first as soon as a whole window exists; its label is
the label of its last frame. Data may be synthetic videos rendered from seeds, a
rendered ``.mp4`` beside its ``.labels.json``, a folder of clips laid out one folder
per class, or a list file of ``path label`` lines (paths relative to the list file).

    python -m workers.evaluate --checkpoint models/demo.safetensors --synthetic-seeds 1000 1001 --seconds 60

A tracked run (``track = "motion"``) is scored from its event log against a multi-actor video's labels
(``python -m streamer.synthetic --actors K``), see :mod:`workers.training.track_scores`:

    python -m workers.evaluate --tracks events.jsonl --labels yard.labels.json
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from workers.flips import FLIP_VIEWS
from streamer.errors import CheckpointError, ConfigError, PipelineError, UsageParser
from workers.training.data import WindowSpec, concat, dataset_windows, synthetic_windows
from workers.model import label_names, load_model
from workers.preprocess import to_model_input
from workers.views import FlipViews


@torch.no_grad()
def predict(model: torch.nn.Module, frames: np.ndarray, mean, std, batch_size: int = 64,
            flips: tuple[str, ...] = ()) -> torch.Tensor:
    """Class probabilities (N, classes) float32 on the CPU for uint8 windows (N, T, H, W, 3),
    averaged with those of the windows' mirror images when ``flips`` names any (workers.views)."""
    device = next(model.parameters()).device
    averaged = FlipViews(label_names(model.labels, model.config.num_classes), flips, device)
    out = []
    for start in range(0, len(frames), batch_size):
        batch = torch.from_numpy(frames[start:start + batch_size]).to(device)
        out.append(averaged(model, to_model_input(batch, mean, std)).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass(frozen=True)
class Scores:
    top1: float
    top5: float
    confusion: np.ndarray  # (classes, classes): rows true, columns predicted
    count: int


def score(class_scores: torch.Tensor, targets: np.ndarray, num_classes: int) -> Scores:
    """Top-1, top-5 (top-k with k = min(5, classes)) and the confusion matrix of logits or probabilities."""
    targets_t = torch.as_tensor(targets)
    top = class_scores.topk(min(5, num_classes), dim=1).indices
    pred = top[:, 0]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (targets, pred.numpy()), 1)
    n = max(1, len(targets))
    return Scores(float((pred == targets_t).sum()) / n, float((top == targets_t[:, None]).any(1).sum()) / n,
                  confusion, len(targets))


def format_confusion(confusion: np.ndarray, labels: list[str]) -> str:
    """The confusion matrix as text: one row per true class, recall at the end."""
    width = max(5, len(str(confusion.max())) + 1)
    short = [label[:12] for label in labels]
    name_w = max(len(s) for s in short) + 1
    lines = [" " * name_w + "".join(f"{i:>{width}}" for i in range(len(labels))) + "  recall"]
    for i, row in enumerate(confusion):
        recall = row[i] / row.sum() if row.sum() else float("nan")
        lines.append(f"{short[i]:<{name_w}}" + "".join(f"{v:>{width}}" for v in row) + f"  {recall:6.1%}  ({i})")
    return "\n".join(lines)


def draw_confusion(confusion: np.ndarray, labels: list[str], path: Path, title: str = "") -> Path:
    """Save the row-normalised confusion matrix as a PNG, drawn with OpenCV."""
    n, cell, left, top = len(labels), 44, 190, 60
    rows = confusion.sum(1, keepdims=True).clip(min=1)
    frac = confusion / rows
    image = np.full((top + n * cell + 170, left + n * cell + 20, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title or "confusion (rows: true, columns: predicted)", (10, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(n):
        cv2.putText(image, labels[i][:22], (5, top + i * cell + cell // 2 + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n):
            shade = int(255 * (1 - frac[i, j]))
            colour = (255, shade, shade) if i == j else (shade, shade, 255)
            x, y = left + j * cell, top + i * cell
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            cv2.rectangle(image, (x, y), (x + cell - 1, y + cell - 1), (200, 200, 200), 1)
            if confusion[i, j]:
                text_colour = (255, 255, 255) if frac[i, j] > 0.6 else (0, 0, 0)
                cv2.putText(image, str(confusion[i, j]), (x + 3, y + cell // 2 + 5), font, 0.4, text_colour, 1, cv2.LINE_AA)
    for j in range(n):  # column labels, written vertically below the grid
        label = np.full((22, 165, 3), 255, np.uint8)
        cv2.putText(label, labels[j][:22], (2, 15), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
        x, y = left + j * cell + (cell - 22) // 2, top + n * cell + 3
        image[y:y + 165, x:x + 22] = label
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise ConfigError(f"{path}: could not write the confusion PNG; check the folder is writable")
    return path


def _parser() -> UsageParser:
    parser = UsageParser(prog="python -m workers.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="any checkpoint load_model reads")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--tracks", type=Path, metavar="EVENTS",
                      help="score a tracked run's event log against --labels (a multi-actor video's)")
    data.add_argument("--data", type=Path, help="class-per-folder tree, 'path label' list file, or a rendered .mp4")
    data.add_argument("--synthetic-seeds", type=int, nargs="+", help="render synthetic videos with these seeds")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each synthetic video")
    parser.add_argument("--width", type=int, default=320, help="synthetic frame width")
    parser.add_argument("--height", type=int, default=240, help="synthetic frame height")
    parser.add_argument("--hop", type=int, default=0, help="source frames between windows (default frame_interval)")
    parser.add_argument("--frame-interval", type=int, default=0, help="override the checkpoint's frame_interval")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--flip-views", nargs="*", choices=FLIP_VIEWS, metavar="FLIP",
                        help="average each window with these mirror images, as the pipeline does (default: the "
                             "checkpoint's own; --flip-views alone: none)")
    parser.add_argument("--png", type=Path, default=Path("confusion.png"), help="where to save the confusion matrix")
    parser.add_argument("--labels", type=Path, help="with --tracks: the video's .labels.json")
    parser.add_argument("--stream", help="with --tracks: score this stream's lines only (default: every stream's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tracks:
        return _score_tracks(parser, args)
    if not args.checkpoint:
        parser.error("--checkpoint is needed to evaluate windows (or score a run with --tracks)")
    if args.hop < 0 or args.frame_interval < 0 or args.batch_size < 1 or args.seconds <= 0:
        parser.error("--hop, --frame-interval must be ≥ 0, --batch-size ≥ 1, --seconds > 0")
    try:
        model = load_model(args.checkpoint, device=args.device, precision=args.precision)
        pre = model.preprocess
        if model.labels is None:
            raise CheckpointError(f"{args.checkpoint}: holds no class names; evaluation needs them to match labels")
        interval = args.frame_interval or pre.frame_interval
        spec = WindowSpec(pre.num_frames, interval, args.hop or interval)
        started = time.perf_counter()
        if args.synthetic_seeds:
            windows = concat([synthetic_windows(s, args.seconds, pre.size, spec, model.labels, args.width, args.height)
                              for s in args.synthetic_seeds])
        else:
            windows = dataset_windows(args.data, pre.size, spec, model.labels)
        flips = pre.flip_views if args.flip_views is None else tuple(args.flip_views)
        probs = predict(model, windows.frames, pre.mean, pre.std, args.batch_size, flips)
        result = score(probs, windows.targets, len(model.labels))
        elapsed = time.perf_counter() - started
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_confusion(result.confusion, model.labels))
    with_flips = f", with {' and '.join(flips)} flips" if flips else ""
    print(f"windows: {result.count} ({spec.num_frames} frames every {spec.frame_interval}, hop {spec.hop}{with_flips})  "
          f"top-1: {result.top1:.2%}  top-5: {result.top5:.2%}  ({elapsed:.1f} s)")
    if not windows.whole.all():  # windows across an action change are labelled by their last frame
        inside = windows.whole
        top1 = float((probs.argmax(1).numpy()[inside] == windows.targets[inside]).mean()) if inside.any() else 0.0
        print(f"windows within one action: {int(inside.sum())}  top-1: {top1:.2%}")
    draw_confusion(result.confusion, model.labels, args.png,
                   f"top-1 {result.top1:.1%}  top-5 {result.top5:.1%}  on {result.count} windows")
    print(f"confusion matrix saved to {args.png}")
    return 0


def _score_tracks(parser: UsageParser, args) -> int:
    from workers.training import track_scores

    if not args.labels:
        parser.error("--tracks needs --labels: the video's .labels.json")
    try:
        lines = track_scores.read_lines(args.tracks)
        labels = track_scores.read_labels(args.labels)
        scores = track_scores.score(lines, labels, stream=args.stream)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: cannot score {args.tracks} against {args.labels}: {err}", file=sys.stderr)
        return 2
    print(scores.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
