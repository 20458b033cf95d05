"""Taught actions, window by window: how the calibration (``FALSE_TOP``) trades a taught label's recall against
the old labels' accuracy, for one or more checkpoints, in seconds a setting instead of the minutes of a run.

    python bench/taught_replay.py models/demo.safetensors                   # FALSE_TOP 0.02, 0.01, 0.005
    python bench/taught_replay.py models/demo.safetensors runs/demo_describe2/last.safetensors --write

The clips and videos are bench/taught_events.py's (same seeds): each new action taught alone from 10 clips and
the same ``none/`` footage, held-out videos from ``--first-seeds`` (six a label each). Every window of them is
embedded once per checkpoint (cached in ``--work``); each label is then taught as ``workers.teach`` teaches it
(:func:`workers.training.teaching.fit`) at each ``FALSE_TOP``, against the ``none/`` clips or against the ordinary
windows a camera would have kept (``--negatives cameras``: web teaching), with the neighbours' vote and without
it (:class:`workers.adapter.Adapter`); the held-out windows' probabilities (flip views
mapped back) are replayed through the real :class:`ActionTracker` with the shipped ``[events]``, and scored as
bench/taught_events.py scores its event lines; the old labels on the demo's held-out windows (seeds 2000-2007) as
``workers.evaluate`` scores them. What it leaves out is the pipeline itself (the capture's decoding and its
timing), so a run of taught_events is the figure to quote; this one is for comparing settings and checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import itertools
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.event_scores import Recording, replay  # noqa: E402
from bench.report import cpu_name, publish  # noqa: E402
from bench.taught_events import (CLIP_S, DEMO_SEEDS, NEW, NONE_SEED, TEACH_SEED, held_out_seeds,  # noqa: E402
                                 score_label)
from streamer.config.stages import EventConfig  # noqa: E402
from streamer.synthetic.files import (labels_path, make_none_clips, make_teaching_clips, read_labels,  # noqa: E402
                                      write_video)
from streamer.synthetic.scenes import CLASSES  # noqa: E402
from workers.model import load_model  # noqa: E402
from workers.training.teaching import clip_windows  # noqa: E402
from workers.training.data import (WindowSpec, concat, read_frames, synthetic_windows, window_ends,  # noqa: E402
                                  window_indices)
from workers.training.teaching import Examples, by_window, embed, fit  # noqa: E402
from workers.views import FlipViews  # noqa: E402

HEADING = "Taught actions: the calibration, window by window"
SECONDS = 60.0
CAMERA_SEEDS = range(9600, 9610)  # ten minutes of the demo's footage: the negatives web teaching has (`cameras`)
CAMERA_WINDOWS = 600  # as many as streamer.stages.web.teach takes (NEGATIVES)


def render(work: Path, first_seeds: list[int], examples: int, none: int, cuts: int) -> dict:
    """The teaching clips and held-out videos (kept in ``work``; rendered once)."""
    teach = work / "teach"
    if not (teach / "none").is_dir():
        make_none_clips(teach, none, seconds=CLIP_S, seed=NONE_SEED, cuts=cuts)
        for i, label in enumerate(NEW):
            make_teaching_clips(teach, label, examples, seconds=CLIP_S, seed=TEACH_SEED + i)
    held = {}
    for label in NEW:
        for first in first_seeds:
            for seed in held_out_seeds(first, 6, SECONDS, 2, [*CLASSES, label], (label,)):
                video = work / "held-out" / label / f"{label}-{seed}.mp4"
                if not video.exists():
                    video.parent.mkdir(parents=True, exist_ok=True)
                    write_video(video, SECONDS, seed, choices=[*CLASSES, label])
                held.setdefault(label, []).append(video)
    return {"clips": {name: sorted((teach / name).glob("*.mp4")) for name in (*NEW, "none")}, "held": held}


def embeddings(checkpoint: str, work: Path, media: dict) -> dict[str, np.ndarray]:
    """Every window's embedding ``(windows, views, width)`` per clip and video, and the demo's held-out windows."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    cache = work / f"embeddings-{digest}.npz"
    if cache.exists():
        out = dict(np.load(cache))
        if "cameras" not in out:  # a cache from before the cameras' footage
            model = load_model(checkpoint)
            out["cameras"] = view_rows(model, camera_footage(model))
            np.savez(cache, **out)
        return out
    model = load_model(checkpoint)
    pre = model.preprocess
    spec = WindowSpec(pre.num_frames, pre.frame_interval, pre.frame_interval)
    rows = functools.partial(view_rows, model)
    out = {"head_w": model.head.weight.detach().numpy(), "head_b": model.head.bias.detach().numpy(),
           "labels": np.array(model.labels), "flips": np.array(pre.flip_views)}
    for name, clips in media["clips"].items():
        for i, clip in enumerate(clips):
            out[f"clip/{name}/{i}"] = rows(clip_windows(clip, pre.size, spec))
    for label, videos in media["held"].items():
        for video in videos:
            frames = np.stack(read_frames(video, pre.size))
            ends = window_ends(len(frames), spec)
            out[f"held/{label}/{video.stem}"] = rows(np.stack([frames[window_indices(e, spec)] for e in ends]))
            out[f"ends/{label}/{video.stem}"] = np.array(ends)
    demo = concat([synthetic_windows(seed, 40, pre.size, WindowSpec(pre.num_frames, pre.frame_interval, 8),
                                     list(model.labels)) for seed in DEMO_SEEDS])
    out["demo"], out["demo_truth"] = rows(demo.frames), np.asarray(demo.targets)
    out["cameras"] = rows(camera_footage(model))
    np.savez(cache, **out)
    return out


