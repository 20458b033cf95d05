"""Clips from a real offline pipeline on rendered synthetic videos: one MP4 per action, exact to the frame
(pre-roll from the window's first frame, post-roll after the end line's frame), its first frame the rendered
video's, ffprobe-readable; a stream whose clip folder cannot be written or whose disk is full costs one
warning and no partial file while the others go on."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import av
import numpy as np
import pytest

from tests.test_reliability import REPO

PRE_S, POST_S, FPS, SPAN = 1.0, 1.0, 30, 29  # the demo model: 8 frames every 4 → a window spans 29 frames


def mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clips")
    video = tmp / "actions.mp4"
    subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(video), "--seconds", "13", "--seed", "7"],
                   cwd=REPO, check=True, capture_output=True)
    clips = tmp / "clips"
    clips.mkdir()
    (clips / "blocked").write_text("a file where the stream's folder would go\n")
    full = clips / "full"
    tmpfs = mount_tmpfs(full, "64k")
    config = tmp / "clips.toml"
    config.write_text(f"""
[model]
checkpoint = "models/demo.safetensors"
precision = "fp32"
hop = 4
flip_views = []  # the clips are what is tested here, not the last point of accuracy

[events]
start_threshold = 0.7
end_threshold = 0.5

[clips]
dir = "{clips}"
pre_s = {PRE_S}
post_s = {POST_S}
annotated = false

[[sources]]
spec = "{video}"
name = "ok"

