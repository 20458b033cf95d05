"""Capture benchmark: frames/s on one core from an H.264 file to model input, today's path against the new one
against decoding alone, for three samplings, in one run.

    python bench/capture.py                    # 720p and 1080p, writes its BENCHMARKS.md section
    python bench/capture.py --frames 150 --no-write

Paths (the process is pinned to one core, OpenCV to one thread):
- decode only: PyAV decoding every frame, nothing converted (the ceiling);
- OpenCV (before): ``cv2.VideoCapture.read`` (BGR) + ``to_model_frame`` on every frame, files' old path;
- PyAV BGR (before): ``to_ndarray("bgr24")`` + ``to_model_frame`` on every frame, RTSP's old path;
- new: PyAV decoder frames, ``frames.model_frame`` (one libswscale pass) only where
  ``WindowSchedule.wanted`` says a window will hold the frame.
Samplings: every frame (a model with frame_interval 1), the demo model's (8 frames every 4, hop 4),
K400's (8 frames every 32, hop 32).
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from streamer.video.frames import model_frame, to_model_frame  # noqa: E402
from streamer.video.ringbuffer import WindowSchedule  # noqa: E402

SAMPLINGS = {"every frame": (8, 1, 1), "demo (8×4, hop 4)": (8, 4, 4), "K400 (8×32, hop 32)": (8, 32, 32)}
SIZE = 224


def render(path: Path, width: int, height: int, frames: int) -> Path:
    """An H.264 test video (ffmpeg's testsrc2: moving colour bars, text, noise-free edges)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}:rate=30", "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60", str(path)], check=True)
    return path


def decoded(path: Path):
    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.thread_type, stream.codec_context.thread_count = "AUTO", 1
    try:
        yield from container.decode(stream)
    finally:
        container.close()


def decode_only(path: Path, sampling) -> int:
    return sum(1 for _ in decoded(path))


def opencv_before(path: Path, sampling) -> int:
    cap, n = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        to_model_frame(bgr, SIZE)
        n += 1
    cap.release()
    return n


def pyav_bgr_before(path: Path, sampling) -> int:
    n = 0
    for frame in decoded(path):
        to_model_frame(frame.to_ndarray(format="bgr24"), SIZE)
        n += 1
    return n


def new_path(path: Path, sampling) -> int:
    schedule, n = WindowSchedule(*sampling), 0
    for index, frame in enumerate(decoded(path)):
        schedule.due(index)
        if schedule.wanted(index):
            model_frame(frame, SIZE)
        n += 1
    return n


PATHS = {"decode only": decode_only, "OpenCV (before)": opencv_before, "PyAV BGR (before)": pyav_bgr_before,
         "new": new_path}


def fps(path_fn, video: Path, sampling, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        frames = path_fn(video, sampling)
        best = max(best, frames / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames in each test video")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path; the best counts")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    cv2.setNumThreads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    rows = []
    for width, height in ((1280, 720), (1920, 1080)):
        video = render(folder / f"{height}p.mp4", width, height, args.frames)
        ceiling = fps(decode_only, video, None, args.repeats)
        before = {name: fps(PATHS[name], video, None, args.repeats) for name in ("OpenCV (before)", "PyAV BGR (before)")}
        for sampling_name, sampling in SAMPLINGS.items():
            new = fps(new_path, video, sampling, args.repeats)
            rows.append((f"{height}p", sampling_name, ceiling, before["OpenCV (before)"], before["PyAV BGR (before)"], new))
            print(rows[-1], flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    table = "\n".join(
        f"| {res} | {sampling} | {ceiling:.0f} | {cv:.0f} ({cv / 30:.1f}) | {bgr:.0f} ({bgr / 30:.1f}) | "
        f"{new:.0f} ({new / 30:.1f}) | {100 * new / ceiling:.0f}% | {new / max(cv, bgr):.2f}× |"
        for res, sampling, ceiling, cv, bgr, new in rows)
    body = f"""`python bench/capture.py --frames {args.frames}` on {datetime.date.today()}, {cpu}, pinned to one core
(OpenCV and the decoder one thread each); H.264 from ffmpeg's `testsrc2`, best of {args.repeats}.
Frames/s from the file to 224×224 model input, and in brackets the cameras at 30 fps one core keeps up with.
The two "before" paths convert every frame whatever the sampling.

| video | sampling | decode only | OpenCV (before) | PyAV BGR (before) | new | new / decode only | new / best before |
|---|---|---|---|---|---|---|---|
{table}

Goals (issue 13): K400 sampling ≥ 90% of decoding alone, every-frame sampling ≥ 60%.
"""
    print(body)
    if not args.no_write:
        write_section("Capture: frames per core, decoder to model input", body)


if __name__ == "__main__":
    main()
