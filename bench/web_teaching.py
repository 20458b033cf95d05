"""Teaching through the web stage of a running pipeline, as an operator does on the review page: the part of
``bench/taught_events.py`` that makes its *web* adapters.

One camera a new action: ten minutes or so of the demo camera's ordinary footage (its own scene plans) in which
the new action shows ``EXAMPLES`` times, ``CLIP_S`` seconds each. The real pipeline reads the three cameras
(``run_pipeline.py --offline --headless --store DB --web 127.0.0.1:0``, ``[teach] keep_h``: the store keeps every
window's embedding); once every camera is past its last shot, and while the cameras still run, the bench teaches
through ``POST /api/teach`` what the review page sends for a span dragged over each shot (its windows wholly
inside the shot): examples from the store, negatives the camera's ordinary windows it kept (``NEGATIVES``, none
within the spans). Each label alone (forgetting the one before through ``POST /api/teach/forget``), then the three
together (taught one after another beside those already taught). The store's adapter versions are written out
as files, so the held-out runs read each exactly as the workers were handed it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import cv2
import tomli_w

from bench.teach_live import lines
from streamer.store import taught
from streamer.synthetic.files import encode_video, write_plan
from streamer.synthetic.scenes import CLASSES, segments_for
from workers.adapter import save_adapter
from workers.training.teaching import NONE

REPO = Path(__file__).resolve().parents[1]
CAMERA_SEED = 9400  # the cameras' footage and shots; far from the held-out seeds (7101 up) and the CLI's (9300)
EXAMPLES = 10
CLIP_S = 2.5
BETWEEN_S = 30.0  # the camera's ordinary footage before each shot of the new action
TAIL_S = 90.0  # and after the last: the run still goes while the bench teaches
FPS = 30


def camera_plan(label: str, seed: int) -> list[tuple[str, float]]:
    """The camera's shots: the demo's own scene plan (seed by seed) with a shot of ``label`` after each
    ``BETWEEN_S`` of it, and ``TAIL_S`` of it at the end."""
    plan: list[tuple[str, float]] = []
    for i in range(EXAMPLES + 1):
        seconds = TAIL_S if i == EXAMPLES else BETWEEN_S
        plan += [(s.label, (s.end_frame - s.start_frame + 1) / FPS)
                 for s in segments_for(seed * 100 + i, round(seconds * FPS), FPS, CLASSES)]
        if i < EXAMPLES:
            plan.append((label, CLIP_S))
    return plan


def render_cameras(folder: Path, labels: tuple[str, ...]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, label in enumerate(labels):
        video = folder / f"camera-{label}.mp4"
        if not video.exists():
            write_plan(video, camera_plan(label, CAMERA_SEED + i), seed=CAMERA_SEED + i)
        out[label] = video
    return out


def camera_folders(work: Path, labels: tuple[str, ...], together: str) -> dict[str, Path]:
    """The same cameras cut into folders for ``python -m workers.teach``, to tell the teaching path from the
    examples drawn: ``<label>/`` the label's shots (the whole shot), ``none/`` the footage between them; one
    folder a label, and ``together`` (every camera's shots and footage)."""
    cameras = render_cameras(work / "cameras", labels)
    out = {}
    for label, video in cameras.items():
        folder = out[label] = work / "teach-shots" / f"teach-{label}"
        if (folder / NONE).is_dir():
            continue
        truth = json.loads(video.with_suffix(".labels.json").read_text())
        pieces: list[list] = []  # [first frame, last frame, file]
        for s in truth:
            if s["label"] == label:
                pieces.append([s["start_frame"], s["end_frame"], folder / label / f"shot-{len(pieces)}.mp4"])
            elif pieces and pieces[-1][2].parent.name == NONE:
                pieces[-1][1] = s["end_frame"]
            else:
                pieces.append([s["start_frame"], s["end_frame"], folder / NONE / f"ordinary-{len(pieces)}.mp4"])
        capture = cv2.VideoCapture(str(video))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

        def frames(count: int):
            for _ in range(count):
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame

        for first, last, path in pieces:
            encode_video(path, frames(last - first + 1), FPS, width, height)
        capture.release()
    both = work / "teach-shots" / f"teach-{together}"
    (both / NONE).mkdir(parents=True, exist_ok=True)
    for label, folder in out.items():
        shutil.copytree(folder / label, both / label, dirs_exist_ok=True)
        for clip in (folder / NONE).glob("*.mp4"):
            shutil.copy(clip, both / NONE / f"{label}-{clip.name}")
    out[together] = both
    return out


def shot_spans(label: str, stream: str, truth: list[dict], predictions: list[dict], window: int) -> list[dict]:
    """The spans the review page sends for each shot of ``label``: from the first to the last window wholly
    inside it (capture times)."""
    spans = []
    for shot in (s for s in truth if s["label"] == label):
        inside = [p["frame_ts"] for p in predictions if p["stream"] == stream
                  and shot["start_frame"] + window - 1 <= p["frame_index"] <= shot["end_frame"]]
        if inside:
            spans.append({"stream": stream, "from": min(inside), "to": max(inside)})
    return spans


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def teach_through_web(work: Path, checkpoint: Path, labels: tuple[str, ...], window: int,
                      together: str) -> tuple[dict[str, Path], dict[str, str], float]:
    """Run the cameras, teach through the API, write the adapters: ({scenario: adapter file}, {scenario: what
    the teaching answered}, seconds). Scenarios: each label alone, and ``together``."""
    began = time.perf_counter()
    cameras = render_cameras(work / "cameras", labels)
    truth = {label: json.loads(video.with_suffix(".labels.json").read_text()) for label, video in cameras.items()}
    config = tomllib.loads((REPO / "configs" / "default.toml").read_text())
    config["model"].update(checkpoint=str(checkpoint))
    config["sources"] = [{"name": video.stem, "spec": str(video)} for video in cameras.values()]
    config["teach"] = {"keep_h": 24}
    config.pop("clips", None)
    (work / "web-teach.toml").write_text(tomli_w.dumps(config))
    store, events, log = work / "web-teach.db", work / "events-web-cameras.jsonl", work / "run-web-cameras.log"
    for stale in (store, events):
        stale.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "--config", work / "web-teach.toml", "--offline",
                             "--headless", "--web", "127.0.0.1:0", "--store", store, "--events", events], cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        base = _wait(lambda: _web_url(log), proc, log, "the web view's address")
        call(base, "/api/teach")  # the review page opened: teaching readies in the background
        progress = Progress(events)
        last = {cameras[label].stem: max(s["end_frame"] for s in truth[label] if s["label"] == label) + 2 * window
                for label in labels}
        _wait(lambda: progress.past(last), proc, log, "every camera past its last shot")
        predictions = [p for p in lines(events) if p["kind"] == "prediction"]
        spans = {label: shot_spans(label, cameras[label].stem, truth[label], predictions, window) for label in labels}
        versions, said = teach_each(base, labels, spans, together)
        if proc.poll() is not None:
            raise RuntimeError(f"the pipeline ended before the teaching did; see {log}")
        proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    conn = sqlite3.connect(store)
    try:
        adapters = {name: save_adapter(taught.get_version(conn, number).adapter, work / f"web-{name}.safetensors")
                    for name, number in versions.items()}
    finally:
        conn.close()
    return adapters, said, time.perf_counter() - began


