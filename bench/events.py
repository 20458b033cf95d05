"""Calm events (issue 23): how end_hold_s and merge_gap_s change the demo's action starts, measured.

    python bench/events.py                 # renders, predicts once (cached), sweeps, writes its BENCHMARKS.md section
    python bench/events.py --no-write      # print only

Held-out synthetic videos (``python -m streamer.synthetic``, one actor and ``--actors 3``) go once through
``run_pipeline.py --offline --headless`` with the demo config (``track = "motion"`` for the 3-actor ones) and
``[events] top_k`` = every label, so each prediction line holds the whole distribution; those are cached as
.npz and replayed through the dispatcher's own :class:`ActionTracker` under each event config
(:mod:`bench.event_scores`). Defaults are picked on the tuning seeds only; the held-out seeds are reported.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.event_scores import CAUSES, Recording, Scores, replay, score  # noqa: E402
from bench.report import write_section  # noqa: E402
from streamer.config.stages import EventConfig  # noqa: E402
from streamer.kinds import LineKind  # noqa: E402
from workers.model import describe_checkpoint  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "default.toml"
# Seeds no other part of the project uses: training draws its scenes from its own random streams, and the
# held-out seeds of training (1000, 1001), calibration (11-13, 2000, 2001), bench/demo_accuracy.py (2024)
# and bench/tracks.py (5000-5004) are left alone, so nothing here was ever looked at while tuning the model.
TUNE_SEEDS, HELD_SEEDS = (7101, 7102, 7103, 7104, 7105, 7106), (7201, 7202, 7203)
TUNE_ACTOR_SEEDS, HELD_ACTOR_SEEDS = (7301,), (7401, 7402)
DEMO_SEED = 0  # `synthetic:` in configs/default.toml: the live demo's own video, reported, never tuned on
HOLDS = (0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class Video:
    seed: int
    seconds: float
    actors: int  # 0: one actor's shots; 3: tracked actors

    @property
    def name(self) -> str:
        return f"{'actors' if self.actors else 'single'}{self.seed}"


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def shipped() -> dict:
    return tomllib.loads(DEFAULT_CONFIG.read_text())


def cache_key() -> str:
    """What the recorded predictions depend on besides the video: the checkpoint and the demo's [model]."""
    config = shipped()
    digest = hashlib.sha256((REPO / config["model"]["checkpoint"]).read_bytes())
    digest.update(json.dumps(config["model"], sort_keys=True).encode())
    return digest.hexdigest()[:12]


def cache_path(cache: Path, video: Video) -> Path:
    return cache / f"{video.name}_{video.seconds:g}s_{cache_key()}.npz"


def record(videos: list[Video], cache: Path) -> None:
    """Render the videos not cached yet and run them through the pipeline once, all as sources of one run."""
    missing = [v for v in videos if not cache_path(cache, v).exists()]
    if not missing:
        return
    labels = describe_checkpoint(REPO / shipped()["model"]["checkpoint"])[1]
    with tempfile.TemporaryDirectory(prefix="tss-events-") as tmp:
        folder, sources = Path(tmp), []
        for video in missing:
            out = folder / f"{video.name}.mp4"
            actors = ["--actors", str(video.actors)] if video.actors else []
            subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(out), "--seconds",
                            str(video.seconds), "--seed", str(video.seed), *actors], cwd=REPO, check=True,
                           capture_output=True)
            sources.append({"spec": str(out), "name": video.name, **({"track": "motion"} if video.actors else {})})
        config, events = folder / "events.toml", folder / "events.jsonl"
        config.write_text(tomli_w.dumps(pipeline_config(sources, len(labels))))
        done = subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--offline", "--headless",
                               "--web", "off", "--events", str(events)], cwd=REPO, capture_output=True, text=True,
                              timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"pipeline failed: {done.stderr[-2000:]}")
        lines = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
        cache.mkdir(parents=True, exist_ok=True)
        for video in missing:
            truth = json.loads((folder / f"{video.name}.labels.json").read_text())
            save(cache_path(cache, video), [x for x in lines if x.get("stream") == video.name], labels, truth,
                 video_fps(folder / f"{video.name}.mp4"))


