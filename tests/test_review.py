"""The review page (/review) in a real Chromium against one real demo pipeline that keeps its history in a store
seeded beforehand with a few hundred actions over three streams (one tracked, one a region) and three days;
the browser runs in New York time, so that days are local days, not UTC ones. The last test stops the pipeline
and starts it again on the same store. ``REVIEW_SCREENSHOTS=DIR`` keeps the screenshots there."""

import json
import os
import random
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import tomli_w

from streamer.store import queries, taught, writer
from streamer.store.schema import connect
from tests.test_reliability import REPO, Pipeline
from tests.test_web import CHROMIUM, CHROMIUM_FLAGS, get, get_json, log_lines, of_kind, web_url

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium missing (.ci/system-packages.sh)")

ZONE = ZoneInfo("America/New_York")
LABELS = ("moving_left", "moving_right", "rotating_clockwise", "rotating_anticlockwise", "growing", "blinking", "still")
STREAMS = ("gate", "yard", "dock/left")  # yard is tracked; dock/left is a region's stream
PAGE = 50  # the page's list fetches this many at a time


# ---------------------------------------------------------------- the seeded store


def midnight(day: date) -> float:
    return datetime.combine(day, clock_time(), tzinfo=ZONE).timestamp()


def seed_actions(first: float, last: float, count: int, prefix: str, rng: random.Random) -> list[tuple]:
    """``count`` actions starting between ``first`` and ``last``: (id, stream, track, label, start, end)."""
    actions = []
    for i in range(count):
        stream = STREAMS[i % 3]
        start = first + (last - first) * (i + rng.random()) / count
        track = 1 + i % 4 if stream == "yard" else None
        lasts = rng.uniform(600, 3000) if track else rng.uniform(2, 600)  # the tracked actors' overlap
        actions.append((f"{prefix}-{i:04d}", stream, track, rng.choice(LABELS), start, start + lasts))
    return actions


def seed_store(path: Path) -> dict:
    """Yesterday (300 actions) and the day before (60), local time, and 30 of today before now; every 7th has been
    marked right, every 11th wrong with the right label. Written as the dispatcher writes them: start, end lines."""
    rng, today = random.Random(23), datetime.now(ZONE).date()
    days = {"before": today - timedelta(days=2), "yesterday": today - timedelta(days=1), "today": today}
    actions = (seed_actions(midnight(days["before"]), midnight(days["yesterday"]) - 700, 60, "b", rng)
               + seed_actions(midnight(days["yesterday"]), midnight(today) - 700, 300, "y", rng)
               + seed_actions(midnight(today), max(midnight(today) + 1, time.time() - 700), 30, "t", rng))
    conn = connect(str(path), create=True)
    conn.execute("BEGIN IMMEDIATE")
    for n, (action_id, stream, track, label, start, end) in enumerate(actions):
        common = {"id": action_id, "stream": stream, "score": 0.9}
        writer.apply(conn, {"kind": "start", **common, "label": label, "frame_index": n * 100, "frame_ts": start,
                            **({"track": track} if track else {})})
        writer.apply(conn, {"kind": "end", **common, "frame_index": n * 100 + 60, "frame_ts": end, "peak": 0.95})
    conn.execute("COMMIT")
    for n, (action_id, *_rest) in enumerate(actions):
        if n % 7 == 0:
            queries.set_feedback(conn, action_id, "right", None)
        elif n % 11 == 0:
            queries.set_feedback(conn, action_id, "wrong", "still")
    conn.close()
    return {name: day.isoformat() for name, day in days.items()}


