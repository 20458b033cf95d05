"""How much single forwards vary here, and so how many timed runs ``backend="auto"`` needs to pick the faster
backend reliably (workers.backend_choice: WARMUP, ROUNDS, TIE).

    python bench/backend_spread.py --threads 2              # demo and base at batch 1, 30 rounds, as auto times them
    python bench/backend_spread.py --models demo --threads 2 --settle 0   # without the settling calls

Every variant (torch and OpenVINO, fp32 and, where the CPU has bf16 units, bf16) takes turns as ``auto``
times them; the first ``--warmup`` calls of each are reported apart. For each count n of rounds, every run
of n consecutive rounds is taken as if ``auto`` had measured only those: how far its ratio of medians
(torch / OpenVINO) strays from the whole run's, and how often it picks the backend the whole run picks.
It prints its tables; BENCHMARKS.md "Backend choice: spread of forward times" gathers the runs that set
workers.backend_choice's counts.
"""

import argparse
import copy
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from workers.backend_choice import SETTLE, TIE, faster, time_interleaved  # noqa: E402
from workers.model import Preprocess, load_model  # noqa: E402
from workers.openvino_backend import to_openvino  # noqa: E402
from workers.cpu import cpu_fingerprint  # noqa: E402
from workers.timesformer import TimeSformer, TimeSformerConfig  # noqa: E402

COUNTS = (3, 5, 7, 9, 11, 15)


def models(names: list[str]) -> dict[str, torch.nn.Module]:
    """The shipped demo model and a K400 base-sized one (random weights: speed only), fp32, eval."""
    out = {}
    if "demo" in names:
        out["demo"] = load_model(REPO / "models" / "demo.safetensors")
    if "base" in names:
        torch.manual_seed(0)
        base = TimeSformer(TimeSformerConfig(img_size=224, patch_size=16, num_classes=400, num_frames=8,
                                             embed_dim=768, depth=12, num_heads=12)).eval()
        base.preprocess = Preprocess(size=224, num_frames=8)
        out["base"] = base
    return out


def variants(model, threads: int, cache: Path, bf16: bool) -> dict[str, torch.nn.Module]:
    pre = model.preprocess
    out = {"torch fp32": model, "openvino fp32": to_openvino(model, pre.num_frames, pre.size, threads=threads,
                                                             cache_dir=cache)}
    if bf16:
        out["openvino bf16"] = to_openvino(model, pre.num_frames, pre.size, threads=threads, cache_dir=cache,
                                           precision="bf16")
        out["torch bf16"] = copy.deepcopy(model).to(torch.bfloat16).fuse()
    return out


def both_clocks() -> np.ndarray:
    """Wall time and this process's CPU time (all its threads), read together."""
    return np.array([time.perf_counter(), time.process_time()])


def spread(times: list[float]) -> str:
    mean, median = statistics.fmean(times), statistics.median(times)
    return f"{100 * statistics.stdev(times) / mean:.1f}% | {max(times) / median:.2f}"


def windows(torch_times: list[float], ov_times: list[float], n: int) -> tuple[float, float]:
    """Over every run of n consecutive rounds: the largest relative error of its median ratio against the
    whole run's, and the share of them whose choice (with the tie rule) is the whole run's."""
    whole = statistics.median(torch_times) / statistics.median(ov_times)
    verdict = faster({"torch": torch_times, "openvino": ov_times})
    worst, same, count = 0.0, 0, 0
    for start in range(len(torch_times) - n + 1):
        a, b = torch_times[start:start + n], ov_times[start:start + n]
        worst = max(worst, abs(statistics.median(a) / statistics.median(b) / whole - 1))
        same += faster({"torch": a, "openvino": b}) == verdict
        count += 1
    return worst, same / count


def measure(name: str, model, args, cache: Path) -> tuple[list[str], list[str]]:
    bf16 = cpu_fingerprint().has_units("bf16")
    runs = variants(model, args.threads, cache, bf16)
    pre = model.preprocess
    x = torch.rand(1, 3, pre.num_frames, pre.size, pre.size)
    with torch.inference_mode():
        both = time_interleaved({k: (lambda m=m: m(x)) for k, m in runs.items()}, args.warmup + args.rounds, 0,
                                settle=args.settle, clock=both_clocks)
    clocks = {clock: {k: [float(t[i]) for t in v] for k, v in both.items()} for i, clock in enumerate(("wall", "cpu"))}
    if args.raw:
        with open(args.raw, "a") as raw:
            raw.write(json.dumps({"model": name, "threads": args.threads, "warmup": args.warmup,
                                  "settle": args.settle, **clocks}) + "\n")
    rows = []
    for variant in both:
        wall, cpu = clocks["wall"][variant], clocks["cpu"][variant]
        first = ", ".join(f"{t / statistics.median(wall[args.warmup:]):.2f}" for t in wall[:args.warmup])
        rows.append(f"| {name} | {variant} | {1000 * statistics.median(wall[args.warmup:]):.1f} | "
                    f"{spread(wall[args.warmup:])} | {1000 * statistics.median(cpu[args.warmup:]):.1f} | "
                    f"{spread(cpu[args.warmup:])} | {first} |")
    pairs = []
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        for clock, times in clocks.items():
            a, b = times[f"torch {precision}"][args.warmup:], times[f"openvino {precision}"][args.warmup:]
            ratio = statistics.median(a) / statistics.median(b)
            cells = [windows(a, b, n) for n in COUNTS if n <= len(a)]
            pairs.append(f"| {name} | {precision} | {clock} | {ratio:.2f} ({faster({'torch': a, 'openvino': b})}) | "
                         + " | ".join(f"{100 * err:.0f}% / {100 * agree:.0f}%" for err, agree in cells) + " |")
    print("\n".join(rows + pairs), flush=True)
    return rows, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "base"], choices=["demo", "base"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenVINO threads (a worker's, here)")
    parser.add_argument("--settle", type=int, default=SETTLE, help="untimed calls before each timed one")
    parser.add_argument("--raw", help="append every timing, as one JSON line per model, to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_fingerprint()
    rows, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models(args.models).items():
            r, p = measure(name, model, args, Path(tmp))
            rows, pairs = rows + r, pairs + p
    counts = [n for n in COUNTS if n <= args.rounds]
    body = "\n".join([
        f"Command: `python bench/backend_spread.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {cpu.model}, flags {' '.join(cpu.flags or ())}, {args.threads} thread(s), torch {cpu.torch}, "
        "shared with other jobs (the load `auto` meets in practice)  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Batch 1; {args.rounds} rounds after {args.warmup} warm-up calls, every variant in turn, each timed call "
        f"after {args.settle} untimed one(s) of its own.",
        "",
        "| model | variant | wall: median ms | CV | slowest / median | CPU time: median ms | CV | slowest / median "
        "| first rounds / wall median |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Medians of n consecutive rounds against all {args.rounds}: largest error of the torch / OpenVINO ratio, "
        f"and share of the runs of n that pick what all {args.rounds} pick (tie rule: within {100 * TIE:.0f}% "
        "keeps torch); by wall time and by the process's CPU time.",
        "",
        "| model | precision | clock | ratio of all (pick) | " + " | ".join(f"n = {n}" for n in counts) + " |",
        "|---|---|---|---|" + "---|" * len(counts),
        *pairs,
    ])
    print(body)


if __name__ == "__main__":
    main()