def teach_each(base: str, labels: tuple[str, ...], spans: dict[str, list[dict]], together: str
               ) -> tuple[dict[str, int], dict[str, str]]:
    """Each label alone (forgetting the one before), then the others taught beside the last: ({scenario: adapter
    version}, {scenario: what the teaching answered})."""
    versions, said = {}, {}
    for i, label in enumerate(labels):
        if i:
            call(base, "/api/teach/forget", {"label": labels[i - 1]})
        answer = call(base, "/api/teach", {"label": label, "spans": spans[label]})
        versions[label], said[label] = answer["version"], _said(answer)
    for label in labels[:-1]:  # the last is taught already
        answer = call(base, "/api/teach", {"label": label, "spans": spans[label]})
    versions[together], said[together] = answer["version"], _said(answer)
    return versions, said


def _said(answer: dict) -> str:
    checks = "; ".join(f"{label}: held-out precision {c['precision']:.2f}, recall {c['recall']:.2f}"
                       for label, c in answer["checks"].items())
    return (f"{answer['examples']} example windows, {answer['negatives']} ordinary ones, {answer['seconds']:.1f} s; "
            f"{checks}")


def _web_url(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if "web view at " in line:
            return line.split("web view at ", 1)[1].split()[0].rstrip("/")
    return None


class Progress:
    """How far each stream's predictions got, read from the event log as it grows (only the new lines)."""

    def __init__(self, events: Path) -> None:
        self.events, self.offset, self.reached = events, 0, {}

    def past(self, last: dict[str, int]) -> bool:
        if self.events.exists():
            with self.events.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            whole = chunk[:chunk.rfind(b"\n") + 1]  # the line being written waits for the next look
            self.offset += len(whole)
            for raw in whole.splitlines():
                if b'"prediction"' in raw:
                    p = json.loads(raw)
                    self.reached[p["stream"]] = max(self.reached.get(p["stream"], -1), p["frame_index"])
        return all(self.reached.get(stream, -1) > frame for stream, frame in last.items())


def _wait(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float = 1800.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := ready()):
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"the pipeline ended before {what}; see {log}")
        time.sleep(2.0)
    raise TimeoutError(f"no {what} in {timeout:.0f} s; see {log}")