def seed_windows(path: Path) -> tuple[float, float]:
    """Today's last half hour (or less, just after midnight) of kept windows on the tracked stream, two actors
    apart, as the dispatcher keeps them for teaching (``[teach]``): each actor's embeddings around its own point,
    but actor 2's around another in the middle half (a new action), three views of the demo model's 96 numbers,
    fp16. Returns the span they cover."""
    rng = np.random.default_rng(24)
    end = time.time() - 60
    start = max(midnight(datetime.now(ZONE).date()) + 10, end - 1800)
    rows, new_action = [], rng.normal(size=(3, 96))
    for track, hop in ((1, 2.0), (2, 3.0)):  # a window every hop seconds: the actors' counts differ
        centre = rng.normal(size=(3, 96))
        for ts in np.arange(start, end, hop):
            acting = track == 2 and abs(ts - (start + end) / 2) < (end - start) / 4
            window = (new_action if acting else centre) + 0.3 * rng.normal(size=(3, 96))
            window /= np.linalg.norm(window, axis=-1, keepdims=True)
            rows.append(("yard", track, float(ts), int(ts * 30), window.astype(np.float16).tobytes()))
    for ts in np.arange(start, end, 4.0):  # a stream with one actor
        window = rng.normal(size=(3, 96))
        window /= np.linalg.norm(window, axis=-1, keepdims=True)
        rows.append(("porch", 7, float(ts), int(ts * 30), window.astype(np.float16).tobytes()))
    conn = connect(str(path))
    with conn:
        taught.put_windows(conn, rows)
    conn.close()
    return start, end


# ---------------------------------------------------------------- the pipeline and the browser


class Run:
    """The demo pipeline on the seeded store; :meth:`restart` stops it and starts it again on the same files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.store, self.events = tmp, tmp / "actions.db", tmp / "events.jsonl"
        config = tomllib.loads((REPO / "configs" / "default.toml").read_text())
        config["model"]["backend"] = "torch"  # no backend measurement at start
        config["clips"] = {"dir": str(tmp / "clips"), "pre_s": 1, "post_s": 1}
        self.config = tmp / "review.toml"
        self.config.write_text(tomli_w.dumps(config))
        self.days = seed_store(self.store)
        self.windows = seed_windows(self.store)
        self.start()

    def start(self) -> None:
        self.pipe = Pipeline("--config", self.config, "--headless", "--web", "127.0.0.1:0", "--store", self.store,
                             "--events", self.events, "--duration", 300)
        self.pipe.wait_for(lambda: web_url(self.pipe), timeout=60, what="the 'web view at' line")
        self.base = web_url(self.pipe)

    def stop(self) -> None:
        code = self.pipe.stop()
        assert code == 0, "".join(self.pipe.lines[-30:])
        assert not any("Traceback" in line for line in self.pipe.lines), "".join(self.pipe.lines)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("review"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, run):
    """A page in New York time; afterwards, no script error, no refused resource and nothing fetched elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id=str(ZONE))
    page = context.new_page()
    problems, requests = [], []
    page.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("request", lambda r: requests.append(r.url))
    yield page
    context.close()
    assert not problems, problems
    assert all(url.startswith(run.base) for url in requests), [u for u in requests if not u.startswith(run.base)]


