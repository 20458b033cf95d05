"""Soak: the pipeline under overload for a long time; memory of every process and latency, start vs end.

    python bench/soak.py --minutes 30

A synthetic 30 fps camera and a model made slower than the windows (a fixed delay per
forward), so the dispatcher drops windows the whole time. RSS of each process is read
from /proc after warm-up and at the end; latency p99 per 5-minute slice shows it stays flat.
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.pipeline import make_checkpoint  # noqa: E402
from bench.report import write_section  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def stage_pids(log_lines: list[str]) -> dict[str, int]:
    """Newest pid of each stage, from the supervisor's 'NAME started (pid N)' lines."""
    pids = {}
    for line in log_lines:
        if m := re.search(r"\|\s*([^|]+?) started \(pid (\d+)\)", line):
            pids[m.group(1)] = int(m.group(2))
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds added to every forward")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = make_checkpoint(folder)
        config = folder / "soak.toml"
        model = {"checkpoint": str(ckpt), "precision": "fp32", "hop": 4, "delay_s": args.delay}
        config.write_text(tomli_w.dumps({"model": model, "sources": [{"spec": "synthetic:7", "name": "cam"}]}))
        events, log = folder / "events.jsonl", folder / "stderr.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "run_pipeline.py", "--config", str(config), "--headless",
                                     "--events", str(events), "--duration", str(args.minutes * 60)],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            time.sleep(60)  # warm-up: model loaded, buffers filled
            pids = stage_pids(log.read_text().splitlines())
            pids["supervisor"] = proc.pid
            start = {name: rss_mb(pid) for name, pid in pids.items()}
            while proc.poll() is None:
                end = {name: rss_mb(pid) for name, pid in pids.items()}
                time.sleep(10)
            proc.wait()
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        preds = [x for x in lines if x["kind"] == "prediction"]
        dropped = re.findall(r"total (\d+)\)", log.read_text())
        restarts = [x for x in lines if x["kind"].endswith("_restarted")]
    t0 = preds[0]["frame_ts"]
    slices: dict[int, list[float]] = {}
    for p in preds:
        slices.setdefault(int((p["frame_ts"] - t0) // 300), []).append(p["latency_ms"])
    inference = float(np.median([p["timings"]["forward_ms"] for p in preds]))
    rows = ["| process | RSS after 1 min (MB) | RSS at end (MB) | growth |", "|---|---|---|---|"]
    for name in start:
        growth = 100 * (end[name] - start[name]) / start[name]
        rows.append(f"| {name} | {start[name]:.0f} | {end[name]:.0f} | {growth:+.1f}% |")
    machine = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), "?")
    text = "\n".join([
        f"Command: `python bench/soak.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine}, 2 cores, torch {torch.__version__}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Setup: synthetic 30 fps camera, 224×224×8 windows every 4 frames (7.5/s offered), model slowed to "
        f"{inference:.0f} ms per forward; {len(preds)} predictions, {dropped[-1] if dropped else '?'} windows dropped, "
        f"{len(restarts)} restarts.",
        "", *rows, "",
        "| 5-minute slice | p50 latency ms | p99 latency ms | p99 / one inference |", "|---|---|---|---|",
        *[f"| {i} | {np.percentile(v, 50):.0f} | {np.percentile(v, 99):.0f} | {np.percentile(v, 99) / inference:.2f} |"
          for i, v in sorted(slices.items())],
    ])
    print(text)
    if not args.no_write:
        write_section("Soak: memory and latency under overload", text)


if __name__ == "__main__":
    main()
