"""Taught actions (issue 24) end to end: is a new action taught from 10 examples *found* as an action on videos
the teaching never saw, and do the checkpoint's own labels keep their accuracy?

    python bench/taught_events.py                  # writes its BENCHMARKS.md section (about 26 min on 2 cores)
    python bench/taught_events.py --teach cli      # the CLI path alone (about 9 min)
    python bench/taught_events.py --no-write       # print only
    python bench/taught_events.py --keep /tmp/te   # keep the clips, videos, adapters and event logs there

Each new action is taught from 10 examples of 2.5 s, three ways (``--teach``):

- *CLI*: the real command (``python -m workers.teach --checkpoint models/demo.safetensors --clips DIR --out
  ADAPTER``) from 10 clips of each new action and ordinary footage of the demo camera in ``none/`` (10 clips of its
  own actions, 2.5 s each, and 10 across one of its cuts, 2.5 s each side), rendered with teaching seeds;
- *web*: through the web stage of a running pipeline, from spans of what its cameras showed, against the ordinary
  windows its store kept (:mod:`bench.web_teaching`);
- *shots*: the web's cameras cut into clip folders (the shots, the footage between) and taught through the CLI:
  the same examples, the other path.

A kept folder that measured other teachings of the same videos before (``--keep``) adds them to the report.

Two scenarios each:

- *alone* (the issue's goal as stated): each new action (bouncing, orbiting, shaking) taught alone; its held-out
  videos mix it with the demo's own actions only;
- *together*: the three taught in one adapter; its held-out videos mix all three with the demo's actions.

Held-out videos (``--seeds`` × ``--seconds`` a scenario: the first seeds from ``--first-seed`` up whose scene plan
holds enough segments of ≥ 2 s of the scenario's new actions; the teaching never used them) run through the real
pipeline, ``run_pipeline.py --offline --headless --store off --web off --events FILE --adapter ADAPTER`` (all
videos of a scenario as sources of one run, a stream each), and once, all together, without an adapter. From the
event lines:

- segment recall: of the label's ground-truth segments of 2 s or more, the fraction with a ``start`` line of the
  label on that stream whose frame_index lies in [segment start, segment end + one window span];
- false-start rate: of the label's ``start`` lines, the fraction outside every segment of the label on its stream
  (same tolerance), and how many of those fall on one of the *other* new actions;
- the old labels' accuracy: per-prediction top-1 on the demo's own classes, over windows whose truth (the segment
  at the window's last frame) is a demo class and which do not straddle a cut, with the adapter and without;
  and, beside the events, on the demo's own held-out windows (seeds 2000-2007, as ``workers.evaluate`` scores
  them), one window at a time, with each adapter and without.

The issue's goal: recall ≥ 90%, false starts ≤ 5%, the old accuracy within 0.5 point (on both measures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
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
from bench.web_teaching import BETWEEN_S, EXAMPLES, camera_folders, teach_through_web  # noqa: E402
from streamer.stages.web.teach import NEGATIVES  # noqa: E402
from streamer.synthetic.files import make_none_clips, make_teaching_clips, read_labels, write_video  # noqa: E402
from streamer.synthetic.scenes import ALL_ACTIONS, CLASSES, segments_for  # noqa: E402
from workers.adapter import load_adapter  # noqa: E402
from workers.model import load_model  # noqa: E402
from workers.sampling import window_span  # noqa: E402
from workers.training.data import WindowSpec, concat, synthetic_windows  # noqa: E402
from workers.training.teaching import embed  # noqa: E402
from workers.views import FlipViews  # noqa: E402

HEADING = "Taught actions: events on held-out videos"
NEW = ("bouncing", "orbiting", "shaking")
SUMMARY = "summary.json"
TOGETHER = "together"  # the three taught in one adapter, each the others' negative
WEB = "web-"  # a run taught through the web stage: its key, adapter and event file start so
SHOTS = "shots-"  # taught through the CLI from the web's cameras cut into clips (the same examples, the other path)
CHECKPOINT = REPO / "models" / "demo.safetensors"
FPS = 30
SPAN = window_span(8, 4)  # the demo model's window: 8 frames, every 4th (29 source frames)
TEACH_SEED, NONE_SEED = 9300, 9310  # the held-out videos' seeds start at --first-seed (7101), far from these
CLIP_S = 2.5
MIN_SEGMENT_S = 2.0
READING = (  # what the figures of the last run say (BENCHMARKS.md); written after reading it
    "Reading (2026-12-07, fourth run of the day): taught through the web stage of a running pipeline, from "
    "spans of what its cameras showed and the ordinary windows its store kept, each label alone meets the issue's "
    "goal: recall 100 / 100 / 91%, no start elsewhere, the old labels on the demo's held-out windows -0.34 / -0.09 / "
    "-0.17 point. (On the scenario videos bouncing costs 0.6 point: eleven single windows, six of them in one "
    "moving_up shot of seed 7133, where a bob reads like a climb; none started an action.) Taught together "
    "through the web, 100 / 91 / 100% with no false start and the old labels unchanged. On a second set of "
    "held-out videos (`--teach web --first-seed 7401`, 9 segments a label, the teaching taught again): alone 100 / "
    "100 / 100%, no start elsewhere, the held-out demo -0.26 point each; but the scenario videos' own demo windows "
    "lose 1.6 / 0.5 / 0.2 point, 25 of bouncing's 27 in two shots of seed 7408 (a blinking and a moving_down "
    "one), and together the three find only 62 / 78 / 83% with two starts elsewhere: one look-alike shot moves "
    "these figures a lot, and the together case is not solid. Through the CLI from the "
    "bench's own clips, 91 / 82 / 82% on this set; from the web's cameras cut into clips (the same examples, the "
    "other path), 100 / 82 / 91%. The misses are a few hard scenes: seed 7133 frames 856-1054 (one star going "
    "round slowly in heavy pixel noise on stripes) is missed by all three labels' CLI adapters, and seed 7152 by "
    "two. Eleven segments a label make one segment 9 points, so the issue's 'several seeds' are measured on "
    "three sets (`bench/taught_pool.py`, the next section): on the other two the CLI finds every segment "
    "(21 of 21 a label), 97 / 94 / 94% over all 32, no start elsewhere (the web path 100 / 97 / 97%, taught "
    "again for each set). Tried in the replay "
    "(`bench/taught_replay.py`'s windows) to lift those scenes, none shipped: denser windows of the examples, "
    "noise or shifted copies of the clips, a looser vote, `none/` as one group or read whole: each moves one "
    "segment at most, some cost the old labels more. This run also found that a worker handed an adapter of two "
    "or more labels read its weights in the wrong layout, so every result was dropped (fixed, with a test)."
)


def held_out_seeds(first: int, count: int, seconds: float, least: int, choices: list[str],
                   new: tuple[str, ...]) -> list[int]:
    """The first ``count`` seeds from ``first`` up whose video (drawing from ``choices``) holds at least ``least``
    segments of ≥ 2 s of the ``new`` actions (read from the scene plan, before any rendering: chosen by their
    truth, never by a result)."""
    seeds, seed = [], first
    while len(seeds) < count:
        segs = segments_for(seed, round(seconds * FPS), FPS, choices)
        if sum(s.label in new and s.end_frame - s.start_frame + 1 >= MIN_SEGMENT_S * FPS for s in segs) >= least:
            seeds.append(seed)
        seed += 1
    return seeds


def render_teaching(root: Path, examples: int, none: int, cuts: int) -> dict[str, Path]:
    """The teaching folders: one per new label (``<label>/`` and the shared ``none/`` clips), and ``together``
    (the three labels' folders and ``none/``)."""
    shared = root / "none-clips"
    make_none_clips(shared, none, seconds=CLIP_S, seed=NONE_SEED, cuts=cuts)
    out = {}
    for i, label in enumerate(NEW):
        folder = root / f"teach-{label}"
        make_teaching_clips(folder, label, examples, seconds=CLIP_S, seed=TEACH_SEED + i)
        shutil.copytree(shared / "none", folder / "none", dirs_exist_ok=True)
        out[label] = folder
    together = root / "teach-together"
    for label in (*NEW, "none"):
        shutil.copytree((out[label] if label in out else shared) / label, together / label, dirs_exist_ok=True)
    out[TOGETHER] = together
    return out


def run(args: list, log: Path) -> float:
    began = time.perf_counter()
    with log.open("w") as out:
        subprocess.run([sys.executable, *map(str, args)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - began


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def within(frame: int, segments: list[dict]) -> bool:
    return any(s["start_frame"] <= frame <= s["end_frame"] + SPAN for s in segments)


def actions_of(labels: list[dict]) -> list[dict]:
    """The video's shots with back-to-back shots of one label joined: one action to the events, which cannot
    start again what is still under way across the cut."""
    out: list[dict] = []
    for s in labels:
        if out and out[-1]["label"] == s["label"] and out[-1]["end_frame"] + 1 == s["start_frame"]:
            out[-1] = {**out[-1], "end_frame": s["end_frame"]}
        else:
            out.append(dict(s))
    return out


def score_label(label: str, events: list[dict], truth: dict[str, list[dict]]) -> dict:
    """Segment recall and false starts of ``label`` over every stream."""
    segments = found = starts = elsewhere = on_new = 0
    for stream, labels in truth.items():
        own = [s for s in actions_of(labels) if s["label"] == label]
        at = [e["frame_index"] for e in events if e["kind"] == "start" and e["stream"] == stream
              and e["label"] == label]
        for s in own:
            if s["end_frame"] - s["start_frame"] + 1 >= MIN_SEGMENT_S * FPS:
                segments += 1
                found += any(s["start_frame"] <= f <= s["end_frame"] + SPAN for f in at)
        starts += len(at)
        for f in at:
            if not within(f, own):
                elsewhere += 1  # on another new action: the window's last or first frame is in one of theirs
                on_new += any(s["label"] in NEW and s["start_frame"] <= g <= s["end_frame"]
                              for s in labels for g in (f, max(0, f - SPAN + 1)))
    return {"segments": segments, "found": found, "starts": starts, "elsewhere": elsewhere, "on_new": on_new}


def old_accuracy(events: list[dict], truth: dict[str, list[dict]]) -> tuple[int, int]:
    """(right, windows): per-prediction top-1 on windows of a demo class that lie within one segment."""
    right = total = 0
    for e in events:
        if e["kind"] != "prediction":
            continue
        end = e["frame_index"]
        first = max(0, end - SPAN + 1)
        seg = next((s for s in truth[e["stream"]] if s["start_frame"] <= end <= s["end_frame"]), None)
        if seg is None or seg["label"] not in CLASSES or first < seg["start_frame"]:
            continue
        total += 1
        right += e["top"][0][0] == seg["label"]
    return right, total


def measure(args: argparse.Namespace, work: Path, scenarios: dict) -> dict:
    """Render, teach (through the CLI, through the web stage, or both) and run every scenario in ``work``; the
    timings, seeds, videos and what the teaching said, also written to ``work/summary.json`` (``--rescore``
    scores them again without running)."""
    began = time.perf_counter()
    videos, seeds = {}, {}
    for name, (labels, choices, least) in scenarios.items():
        seeds[name] = held_out_seeds(args.first_seed, args.seeds, args.seconds, least, choices, labels)
        videos[name] = [work / "held-out" / name / f"{name}-{seed}.mp4" for seed in seeds[name]]
        for seed, video in zip(seeds[name], videos[name]):
            if not video.exists():
                write_video(video, args.seconds, seed, choices=choices)
    render_s = time.perf_counter() - began
    adapters, said, teach_s = {}, {}, {}

    def teach_folders(folders: dict[str, Path], prefix: str) -> float:
        began_cli = time.perf_counter()
        for name, folder in folders.items():
            key = prefix + name
            adapters[key] = work / f"{key}.safetensors"
            run(["-m", "workers.teach", "--checkpoint", args.checkpoint, "--clips", folder, "--out", adapters[key]],
                work / f"teach-{key}.log")
            said[key] = (work / f"teach-{key}.log").read_text().strip().splitlines()[-1].split(": ", 1)[-1]
        return time.perf_counter() - began_cli

    if "cli" in args.teach:
        teach_s["cli"] = teach_folders(render_teaching(work / "teach", args.examples, args.none, args.none_cuts), "")
    if "shots" in args.teach:
        teach_s["shots"] = teach_folders(camera_folders(work, NEW, TOGETHER), SHOTS)
    if "web" in args.teach:
        web, web_said, teach_s["web"] = teach_through_web(work, args.checkpoint, NEW, SPAN, TOGETHER)
        adapters |= {f"{WEB}{name}": path for name, path in web.items()}
        said |= {f"{WEB}{name}": line for name, line in web_said.items()}
    pipeline = ["run_pipeline.py", "--checkpoint", args.checkpoint, "--offline", "--headless", "--store", "off",
                "--web", "off"]
    runs_s = []
    for key, adapter in adapters.items():
        out = work / f"events-{key}.jsonl"
        out.unlink(missing_ok=True)
        sources = [a for v in videos[scenario_of(key)] for a in ("--source", v)]
        runs_s.append(run([*pipeline, *sources, "--adapter", adapter, "--events", out], work / f"run-{key}.log"))
    plain = work / "events-plain.jsonl"  # every scenario's videos, once, without an adapter
    earlier = json.loads((work / SUMMARY).read_text()) if (work / SUMMARY).exists() else None
    if earlier is None or earlier["seeds"] != seeds or not plain.exists():
        earlier = None  # another set of videos: nothing of the runs kept there is added to this one
        plain.unlink(missing_ok=True)
        sources = [a for name in scenarios for v in videos[name] for a in ("--source", v)]
        runs_s.append(run([*pipeline, *sources, "--events", plain], work / "run-plain.log"))
    summary = {"render_s": render_s, "teach_s": teach_s, "runs_s": sum(runs_s),
               "wall_s": time.perf_counter() - began, "seeds": seeds, "said": said, "runs": list(adapters),
               "videos": {name: [str(v) for v in vs] for name, vs in videos.items()}}
    if earlier is not None:  # the same videos, other teachings measured before: one report of them all
        summary |= {"teach_s": earlier["teach_s"] | teach_s, "said": earlier["said"] | said,
                    "runs": list(dict.fromkeys(earlier["runs"] + summary["runs"])),
                    "runs_s": earlier["runs_s"] + summary["runs_s"], "wall_s": earlier["wall_s"] + summary["wall_s"],
                    "render_s": earlier["render_s"] + render_s}
    (work / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def scenario_of(key: str) -> str:
    """A run's scenario: its key without the teaching path (``web-bouncing`` → ``bouncing``)."""
    return key.removeprefix(WEB).removeprefix(SHOTS)


DEMO_SEEDS = tuple(range(2000, 2008))  # the demo's held-out videos, as workers.evaluate scores them (40 s, hop 8)


def held_out_demo(checkpoint: Path, adapters: dict[str, Path]) -> dict[str, float]:
    """The old labels' top-1 over the demo's held-out windows (every window of seeds 2000-2007, each with its flip
    views mapped back, as the workers score them), without an adapter ("plain") and with each of ``adapters``."""
    model = load_model(str(checkpoint))
    pre, labels = model.preprocess, list(model.labels)
    spec = WindowSpec(pre.num_frames, pre.frame_interval, 8)
    windows = concat([synthetic_windows(seed, 40, pre.size, spec, labels) for seed in DEMO_SEEDS])
    features, logits = embed(model, windows.frames, pre.flip_views)

    def top1(names: tuple[str, ...] = (), extra: np.ndarray | None = None) -> float:
        z = logits if extra is None else torch.cat([logits, torch.from_numpy(extra)], dim=1)
        averaged = FlipViews(labels + list(names), pre.flip_views).average_windows(z.softmax(-1))
        return float((averaged.argmax(dim=1).numpy() == windows.targets).mean())

    out = {"plain": top1()}
    for name, path in adapters.items():
        adapter = load_adapter(path)
        out[name] = top1(adapter.labels, adapter.logits(features.numpy()))
    return out


def score_run(labels: tuple[str, ...], events: list[dict], truth: dict[str, list[dict]], base: float) -> list[dict]:
    """One row per taught label: its segments found and starts elsewhere; the old labels' top-1 and its change."""
    right, total = old_accuracy(events, truth)
    acc = right / max(1, total)
    return [{**score_label(label, events, truth), "label": label, "old": acc, "change": (acc - base) * 100}
            for label in labels]


def truths(summary: dict) -> dict[str, list[dict]]:
    """Every held-out video's labels (its segments), by stream name."""
    return {Path(v).stem: read_labels(Path(v).with_suffix(".labels.json"))
            for videos in summary["videos"].values() for v in videos}


def baselines(summary: dict, plain: list[dict], truth: dict[str, list[dict]]) -> dict[str, tuple[int, int, dict]]:
    """Per scenario: the old labels' right and total predictions over its videos without an adapter (``plain``:
    the run of every video), and those videos' truth."""
    out = {}
    for name, videos in summary["videos"].items():
        own = {Path(v).stem: truth[Path(v).stem] for v in videos}
        out[name] = (*old_accuracy([e for e in plain if e.get("stream") in own], own), own)
    return out


def report(args: argparse.Namespace, scenarios: dict, summary: dict, events: dict[str, list[dict]],
           truth: dict[str, list[dict]], demo: dict[str, float]) -> str:
    """The BENCHMARKS.md section: a row per teaching path, scenario and taught label."""
    seeds, said = summary["seeds"], summary["said"]
    rows, met, bases = [], {}, baselines(summary, events["plain"], truth)
    for key in summary.get("runs", list(scenarios)):
        name = scenario_of(key)
        right, total, own = bases[name]
        base = right / max(1, total)
        for r in score_run(scenarios[name][0], events[key], own, base):
            recall, false = r["found"] / max(1, r["segments"]), r["elsewhere"] / max(1, r["starts"])
            met[key] = (met.get(key, True) and recall >= 0.9 and false <= 0.05 and abs(r["change"]) <= 0.5
                        and abs(demo[key] - demo["plain"]) * 100 <= 0.5)
            rows.append(f"| {path_of(key)} | {'alone' if name in NEW else name} | {r['label']} | {r['segments']} "
                        f"| {r['found']} | {recall:.0%} | {r['starts']} | {r['elsewhere']} | {false:.0%} "
                        f"| {r['on_new']} | {base:.1%} of {total} | {r['old']:.1%} | {r['change']:+.1f} |")
    demo_line = "; ".join(f"{path_of(key)} {scenario_of(key)} {demo[key]:.2%} ({(demo[key] - demo['plain']) * 100:+.2f})"
                          for key in summary.get("runs", list(scenarios)))
    said_lines = "\n".join(f"- {path_of(key)}, {scenario_of(key)}: `{line}`" for key, line in said.items())
    seed_lines = "; ".join(f"{name}: {', '.join(map(str, seeds[name]))}" for name in scenarios)
    command = "python bench/taught_events.py" + \
        ("" if Path(args.checkpoint).resolve() == CHECKPOINT else f" --checkpoint {args.checkpoint}")
    teach_s = summary["teach_s"] if isinstance(summary["teach_s"], dict) else {"cli": summary["teach_s"]}
    text = f"""`{command}` on {cpu_name()}, {datetime.date.today()} ({summary["wall_s"] / 60:.1f} min in \
all: rendering the held-out videos {summary["render_s"]:.0f} s, teaching \
{", ".join(f"{path} {s:.0f} s" for path, s in teach_s.items())}, held-out pipeline runs {summary["runs_s"]:.0f} s). \
Each new action taught from {args.examples} examples of {CLIP_S} s, three ways:

- **CLI**: `python -m workers.teach --clips DIR` from {args.examples} clips of each new action and ordinary \
footage of the demo camera in `none/` ({args.none} clips of its own actions, {CLIP_S} s each, and {args.none_cuts} \
across one of its cuts, {CLIP_S} s each side);
- **web**: through the web stage of a running pipeline (`bench/web_teaching.py`): a camera a new action, the \
demo camera's own footage with {EXAMPLES} shots of the action, {BETWEEN_S:.0f} s apart ({len(NEW)} cameras, \
`--offline --store DB --web 127.0.0.1:0`, `[teach] keep_h`); once each is past its last shot, and while they \
still run, `POST /api/teach` with a span over each shot (its windows wholly inside, as the review page sends a \
span dragged over it): the examples are the store's windows, the negatives {NEGATIVES} ordinary windows of that \
camera the store kept. Each label alone (the one before forgotten through `POST /api/teach/forget`), then the \
others taught beside the last. The store's adapter versions, written out, are what the held-out runs load.
- **CLI, the cameras' shots**: the same cameras cut into clips for `python -m workers.teach` (each shot of the \
action a clip in `<label>/`, the footage between them clips in `none/`): the web's examples through the CLI.

Then each adapter runs over held-out videos of {args.seconds:.0f} s that no teaching saw, \
`run_pipeline.py --offline --headless --adapter ADAPTER` (default events: start 0.7, end 0.5, smoothing 3), and \
the videos run once more without an adapter for the old labels' baseline. Two scenarios:

- **alone** (the goal as the issue states it): each new action taught alone (an adapter of one label); its \
{args.seeds} held-out videos mix it with the demo's own actions only (each with ≥ {args.least} segments of it \
of ≥ 2 s, chosen by their labels).
- **together**: the three taught in one adapter (each is the others' negative); {args.seeds} held-out videos \
mix all three with the demo's actions (≥ {args.least_together} new-action segments of ≥ 2 s each).

Seeds: {seed_lines}. Found: a segment of the label of ≥ {MIN_SEGMENT_S:.0f} s (back-to-back shots of one label \
joined: one action) with a `start` of the label on its stream from its first frame to {SPAN} frames (one window) \
past its last; elsewhere: a `start` of the label outside all of them. Old labels: per-prediction top-1 over \
windows of a demo class inside one segment.

| taught through | scenario | taught label | segments ≥ 2 s | found | recall | starts | elsewhere | false starts | of them on another new action | old labels' top-1 without | with | change (points) |
|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

The old labels on the demo's own held-out windows (every window of seeds {DEMO_SEEDS[0]}-{DEMO_SEEDS[-1]}, 40 s, \
hop 8, flip views mapped back: what `workers.evaluate` scores, one window at a time with no smoothing), top-1 \
without an adapter {demo["plain"]:.2%}; with each: {demo_line}.

Goal (≥ 90% recall, ≤ 5% false starts, old labels within 0.5 point on both measures): \
{"; ".join(f"{path_of(key)} {scenario_of(key)} {'met' if ok else 'not met'}" for key, ok in met.items())}. \
What each teaching said of its held-out check (on its own examples):
{said_lines}

{READING}
"""
    return text


def path_of(key: str) -> str:
    return "web" if key.startswith(WEB) else "CLI, the cameras' shots" if key.startswith(SHOTS) else "CLI"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10, help="clips of each new label taught from")
    parser.add_argument("--none", type=int, default=10, help="clips of ordinary actions taught from")
    parser.add_argument("--none-cuts", type=int, default=10,
                        help="clips of ordinary footage across a cut (two actions) taught from, in none/ too")
    parser.add_argument("--seeds", type=int, default=6, help="held-out videos of each scenario")
    parser.add_argument("--first-seed", type=int, default=7101, help="held-out seeds are searched from here up")
    parser.add_argument("--least", type=int, default=2,
                        help="a held-out video of one new action holds at least this many segments of it ≥ 2 s")
    parser.add_argument("--least-together", type=int, default=5,
                        help="a held-out video of the three holds at least this many of their segments ≥ 2 s")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each held-out video")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="the model taught (default: the demo's)")
    parser.add_argument("--teach", nargs="+", choices=("cli", "web", "shots"), default=["cli", "web", "shots"],
                        help="the teaching measured: cli (clips), web (spans, through the API), shots (the web's "
                             "cameras cut into clips, through the CLI); default all three")
    parser.add_argument("--keep", type=Path, help="work here and keep everything (default: a temporary folder)")
    parser.add_argument("--rescore", action="store_true", help="score the runs kept in --keep again, run nothing")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.rescore and not args.keep:
        parser.error("--rescore scores what --keep DIR holds; name the folder")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work, cleanup = args.keep, None
    else:
        cleanup = tempfile.TemporaryDirectory()
        work = Path(cleanup.name)
    # scenario → (labels taught, what its held-out videos draw from, least segments of them per video)
    scenarios = {label: ((label,), [*CLASSES, label], args.least) for label in NEW}
    scenarios[TOGETHER] = (NEW, ALL_ACTIONS, args.least_together)
    try:
        summary = json.loads((work / SUMMARY).read_text()) if args.rescore else measure(args, work, scenarios)
        runs = summary.get("runs", list(scenarios))
        events = {key: read_events(work / f"events-{key}.jsonl") for key in (*runs, "plain")}
        truth = truths(summary)
        demo = held_out_demo(args.checkpoint, {key: work / f"{key}.safetensors" for key in runs})
    finally:
        if cleanup is not None:
            cleanup.cleanup()
    text = report(args, scenarios, summary, events, truth, demo)
    print(f"\n## {HEADING}\n\n{text}")
    if not args.no_write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