def screenshot(page, name: str) -> None:
    folder = os.environ.get("REVIEW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


# ---------------------------------------------------------------- helpers


def day_range(day: str) -> tuple[float, float]:
    start = date.fromisoformat(day)
    return midnight(start), midnight(start + timedelta(days=1))


def api_ids(run: Run, day: str, pages: int = 1, **filters) -> list[str]:
    """The ids the API gives for a day and filters, newest first: its first ``pages`` pages of the page's size."""
    since, until = day_range(day)
    ids, before = [], None
    for _ in range(pages):
        query = {"since": since, "until": until, "limit": PAGE, **filters, **({"before": before} if before else {})}
        answer = get_json(f"{run.base}/api/actions?{urllib.parse.urlencode(query)}")
        ids += [a["id"] for a in answer["actions"]]
        if not (before := answer["next"]):
            break
    return ids


def listed(page) -> list[str]:
    return page.eval_on_selector_all("#actions li.action", "rows => rows.map(r => r.dataset.id)")


def wait_until(page, condition, what: str, timeout: float = 10.0):
    """Poll ``condition()`` (wait_for_function would need 'unsafe-eval', which the page's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(50)
    return value


def wait_for_list(page, expected: list[str], what: str) -> None:
    wait_until(page, lambda: listed(page) == expected, f"{what}: the list to be {expected[:3]}… ({len(expected)}); "
                                                       f"it is {listed(page)[:3]}… ({len(listed(page))})")


def post_feedback(run: Run, action_id: str, body: dict) -> dict:
    request = urllib.request.Request(f"{run.base}/api/actions/{action_id}/feedback", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- tests


def test_live_page_links_to_the_review_page(run):
    assert 'href="/review"' in get(run.base + "/")[2].decode()


def test_the_day_shows_as_timeline_and_list_and_the_filters_narrow_the_list(page, run):
    page.goto(run.base + "/review")
    assert page.input_value("#day") == run.days["today"], "the day is today, local time"
    wait_until(page, lambda: page.locator('.span[data-id="t-0029"]').count(), "today's seeded actions on the timeline")
    streams = page.eval_on_selector_all(".row .stream", "names => names.map(n => n.textContent)")
    assert streams == sorted({*STREAMS, "demo"}), "a row per stream of the day, and the configured one"
    seeded = lambda ids: [i for i in ids if i.startswith("t-")]  # (this run's own actions come in meanwhile)
    wait_until(page, lambda: seeded(listed(page)), "today's list")
    assert seeded(listed(page)) == seeded(api_ids(run, run.days["today"], pages=2))[: len(seeded(listed(page)))]
    screenshot(page, "review-today-1280")

    yesterday = run.days["yesterday"]
    page.fill("#day", yesterday)
    wait_for_list(page, api_ids(run, yesterday), "yesterday")
    wait_until(page, lambda: page.locator(".span").count() == 300, "yesterday's 300 actions on the timeline")
    assert page.locator(".span.out").count() == 0
    lanes = page.eval_on_selector_all('.row:has(.stream[title="yard"]) .span', "s => new Set(s.map(e => e.style.top)).size")
    assert lanes > 1, "the tracked stream's overlapping actions sit in lanes"
    text = page.inner_text("#actions")
    assert "_" not in text and "yard #" in text, text[:300]

    page.select_option("#stream", "yard")
    wait_for_list(page, api_ids(run, yesterday, stream="yard"), "stream yard")
    assert page.locator(".span:not(.out)").count() == len(api_ids(run, yesterday, pages=10, stream="yard"))
    page.select_option("#label", "rotating_anticlockwise")
    assert page.inner_text("#label option:checked") == "rotating anticlockwise"
    wait_for_list(page, api_ids(run, yesterday, stream="yard", label="rotating_anticlockwise"), "and a label")
    page.check("#unreviewed")
    expected = api_ids(run, yesterday, stream="yard", label="rotating_anticlockwise", unreviewed=1)
    wait_for_list(page, expected, "and not yet reviewed")
    assert expected and not any("feedback" in get_json(f"{run.base}/api/actions/{i}") for i in expected)
    screenshot(page, "review-filtered-1280")
    assert "stream=yard" in page.url and "unreviewed=1" in page.url, "the filters are in the address"
    page.reload()
    wait_for_list(page, expected, "the same filters after a reload")

    page.set_viewport_size({"width": 390, "height": 844})
    page.select_option("#stream", "")
    page.select_option("#label", "")
    page.uncheck("#unreviewed")
    wait_for_list(page, api_ids(run, yesterday), "no filters again")
    page.keyboard.press("j")
    screenshot(page, "review-phone-390")


def test_the_timeline_zooms_in_at_the_pointer_moves_along_the_day_and_fits_again(page, run):
    """Short spans (a few seconds to teach from) need a closer view than the day's: ctrl + wheel zooms in around the
    time under the pointer, shift + wheel moves along the day, + and - zoom at the middle, 0 gives the day back."""
    page.goto(f"{run.base}/review?day={run.days['yesterday']}")
    wait_until(page, lambda: page.locator(".span").count() == 300, "yesterday's actions on the timeline")
    shown = lambda: page.evaluate("[view.from, view.to]")
    ticks = lambda: page.eval_on_selector_all(".hour.named", "ts => ts.map(t => t.textContent).filter(Boolean)")
    whole = shown()
    assert not any(":" in t for t in ticks()), ticks()
    box = page.locator('.track[data-stream="yard"]').bounding_box()
    x = round(box["x"] + 0.3 * box["width"])  # (the wheel's clientX is whole pixels)
    pointed = page.evaluate(f"timeUnder({x})")
    page.mouse.move(x, box["y"] + 4)
    page.keyboard.down("Control")
    for _ in range(8):
        page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    near = shown()
    assert near[1] - near[0] < (whole[1] - whole[0]) / 100, (near, whole)
    assert abs(page.evaluate(f"timeUnder({x})") - pointed) < 0.01 * (near[1] - near[0]), "the pointed time moved"
    assert any(":" in t for t in ticks()), ticks()
    screenshot(page, "review-zoomed-1280")
    page.keyboard.down("Shift")
    page.mouse.wheel(0, 500)
    page.keyboard.up("Shift")
    later = shown()
    assert later[0] > near[0] and abs((later[1] - later[0]) - (near[1] - near[0])) < 1e-6, "moved later, same width"
    page.keyboard.press("-")
    assert shown()[1] - shown()[0] == pytest.approx(2 * (later[1] - later[0]))
    page.click("#zoom-in")
    assert shown()[1] - shown()[0] == pytest.approx(later[1] - later[0])
    page.keyboard.press("0")
    assert shown() == whole, "fit: the day's actions again"


def test_scrolling_the_list_loads_the_next_pages(page, run):
    yesterday = run.days["yesterday"]
    page.goto(f"{run.base}/review?day={yesterday}")
    wait_for_list(page, api_ids(run, yesterday), "the first page")
    everything = api_ids(run, yesterday, pages=10)
    assert len(everything) == 300
    page.hover("#actions li.action")
    for pages in (2, 3):  # the mouse wheel over the list, until the next page has come
        wait_until(page, lambda: page.mouse.wheel(0, 1000) or len(listed(page)) >= pages * PAGE, f"page {pages}")
        assert listed(page) == everything[: pages * PAGE]
    wait_until(page, lambda: page.eval_on_selector("#list", "l => { l.scrollTop = l.scrollHeight; }") is None
               and page.inner_text("#more") == "end of the list", "the list's end")
    assert listed(page) == everything


def test_keys_step_through_and_mark_and_the_marks_stay(page, run):
    yesterday = run.days["yesterday"]
    page.goto(f"{run.base}/review?day={yesterday}&unreviewed=1")
    ids = api_ids(run, yesterday, unreviewed=1)
    wait_for_list(page, ids, "the unreviewed")
    chosen = lambda: page.eval_on_selector_all("#actions li.selected", "rows => rows.map(r => r.dataset.id)")
    for key, expected in (("j", ids[0]), ("j", ids[1]), ("j", ids[2]), ("k", ids[1])):
        page.keyboard.press(key)
        assert chosen() == [expected], (key, chosen())
    page.keyboard.press("r")
    right = page.locator(f'li[data-id="{ids[1]}"] .verdict')
    wait_until(page, lambda: right.inner_text() == "✓ right", "the right mark")
    page.keyboard.press("j")
    page.keyboard.press("w")
    assert page.evaluate("document.activeElement.id") == "right-label"
    page.keyboard.type("moving left")
    page.keyboard.press("Enter")
    wrong = page.locator(f'li[data-id="{ids[2]}"] .verdict')
    wait_until(page, lambda: wrong.inner_text() == "✗ wrong: is moving left", "the wrong mark with its label")
    assert page.locator(f'.span[data-id="{ids[2]}"].wrong').count() == 1
    page.keyboard.press("j")  # the keys go to the list again after the label was given
    assert chosen() == [ids[3]]

    assert get_json(f"{run.base}/api/actions/{ids[1]}")["feedback"]["verdict"] == "right"
    assert {k: v for k, v in get_json(f"{run.base}/api/actions/{ids[2]}")["feedback"].items() if k != "ts"} == {
        "verdict": "wrong", "label": "moving_left"}
    page.uncheck("#unreviewed")
    page.reload()
    for action_id, text in ((ids[1], "✓ right"), (ids[2], "✗ wrong: is moving left")):
        row = page.locator(f'li[data-id="{action_id}"] .verdict')
        wait_until(page, lambda: row.count() and row.inner_text() == text, f"{text} after a reload")


def ended_with_clip(run: Run) -> dict | None:
    """The first action of this run whose clip is written and which the store holds with it."""
    for end in of_kind(log_lines(run.events), "end") if run.events.exists() else []:
        if end.get("clip") and get(f"{run.base}/events/{end['id']}/clip.mp4")[0] == 200:
            if get_json(f"{run.base}/api/actions/{end['id']}").get("clip") == end["clip"]:
                return end
    return None


def test_clicking_an_action_plays_its_clip_in_place(page, run):
    end = wait_until(page, lambda: ended_with_clip(run), "an action of this run with its clip written", timeout=60)
    page.goto(f"{run.base}/review")
    row = page.locator(f'li[data-id="{end["id"]}"]')
    wait_until(page, lambda: row.count() and row.locator("img.thumb").evaluate("i => i.naturalWidth") > 0,
               "its row with its thumbnail")
    seeded = page.locator('li[data-id="t-0029"]')
    assert "bare" in seeded.get_attribute("class") and seeded.locator("img").count() == 0, "no clip, no thumbnail"
    row.click()
    video = row.locator("video.clip")
    wait_until(page, lambda: video.count() and video.evaluate("v => v.readyState >= 2 && v.currentTime > 0.2"),
               "the clip playing in its row")
    wait_until(page, lambda: video.evaluate("v => v.currentTime > 1"), "a second of it played")  # past the pre-roll
    screenshot(page, "review-playing-1280")
    page.keyboard.press(" ")
    wait_until(page, lambda: video.evaluate("v => v.paused"), "space to pause it")
    seeded.click()
    assert "selected" in seeded.get_attribute("class") and page.locator("video").count() == 0, "no clip, no player"
    # The demo's actions last seconds: on a day's scale their spans lie on top of each other, so this one's
    # span is clicked by an event (a real click would land on whichever is drawn last).
    page.locator(f'.span[data-id="{end["id"]}"]').dispatch_event("click")
    wait_until(page, lambda: "selected" in row.get_attribute("class") and row.locator("video").count(),
               "its span clicked: its row chosen and playing")


def test_today_follows_new_actions_and_those_under_way_grow(page, run):
    page.goto(run.base + "/review")
    wait_until(page, lambda: len(listed(page)) >= 30, "today's list")
    at_load = set(listed(page))
    widths = lambda: dict(page.eval_on_selector_all(".span.ongoing", "s => s.map(e => [e.dataset.id, e.style.width])"))
    deadline = time.monotonic() + 20
    while True:  # an action under way, seen twice a little more than a second apart, has grown
        first = widths()
        page.wait_for_timeout(1100)
        second = widths()
        if any(float(second[i].rstrip("%")) > float(w.rstrip("%")) for i, w in first.items() if i in second):
            break
        assert time.monotonic() < deadline, "no action under way grew on the timeline"
    new = wait_until(page, lambda: set(listed(page)) - at_load, "an action that started after the page opened",
                     timeout=20)
    assert all(page.locator(f'.span[data-id="{i}"]').count() == 1 for i in new)
    assert set(listed(page)[: len(new)]) == new, "new actions come in at the top (newest first)"


def post_json(run: Run, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(run.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_span_dragged_on_a_tracked_stream_asks_whose_action_it_is_and_teaches_from_that_actor(page, run):
    start, end = run.windows
    a, b = start + 0.25 * (end - start), start + 0.75 * (end - start)
    kept = get_json(f"{run.base}/api/teach/span?stream=yard&from={a}&to={b}")
    assert kept["whole"] == 0 and [x["track"] for x in kept["actors"]] == [1, 2], kept
    status, answer = post_json(run, "/api/teach", {"label": "waving", "spans": [{"stream": "yard", "from": a, "to": b}]})
    assert status == 422 and "#1" in answer["error"] and "#2" in answer["error"] and '"track"' in answer["error"]
    assert get(f"{run.base}/api/teach/span?stream=yard&from=x")[0] == 400
    one = get_json(f"{run.base}/api/teach/span?stream=porch&from={a}&to={b}")["actors"]
    status, answer = post_json(run, "/api/teach", {"label": "knocking", "spans": [{"stream": "porch", "from": a,
                                                                                    "to": b}]})
    post_json(run, "/api/teach/forget", {"label": "knocking"})
    assert status == 200 and answer["examples"] == one[0]["windows"] and one[0]["track"] == 7, (answer, one)

    page.goto(run.base + "/review")
    row = page.locator('.track[data-stream="yard"]')
    row.wait_for()
    page.evaluate(f"userView = {{ from: {a - 30}, to: {b + 30} }}; drawTimeline()")
    box = row.bounding_box()
    x = lambda t: box["x"] + (t - (a - 30)) / (b - a + 60) * box["width"]  # noqa: E731
    page.mouse.move(x(a), box["y"] + 4)
    page.mouse.down()
    page.mouse.move(x(b), box["y"] + 4, steps=4)
    page.mouse.up()
    actor = page.locator("#teach-actor")
    wait_until(page, actor.is_visible, "the choice of actor")
    assert sorted(o.split(" (")[0] for o in actor.locator("option").all_inner_texts()) == ["actor #1", "actor #2"]
    span = page.evaluate("example")
    screenshot(page, "actor-choice")
    page.select_option("#teach-actor", "2")
    page.fill("#teach-label", "waving")
    page.click("#teach-go")
    status = page.locator("#status")
    try:
        wait_until(page, lambda: status.text_content().startswith("taught"), "the teaching's answer", 60)
        screenshot(page, "taught-actor")
        second = get_json(f"{run.base}/api/teach/span?stream=yard&from={span['from']}&to={span['to']}")["actors"]
        windows = {x["track"]: x["windows"] for x in second}
        assert f"taught waving from {windows[2]} windows" in status.text_content(), (status.text_content(), windows)
        check = get_json(f"{run.base}/api/teach")["checks"]["waving"]  # actor 1's windows there would not pass
        assert check["precision"] >= 0.9 and check["recall"] >= 0.9, check
    finally:
        post_json(run, "/api/teach/forget", {"label": "waving"})


def test_a_second_run_on_the_same_store_keeps_the_actions_and_marks(browser, run):
    first_run = [line["id"] for line in of_kind(log_lines(run.events), "end")]
    assert first_run, "the first run ended actions"
    wait_until_stored = time.monotonic() + 10
    while get(f"{run.base}/api/actions/{first_run[-1]}")[0] != 200:  # the store's thread writes it soon after
        assert time.monotonic() < wait_until_stored, f"{first_run[-1]} never reached the store"
        time.sleep(0.1)
    post_feedback(run, first_run[0], {"verdict": "wrong", "label": "still"})
    since, until = day_range(run.days["yesterday"])
    seeded = get_json(f"{run.base}/api/actions?since={since}&until={until}&limit={PAGE}")["actions"]
    marked = [a["id"] for a in seeded if "feedback" in a][:3]
    assert len(marked) == 3
    before = {i: get_json(f"{run.base}/api/actions/{i}") for i in (*first_run, *marked)}

    run.restart()
    for action_id, action in before.items():
        assert get_json(f"{run.base}/api/actions/{action_id}") == action
    assert len(api_ids(run, run.days["yesterday"], pages=10)) == 300

    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id=str(ZONE))
    try:
        page = context.new_page()
        page.goto(f"{run.base}/review?stream=demo")
        row = page.locator(f'li[data-id="{first_run[0]}"] .verdict')
        wait_until(page, lambda: row.count() and row.inner_text() == "✗ wrong: is still", "the first run's mark")
        page.goto(f"{run.base}/review?day={run.days['yesterday']}")
        wait_for_list(page, api_ids(run, run.days["yesterday"]), "yesterday after the restart")
        for action_id in marked:
            feedback = before[action_id]["feedback"]
            text = "✓ right" if feedback["verdict"] == "right" else f"✗ wrong: is {feedback['label'].replace('_', ' ')}"
            assert page.inner_text(f'li[data-id="{action_id}"] .verdict') == text
        page.goto(f"{run.base}/")  # the live page lists the first run's actions too, below this run's events
        earlier = page.locator(f'#events li[data-id="{first_run[-1]}"]')
        wait_until(page, lambda: earlier.count() == 1, "the first run's newest action on the live page")
    finally:
        context.close()
