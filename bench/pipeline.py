"""Pipeline benchmarks: overhead, overload and batching, each against the alternative in the same run.

    python bench/pipeline.py                          # all three, each writes its BENCHMARKS.md section
    python bench/pipeline.py --overhead-seconds 0 --batching-seconds 0   # only the 5-minute overload run

- overhead: latency from a frame's capture to its event line, minus the forward time, at 224×224×8;
- overload: a model slower than the windows (a fixed delay per forward); p50/p99 latency over the run,
  per minute, for the pipeline and for the naive single-thread loop (read, buffer, infer, draw);
- batching: 8 synthetic streams into one worker, windows/s with max_batch=8 vs max_batch=1.
"""

import argparse
import datetime
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tomli_w
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from streamer.video.frames import to_model_frame  # noqa: E402
from streamer.video.ringbuffer import RingBuffer, WindowSchedule  # noqa: E402
from workers.sampling import window_span
from streamer.synthetic.drawing import SyntheticStream  # noqa: E402
from workers.model import Preprocess, load_model, save_model  # noqa: E402
from workers.cpu import cpu_fingerprint  # noqa: E402
from workers.preprocess import to_model_input  # noqa: E402
from workers.timesformer import TimeSformer, TimeSformerConfig  # noqa: E402
from workers.views import FlipViews  # noqa: E402

PRE = Preprocess(size=224, num_frames=8, frame_interval=4)


def make_checkpoint(folder: Path, embed_dim: int = 64, depth: int = 2) -> Path:
    """A small 224×224×8 TimeSformer: fast forward, so what is measured is the pipeline around it."""
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig(img_size=224, patch_size=16, num_classes=10, num_frames=8,
                                          embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64)))
    return save_model(model, folder / "bench.safetensors", labels=[f"class {i}" for i in range(10)], preprocess=PRE)


def run_pipeline(folder: Path, checkpoint: Path, seconds: float, *, streams: int = 1, delay_s: float = 0.0,
                 max_batch: int = 4, hop: int = 8, video: Path | None = None,
                 shared_memory: bool = True, precision: str = "fp32") -> list[dict]:
    """Run run_pipeline.py headless on synthetic sources (or copies of ``video``); return its prediction lines."""
    config = folder / f"bench-{time.monotonic_ns()}.toml"
    specs = [str(video) if video else f"synthetic:{i}" for i in range(streams)]
    model = {"checkpoint": str(checkpoint), "precision": precision, "hop": hop, "max_batch": max_batch, "delay_s": delay_s,
             "flip_views": []}  # one forward per window, whatever views the checkpoint names
    sources = [{"spec": spec, "name": f"s{i}"} for i, spec in enumerate(specs)]
    config.write_text(tomli_w.dumps({"model": model, "pipeline": {"shared_memory": shared_memory},
                                     "sources": sources}))
    events = folder / f"events-{time.monotonic_ns()}.jsonl"
    subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--headless", "--events", str(events),
                    "--duration", str(seconds)], cwd=REPO, check=True, capture_output=True, timeout=seconds + 180)
    return [line for line in map(json.loads, events.read_text().splitlines()) if line["kind"] == "prediction"]


