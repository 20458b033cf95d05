"""Tracked actors (contract 7): accuracy on held-out multi-actor videos, and what detection, tracking and each
track's forward cost.

    python bench/tracks.py                      # all parts; writes its BENCHMARKS.md section
    python bench/tracks.py --seeds 5000 --seconds 20 --no-write

Accuracy: K = 3 actor videos (640×480, seeds never used in training) through ``run_pipeline.py --offline`` with
``track = "motion"``, scored by :mod:`workers.training.track_scores` (a prediction is right when its box overlaps an
actor, IoU ≥ 0.3, and its top-1 is that actor's label; a segment of 2 s or more with motion is recalled when
a start with its label falls on a track overlapping that actor). Real time: one of those videos read at its
own rate (no ``--offline``) at the demo's hop; the dispatcher's dropped-window count says whether the workers
kept up. Cost: the capture's detector + tracker per frame at 640×480 and 1280×720 against the same MOG2 run
on the full-resolution frame (the plain way), and the worker's forward per batch of 1-4 tracks.
"""

import argparse
import datetime
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from streamer.synthetic import scenes as synthetic, actors as synthetic_actors  # noqa: E402
from streamer.video.frames import display_image  # noqa: E402
from streamer.look.motion import MotionDetector  # noqa: E402
from streamer.config.look import TrackingConfig  # noqa: E402
from streamer.look.tracking import Presence, Tracker  # noqa: E402
from workers.training import track_scores  # noqa: E402

CHECKPOINT = REPO / "models" / "demo.safetensors"


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def config_for(sources: list[dict], threads: int = 0) -> dict:
    model = {"checkpoint": str(CHECKPOINT), "backend": "auto", "precision": "fp32", "hop": 4, "max_batch": 8}
    if threads:
        model["threads"] = threads
    return {"model": model, "events": {"smoothing": 3, "start_threshold": 0.7, "end_threshold": 0.5},
            "sources": sources}