def pipeline_config(sources: list[dict], classes: int) -> dict:
    """The demo config on these files, every label in each prediction line, and today's events (no holds: the
    pipeline's own start/end lines are then the "before" row, which checks the replay)."""
    config = shipped()
    model = {**config["model"], "checkpoint": str(REPO / config["model"]["checkpoint"])}
    events = {**config["events"], "top_k": classes, "end_hold_s": 0.0, "merge_gap_s": 0.0}
    return {**config, "model": model, "events": events, "sources": sources,
            "overlay": {**config.get("overlay", {}), "window": False}}


def video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return fps or 30.0  # the synthetic default


def save(path: Path, lines: list[dict], labels: list[str], truth: list[dict], fps: float) -> None:
    predictions = [x for x in lines if x["kind"] == LineKind.PREDICTION]
    order = {label: i for i, label in enumerate(labels)}
    probs = np.zeros((len(predictions), len(labels)), np.float32)
    for row, line in zip(probs, predictions):
        for label, p in line["top"]:
            row[order[label]] = p
    logged = [x for x in lines if x["kind"] in (LineKind.START, LineKind.END)]
    np.savez_compressed(
        path, frame_index=np.array([x["frame_index"] for x in predictions], np.int64),
        frame_ts=np.array([x["frame_ts"] for x in predictions], np.float64),
        track=np.array([x.get("track", -1) for x in predictions], np.int64),
        box=np.array([x.get("box") or [np.nan] * 4 for x in predictions], np.float32).reshape(-1, 4),
        probs=probs, ended=np.array([x["track"] for x in lines if x["kind"] == "track_ended"], np.int64),
        labels=json.dumps(labels), truth=json.dumps(truth), logged=json.dumps(logged), fps=fps)


def load(path: Path, video: Video) -> tuple[Recording, list[dict]]:
    """The recording, and the pipeline's own start/end lines."""
    data = np.load(path)
    rec = Recording(video.name, float(data["fps"]), json.loads(str(data["labels"])), json.loads(str(data["truth"])),
                    data["frame_index"], data["frame_ts"], data["track"], data["box"], data["probs"],
                    frozenset(int(t) for t in data["ended"]))
    return rec, json.loads(str(data["logged"]))


def same_events(a: list[dict], b: list[dict]) -> bool:
    key = lambda x: (x["kind"], x["label"], x["frame_index"], x.get("track"))  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


def run(recs: list[Recording], config: EventConfig) -> Scores:
    return sum((score(rec, replay(rec, config), config.smoothing) for rec in recs), Scores())


def meets(s: Scores, before: Scores) -> bool:
    """Issue 23's goals: no label starts twice within one of its segments, ≥ 95% of segments of 2 s or more
    found, onset p50 no later than today's."""
    return s.twice == 0 and s.found_rate >= 0.95 and s.onset(50) <= before.onset(50) + 1e-9


def choose(sweep: dict, before: Scores) -> tuple[tuple, bool]:
    """The setting closest to the goals (fewest segments started twice, then most found, onset p50 no later
    than before), then with the earliest end lines (p90 to a tenth of a second, then p50), then the longest
    hold (a margin for slower blinks and live timing that costs nothing), then the shortest merge gap; and
    whether it meets every goal. Keys end with (end_hold_s, merge_gap_s)."""
    def key(k):
        s = sweep[k]
        return (s.twice, -s.found, s.onset(50) > before.onset(50) + 1e-9, round(s.end_lag(90), 1),
                round(s.end_lag(50), 2), -k[-2], k[-1], k)
    best = min(sweep, key=key)
    return best, meets(sweep[best], before)


