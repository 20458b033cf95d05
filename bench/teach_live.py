"""Taught actions live (issue 24): what carrying embeddings costs, and how long from "Teach" to the first
prediction that carries the new label.

    python bench/teach_live.py              # the demo model, and a base-size one (K400 shape, random weights)
    python bench/teach_live.py --no-base --no-write

1. The wire: a worker's ResultBatch of four results with and without the windows' embeddings (fp16, one row per
   flip view): bytes, and encode + decode time; the forward with the embedding out of it (the worker's head)
   against the plain one, torch, the demo model, batch 4 × 3 views, taking turns.
2. Teach → prediction: the pipeline runs live (real time) on a video that shows "bouncing", with the web stage
   and the store; once the first shot and the three ordinary ones after it are kept (a teaching needs ordinary
   windows of the camera as well), the bench POSTs /api/teach with the first shot's span, and times the answer (the
   teaching) and the first prediction scored with the label (the first line written after the worker logs that it
   took it). Cold: the web stage's first teaching (torch and the checkpoint's head read then); warm: after
   GET /api/teach, as the review page does on opening.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import tomli_w  # noqa: E402

from bench.report import cpu_name, publish  # noqa: E402
from streamer.synthetic.files import write_plan  # noqa: E402
from streamer.transport import messages  # noqa: E402
from streamer.transport.messages import Result, ResultBatch  # noqa: E402
from workers.heads import with_features  # noqa: E402
from workers.model import checkpoint_model, save_model  # noqa: E402
from workers.timesformer import TimeSformer, TimeSformerConfig  # noqa: E402

HEADING = "Taught actions live: embeddings on the wire, and Teach to prediction"
DEMO = REPO / "models" / "demo.safetensors"
PLAN = [("bouncing", 5), ("moving_left", 4), ("still", 4), ("growing", 4), ("bouncing", 5), ("still", 40)]


def wire(width: int, views: int = 3, classes: int = 11) -> tuple[int, int, float, float]:
    """(bytes without, bytes with, µs without, µs with) for encode + decode of a ResultBatch of four."""
    def batch(embed: bool) -> ResultBatch:
        return ResultBatch(tuple(Result("cam", i, i, 1.0, np.full(classes, 1 / classes, np.float32),
                                        (("a", 0.5),) * 5, "worker-0", {"forward_ms": 1.0},
                                        embedding=np.zeros((views, width), np.float16) if embed else None)
                                 for i in range(4)))
    out = []
    for embed in (False, True):
        msg = batch(embed)
        size = sum(len(memoryview(p).cast("B")) for p in messages.encode(msg))
        start = time.perf_counter()
        for _ in range(2000):
            messages.decode([memoryview(p).cast("B") for p in messages.encode(msg)])
        out.append((size, (time.perf_counter() - start) / 2000 * 1e6))
    return out[0][0], out[1][0], out[0][1], out[1][1]


@torch.inference_mode()
def forward_cost(turns: int = 15) -> tuple[float, float]:
    """Median ms of the demo model's forward, plain and with the embedding out, batch 4 × 3 views."""
    plain, features = checkpoint_model(DEMO), with_features(checkpoint_model(DEMO))
    pre = plain.preprocess
    x = torch.rand(12, 3, pre.num_frames, pre.size, pre.size)
    times = {"plain": [], "features": []}
    for _ in range(turns):
        for name, model in (("plain", plain), ("features", features)):
            start = time.perf_counter()
            model(x)
            times[name].append(1000 * (time.perf_counter() - start))
    return float(np.median(times["plain"])), float(np.median(times["features"]))


def base_size(folder: Path) -> Path:
    """A TimeSformer of the K400 checkpoint's shape (divided space-time, 8 × 224², 768 wide, 12 deep), random."""
    torch.manual_seed(0)
    model = TimeSformer(TimeSformerConfig(num_classes=400)).eval()
    labels = (REPO.parent / "shared" / "data" / "kinetics400_labels.txt")
    names = labels.read_text().splitlines() if labels.exists() else [f"class_{i}" for i in range(400)]
    return save_model(model, folder / "base.safetensors", labels=names) or folder / "base.safetensors"