def view_rows(model, windows: np.ndarray) -> np.ndarray:
    """Windows' embeddings as the store keeps them: ``(windows, views, width)``."""
    flips = model.preprocess.flip_views
    return by_window(embed(model, windows, flips)[0], 1 + len(flips))


def camera_footage(model) -> np.ndarray:
    """The ordinary windows a camera running the demo would have kept when the web page teaches: 600 of the
    windows (hop 10) of ten minutes of demo footage, seeds the held-out demo does not use."""
    pre = model.preprocess
    spec = WindowSpec(pre.num_frames, pre.frame_interval, 10)
    frames = concat([synthetic_windows(seed, 60, pre.size, spec, list(model.labels)) for seed in CAMERA_SEEDS]).frames
    return frames[np.linspace(0, len(frames) - 1, CAMERA_WINDOWS).round().astype(int)]


class Scorer:
    """One checkpoint's cached windows: teach a label at a FALSE_TOP, replay and score it."""

    def __init__(self, data: dict[str, np.ndarray], media: dict, events: EventConfig) -> None:
        self.data, self.media, self.events = data, media, events
        self.labels = [str(x) for x in data["labels"]]
        self.flips = tuple(str(x) for x in data["flips"])
        self.demo_plain = self.top1(self.probs(data["demo"]))

    def old(self, f: np.ndarray) -> np.ndarray:
        return f @ self.data["head_w"].T + self.data["head_b"]

    def probs(self, f: np.ndarray, adapter=None, label: str | None = None) -> np.ndarray:
        """``(N, V, D)`` windows → ``(N, classes)`` probabilities, each view's mirror mapped back."""
        z = self.old(f) if adapter is None else np.concatenate([self.old(f), adapter.logits(f)], -1)
        names = self.labels + ([label] if label else [])
        return FlipViews(names, self.flips).average_windows(torch.from_numpy(z).float().softmax(-1)).numpy()

    def top1(self, probs: np.ndarray) -> float:
        return float((probs.argmax(1) == self.data["demo_truth"]).mean())

    def teach(self, label: str, false_top: float, negatives: str = "none", vote: bool = True):
        """``label`` taught from its clips against ``negatives``: the ``none/`` clips (as ``workers.teach``
        has them) or ``cameras`` (the ordinary windows web teaching has); ``vote``: keep the neighbours."""
        parts = [(self.data[f"clip/{label}/{i}"], 0) for i in range(len(self.media["clips"][label]))]
        if negatives == "cameras":
            parts += [(self.data["cameras"], -1)]  # one part, as web teaching hands them to fit
        else:
            parts += [(self.data[f"clip/none/{i}"], -1) for i in range(len(self.media["clips"]["none"]))]
        f = np.concatenate([w.reshape(-1, w.shape[-1]) for w, _ in parts])
        targets = np.concatenate([np.full(w.shape[0] * w.shape[1], t) for w, t in parts])
        groups = np.concatenate([np.full(w.shape[0] * w.shape[1], g) for g, (w, _) in enumerate(parts)])
        examples = Examples(torch.from_numpy(f), torch.from_numpy(self.old(f)).float(), targets, groups)
        adapter = fit(examples, (label,), "replay", false_top=false_top)
        return adapter if vote else dataclasses.replace(adapter, neighbours=None, neighbour_counts=())

    def score(self, label: str, false_top: float, negatives: str = "none", vote: bool = True) -> dict:
        adapter = self.teach(label, false_top, negatives, vote)
        events, truth = [], {}
        for video in self.media["held"][label]:
            ends = self.data[f"ends/{label}/{video.stem}"]
            truth[video.stem] = read_labels(labels_path(video))
            rec = Recording(video.stem, 30.0, [*self.labels, label], truth[video.stem], ends, ends / 30.0,
                            np.full(len(ends), -1), np.full((len(ends), 4), np.nan),
                            self.probs(self.data[f"held/{label}/{video.stem}"], adapter, label))
            events += [{**e, "stream": video.stem} for e in replay(rec, self.events)]
        demo = self.top1(self.probs(self.data["demo"], adapter, label))
        return {**score_label(label, events, truth), "demo": 100 * (demo - self.demo_plain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--false-top", type=float, nargs="+", default=[0.02, 0.01, 0.005])
    parser.add_argument("--first-seeds", type=int, nargs="+", default=[7101, 7401],
                        help="six held-out videos a label from each (7101: taught_events' own)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "taught-replay")
    parser.add_argument("--negatives", nargs="+", choices=["none", "cameras"], default=["none", "cameras"],
                        help="none: the none/ clips (workers.teach); cameras: ordinary windows (web teaching)")
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md")
    args = parser.parse_args()
    media = render(args.work, args.first_seeds, examples=10, none=10, cuts=10)
    shipped = tomllib.loads((REPO / "configs" / "default.toml").read_text())["events"]
    events = EventConfig(**{k: shipped[k] for k in ("smoothing", "start_threshold", "end_threshold", "end_hold_s",
                                                    "merge_gap_s")})
    rows = []
    for checkpoint in args.checkpoints:
        scorer = Scorer(embeddings(checkpoint, args.work, media), media, events)
        for negatives, false_top, vote in itertools.product(args.negatives, args.false_top, (True, False)):
            cells, found, segments = [], 0, 0
            for label in NEW:
                s = scorer.score(label, false_top, negatives, vote)
                found, segments = found + s["found"], segments + s["segments"]
                cells.append(f"{s['found']}/{s['segments']}, {s['elsewhere']}/{s['starts']}, {s['demo']:+.2f}")
            rows.append(f"| `{checkpoint}` | {negatives} | {false_top:g} | {'yes' if vote else 'no'} | "
                        + " | ".join(cells) + f" | {found / segments:.0%} |")
            print(rows[-1], flush=True)
    command = " ".join(["python bench/taught_replay.py", *args.checkpoints, "--false-top", *map(str, args.false_top),
                        *(["--first-seeds", *map(str, args.first_seeds)] if args.first_seeds != [7101, 7401] else [])])
    body = f"""`{command}` \
on {cpu_name()}, {datetime.date.today()}: each new action taught alone (10 clips, bench/taught_events.py's \
`none/` clips as `workers.teach` has them, or 600 ordinary windows of ten minutes of demo footage as web teaching \
has them: `cameras`), with the neighbours' vote (shipped) and without it (the linear layer alone), replayed \
window by window over {len(media['held'][NEW[0]])} held-out videos a label (seeds from \
{', '.join(map(str, args.first_seeds))}). Each cell: segments of ≥ 2 s found / of them, starts elsewhere / \
starts, and the change of the old labels' top-1 on the demo's held-out windows (points; goal within 0.5).

| checkpoint | negatives | FALSE_TOP | vote | bouncing | orbiting | shaking | recall, all |
|---|---|---:|---|---|---|---|---:|
{chr(10).join(rows)}
"""
    publish(HEADING, body, args.write)


if __name__ == "__main__":
    main()