def shortfalls(s: Scores, before: Scores) -> str:
    """The goals ``s`` misses, in words."""
    out = [f"{s.twice} segment{'s' if s.twice > 1 else ''} started twice"] if s.twice else []
    if s.found_rate < 0.95:
        out.append(f"{s.found}/{s.long_segments} ({s.found_rate:.1%}) of segments ≥ 2 s found, under 95%")
    if s.onset(50) > before.onset(50) + 1e-9:
        out.append(f"onset p50 {s.onset(50):.2f} s against {before.onset(50):.2f} s before")
    return "; ".join(out) or "none"


HEADER = ("| config | segments | starts of its label per segment, mean / max | segments started twice or more "
          "| segments ≥ 2 s found | false starts / starts | onset s, p50 / p90 | end line after segment end s, "
          "p50 / p90 |\n|---|---|---|---|---|---|---|---|")


def row(name: str, s: Scores) -> str:
    return (f"| {name} | {s.segments} | {s.mean_starts:.2f} / {s.max_starts} | {s.twice} | "
            f"{s.found}/{s.long_segments} ({s.found_rate:.1%}) | {s.false_starts}/{s.starts} | "
            f"{s.onset(50):.2f} / {s.onset(90):.2f} | {s.end_lag(50):.2f} / {s.end_lag(90):.2f} |")


def holds_name(config: EventConfig) -> str:
    return f"hold {config.end_hold_s:g} s, merge {config.merge_gap_s:g} s"


def thresholds_name(config: EventConfig) -> str:
    return f"smoothing {config.smoothing}, start {config.start_threshold:g}, end {config.end_threshold:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each one-actor video")
    parser.add_argument("--actor-seconds", type=float, default=30.0, help="length of each 3-actor video")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "events-cache")
    parser.add_argument("--holds", type=float, nargs="+", default=list(HOLDS), help="end_hold_s and merge_gap_s values")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    sets = {name: [Video(s, args.seconds, 0) for s in single] + [Video(s, args.actor_seconds, 3) for s in actors]
            for name, single, actors in (("tuning", TUNE_SEEDS, TUNE_ACTOR_SEEDS),
                                         ("held-out", HELD_SEEDS, HELD_ACTOR_SEEDS), ("live demo's", (DEMO_SEED,), ()))}
    record([v for videos in sets.values() for v in videos], args.cache)
    loaded = {name: [load(cache_path(args.cache, v), v) for v in videos] for name, videos in sets.items()}
    events = shipped()["events"]
    before = EventConfig(smoothing=events["smoothing"], start_threshold=events["start_threshold"],
                         end_threshold=events["end_threshold"], end_hold_s=0.0, merge_gap_s=0.0)
    faithful = sum(same_events(replay(rec, before), logged) for pairs in loaded.values() for rec, logged in pairs)
    recs = {name: [rec for rec, _ in pairs] for name, pairs in loaded.items()}
    print(f"replay of before = the pipeline's own events on {faithful}/{sum(map(len, recs.values()))} videos")
    text = report(args, recs, sweeps(recs, before, args.holds), faithful)
    print(text)
    if not args.no_write:
        write_section("Events: calm starts and ends (issue 23)", text)
    return 0


@dataclass
class Sweeps:
    before: EventConfig
    base: Scores  # before, on the tuning seeds' one-actor videos
    holds: dict[tuple, Scores]  # (end_hold_s, merge_gap_s) → scores, same videos
    picked: EventConfig
    thresholds: dict[tuple, Scores]  # (smoothing, start, end, end_hold_s, merge_gap_s) with the picked holds
    best: EventConfig  # the best of those
    best_scores: Scores


