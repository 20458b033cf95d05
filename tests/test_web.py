"""The web stage end to end: one real demo pipeline (shipped model, synthetic source) with ``--web`` on a free
loopback port, read over real HTTP by urllib, raw sockets, prometheus_client's parser, promtool and a real
headless Chromium; the token and bad requests against a web stage of its own."""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_reliability import REPO, Pipeline

URL_LINE = re.compile(r"web view at (http://\S+)/")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def get(url: str, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str):
    status, _, body = get(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def of_kind(lines: list[dict], *kinds: str) -> list[dict]:
    return [line for line in lines if line["kind"] in kinds]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def web_url(pipe: Pipeline) -> str | None:
    for line in list(pipe.lines):
        if m := URL_LINE.search(line):
            return m.group(1)
    return None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as a user starts it, with the web view on a free port; shared by the tests below."""
    tmp = tmp_path_factory.mktemp("web")
    events = tmp / "events.jsonl"
    config = tmp / "demo-with-clips.toml"  # the demo's own config, plus clips for the /events/<id>/ routes
    config.write_text((REPO / "configs" / "default.toml").read_text()
                      + f'\n[clips]\ndir = "{tmp / "clips"}"\npre_s = 1\npost_s = 1\n')
    pipe = Pipeline("--config", config, "--headless", "--web", "127.0.0.1:0", "--events", events, "--duration", 300,
                    "--store", tmp / "actions.db")
    try:
        pipe.wait_for(lambda: web_url(pipe), timeout=60, what="the 'web view at' line")
        pipe.wait_for(lambda: events.exists() and len(of_kind(log_lines(events), "start")) >= 1, timeout=60,
                      what="a first action event")
        pipe.wait_for(lambda: get_json(f"{web_url(pipe)}/api/streams")[0]["fps_in"] > 0, timeout=10,
                      what="the first input fps report")
        yield SimpleNamespace(pipe=pipe, base=web_url(pipe), events=events, tmp=tmp)
    finally:
        code = pipe.stop()
    assert code == 0, "".join(pipe.lines[-30:])
    assert not any("Traceback" in line for line in pipe.lines), "".join(pipe.lines)


def test_newest_jpeg_is_valid_and_changes(demo):
    status, headers, first = get(f"{demo.base}/streams/demo.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] >= 320
    time.sleep(0.5)
    _, headers2, second = get(f"{demo.base}/streams/demo.jpg")
    assert second != first and int(headers2["X-Frame-Index"]) > int(headers["X-Frame-Index"])
    _, _, small = get(f"{demo.base}/streams/demo.jpg?width=160")
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape[1] == 160


def test_api_streams_and_events_match_the_event_log(demo):
    streams = get_json(f"{demo.base}/api/streams")
    assert [s["name"] for s in streams] == ["demo"]
    (stream,) = streams
    assert stream["state"] == "live" and stream["source"] == "synthetic" and stream["fps_in"] > 20
    logged = log_lines(demo.events)
    assert stream["latest"] in of_kind(logged, "prediction")  # exactly a line of the log

    api_events = get_json(f"{demo.base}/api/events?limit=1000")
    logged = of_kind(log_lines(demo.events), "start", "end")
    assert api_events and api_events == logged[::-1][: len(api_events)], "newest first, as logged"
    assert all(isinstance(e["id"], str) and e["id"] for e in api_events)
    assert get_json(f"{demo.base}/api/events?limit=1") == api_events[:1]


def post_json(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_action_history_holds_each_action_of_the_log_as_one_record(demo):
    """Contract 8: every start in the event log is one record, ended as its end line says; feedback is kept."""
    def records() -> dict[str, dict]:
        return {a["id"]: a for a in get_json(f"{demo.base}/api/actions?limit=500")["actions"]}

    logged = of_kind(log_lines(demo.events), "start", "end")
    demo.pipe.wait_for(lambda: {e["id"] for e in logged} <= set(records()), timeout=10, what="the store to catch up")
    history = records()
    for line in logged:
        action = history[line["id"]]
        assert (action["stream"], action["label"]) == (line["stream"], line["label"])
        if line["kind"] == "start":
            assert (action["start_frame"], action["start_ts"]) == (line["frame_index"], line["frame_ts"])
        else:
            assert (action["end_frame"], action["end_ts"]) == (line["frame_index"], line["frame_ts"])
            assert action["score"] >= line["score"] and action["clip"] == line["clip"]
    demo.pipe.wait_for(lambda: metric(get(f"{demo.base}/metrics")[2].decode(), "timesformer_store_lines_written_total")
                       >= len(logged), timeout=5, what="the store's lines in /metrics")
    newest = next(iter(history))
    assert get_json(f"{demo.base}/api/actions/{newest}") == history[newest]
    status, marked = post_json(f"{demo.base}/api/actions/{newest}/feedback", b'{"verdict": "wrong", "label": "waving"}')
    assert status == 200 and marked["feedback"]["verdict"] == "wrong" and marked["feedback"]["label"] == "waving"
    assert get_json(f"{demo.base}/api/actions/{newest}")["feedback"] == marked["feedback"]
    for body, code in [(b"not json", 400), (b'{"verdict": "maybe"}', 400), (b'{"verdict": "right", "x": 1}', 400),
                       (b'{"verdict": "right", "label": ""}', 400)]:
        assert post_json(f"{demo.base}/api/actions/{newest}/feedback", body)[0] == code, body
    assert post_json(f"{demo.base}/api/actions/1-nothing/feedback", b'{"verdict": "right"}')[0] == 404
    for path, code in [("/api/actions?limit=0", 400), ("/api/actions?since=nan", 400), ("/api/actions?colour=red", 400),
                       ("/api/actions?before=..%2F", 400), ("/api/actions/1-nothing", 404), ("/api/actions/a%20b", 404)]:
        status, _, body = get(demo.base + path)
        assert status == code and "error" in json.loads(body), (path, status, body[:200])


def test_metrics_parse_rise_and_agree_with_the_event_log(demo):
    before_log = len(of_kind(log_lines(demo.events), "prediction"))
    _, headers, body = get(f"{demo.base}/metrics")
    after_log = len(of_kind(log_lines(demo.events), "prediction"))
    text = body.decode()
    assert headers["Content-Type"].startswith("text/plain")
    first = metric(text, "timesformer_predictions_total", stream="demo")
    assert before_log <= first <= after_log, (before_log, first, after_log)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["timesformer_latency_seconds"].type == "histogram"
    assert metric(text, "timesformer_latency_seconds_count", stream="demo") >= first - 1
    assert metric(text, "timesformer_frames_captured_total", stream="demo") > 30
    assert metric(text, "timesformer_workers_answering") == 1
    assert metric(text, "timesformer_build_info", checkpoint="demo.safetensors", device="cpu") == 1
    assert all(name.startswith("timesformer_") for name in families)
    time.sleep(1.5)
    second = metric(get(f"{demo.base}/metrics")[2].decode(), "timesformer_predictions_total", stream="demo")
    assert second > first


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian's prometheus package)")
def test_promtool_finds_nothing_to_report(demo):
    body = get(f"{demo.base}/metrics")[2]
    done = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done


def test_health_and_readiness_while_running(demo):
    status, _, body = get(f"{demo.base}/healthz")
    assert status == 200 and json.loads(body)["status"] == "running"
    status, _, body = get(f"{demo.base}/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "not_ready": []}


def read_mjpeg_parts(url: str, count: int, timeout: float = 20.0) -> list[tuple[dict, bytes, float]]:
    """``count`` parts of an MJPEG stream: (part headers, JPEG, arrival Unix time)."""
    response = urllib.request.urlopen(url, timeout=timeout)
    assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
    assert response.readline() == b"--frame\r\n"
    parts = []
    while len(parts) < count:
        headers = {}
        while (line := response.readline()) != b"\r\n":
            key, _, value = line.decode().partition(":")
            headers[key.strip()] = value.strip()
        data = response.read(int(headers["Content-Length"]))
        parts.append((headers, data, time.time()))
        assert response.readline() == b"\r\n" and response.readline() == b"--frame\r\n"
    response.close()
    return parts


def test_mjpeg_stream_sends_newer_frames_with_their_capture_time(demo):
    parts = read_mjpeg_parts(f"{demo.base}/streams/demo.mjpeg?width=320&fps=10", 8)
    indices = [int(h["X-Frame-Index"]) for h, _, _ in parts]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert (parts[-1][2] - parts[0][2]) >= 7 / 10 * 0.9, "?fps=10 keeps parts at least 0.1 s apart"
    for headers, data, arrived in parts:
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[1] == 320
        assert 0 <= arrived - float(headers["X-Frame-Timestamp"]) < 2.0


def test_bad_requests_get_a_4xx_with_a_reason(demo):
    for path, code in [("/streams/nope.jpg", 404), ("/streams/demo.gif", 404), ("/streams/..%2F..%2Fetc%2Fpasswd.jpg", 404),
                       ("/static/../../config.py", 404), ("/static/page.py", 404), ("/api/events?limit=0", 400),
                       ("/api/events?limit=abc", 400), ("/streams/demo.mjpeg?fps=nan", 400),
                       ("/streams/demo.jpg?width=99999", 400), ("/nothing", 404)]:
        status, headers, body = get(demo.base + path)
        assert status == code, (path, status, body[:200])
        assert "error" in json.loads(body), path


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def pipeline_rate(events, t0: float, t1: float) -> tuple[float, float]:
    """(predictions a second, median latency ms) of the lines written between t0 and t1."""
    lines = [p for p in of_kind(log_lines(events), "prediction") if t0 <= p["frame_ts"] + p["latency_ms"] / 1000 < t1]
    latencies = sorted(p["latency_ms"] for p in lines)
    return len(lines) / (t1 - t0), latencies[len(latencies) // 2] if latencies else float("inf")


class Viewer(threading.Thread):
    """A raw MJPEG client: reads as fast as it can, or (stalled) sends its request and never reads."""

    def __init__(self, base: str, stalled: bool = False) -> None:
        super().__init__(daemon=True)
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.sendall(b"GET /streams/demo.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n")
        self.stalled, self.received, self.done = stalled, 0, threading.Event()

    def run(self) -> None:
        while not self.stalled and not self.done.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                break
            if not data:
                break
            self.received += len(data)

    def close(self) -> None:
        self.done.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv
        except OSError:
            pass
        self.join(timeout=5)
        self.sock.close()


def test_twenty_viewers_one_stalled_do_not_slow_the_pipeline(demo):
    from streamer.stages.web.feeds import KEEP_WATCHING_S

    web_pid = demo.pipe.pids("web")[-1]

    def counters() -> tuple[float, float]:
        text = get(f"{demo.base}/metrics")[2].decode()
        return (metric(text, "timesformer_web_jpeg_encodes_total", stream="demo"),
                metric(text, "timesformer_display_frames_total", stream="demo"))

    time.sleep(KEEP_WATCHING_S + 2)  # earlier tests' viewers gone, and the capture's report after that in
    t0, (encodes_at_t0, shown_at_t0) = time.time(), counters()
    time.sleep(6)
    alone = pipeline_rate(demo.events, t0, time.time())
    rss_before, (encodes_before, shown_before) = rss_mb(web_pid), counters()
    assert encodes_before == encodes_at_t0, "JPEGs were encoded while nobody watched"
    assert shown_before == shown_at_t0, "the capture made display frames while nobody watched"

    viewers = [Viewer(demo.base, stalled=(i == 0)) for i in range(20)]
    for viewer in viewers:
        viewer.start()
    try:
        time.sleep(1.0)
        t1 = time.time()
        time.sleep(6)
        t2 = time.time()
        watched = pipeline_rate(demo.events, t1, t2)
        encoded = counters()[0] - encodes_before
        rss_after = rss_mb(web_pid)
    finally:
        for viewer in viewers:
            viewer.close()
    frames = 30.0 * (t2 - t1 + 1.0)  # the synthetic source runs at 30 fps
    print(f"alone {alone[0]:.2f} windows/s p50 {alone[1]:.0f} ms; 20 viewers {watched[0]:.2f} windows/s "
          f"p50 {watched[1]:.0f} ms; {encoded:.0f} encodes; web RSS {rss_before:.0f} → {rss_after:.0f} MB")
    assert all(v.received > 100_000 for v in viewers[1:]), [v.received for v in viewers]
    assert encoded <= frames * 1.1, f"{encoded} JPEG encodes for ~{frames:.0f} frames: not once per frame"
    assert watched[0] >= 0.9 * alone[0], f"windows/s {alone[0]:.2f} alone, {watched[0]:.2f} with 20 viewers"
    assert watched[1] <= 1.5 * alone[1] + 30, f"latency p50 {alone[1]:.0f} ms alone, {watched[1]:.0f} ms watched"
    assert rss_after - rss_before < 60, f"web stage grew {rss_after - rss_before:.0f} MB"


def test_viewers_that_hang_up_as_the_stream_starts_leave_no_traceback(demo):
    """A browser closing a tab while the live stream or the page's event feed starts is ordinary: the connection
    is reset while the response's headers go out. Each is dropped quietly (aiohttp logs a traceback for a
    handler that raises on a reset connection)."""
    host, port = demo.base.removeprefix("http://").split(":")
    before = len(demo.pipe.lines)
    for i in range(60):
        path = "/streams/demo.mjpeg" if i % 2 else "/api/live"
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    time.sleep(1.0)
    assert get_json(f"{demo.base}/api/streams")[0]["name"] == "demo"
    lines = demo.pipe.lines[before:]
    assert not any("Traceback" in line or "Error handling request" in line for line in lines), "".join(lines)


def test_an_ended_action_serves_its_clip_and_thumbnail(demo):
    demo.pipe.wait_for(lambda: of_kind(log_lines(demo.events), "end"), timeout=60, what="an action's end")
    end = of_kind(log_lines(demo.events), "end")[0]
    assert end["clip"] == str(demo.tmp / "clips" / "demo" / f"{end['id']}.mp4")
    deadline = time.monotonic() + 20
    while (answer := get(f"{demo.base}/events/{end['id']}/clip.mp4"))[0] == 404:  # done after its post-roll
        assert time.monotonic() < deadline, answer[2][:200]
        time.sleep(0.3)
    status, headers, body = answer
    assert status == 200 and headers["Content-Type"] == "video/mp4" and body == open(end["clip"], "rb").read()
    import av

    with av.open(end["clip"]) as container:
        assert sum(1 for _ in container.decode(video=0)) > 30  # at least its 1 s pre- and post-roll
    status, headers, jpeg = get(f"{demo.base}/events/{end['id']}/thumbnail.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    status, _, body = get(f"{demo.base}/events/no-such-event/clip.mp4")
    assert status == 404 and "no clip is known" in json.loads(body)["error"]
    assert get(f"{demo.base}/events/{end['id']}/other.txt")[0] == 404
    deadline = time.monotonic() + 5  # the clips stage's counters reach /metrics through the dispatcher
    while metric(get(f"{demo.base}/metrics")[2].decode(), "timesformer_clips_total", outcome="written") < 1:
        assert time.monotonic() < deadline, "no written clip counted in /metrics"
        time.sleep(0.3)
    assert metric(get(f"{demo.base}/metrics")[2].decode(), "timesformer_clip_buffer_bytes") > 0


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium missing (.ci/system-packages.sh)")
def test_browser_shows_the_stream_live_and_its_action_events(demo):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(demo.base + "/", wait_until="domcontentloaded")
            image = page.wait_for_selector('article[data-stream="demo"] img')
            deadline = time.monotonic() + 20
            while image.evaluate("img => img.naturalWidth") == 0:  # (wait_for_function would need unsafe-eval)
                assert time.monotonic() < deadline, "the live image never showed a frame"
                page.wait_for_timeout(100)
            first = image.screenshot()
            page.wait_for_timeout(1000)
            assert image.screenshot() != first, "the live image did not change in 1 s"
            page.wait_for_selector("#events li.start", timeout=30_000)
            page.wait_for_selector('article[data-stream="demo"] .state.live', timeout=10_000)
            text = page.inner_text("#events")
            assert "_" not in text, f"labels must read as words: {text[:200]}"
            thumb = page.wait_for_selector("#events img.thumb", timeout=30_000)  # an ended action's clip
            deadline = time.monotonic() + 30
            while thumb.evaluate("img => img.naturalWidth") == 0:
                assert time.monotonic() < deadline, "the clip's thumbnail never loaded"
                page.wait_for_timeout(200)
            page.screenshot(path=str(demo.tmp / "page.png"))
            thumb.click()
            video = page.wait_for_selector("#events video.clip", timeout=5_000)
            deadline = time.monotonic() + 10
            while video.evaluate("v => v.readyState") < 1:  # HAVE_METADATA: the browser read the MP4
                assert time.monotonic() < deadline, "the browser could not read the clip"
                page.wait_for_timeout(200)
            page.click('article[data-stream="demo"]')
            assert page.eval_on_selector("#grid", "g => g.classList.contains('single')")
            assert all(url.startswith(demo.base) for url in requests), [u for u in requests if not u.startswith(demo.base)]
        finally:
            browser.close()


def test_a_killed_web_stage_is_restarted_on_the_same_address(demo):
    """Last of the shared run: the supervisor keeps the listening socket, so the view comes back where it was."""
    import signal as signals

    first = demo.pipe.pids("web")[-1]
    os.kill(first, signals.SIGKILL)
    demo.pipe.wait_for(lambda: len(demo.pipe.pids("web")) >= 2, timeout=20, what="the web stage restarted")
    demo.pipe.wait_for(lambda: _status(f"{demo.base}/readyz") == 200, timeout=30, what="the view back, ready")
    assert demo.pipe.pids("web")[-1] != first
    _, _, body = get(f"{demo.base}/streams/demo.jpg")
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None


def _status(url: str) -> int | None:
    try:
        return get(url, timeout=2)[0]
    except OSError:  # refused or reset while the new process starts
        return None