def naive_loop(checkpoint: Path, seconds: float, delay_s: float, hop: int = 8) -> list[float]:
    """What many demos do: one thread reads a frame, buffers it, and runs the model inline when a window is due.

    The camera keeps producing at its rate into the driver's queue (a thread here), so when
    inference is slower than the frames, the loop works on older and older frames.
    """
    model = load_model(checkpoint)
    frames: queue.Queue = queue.Queue()
    stop = threading.Event()
    stream = SyntheticStream(seed=0, width=320, height=240, fps=30.0)

    def camera() -> None:
        start, n = time.monotonic(), 0
        while not stop.is_set():
            bgr, _ = stream.next_frame()
            frames.put((n, time.time(), bgr))
            n += 1
            time.sleep(max(0.0, start + n / 30.0 - time.monotonic()))

    threading.Thread(target=camera, daemon=True).start()
    ring = RingBuffer(window_span(PRE.num_frames, PRE.frame_interval), PRE.size, PRE.size)
    schedule = WindowSchedule(PRE.num_frames, PRE.frame_interval, hop)
    latencies, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        index, ts, bgr = frames.get()
        ring.push(index, ts, to_model_frame(bgr, PRE.size))
        if schedule.due(index) and (window := ring.window(PRE.num_frames, PRE.frame_interval)) is not None:
            x = to_model_input(torch.from_numpy(window[2][None]), PRE.mean, PRE.std)
            with torch.inference_mode():
                model(x).softmax(-1)
            time.sleep(delay_s)
            latencies.append(1000 * (time.time() - window[1][-1]))
    stop.set()
    return latencies


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def per_minute(lines: list[dict], key=lambda line: line["latency_ms"]) -> str:
    if not lines:
        return "-"
    t0 = lines[0]["frame_ts"]
    buckets: dict[int, list[float]] = {}
    for line in lines:
        buckets.setdefault(int((line["frame_ts"] - t0) // 60), []).append(key(line))
    return ", ".join(f"{pct(v, 99):.0f}" for _, v in sorted(buckets.items()))


def overhead_section(folder: Path, ckpt: Path, seconds: float) -> list[str]:
    """Three windows a second, so the worker is idle when one arrives: what remains is the pipeline's own cost.

    Frames through the shared-memory frame store (the default on one host) against frames
    inline in the messages, each for ``seconds``.
    """
    rows = []
    for name, shared in (("frames in shared memory (default)", True), ("frames inline (shared_memory = false)", False)):
        lines = run_pipeline(folder, ckpt, seconds, hop=10, shared_memory=shared)[3:]   # skip warm-up lines
        timed = lambda key: [line["timings"][key] for line in lines]  # noqa: E731
        steps = {key: timed(key) for key in ("capture_ms", "queue_ms", "preprocess_ms")}
        steps["result_ms"] = [line["latency_ms"] - sum(line["timings"][k] for k in (*steps, "forward_ms"))
                              for line in lines]
        overhead = [line["latency_ms"] - line["timings"]["forward_ms"] for line in lines]
        cells = [overhead, *steps.values(), timed("forward_ms"), [line["latency_ms"] for line in lines]]
        rows.append(f"| {name} | {len(lines)} | " + " | ".join(f"{pct(v, 50):.1f} / {pct(v, 99):.1f}" for v in cells)
                    + " |")
    return ["1 synthetic stream at 30 fps, 224×224×8 windows (1.2 MB), three a second. Milliseconds, p50 / p99.",
            "Overhead is latency minus forward: capture (frame read to window sent), queue (window sent to",
            "worker received), preprocess, result (worker done to event line written).", "",
            "| frames | windows | overhead | capture | queue | preprocess | result | forward | capture → event line |",
            "|---|---|---|---|---|---|---|---|---|", *rows]


def overload_section(folder: Path, ckpt: Path, seconds: float, delay: float) -> list[str]:
    """A model slower than the windows offered: the pipeline against the naive loop, latency over time."""
    lines = run_pipeline(folder, ckpt, seconds, delay_s=delay, hop=4)[3:]
    inference = statistics.median(line["timings"]["forward_ms"] for line in lines)
    naive_s = min(seconds, 60)
    naive = naive_loop(ckpt, naive_s, delay, hop=4)
    latencies = [line["latency_ms"] for line in lines]
    return [f"{delay:g} s added to every forward; windows offered at 7.5/s.", "",
            "| | run s | one inference ms | p50 latency ms | p99 latency ms | p99 per minute | p99 / inference |",
            "|---|---|---|---|---|---|---|",
            f"| pipeline | {seconds:g} | {inference:.0f} | {pct(latencies, 50):.0f} | {pct(latencies, 99):.0f} | "
            f"{per_minute(lines)} | {pct(latencies, 99) / inference:.2f} |",
            f"| naive single-thread loop | {naive_s:g} | {inference:.0f} | {pct(naive, 50):.0f} | "
            f"{pct(naive, 99):.0f} | (grows without bound) | {pct(naive, 99) / inference:.2f} |"]


def forward_rate(checkpoint: Path, precision: str, batch: int, seconds: float = 3.0,
                 flips: tuple[str, ...] = ()) -> float:
    """Windows/s of the bare forward on one thread (averaged over ``flips``, as a worker would):
    what batching could at most gain on this CPU, or what one stream's worker can keep up with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model(checkpoint, precision=precision)
    pre, views = model.preprocess, FlipViews(model.labels or [], flips)
    x = torch.randn(batch, 3, pre.num_frames, pre.size, pre.size)
    with torch.inference_mode():
        views(model, x)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            views(model, x)
            runs += 1
    torch.set_num_threads(threads)
    return runs * batch / (time.perf_counter() - start)


def batching_section(folder: Path, seconds: float) -> list[str]:
    """8 streams into one worker, max_batch 8 vs 1, for two models each slower than what 8 streams offer.

    Eight cameras are stood in for by eight plays of a small file: decoding it costs little, so the
    worker, not the 2 cores' share of eight renderers, is the bottleneck being measured. A 224×224×8
    model (width 192, depth 4), where one window already fills the CPU, and the shipped demo model
    (48×48×8), where the per-call cost that batching shares is a larger part of a forward. Each in
    fp32 and, where the CPU multiplies bf16 in hardware, in bf16 (the CPU fast path).
    """
    from tests.conftest import make_video

    video = make_video(folder / "cam.avi", num_frames=int(30 * (seconds + 30)))
    precisions = ["fp32", "bf16"] if cpu_fingerprint().has_units("bf16") else ["fp32"]
    cases = [("width 192, depth 4, 224×224×8; a window every 4 frames", make_checkpoint(folder, 192, 4), 4),
             ("the shipped demo model, 48×48×8; a window every frame", REPO / "models/demo.safetensors", 1)]
    out = ["8 streams at 30 fps into one worker (1 CPU thread); windows/s after the first 5 s. The forward",
           "alone (the model on one thread, nothing else running) is timed at batch 1 and 8 in the same run.", "",
           "| model | precision | forward alone, batch 1 → 8 | max_batch 1 | max_batch 8 | batched / unbatched |",
           "|---|---|---|---|---|---|"]
    for title, model, hop in cases:
        for precision in precisions:
            alone = {b: forward_rate(model, precision, b) for b in (1, 8)}
            rates = {}
            for max_batch in (1, 8):
                lines = run_pipeline(folder, model, seconds, streams=8, max_batch=max_batch, hop=hop, video=video,
                                     precision=precision)
                stamps = sorted(line["frame_ts"] for line in lines)
                steady = [t for t in stamps if t >= stamps[0] + 5]
                rates[max_batch] = len(steady) / max(1e-9, steady[-1] - steady[0])
            out.append(f"| {title} | {precision} | {alone[1]:.1f} → {alone[8]:.1f} ({alone[8] / alone[1]:.2f}×) | "
                       f"{rates[1]:.1f} | {rates[8]:.1f} | **{rates[8] / rates[1]:.2f}×** |")
            print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overhead-seconds", type=float, default=30, help="0 skips it")
    parser.add_argument("--overload-seconds", type=float, default=300, help="0 skips it")
    parser.add_argument("--batching-seconds", type=float, default=30, help="0 skips it")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds added to each forward in the overload run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    machine = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   "unknown CPU")
    header = [f"Command: `python bench/pipeline.py {' '.join(sys.argv[1:])}`  ",
              f"Machine: {machine}, {os.cpu_count()} cores, torch {torch.__version__}  ",
              f"Date: {datetime.date.today().isoformat()}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = make_checkpoint(folder)
        runs = [("Pipeline: overhead", args.overhead_seconds, lambda: overhead_section(folder, ckpt, args.overhead_seconds)),
                ("Pipeline: overload", args.overload_seconds,
                 lambda: overload_section(folder, ckpt, args.overload_seconds, args.delay)),
                ("Pipeline: batching", args.batching_seconds, lambda: batching_section(folder, args.batching_seconds))]
        for heading, seconds, measure in runs:
            if seconds <= 0:
                continue
            text = "\n".join(header + measure())
            print(f"## {heading}\n\n{text}\n", flush=True)
            if not args.no_write:
                write_section(heading, text)


if __name__ == "__main__":
    main()