def sweeps(recs: dict[str, list[Recording]], before: EventConfig, values: list[float]) -> Sweeps:
    """Holds on the tuning seeds' one-actor videos (the default demo is one actor's shots: the goals are its),
    then smoothing and thresholds with the holds picked."""
    demo = [r for r in recs["tuning"] if not r.tracked]
    base = run(demo, before)
    holds = {(h, m): run(demo, replace(before, end_hold_s=h, merge_gap_s=m))
             for h, m in itertools.product(values, values)}
    (hold, merge), _ = choose(holds, base)
    picked = replace(before, end_hold_s=hold, merge_gap_s=merge)
    grid = {(k, s, e, hold, merge): replace(picked, smoothing=k, start_threshold=s, end_threshold=e)
            for k, s, e in itertools.product((2, 3, 5), (0.6, 0.7, 0.8), (0.3, 0.4, 0.5)) if e <= s}
    thresholds = {key: run(demo, config) for key, config in grid.items()}
    best, _ = choose(thresholds, base)
    return Sweeps(before, base, holds, picked, thresholds, grid[best], thresholds[best])


def table(recs: dict[str, list[Recording]], configs: list[tuple[str, EventConfig]]) -> tuple[list[str], dict]:
    """Rows per seed set, kind of video and config; and each config's scores pooled over every video."""
    rows, pooled = [], {name: Scores() for name, _ in configs}
    for name in recs:
        for kind, tracked in (("one actor", False), ("3 actors, tracked", True)):
            part = [r for r in recs[name] if r.tracked == tracked]
            for label, config in configs if part else ():
                scores = run(part, config)
                rows.append(row(f"{name}, {kind}: {label}", scores))
                pooled[label] = pooled[label] + scores
    return rows, pooled


def causes(s: Scores) -> str:
    return ", ".join(f"{cause} {s.restarts.get(cause, 0)}" for cause in CAUSES)


def _twice(s: Scores) -> str:
    """Which labels started more than once within one of their segments, and the most starts in one."""
    labels = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(s.twice_by_label.items()))
    return f"segments started twice or more {s.twice} ({labels}), most starts in one {s.max_starts}" if s.twice \
        else "no segment started twice"


def verdict(sw: Sweeps, recs: dict[str, list[Recording]]) -> str:
    """Which holds, why, what they leave, and whether smoothing or thresholds would do better."""
    picked, held = sw.picked, [r for r in recs["held-out"] if not r.tracked]
    text = (f"**Recommended: `end_hold_s = {picked.end_hold_s:g}`, `merge_gap_s = {picked.merge_gap_s:g}`** "
            f"(smoothing, thresholds unchanged): of the holds, the setting closest to the goals on the tuning "
            f"seeds (one actor) whose end lines come soonest, with the longest hold at that cost. Goals it misses "
            f"there: {shortfalls(sw.holds[picked.end_hold_s, picked.merge_gap_s], sw.base)}; on the held-out "
            f"seeds: {shortfalls(run(held, picked), run(held, sw.before))}.")
    missed = sum((run(recs[name], picked) for name in recs), Scores()).missed
    if missed:
        text += (" No hold finds a segment the model never scores high enough; the one-actor segments ≥ 2 s "
                 "not found (all seeds), with their label's best smoothed score in them: "
                 + ", ".join(f"{label.replace('_', ' ')} {peak:.2f}" for label, peak in missed if peak == peak) + ".")
    demo = recs.get("live demo's", [])
    if demo:
        was, now = run(demo, sw.before), run(demo, picked)
        text += (f" On the live demo's own video, before: {_twice(was)}; with these holds: {_twice(now)}.")
    return text + _thresholds_verdict(sw, held)


