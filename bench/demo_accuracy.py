"""How often the shipped demo model names the action, scored the way a user sees it: through run_pipeline.py.

    python bench/demo_accuracy.py --seconds 60 --seed 2024

Renders a held-out synthetic video (python -m streamer.synthetic), runs it through
`run_pipeline.py --offline --headless`, and scores every prediction line by its
frame_index against the labels file.
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from streamer.synthetic import frame_labels, read_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=2024, help="a seed never used in training")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video, events = Path(tmp) / "heldout.mp4", Path(tmp) / "events.jsonl"
        subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(video), "--seconds",
                        str(args.seconds), "--seed", str(args.seed)], cwd=REPO, check=True)
        labels = read_labels(video.with_suffix(".labels.json"))
        subprocess.run([sys.executable, "run_pipeline.py", "--source", str(video), "--offline", "--headless",
                        "--events", str(events)], cwd=REPO, check=True, capture_output=True)
        truth = frame_labels(labels, int(args.seconds * 30) + 1)
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        preds = [x for x in lines if x["kind"] == "prediction"]
    right = sum(1 for p in preds if p["frame_index"] < len(truth) and p["top"][0][0] == truth[p["frame_index"]])
    text = "\n".join([
        f"Command: `python bench/demo_accuracy.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Held-out video: seed {args.seed}, {args.seconds:g} s, {len(labels)} segments; "
        f"{len(preds)} prediction lines (one every 4 frames, offline, none dropped).",
        "",
        f"Prediction lines whose top-1 label is the label of their frame: **{100 * right / max(1, len(preds)):.1f}%** "
        "(goal 90%).",
    ])
    print(text)
    if not args.no_write:
        write_section("Demo model: accuracy through the pipeline", text)


if __name__ == "__main__":
    main()
