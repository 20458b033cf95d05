"""Taught actions live (issue 24): one real pipeline (capture, dispatcher, worker, web; real sockets, the shipped
demo model) reads a video that shows an action the model never saw ("bouncing") four times between its own
actions. Mid-run the label is taught through the API from the first time it shows, again in Chromium by
dragging along the review page's timeline over the second, and again from clip files sent as a form; the workers
take each new adapter between two batches.
The run is offline, so no window may be dropped, swaps included; forgetting the label stops it."""

import json
import os
import time
import uuid
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomli_w

from streamer.synthetic.files import make_teaching_clips, write_plan
from tests.test_reliability import REPO, Pipeline
from tests.test_web import CHROMIUM, CHROMIUM_FLAGS, web_url

FPS = 30
NEW = "bouncing"
# Five shots of the new action between the demo's own; the gaps leave the test time to act between them, and the last
# two come after the forgetting however far the run got while the tests before it taught (clips take a few seconds). The
# camera shows the demo's actions of the first gap before the first: the ordinary windows the teaching learns against
# (a label taught from one span of a camera just started knows no others).
# Taught from one span, a label's reach depends on the scene. With the demo model of 2026-12-07 (second pass) and
# FALSE_TOP 0.02 this one (seed 3, a first shot of 6 s) passed 3 runs of 3, and seeds 6, 7, 8 started it too; seed 4
# failed to start it in the second shot. With the third pass and FALSE_TOP 0.01 it passed 3 runs of 3 again. The
# accuracy of teaching is bench/taught_events.py's to measure; this test holds the live mechanism to a scene where it
# works.
PLAN = [("blinking", 2), ("moving_up", 2), ("growing", 2), ("still", 2), (NEW, 6), ("moving_up", 3), ("blinking", 3),
        ("growing", 3), (NEW, 5), ("still", 3), ("moving_down", 3), ("shrinking", 3), (NEW, 5), ("moving_left", 3),
        ("growing", 2), (NEW, 5), ("blinking", 3), ("moving_up", 2), (NEW, 5), ("still", 2)]
SPAN = 29  # source frames one window covers (8 frames, 4 apart): a window's truth is its last frame's shot


def read_lines(path: Path) -> list[dict]:
    out = []
    for raw in path.read_text().splitlines() if path.exists() else ():
        try:
            out.append(json.loads(raw))
        except ValueError:  # the line being written
            pass
    return out