def accuracy(seeds: list[int], seconds: float, folder: Path) -> tuple[str, list[track_scores.TrackScores]]:
    sources, labels = [], {}
    for seed in seeds:
        video = folder / f"actors_{seed}.mp4"
        labels[f"seed{seed}"] = synthetic_actors.write_video(video, seconds, seed, 3)
        sources.append({"spec": str(video), "name": f"seed{seed}", "track": "motion"})
    config, events = folder / "tracks.toml", folder / "events.jsonl"
    config.write_text(tomli_w.dumps(config_for(sources)))
    done = subprocess.run([sys.executable, "run_pipeline.py", "--config", config, "--offline", "--headless",
                           "--web", "off", "--events", events], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed: {done.stderr[-2000:]}")
    lines = track_scores.read_lines(events)
    return str(config), [track_scores.score(lines, labels[name], stream=name) for name in labels]


def real_time(seed: int, seconds: float, folder: Path) -> dict:
    video = folder / f"live_{seed}.mp4"
    synthetic_actors.write_video(video, seconds, seed, 3)
    config = folder / "live.toml"
    config.write_text(tomli_w.dumps(config_for([{"spec": str(video), "name": "live", "track": "motion"}])))
    events = folder / "live.jsonl"
    done = subprocess.run([sys.executable, "run_pipeline.py", "--config", config, "--headless", "--web", "off",
                           "--events", events], cwd=REPO, capture_output=True, text=True, timeout=600)
    totals = [int(m.group(1)) for m in re.finditer(r"dropped \d+ \(total (\d+)\)", done.stderr)]
    lines = track_scores.read_lines(events)
    predictions = [line for line in lines if line["kind"] == "prediction"]
    latency = sorted(line["latency_ms"] for line in predictions)
    return {"dropped": totals[-1] if totals else 0, "predictions": len(predictions),
            "p50_ms": latency[len(latency) // 2] if latency else float("nan"),
            "tracks": len({line["track"] for line in predictions})}


def detection_cost(width: int, height: int, frames: int = 240) -> tuple[float, float]:
    """ms a frame: ours (a small copy, detector, tracker, presence) and MOG2 on the full frame alone."""
    video = synthetic_actors.ActorVideo(5100, 3, frames, 30.0, width, height)
    pictures = [video.render(i) for i in range(frames)]
    config = TrackingConfig(fps=30.0)
    detector, tracker = MotionDetector(config), Tracker(config, 40)
    presence = Presence(tracker)
    started = time.perf_counter()
    for i, picture in enumerate(pictures):
        small = display_image(picture, config.detect_width)
        scale = width / small.shape[1]
        boxes = detector.detect(small, scale)
        update = tracker.update(i, boxes, ~detector.ghosts)
        presence.gone(i, small, scale, update.active, boxes, detector.ghosts)
    ours = 1000 * (time.perf_counter() - started) / frames
    plain = cv2.createBackgroundSubtractorMOG2(600, 16, detectShadows=False)
    started = time.perf_counter()
    for picture in pictures:
        mask = plain.apply(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY))
        cv2.connectedComponentsWithStats(mask)
    return ours, 1000 * (time.perf_counter() - started) / frames


def forward_cost(batches=(1, 2, 3, 4), repeats: int = 30) -> dict[int, float]:
    """ms a batch of N track windows through the worker's own predictor (fp32, its flip views, one thread)."""
    import torch

    from streamer.config.network import Endpoints
    from streamer.config.stages import WorkerConfig
    from workers.model import load_model
    from streamer.stages.worker import Predictor

    torch.set_num_threads(1)
    pre = load_model(CHECKPOINT).preprocess
    predictor = Predictor(WorkerConfig("bench", Endpoints("", "", "", ""), str(CHECKPOINT), precision="fp32",
                                       backend="auto", threads=1, max_batch=4, flip_views=pre.flip_views))
    out = {}
    for n in batches:
        frames = np.random.default_rng(n).integers(0, 256, (n, pre.num_frames, pre.size, pre.size, 3), np.uint8)
        predictor.predict(frames)
        started = time.perf_counter()
        for _ in range(repeats):
            predictor.predict(frames)
        out[n] = 1000 * (time.perf_counter() - started) / repeats
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002, 5003, 5004])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tss-tracks-") as tmp:
        folder = Path(tmp)
        config, scores = accuracy(args.seeds, args.seconds, folder)
        live = real_time(args.seeds[0], min(args.seconds, 30.0), folder)
    costs = {size: detection_cost(*size) for size in ((640, 480), (1280, 720))}
    forwards = forward_cost()
    total = track_scores.TrackScores()
    for s in scores:
        total.predictions += s.predictions
        total.right += s.right
        total.unmatched += s.unmatched
        total.segments += s.segments
        total.recalled += s.recalled
        for label, (n, r) in s.per_label.items():
            counts = total.per_label.setdefault(label, [0, 0])
            counts[0], counts[1] = counts[0] + n, counts[1] + r
    matched = total.predictions - total.unmatched
    rows = "\n".join(f"| seed {seed} | {s.right}/{s.predictions} ({s.accuracy:.1%}) | {s.unmatched} | "
                     f"{s.recalled}/{s.segments} ({s.recall:.1%}) |" for seed, s in zip(args.seeds, scores))
    per_label = ", ".join(f"{synthetic.CLASSES[synthetic.CLASSES.index(k)].replace('_', ' ')} {r}/{n}"
                          for k, (n, r) in sorted(total.per_label.items()))
    body = f"""Date: {datetime.date.today()}. Machine: {cpu_name()}, 2 cores. Command: `python bench/tracks.py`
(K = 3 actors, 640×480, {args.seconds:g} s a seed, seeds {' '.join(map(str, args.seeds))}: never used in training;
the shipped demo model with its flip views, hop 4, `track = "motion"`, offline).

| video | predictions right | on no actor | segments ≥ 2 s with motion started on their actor |
|---|---|---|---|
{rows}
| **all** | **{total.right}/{total.predictions} ({total.accuracy:.1%})** | {total.unmatched} | **{total.recalled}/{total.segments} ({total.recall:.1%})** |

Goals: 85% of track predictions right, 90% of segments started. Of the predictions on an actor
(IoU ≥ 0.3), {total.right}/{matched} ({total.right / max(1, matched):.1%}) name its action. Per true label (right/predicted):
{per_label}.

Real time (seed {args.seeds[0]} read at its own 30 fps, not offline, one worker, on 2 cores): {live['predictions']}
track predictions over {live['tracks']} tracks, **{live['dropped']} windows dropped**, capture → event line p50
{live['p50_ms']:.0f} ms.

Detection + tracking in the capture, per frame (one core; MOG2 at 320 px wide, motion history, components,
ghost test, tracker, presence check) against MOG2 and components alone on the full-resolution frame:
640×480 {costs[(640, 480)][0]:.1f} ms against {costs[(640, 480)][1]:.1f} ms; 1280×720 {costs[(1280, 720)][0]:.1f} ms
against {costs[(1280, 720)][1]:.1f} ms.

Forward per batch of track windows (the worker's predictor, fp32, with the demo model's two flip views, one
thread): {', '.join(f'{n} track{"s" if n > 1 else ""} {ms:.1f} ms ({ms / n:.1f} ms a track)' for n, ms in forwards.items())}.
At hop 4 and 30 fps each track needs 7.5 windows a second.
"""
    print(body)
    if not args.no_write:
        write_section("Tracked actors: accuracy, real time and cost", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