def post(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET"),
                                    timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:  # what the web stage said, not only its status
        raise RuntimeError(f"{url}: {err.code} {err.read().decode(errors='replace')}") from None


def lines(path: Path) -> list[dict]:
    out = []
    for raw in path.read_text().splitlines() if path.exists() else ():
        try:
            out.append(json.loads(raw))
        except ValueError:
            pass
    return out


def taken_at(log: Path) -> float | None:
    """When the worker logged that it took the taught labels (Unix seconds), None before it has."""
    for line in log.read_text().splitlines():
        if "worker-0: taught labels" in line:
            clock = datetime.datetime.strptime(line.split(" | ")[0], "%H:%M:%S.%f").time()
            return datetime.datetime.combine(datetime.date.today(), clock).timestamp()
    return None


def teach_to_prediction(checkpoint: Path, folder: Path, warm: bool, port: int) -> tuple[float, float]:
    """(seconds the POST took, seconds from the POST to the first prediction scored with the label)."""
    video = folder / "bouncing.mp4"
    if not video.exists():
        write_plan(video, PLAN, seed=5, width=160, height=120)
    config = tomllib.loads((REPO / "configs" / "default.toml").read_text())
    config["model"].update(checkpoint=str(checkpoint), backend="torch")
    config["sources"] = [{"name": "door", "spec": str(video)}]
    config.pop("clips", None)
    (folder / "teach.toml").write_text(tomli_w.dumps(config))
    run = f"{checkpoint.stem}-{'warm' if warm else 'cold'}"
    events, store, log = folder / f"events-{run}.jsonl", folder / f"actions-{run}.db", folder / f"log-{run}.txt"
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "--config", folder / "teach.toml", "--headless",
                             "--web", f"127.0.0.1:{port}", "--store", store, "--events", events], cwd=REPO,
                            stderr=open(log, "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while warm and time.monotonic() < deadline:  # the review page opened as the pipeline starts
            try:
                post(base + "/api/teach")
                break
            except (OSError, RuntimeError):  # not listening yet, or not answering yet
                time.sleep(0.2)
        while time.monotonic() < deadline:  # past the first shot and the three after it: ordinary windows kept too
            done = [p for p in lines(events) if p["kind"] == "prediction"]
            if done and done[-1]["frame_index"] > 17.5 * 30 and sum(p["frame_index"] > 7 * 30 for p in done) >= 12:
                break
            time.sleep(0.2)
        inside = [p for p in done if 29 <= p["frame_index"] <= 149]
        if len(inside) < 2:  # a model too slow for two windows of the first shot: the first two it predicted
            inside = done[:2]
        asked = time.time()
        post(base + "/api/teach", {"label": "bouncing", "spans": [
            {"stream": "door", "from": inside[0]["frame_ts"], "to": inside[-1]["frame_ts"]}]})
        answered = time.time() - asked
        while time.monotonic() < deadline:  # the worker logs when it takes the adapter; its next result has it
            took = taken_at(log)
            later = [p["frame_ts"] + p["latency_ms"] / 1000 for p in lines(events)
                     if p["kind"] == "prediction" and took and p["frame_ts"] + p["latency_ms"] / 1000 > took]
            if later:
                return answered, min(later) - asked
            time.sleep(0.05)
        raise TimeoutError("no prediction with the taught label")
    except (OSError, TimeoutError, IndexError, RuntimeError):
        print(f"pipeline log ({checkpoint.name}, warm={warm}):", log.read_text()[-3000:],
              file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-base", action="store_true", help="the demo model only")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    demo_width = checkpoint_model(DEMO).head.in_features
    rows = [("demo", demo_width, *wire(demo_width)), ("base size", 768, *wire(768, classes=401))]
    plain_ms, features_ms = forward_cost()
    live = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = [("demo", DEMO)] + ([] if args.no_base else [("base size", base_size(tmp))])
        for n, (name, checkpoint) in enumerate(models):
            for warm in (False, True):
                live.append((name, "warm" if warm else "cold", *teach_to_prediction(checkpoint, tmp, warm,
                                                                                     18700 + 2 * n + warm)))
    wire_rows = "\n".join(f"| {name} | {width} | {a} | {b} (+{b - a}) | {ta:.1f} | {tb:.1f} |"
                          for name, width, a, b, ta, tb in rows)
    live_rows = "\n".join(f"| {name} | {how} | {answer:.1f} | {first:.1f} |" for name, how, answer, first in live)
    text = f"""`python bench/teach_live.py` on {cpu_name()} (2 cores), {datetime.date.today()}.

A ResultBatch of four results, encode + decode, with each window's embedding (3 flip views, fp16) and without:

| model | width | bytes without | bytes with | µs without | µs with |
|---|---:|---:|---:|---:|---:|
{wire_rows}

The demo model's forward with the embedding out of it (the worker's head, `workers.heads.FeaturesHead`) against \
the plain one, torch, batch 4 × 3 views, medians of 15 turns each: {plain_ms:.1f} ms against {features_ms:.1f} ms.

Teach → prediction, live (real time) with the web stage and the store, one teaching of "bouncing" from one span \
of 5 s: the POST's answer (reading the kept windows, training beside the checkpoint's head, the new adapter \
version written) and the first prediction scored with the label (the dispatcher sees the version within \
0.5 s and hands it to the worker before its next batch: the first prediction line written after the worker logs \
that it took the labels). Cold: the web stage's first teaching; warm: the review page opened as the pipeline \
started (GET /api/teach readies torch and the checkpoint's head in the background).

| model | web stage | POST answered (s) | first prediction scored with the label (s) |
|---|---|---:|---:|
{live_rows}
"""
    publish(HEADING, text, not args.no_write)


if __name__ == "__main__":
    main()