class Run:
    def __init__(self, tmp: Path) -> None:
        self.labels = write_plan(tmp / "bouncing.mp4", PLAN, seed=3, width=160, height=120)
        self.shots = [s for s in self.labels if s["label"] == NEW]
        self.events = tmp / "events.jsonl"
        config = tomllib.loads((REPO / "configs" / "default.toml").read_text())
        # one window a forward, slowed a little: the run lasts long enough to act within it on any machine
        config["model"].update(backend="torch", max_batch=1, delay_s=0.03)
        config["sources"] = [{"name": "door", "spec": str(tmp / "bouncing.mp4")}]
        config.pop("clips", None)
        (tmp / "teach.toml").write_text(tomli_w.dumps(config))
        self.pipe = Pipeline("--config", tmp / "teach.toml", "--offline", "--headless", "--web", "127.0.0.1:0",
                             "--store", tmp / "actions.db", "--events", self.events)
        self.pipe.wait_for(lambda: web_url(self.pipe) or self.pipe.proc.poll() is not None, timeout=90,
                           what="the 'web view at' line")
        assert self.pipe.proc.poll() is None, "".join(self.pipe.lines)
        self.base = web_url(self.pipe)
        urllib.request.urlopen(self.base + "/api/teach", timeout=10).read()  # as the review page does: readies teaching

    def lines(self, *kinds: str) -> list[dict]:
        return [line for line in read_lines(self.events) if line["kind"] in kinds]

    def wait_past(self, frame: int, timeout: float = 120.0) -> list[dict]:
        """The prediction lines, once one is past source frame ``frame``."""
        self.pipe.wait_for(lambda: any(p["frame_index"] > frame for p in self.lines("prediction")), timeout,
                           f"a prediction past frame {frame}")
        return self.lines("prediction")

    def span_of(self, shot: dict) -> dict:
        """The shot as the review page and the API name it: the stream and the capture times of the windows
        that lie wholly inside it."""
        inside = [p for p in self.wait_past(shot["end_frame"] + 2 * SPAN)
                  if shot["start_frame"] + SPAN <= p["frame_index"] <= shot["end_frame"]]
        return {"stream": "door", "from": inside[0]["frame_ts"], "to": inside[-1]["frame_ts"]}

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def post_form(self, fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> dict:
        """``POST /api/teach`` as the review page sends clip files: multipart/form-data."""
        body, kind = form_body(fields, files)
        request = urllib.request.Request(self.base + "/api/teach", data=body, method="POST",
                                         headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def loaded(self) -> int:
        """Adapters the workers have loaded so far (each logs its labels' held-out check)."""
        return sum(f"{NEW} (held-out precision" in line for line in self.pipe.lines)

    def starts(self, shot: dict) -> list[dict]:
        return [s for s in self.lines("start") if s["label"] == NEW
                and shot["start_frame"] <= s["frame_index"] <= shot["end_frame"] + SPAN]


def form_body(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578) and its Content-Type, as a browser's FormData makes it."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              f"Content-Type: video/mp4\r\n\r\n".encode() + data + b"\r\n" for name, filename, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("teach-live"))
    yield run
    run.pipe.stop()


def test_a_label_taught_through_the_api_mid_run_starts_where_the_new_action_shows(run):
    first, second = run.shots[0], run.shots[1]
    asked = time.monotonic()
    answer = run.post("/api/teach", {"label": NEW, "spans": [run.span_of(first)]})
    assert answer["labels"] == [NEW] and answer["examples"] >= 10 and answer["version"] == 1, answer
    assert set(answer["checks"][NEW]) == {"precision", "recall", "windows"}
    assert time.monotonic() - asked < 30
    run.wait_past(second["end_frame"] + SPAN)
    assert run.starts(second), f"no {NEW} start in its second shot; starts: {run.lines('start')}"
    assert not [s for s in run.lines("start") if s["label"] == NEW and s["frame_index"] < second["start_frame"]
                and s["frame_index"] > first["end_frame"] + SPAN], "a start where it does not show"
    assert any(f"{NEW} (held-out precision" in line for line in run.pipe.lines), "the check is logged as it loads"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium missing (.ci/system-packages.sh)")
def test_in_chromium_a_span_dragged_on_the_timeline_is_taught_and_the_live_panel_shows_it(run):
    from playwright.sync_api import sync_playwright

    span = run.span_of(run.shots[1])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        # Offline, a 5 s shot passes in 1.5-2.5 s of capture time, a few pixels of a 5-minute row at 1280 px: too
        # short a move to be a drag (4 px). A wide window gives the row room (about 6 px a second).
        page = browser.new_page(viewport={"width": 2560, "height": 800})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(run.base + "/review")
        track = page.locator('.track[data-stream="door"]')
        track.wait_for()
        _wait(page, lambda: page.locator(".span").count() > 0, 30)  # the day's actions, and the view they make
        start, end = page.evaluate("[view.from, view.to]")
        box = track.bounding_box()
        x = lambda t: box["x"] + (t - start) / (end - start) * box["width"]  # noqa: E731
        y = box["y"] + box["height"] / 2
        page.mouse.move(x(span["from"]), y)
        page.mouse.down()
        page.mouse.move(x(span["to"]), y, steps=4)
        page.mouse.up()
        assert page.locator("#teach").is_visible() and page.locator(".band").count() == 1, (span, box)
        page.fill("#teach-label", NEW)
        page.click("#teach-go")
        status = page.locator("#status")
        _wait(page, lambda: status.text_content().startswith("taught"), 60)
        assert "bouncing" in page.locator("#taught-labels").text_content()
        live = browser.new_page(viewport={"width": 1280, "height": 800})
        live.goto(run.base + "/")
        _wait(live, lambda: NEW in live.locator("body").text_content(), 120)  # the panel, once it shows again
        assert not errors, errors
        browser.close()


def test_clip_files_sent_as_a_form_teach_the_label_again_and_the_workers_take_it(run, tmp_path):
    clips = make_teaching_clips(tmp_path, NEW, 4, seconds=2.5, seed=9300, width=160, height=120)
    before, loaded = json.loads(urllib.request.urlopen(run.base + "/api/teach", timeout=10).read()), run.loaded()
    answer = run.post_form([("label", NEW)], [("clip", c.name, c.read_bytes()) for c in clips])
    assert answer["labels"] == [NEW] and answer["version"] == before["version"] + 1, answer
    assert answer["examples"] >= 4 * 10 and answer["negatives"] >= 10, answer  # 2.5 s: 12 windows a clip
    state = json.loads(urllib.request.urlopen(run.base + "/api/teach", timeout=10).read())
    note = next(v["note"] for v in state["versions"] if v["version"] == answer["version"])
    assert note == f"taught {NEW} from 4 clip(s), {answer['examples']} windows", state
    run.pipe.wait_for(lambda: run.loaded() > loaded, timeout=30, what="the workers loading the clips' adapter")


def test_a_request_that_cannot_teach_gets_one_line_and_changes_nothing(run, tmp_path):
    before = json.loads(urllib.request.urlopen(run.base + "/api/teach", timeout=10).read())
    far = {"stream": "door", "from": 1000.0, "to": 1010.0}
    cases = [("/api/teach", b"{not json", 400, "JSON"),
             ("/api/teach", {"label": "still", "spans": [far]}, 409, "a label of the checkpoint"),
             ("/api/teach", {"label": "x", "spans": [{"stream": "door", "from": 5, "to": 1}]}, 400, '"to" after'),
             ("/api/teach", {"label": "x", "spans": [far]}, 422, "kept window"),
             ("/api/teach", {"label": "x"}, 400, "at least one example"),
             ("/api/teach", {"label": "x", "actions": ["no-such"]}, 404, "no action"),
             ("/api/teach/forget", {"label": "never-taught"}, 404, "a taught label"),
             ("/api/teach/revert", {"version": 999}, 404, "earlier adapter")]
    for path, body, status, says in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(run.base + path, data=data, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        message = json.loads(err.value.read())["error"]
        assert err.value.code == status and says in message and "\n" not in message, (path, body, message)
    clip = make_teaching_clips(tmp_path, NEW, 1, seconds=1.5, width=160, height=120)[0].read_bytes()
    forms = [([("label", NEW)], [("clip", "notes.txt", b"not a video at all")], 422, "clip 'notes.txt'"),
             ([("label", NEW), ("stream", "nowhere")], [("clip", "a.mp4", clip)], 422, "window(s) of nowhere"),
             ([("label", NEW)], [], 400, "at least one clip"),
             ([("label", "still")], [("clip", "a.mp4", b"x")], 409, "a label of the checkpoint"),
             ([("colour", "red")], [], 400, "unknown field 'colour'")]
    for fields, files, status, says in forms:
        body, kind = form_body(fields, files)
        request = urllib.request.Request(run.base + "/api/teach", data=body, method="POST",
                                         headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        message = json.loads(err.value.read())["error"]
        assert err.value.code == status and says in message and "\n" not in message, (fields, message)
    after = json.loads(urllib.request.urlopen(run.base + "/api/teach", timeout=10).read())
    assert after["version"] == before["version"] and after["labels"] == before["labels"]


def test_forgetting_the_label_stops_it_and_no_window_was_dropped_by_the_swaps(run):
    run.wait_past(run.shots[2]["end_frame"] + SPAN)
    forgotten = run.post("/api/teach/forget", {"label": NEW})
    assert forgotten["labels"] == [], forgotten
    forgot_at = time.time()
    run.pipe.wait_for(lambda: run.pipe.proc.poll() is not None, timeout=180, what="the end of the run")
    assert run.pipe.proc.returncode == 0, "".join(run.pipe.lines[-30:])
    after = [p for p in run.lines("prediction") if p["frame_ts"] > forgot_at + 2]
    # the shots captured wholly after the workers had the forgetting (how far the run got meanwhile varies)
    predictions = run.lines("prediction")
    later = [s for s in run.shots if min((p["frame_ts"] for p in predictions if p["frame_index"] >= s["start_frame"]),
                                         default=0) > forgot_at + 2]
    assert later, f"no shot of {NEW} left after forgetting at {forgot_at}; lengthen PLAN"
    assert not [s for shot in later for s in run.starts(shot)], "a start of the forgotten label"
    assert after and not any(name == NEW for p in after for name, _ in p["top"])
    seqs = sorted(p["seq"] for p in run.lines("prediction"))
    assert seqs == list(range(len(seqs))) and not run.lines("window_stale"), "every window predicted once"
    assert not any("Traceback" in line for line in run.pipe.lines), "".join(run.pipe.lines)


def _wait(page, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(100)
