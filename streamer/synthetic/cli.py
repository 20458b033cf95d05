"""``python -m streamer.synthetic --out FILE.mp4 --seconds S --seed N [--actors K]`` (contract 4):
render a labelled demo video, one actor's shots or K actors side by side, and its labels json.
``--new-actions`` mixes in the actions the demo model never saw; ``--only LABEL`` does one action throughout
(a clip to teach or test a label with)."""

from __future__ import annotations

import sys
from pathlib import Path

from streamer.errors import USAGE_ERROR, UsageParser
from streamer.synthetic import actors
from streamer.synthetic.files import labels_path, write_video
from streamer.synthetic.new_actions import NEW_ACTIONS
from streamer.synthetic.scenes import ALL_ACTIONS, CLASSES


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(prog="python -m streamer.synthetic",
                         description="Labelled synthetic action video: the demo source and the demo model's training data.")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4; labels go to OUT.labels.json")
    parser.add_argument("--seconds", type=float, required=True, help="length of the video in seconds")
    parser.add_argument("--seed", type=int, required=True, help="same seed, same video and labels (≥ 0)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, help="default 320, or 640 with --actors")
    parser.add_argument("--height", type=int, help="default 240, or 480 with --actors")
    parser.add_argument("--actors", type=int, default=0, metavar="K",
                        help="K ≥ 2 actors side by side, each doing its own actions; labels name each actor's boxes")
    parser.add_argument("--new-actions", action="store_true",
                        help="shots may also be actions the demo model never saw: " + ", ".join(NEW_ACTIONS))
    parser.add_argument("--only", metavar="LABEL", help="every shot does this action (a demo class or a new one)")
    args = parser.parse_args(argv)
    args.width = args.width or (640 if args.actors else 320)
    args.height = args.height or (480 if args.actors else 240)
    if args.seconds <= 0 or args.fps <= 0 or args.width < 16 or args.height < 16 or args.seed < 0:
        parser.error(f"need --seconds > 0, --fps > 0, --width/--height ≥ 16, --seed ≥ 0; got "
                     f"{args.seconds}, {args.fps}, {args.width}x{args.height}, {args.seed}")
    if args.out.suffix.lower() != ".mp4":
        parser.error(f"--out must end in .mp4, got {args.out}")
    if args.actors and not 2 <= args.actors <= 8:
        parser.error(f"--actors must be from 2 to 8, got {args.actors}")
    if args.only is not None and args.only not in ALL_ACTIONS:
        parser.error(f"--only must be one of {', '.join(ALL_ACTIONS)}; got {args.only!r}")
    choices = [args.only] if args.only else ALL_ACTIONS if args.new_actions else CLASSES
    try:
        if args.actors:
            labels = actors.write_video(args.out, args.seconds, args.seed, args.actors, args.fps,
                                        args.width, args.height, tuple(choices))
        else:
            labels = write_video(args.out, args.seconds, args.seed, args.fps, args.width, args.height, choices)
    except OSError as err:  # PyAV's errors are OSErrors too
        print(f"error: cannot write {args.out} ({err.strerror or err}); pick a writable path", file=sys.stderr)
        return USAGE_ERROR
    print(f"wrote {args.out} and {labels_path(args.out)} ({len(labels)} segments)")
    return 0