[[sources]]
spec = "{video}"
name = "blocked"
""" + (f'\n[[sources]]\nspec = "{video}"\nname = "full"\n' if tmpfs else ""))
    events = tmp / "events.jsonl"
    try:
        done = subprocess.run([sys.executable, "run_pipeline.py", "--config", str(config), "--offline", "--headless",
                               "--web", "off", "--events", str(events)], cwd=REPO, capture_output=True, text=True,
                              timeout=240)
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        yield SimpleNamespace(done=done, lines=lines, clips=clips, video=video, tmpfs=tmpfs,
                              left_in_full=sorted(os.listdir(full)) if tmpfs else [])
    finally:
        if tmpfs:
            subprocess.run(["umount", str(full)], capture_output=True)


def frames_of(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def ends(run, stream: str) -> list[dict]:
    return [line for line in run.lines if line["kind"] == "end" and line["stream"] == stream]


def test_each_action_gets_a_clip_exact_to_the_frame(run):
    assert run.done.returncode == 0, run.done.stderr[-2000:]
    starts = {line["id"]: line for line in run.lines if line["kind"] == "start" and line["stream"] == "ok"}
    assert len(ends(run, "ok")) >= 3
    source = frames_of(run.video)
    for end in ends(run, "ok"):
        start = starts[end["id"]]
        assert end["clip"] == str(run.clips / "ok" / f"{end['id']}.mp4")
        first = max(0, start["frame_index"] - SPAN + 1 - round(PRE_S * FPS))
        last = min(len(source) - 1, end["frame_index"] + round(POST_S * FPS))
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                                "stream=nb_read_frames,codec_name", "-of", "json", end["clip"]],
                               capture_output=True, text=True, check=True)
        stream = json.loads(probe.stdout)["streams"][0]
        assert stream["codec_name"] == "h264"
        assert abs(int(stream["nb_read_frames"]) - (last - first + 1)) <= 1, (end, stream)
        clip = frames_of(end["clip"])
        for offset in (0, 1, len(clip) // 2):  # the pre-roll's first frames, and the middle
            near = range(max(0, first + offset - 3), min(len(source), first + offset + 4))
            diffs = {i: np.abs(clip[offset].astype(int) - source[i].astype(int)).mean() for i in near}
            # the right frame is the nearest (ties allowed: a still scene repeats itself) and near in pixels
            assert diffs[first + offset] <= min(diffs.values()) + 0.25 and diffs[first + offset] < 8.0, \
                f"clip frame {offset} should be source frame {first + offset}: mean differences {diffs}"
        thumbnail = (run.clips / "ok" / f"{end['id']}.jpg").read_bytes()
        assert thumbnail[:2] == b"\xff\xd8"
    assert not [p for p in (run.clips / "ok").iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_a_clip_folder_that_cannot_be_written_costs_one_warning_and_nothing_else(run):
    blocked = ends(run, "blocked")
    assert len(blocked) == len(ends(run, "ok")), "the blocked stream's events should go on as the others"
    warnings = [line for line in run.done.stderr.splitlines() if "clips: cannot write" in line and "/blocked/" in line]
    assert len(warnings) == 1, warnings
    assert "Traceback" not in run.done.stderr
    assert (run.clips / "blocked").is_file()


def test_a_full_disk_leaves_no_partial_clip(run):
    if not run.tmpfs:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk case is not run")
    assert len(ends(run, "full")) == len(ends(run, "ok"))
    assert not [name for name in run.left_in_full if name.endswith(".mp4") and not name.startswith(".")
                and os.path.getsize(run.clips / "full" / name) == 0]
    assert not [name for name in run.left_in_full if name.startswith(".")], run.left_in_full
    assert any("No space left on device" in line for line in run.done.stderr.splitlines()), run.done.stderr[-1500:]


def test_old_clips_go_first_when_past_the_age_or_the_size_cap(tmp_path):
    from streamer.stages.clips import ClipStage
    from streamer.config.network import Endpoints, Security
    from streamer.config.sinks import ClipsConfig, ClipStageConfig

    now = __import__("time").time()
    for age_days, name, size in ((10, "old", 100), (2, "middle", 300), (1, "newer", 300), (0, "newest", 300)):
        for suffix in (".mp4", ".jpg"):
            path = tmp_path / "cam" / f"{name}{suffix}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"\0" * (size if suffix == ".mp4" else 10))
            os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    stage = ClipStage(ClipStageConfig(ClipsConfig(dir=str(tmp_path), keep_days=7, max_bytes=700),
                                      Endpoints("", "", "", ""), Security(), (), 29))
    stage._prune()
    left = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert left == ["newer.jpg", "newer.mp4", "newest.jpg", "newest.mp4"]  # 'old' by age, 'middle' by size


def test_a_clip_never_holds_frames_past_an_end_that_names_an_earlier_frame():
    """An end line names where the score went below (end_hold_s before it is written), and in an offline run the
    frames run far ahead of the predictions: a clip still under way writes only frames its end cannot come
    before, so it stops exactly post_s after the frame its end names."""
    from streamer.config.sinks import ClipsConfig
    from streamer.stages.clips import Recorder
    from streamer.transport.messages import DisplayFrame

    fps, post_s, hold_s = 30.0, 1.0, 1.0
    recorder = Recorder("cam", ClipsConfig(dir="unused", pre_s=0.0, post_s=post_s, annotated=False), span=1,
                        end_lag_s=hold_s)
    image = np.zeros((48, 64, 3), np.uint8)
    recorder.start({"id": "a", "label": "x", "frame_index": 10})
    for index in range(300):  # the capture ran ahead: every frame is here before the end line
        recorder.add_frame(DisplayFrame("cam", index, index / fps, image, fps), now=0.0)
    for index in range(10, 101, 4):
        recorder.add_prediction({"frame_index": index, "top": [["x", 0.9]]})
    written = []
    recorder._write = lambda clip, index, image, warn: (written.append(index), setattr(clip, "next", index + 1))
    for _ in range(20):
        recorder.pump(now=0.0, warn=str)
    recorder.end({"id": "a", "frame_index": 100 - round(hold_s * fps)}, now=0.0)  # written at 100, naming 70
    for _ in range(20):
        recorder.pump(now=0.0, warn=str)
    assert written == list(range(10, 70 + round(post_s * fps) + 1))