def _thresholds_verdict(sw: Sweeps, held: list[Recording]) -> str:
    """Whether other smoothing or thresholds (with the recommended holds) would meet the goals, and hold up."""
    best, picked = sw.best, sw.picked
    if best == picked:
        return " No smoothing or thresholds with these holds do better on the tuning seeds (last table)."
    on_held, picked_held = run(held, best), run(held, picked)
    text = (f" Of smoothing and thresholds with these holds (last table), the closest to the goals on the tuning "
            f"seeds is {thresholds_name(best)}: it misses {shortfalls(sw.best_scores, sw.base)} there, and on the "
            f"held-out seeds {shortfalls(on_held, run(held, sw.before))}, with {on_held.false_starts} false starts "
            f"against {picked_held.false_starts} (its rows above).")
    if on_held.found <= picked_held.found:
        text += " It finds no segment more on the held-out seeds, so the thresholds stay as they are."
    return text


def report(args, recs: dict[str, list[Recording]], sw: Sweeps, faithful: int) -> str:
    configs = [("before", sw.before), (holds_name(sw.picked), sw.picked)]
    if sw.best != sw.picked:
        configs.append((f"{thresholds_name(sw.best)}, {holds_name(sw.best)}", sw.best))
    rows, pooled = table(recs, configs)
    before = sw.before
    seeds = (f"tuning: one actor {' '.join(map(str, TUNE_SEEDS))} ({args.seconds:g} s each), 3 actors "
             f"{' '.join(map(str, TUNE_ACTOR_SEEDS))} ({args.actor_seconds:g} s each); held-out: one actor "
             f"{' '.join(map(str, HELD_SEEDS))}, 3 actors {' '.join(map(str, HELD_ACTOR_SEEDS))}; none used in "
             f"training or by another benchmark. Also the live demo's own video (`synthetic:` is seed {DEMO_SEED}), "
             f"its first {args.seconds:g} s, reported only")
    sweep = lambda scores, name: "\n".join(row(name(k), s) for k, s in scores.items())  # noqa: E731
    return f"""Date: {datetime.date.today()}. Machine: {cpu_name()}, 2 cores. Command: `python bench/events.py`
(the shipped demo model and `configs/default.toml`: smoothing {before.smoothing}, start {before.start_threshold:g},
end {before.end_threshold:g}, hop 4, its flip views; offline; `track = "motion"` for the 3-actor videos).
Seeds: {seeds}. Each video went once through `run_pipeline.py
--offline` with every label in its prediction lines; those were replayed through the dispatcher's
`ActionTracker` (clock = frame_index / fps). The replay of "before" (`end_hold_s = 0`, `merge_gap_s = 0`:
today's behaviour) writes the pipeline's own start and end lines on {faithful} of {sum(map(len, recs.values()))} videos.

A start belongs to a segment when its label is the segment's, its frame falls in it and (tracked) its box
overlaps the segment's actor (IoU ≥ 0.3). A segment of 2 s or more is found when its label starts in it or an
action of its label is under way at its start (tracked: segments with motion only). A false start names a
label that is not the truth at its frame (tracked: or is on no actor). Onset: segment start to its label's
first start in it (0 when already under way). End line: from the segment's last frame to the frame whose
result wrote its action's end line (holds and merge gaps delay it). Goals, on the default demo (one actor): no
segment started twice, ≥ 95% found, onset p50 no later than before.

{HEADER}
{chr(10).join(rows)}

Second starts of a label within its segment, by cause (all seeds, both kinds of video): before
{causes(pooled["before"])}; with the recommended holds {causes(pooled[configs[1][0]])}. Holds and merge gaps
remove only the first kind. The second is the model naming another label for long enough to cross the start
threshold; the third is a tracked actor whose track ends and a new one begins (the demo's moving actors leave
their stage at one edge and come back at the other), and each track's events are its own.

{verdict(sw, recs)}

Holds, tuning seeds, one actor:

{HEADER}
{sweep(sw.holds, lambda k: f"hold {k[0]:g} s, merge {k[1]:g} s")}

Smoothing and thresholds with the recommended holds, tuning seeds, one actor:

{HEADER}
{sweep(sw.thresholds, lambda k: f"smoothing {k[0]}, start {k[1]:g}, end {k[2]:g}")}
"""


if __name__ == "__main__":
    sys.exit(main())
