"""How often the shipped demo model names the action, scored the way a user sees it: through run_pipeline.py.

    python bench/demo_accuracy.py --seconds 60 --seed 2024

Renders a held-out synthetic video (python -m streamer.synthetic), runs it through
`run_pipeline.py --offline --headless` with the demo config (and, when the model averages
flip views, once more without them), and scores every prediction line by its frame_index
against the labels file.
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "default.toml"
sys.path.insert(0, str(REPO))
from bench.pipeline import forward_rate  # noqa: E402
from bench.report import write_section  # noqa: E402
from streamer.synthetic.files import frame_labels, read_labels  # noqa: E402
from workers.model import describe_checkpoint  # noqa: E402


def score_run(video: Path, config: Path, truth: list[str], events: Path) -> tuple[int, int, float]:
    """Run the pipeline offline on ``video`` with ``config``; (lines, right, seconds)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--source", str(video), "--offline",
                    "--headless", "--events", str(events)], cwd=REPO, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    preds = [x for x in lines if x["kind"] == "prediction"]
    right = sum(1 for p in preds if p["frame_index"] < len(truth) and p["top"][0][0] == truth[p["frame_index"]])
    return len(preds), right, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=2024, help="a seed never used in training")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    shipped = tomllib.loads(DEFAULT_CONFIG.read_text())
    checkpoint = REPO / shipped["model"]["checkpoint"]
    flips = describe_checkpoint(checkpoint)[0].flip_views
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "heldout.mp4"
        subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(video), "--seconds",
                        str(args.seconds), "--seed", str(args.seed)], cwd=REPO, check=True)
        labels = read_labels(video.with_suffix(".labels.json"))
        truth = frame_labels(labels, int(args.seconds * 30) + 1)
        plain = Path(tmp) / "no_flips.toml"
        plain.write_text(tomli_w.dumps({**shipped, "model": {**shipped["model"], "flip_views": []}}))
        runs = [(f"`configs/default.toml` (the checkpoint's flip views: {', '.join(flips) or 'none'})", DEFAULT_CONFIG,
                 flips)]
        if flips:
            runs.append(("the same with `flip_views = []`", plain, ()))
        for name, config, views in runs:
            lines, right, seconds = score_run(video, config, truth, Path(tmp) / "events.jsonl")
            rate = forward_rate(checkpoint, shipped["model"].get("precision", "fp32"), 1, 5.0, views)
            rows.append(f"| {name} | {lines} | {100 * right / max(1, lines):.1f}% | {seconds:.1f} | {rate:.0f} |")
            (Path(tmp) / "events.jsonl").unlink()
    text = "\n".join([
        f"Command: `python bench/demo_accuracy.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        (f"Held-out video: seed {args.seed}, {args.seconds:g} s, {len(labels)} segments; one prediction line every "
         f"{shipped['model'].get('hop', 4)} frames (offline, none dropped). A line is right when its top-1 label is "
         "the label of its frame_index (goal 90%)."),
        "",
        "| config | prediction lines | right | offline run s | windows/s, model alone on 1 thread |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if not args.no_write:
        write_section("Demo model: accuracy through the pipeline", text)


if __name__ == "__main__":
    main()
