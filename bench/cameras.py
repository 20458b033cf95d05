"""Many cameras on one CPU box: N 720p H.264 streams (files read at their frame rate, as a camera delivers them)
into the shipped demo model, N raised until the pipeline stops keeping real time; this tree against another.

    python bench/cameras.py                              # this tree only
    python bench/cameras.py --before /tmp/before         # and a checkout of an earlier commit, same run
    git worktree add /tmp/before <commit>                # (how to make that checkout)

Real time holds while every capture reads its 30 fps (frames captured/s ≥ 95% of the source's) and the
median capture→event latency stays under 1 s. ``hop`` 16 keeps the worker's share small, so what runs
out first is what the captures cost.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402

FPS = 30


def render(path: Path, seconds: float) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={FPS}",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60",
                    str(path)], check=True)
    return path


def run(tree: Path, video: Path, streams: int, folder: Path) -> dict:
    config = folder / f"cams-{streams}-{time.monotonic_ns()}.toml"
    config.write_text(tomli_w.dumps({
        "model": {"checkpoint": str(REPO / "models" / "demo.safetensors"), "precision": "fp32", "hop": 16,
                  "max_batch": 8},
        "sources": [{"spec": str(video), "name": f"cam{i}"} for i in range(streams)]}))
    events = folder / f"events-{streams}-{time.monotonic_ns()}.jsonl"
    subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--headless", "--events", str(events)],
                   cwd=tree, check=True, capture_output=True, timeout=600)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    predictions = [p for p in lines if p["kind"] == "prediction"]
    rates = []
    for i in range(streams):
        mine = [p for p in predictions if p["stream"] == f"cam{i}"]
        if len(mine) >= 2:  # source frames per second of capture time: 30 while it keeps up
            rates.append((mine[-1]["frame_index"] - mine[0]["frame_index"]) / (mine[-1]["frame_ts"] - mine[0]["frame_ts"]))
    latency = sorted(p["latency_ms"] for p in predictions)
    return {"streams": streams, "fps": min(rates) if rates else 0.0, "p50": float(np.percentile(latency, 50)),
            "p99": float(np.percentile(latency, 99)), "predictions": len(predictions)}


def holds(row: dict) -> bool:
    return row["fps"] >= 0.95 * FPS and row["p50"] < 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit to run the same way")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the test video")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    video = render(folder / "720p.mp4", args.seconds)
    trees = {"this tree": REPO} | ({"before": args.before} if args.before else {})
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for n in args.streams:
        for name, tree in trees.items():
            row = run(tree, video, n, folder)
            results[name].append(row)
            print(name, row, flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    header = "| streams | " + " | ".join(f"{name}: fps read (min) | p50 ms | p99 ms" for name in trees) + " |"
    rule = "|---|" + "---|---|---|" * len(trees)
    rows = []
    for i, n in enumerate(args.streams):
        cells = [f"{r['fps']:.1f}{'' if holds(r) else ' ✗'} | {r['p50']:.0f} | {r['p99']:.0f}"
                 for r in (results[name][i] for name in trees)]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    best = {name: max([r["streams"] for r in rows_ if holds(r)], default=0) for name, rows_ in results.items()}
    body = f"""`python bench/cameras.py{' --before CHECKOUT' if args.before else ''}` on {datetime.date.today()}, {cpu},
{os.cpu_count()} cores: N copies of a {args.seconds:g} s 1280×720 H.264 file (ffmpeg `testsrc2`, 30 fps) read
at their frame rate, the shipped demo model (one worker, hop 16, max_batch 8), headless. "fps read" is the
slowest stream's source frames per second of capture time (30 while its capture keeps up); ✗ marks a run
that does not hold real time (fps read < 95% of 30, or p50 latency ≥ 1 s).

{header}
{rule}
{chr(10).join(rows)}

Largest N holding real time: {', '.join(f'{name} {n}' for name, n in best.items())}.
"""
    print(body)
    if not args.no_write:
        write_section("Many cameras: 720p streams on one CPU box", body)


if __name__ == "__main__":
    main()
