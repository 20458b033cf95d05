"""Predictions → event log lines: hysteresis, contract fields, and lines that survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import ConfigError, ProtocolError
from streamer.config.stages import EventConfig
from streamer.stages.dispatcher.event_log import PAGE, EventLog
from streamer.stages.dispatcher.tracker import EVENT_ID, ActionTracker, left_open, prediction_line
from streamer.transport.messages import Result

REPO = Path(__file__).resolve().parents[1]
LABELS = ["abseiling", "air drumming", "archery"]
AT_ONCE = {"end_hold_s": 0.0, "merge_gap_s": 0.0}  # the tracker without its holds: ends at the first low score


def result(p_first: float, index: int, stream: str = "cam0", ts: float | None = None) -> Result:
    """A result where the first label has ``p_first`` and the other two share the rest."""
    rest = (1.0 - p_first) / 2
    probs = np.array([p_first, rest, rest], np.float32)
    top = tuple(sorted(zip(LABELS, map(float, probs)), key=lambda lp: -lp[1]))
    return Result(stream, index, index * 8, ts if ts is not None else 1000.0 + index, probs, top, "w0",
                  {"queue_ms": 1.0, "preprocess_ms": 2.0, "forward_ms": 30.0})


def run(tracker: ActionTracker, firsts: list[float], stream: str = "cam0") -> list[tuple]:
    """Feed results; return (kind, label, result seq) for every event."""
    events = []
    for seq, p in enumerate(firsts):
        _, new = tracker.update(result(p, seq, stream))
        events += [(e["kind"], e["label"], e["frame_index"] // 8) for e in new]
    return events


def test_hysteresis_starts_at_start_threshold_and_ends_below_end_threshold() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    events = run(tracker, [0.5, 0.65, 0.5, 0.41, 0.4, 0.39, 0.55, 0.59, 0.6, 0.9])
    assert events == [("start", "abseiling", 1), ("end", "abseiling", 5), ("start", "abseiling", 8)]
    assert tracker.active("cam0") == "abseiling"


def test_smoothing_ignores_a_single_spike_and_follows_a_sustained_rise() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=3), LABELS)
    assert run(tracker, [0.1, 0.1, 0.9, 0.1, 0.1]) == []
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=3), LABELS)
    # moving averages: .1 .1 .37 .63 .9 .63 .37
    assert run(tracker, [0.1, 0.1, 0.9, 0.9, 0.9, 0.1, 0.1]) == [("start", "abseiling", 3), ("end", "abseiling", 6)]


def test_a_new_action_ends_the_active_one_before_it_starts() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1, start_threshold=0.5, end_threshold=0.2), LABELS)
    _, events = tracker.update(result(0.7, 0))
    assert [(e["kind"], e["label"]) for e in events] == [("start", "abseiling")]
    probs = np.array([0.3, 0.6, 0.1], np.float32)  # abseiling still above its end threshold
    _, events = tracker.update(Result("cam0", 1, 8, 1001.0, probs, (), "w0", {}))
    assert [(e["kind"], e["label"]) for e in events] == [("end", "abseiling"), ("start", "air drumming")]
    assert events[0]["score"] == pytest.approx(0.3) and events[1]["score"] == pytest.approx(0.6)


def test_an_end_line_carries_the_id_of_its_start_and_ids_are_unique() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    lines = []
    for p in (0.9, 0.1, 0.9, 0.1, 0.9):
        lines += tracker.update(result(p, len(lines)))[1]
    lines += tracker.reset_all()
    starts = [e for e in lines if e["kind"] == "start"]
    ends = [e for e in lines if e["kind"] == "end"]
    assert len(starts) == len(ends) == 3
    assert [e["id"] for e in starts] == [e["id"] for e in ends] and len({e["id"] for e in starts}) == 3


def test_streams_are_tracked_independently() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    assert run(tracker, [0.9], "cam0") == [("start", "abseiling", 0)]
    assert run(tracker, [0.1, 0.1], "cam1") == []
    assert tracker.active("cam0") == "abseiling" and tracker.active("cam1") is None


def test_event_dicts_carry_the_contract_fields() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    smoothed, events = tracker.update(result(0.8, 4))
    assert smoothed[0] == ("abseiling", pytest.approx(0.8)) and len(smoothed) == 3
    (event,) = events
    assert event == {"kind": "start", "stream": "cam0", "label": "abseiling", "frame_index": 32,
                     "frame_ts": 1004.0, "score": pytest.approx(0.8), "id": event["id"]}
    assert EVENT_ID.fullmatch(event["id"])
    assert type(event["frame_index"]) is int and type(event["frame_ts"]) is float and type(event["score"]) is float


def test_smoothed_top_is_best_first_and_limited_to_top_k() -> None:
    labels = [f"l{i}" for i in range(10)]
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=2, top_k=3), labels)
    p1 = np.linspace(0.0, 1.0, 10, dtype=np.float32)
    p1 /= p1.sum()
    tracker.update(Result("s", 0, 0, 1.0, p1, (), "w", {}))
    top, _ = tracker.update(Result("s", 1, 1, 2.0, p1[::-1].copy(), (), "w", {}))
    smoothed = (p1 + p1[::-1]) / 2
    assert len(top) == 3 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0][1] == pytest.approx(float(smoothed.max()))


def test_reset_ends_the_active_action_and_forgets_the_history() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=3), LABELS)
    run(tracker, [0.9, 0.9, 0.9])
    assert tracker.reset("cam1") == []
    (event,) = tracker.reset("cam0")
    assert (event["kind"], event["label"], event["frame_index"]) == ("end", "abseiling", 16)
    assert tracker.active("cam0") is None and tracker.reset("cam0") == []
    assert run(tracker, [0.9]) == [("start", "abseiling", 0)]  # no history left to average with
    assert [e["stream"] for e in tracker.reset_all()] == ["cam0"]


def test_results_captured_before_a_loss_start_no_action_after_it() -> None:
    """A window still at a worker when its camera dropped is logged, but its action already ended at the loss."""
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    assert run(tracker, [0.9, 0.9]) == [("start", "abseiling", 0)]
    (end,) = tracker.reset("cam0", lost_ts=1002.5)  # frames 0-1 captured at 1000-1001, lost at 1002.5
    assert end["kind"] == "end"
    top, events = tracker.update(result(0.9, 2))  # captured at 1002.0, before the loss, predicted after it
    assert events == [] and top[0] == ("abseiling", pytest.approx(0.9)) and tracker.active("cam0") is None
    _, events = tracker.update(result(0.9, 3))  # captured at 1003.0: the source is back
    assert [(e["kind"], e["frame_index"]) for e in events] == [("start", 24)]


def test_a_late_result_changes_nothing() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), LABELS)
    tracker.update(result(0.1, 5, ts=1005.0))
    top, events = tracker.update(result(0.95, 4, ts=1004.0))  # finished after a newer one
    assert events == [] and top[0][0] != "abseiling"
    _, events = tracker.update(result(0.95, 1, ts=1005.0 - 3600))  # a restarted source: accepted
    assert [e["kind"] for e in events] == ["start"]


def test_a_result_whose_class_count_differs_from_the_labels_is_a_protocol_error() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE), LABELS)
    with pytest.raises(ProtocolError, match="4 classes"):
        tracker.update(Result("cam0", 0, 0, 1.0, np.full(4, 0.25, np.float32), (), "w0", {}))


def test_labels_default_to_class_numbers() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1), None)
    _, events = tracker.update(result(0.9, 0))
    assert events[0]["label"] == "class_0"


@pytest.mark.parametrize("kwargs, words", [
    ({"smoothing": 0}, "smoothing = 0"),
    ({"top_k": 0}, "top_k = 0"),
    ({"start_threshold": 1.5}, "start_threshold = 1.5"),
    ({"end_threshold": "0.3"}, "end_threshold = '0.3'"),
    ({"start_threshold": 0.5, "end_threshold": 0.7}, "end_threshold = 0.7"),
])
def test_event_config_refuses_bad_values_naming_them(kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        EventConfig(**kwargs)


def test_prediction_line_carries_every_contract_field_with_the_right_types(tmp_path: Path) -> None:
    r = result(0.7, 3)
    line = prediction_line(r, now=r.frame_ts + 0.25)
    with EventLog(tmp_path / "events.jsonl") as log:
        log.write(line)
    parsed = json.loads((tmp_path / "events.jsonl").read_text())
    assert parsed["kind"] == "prediction" and parsed["stream"] == "cam0"
    assert type(parsed["frame_index"]) is int and parsed["frame_index"] == 24
    assert type(parsed["frame_ts"]) is float and parsed["frame_ts"] == r.frame_ts
    assert parsed["latency_ms"] == pytest.approx(250.0)
    top = parsed["top"]
    assert all(isinstance(lab, str) and isinstance(p, float) and len(pair) == 2 for pair in top for lab, p in [pair])
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and top[0][0] == "abseiling"
    assert parsed["seq"] == 3 and parsed["worker"] == "w0" and parsed["timings"]["forward_ms"] == 30.0


def test_event_log_appends_and_none_path_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    with EventLog(path) as log:
        log.write({"kind": "start", "label": "café"})
    with EventLog(path) as log:
        log.write({"kind": "end"})
    assert [json.loads(x)["kind"] for x in path.read_text(encoding="utf-8").splitlines()] == ["start", "end"]
    with EventLog(None, stdout=True) as log:
        log.write({"kind": "prediction"})
    assert json.loads(capsys.readouterr().out) == {"kind": "prediction"}


def test_opening_a_log_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"kind":"a"}\n{"kind":"b"}\n{"kind":"pred')
    with EventLog(path) as log:
        log.write({"kind": "c"})
    assert [json.loads(x)["kind"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_an_unwritable_log_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="file/events.jsonl"):
        EventLog(tmp_path / "file" / "events.jsonl")


WRITER = textwrap.dedent("""
    import random, sys
    from streamer.stages.dispatcher.event_log import EventLog
    from streamer.stages.dispatcher.tracker import prediction_line
    from streamer.transport.messages import Result
    import numpy as np
    log = EventLog(sys.argv[1])
    count, rng = int(sys.argv[2]), random.Random(int(sys.argv[3]))
    probs = np.full(3, 1 / 3, np.float32)
    i = 0
    while count < 0 or i < count:
        label = "état " * rng.randrange(1, 600)  # lines from ~200 bytes to a page (4 KiB), non-ASCII
        r = Result("cam0", i, i, 1000.0 + i, probs, ((label, 0.5),), "w0", {"forward_ms": 1.0})
        log.write(prediction_line(r, 1000.5 + i))
        i += 1
    print("done", flush=True)
    sys.stdin.read()  # wait to be killed
""")


def _writer(path: Path, count: int, seed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(count), str(seed)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"file ends with a half line: {data[-80:]!r}"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


@pytest.mark.timeout(60)
def test_sigkill_while_writing_leaves_only_whole_lines(tmp_path: Path) -> None:
    for seed in range(3):
        path = tmp_path / f"events{seed}.jsonl"
        proc = _writer(path, -1, seed)
        try:
            deadline = time.monotonic() + 20
            while (not path.exists() or path.stat().st_size < 2_000_000) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "writer died on its own"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        lines = [x for x in _lines(path) if x["kind"] != "pad"]
        assert len(lines) > 100
        assert [x["seq"] for x in lines] == list(range(len(lines)))


def test_no_line_of_a_page_or_less_crosses_a_page_boundary(tmp_path: Path) -> None:
    # The kernel stops a write between pages on SIGKILL: this is what keeps lines whole.
    path = tmp_path / "events.jsonl"
    rng = np.random.default_rng(3)
    with EventLog(path) as log:
        for i in range(2000):
            log.write({"kind": "prediction", "seq": i, "x": "é" * int(rng.integers(10, 2000))})
    data, offset, kinds = path.read_bytes(), 0, []
    for raw in data.split(b"\n")[:-1]:
        size = len(raw) + 1
        assert offset // PAGE == (offset + size - 1) // PAGE, f"line at {offset} ({size} bytes) crosses a page"
        kinds.append(json.loads(raw)["kind"])
        offset += size
    assert kinds.count("prediction") == 2000 and set(kinds) <= {"prediction", "pad"}


@pytest.mark.timeout(60)
def test_no_written_line_is_lost_when_the_writer_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    proc = _writer(path, 777, 5)
    try:
        assert proc.stdout.readline().strip() == "done"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert [x["seq"] for x in _lines(path) if x["kind"] != "pad"] == list(range(777))


@pytest.mark.timeout(60)
def test_two_processes_appending_to_one_log_never_mix_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    procs = [_writer(path, 1500, seed) for seed in (1, 2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "done"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
    assert len([x for x in _lines(path) if x["kind"] != "pad"]) == 3000


def tracked(p_first: float, index: int, track: int, box=(10.0, 20.0, 50.0, 80.0)) -> Result:
    base = result(p_first, index)
    return Result(base.stream, base.seq, base.frame_index, base.frame_ts, base.probs, base.top, base.worker,
                  base.timings, track=track, box=box)


def test_tracked_actors_have_their_own_events_with_track_and_box() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1, start_threshold=0.6, end_threshold=0.4), LABELS)
    _, first = tracker.update(tracked(0.9, 0, track=1))
    _, second = tracker.update(tracked(0.9, 0, track=2, box=(100.0, 0.0, 140.0, 60.0)))
    assert [(e["kind"], e["track"], e["box"]) for e in first + second] == [
        ("start", 1, [10.0, 20.0, 50.0, 80.0]), ("start", 2, [100.0, 0.0, 140.0, 60.0])]
    assert first[0]["id"] != second[0]["id"]
    line = prediction_line(tracked(0.9, 1, track=2), 1002.0)
    assert line["track"] == 2 and line["box"] == [10.0, 20.0, 50.0, 80.0]
    assert "track" not in prediction_line(result(0.9, 1), 1002.0), "a whole stream's lines name no track"


def test_a_track_that_ends_ends_its_action_and_late_results_start_nothing() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=1, start_threshold=0.6, end_threshold=0.4), LABELS)
    _, started = tracker.update(tracked(0.9, 0, track=3))
    ended = tracker.end_track("cam0", 3)
    assert [(e["kind"], e["id"], e["track"]) for e in ended] == [("end", started[0]["id"], 3)]
    assert tracker.update(tracked(0.9, 1, track=3))[1] == [], "a window still at a worker when its track ended"
    assert tracker.end_track("cam0", 3) == []
    _, other = tracker.update(tracked(0.9, 1, track=4))
    assert [e["kind"] for e in other] == ["start"]
    assert [e["track"] for e in tracker.reset("cam0")] == [4], "a lost source ends every track's action"


def test_actions_left_under_way_end_as_a_clean_stop_would_have_ended_them() -> None:
    """A dispatcher killed mid-action leaves starts without ends in its log; the next one ends them from the log
    alone, with the lines its clean stop would have written (a stream it does not serve is not its to end)."""
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=2, start_threshold=0.6, end_threshold=0.4), LABELS)
    lines = []
    feed = [result(0.9, 0), result(0.1, 1), result(0.1, 2), result(0.9, 3), result(0.8, 4), tracked(0.9, 5, track=7),
            result(0.9, 6, stream="cam9")]
    for r in feed:
        lines.append(prediction_line(r, r.frame_ts + 0.1))
        lines += tracker.update(r)[1]
    assert [line["kind"] for line in lines].count("end") == 1  # the first action ended; two others under way
    clean_stop = [e for e in tracker.reset_all() if e["stream"] == "cam0"]
    recovered = left_open(lines, {"cam0"}, smoothing=2)
    assert [{**e, "score": pytest.approx(e["score"], abs=1e-5)} for e in clean_stop] == recovered
    assert [(e["id"], e.get("track")) for e in recovered] == [(lines[-5]["id"], None), (lines[-3]["id"], 7)]
    assert left_open(lines + recovered, {"cam0"}, smoothing=2) == [], "once ended, never again"


def test_tail_reads_the_whole_lines_at_the_end_of_a_log(tmp_path: Path) -> None:
    with EventLog(tmp_path / "events.jsonl") as log:
        for i in range(100):
            log.write({"kind": "prediction", "seq": i})
        assert [line["seq"] for line in log.tail(max_bytes=100)] == [97, 98, 99], "the cut first line is skipped"
        assert len(log.tail()) == 100
    assert EventLog(None).tail() == []


# ---------------------------------------------------------------- calm events (issue 23)

def calm(firsts: list[float], **config) -> list[tuple]:
    """Results a second apart (the first label's score each); (kind, label, seq, id) of every event, the
    held-back ends included once the stream is forgotten."""
    tracker = ActionTracker(EventConfig(smoothing=1, **config), LABELS)
    events = []
    for seq, p in enumerate(firsts):
        events += tracker.update(result(p, seq))[1]
    events += tracker.reset_all()
    return [(e["kind"], e["label"], e["frame_index"] // 8, e["id"]) for e in events]


def test_a_dip_shorter_than_end_hold_does_not_end_the_action() -> None:
    events = calm([0.9, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1], end_hold_s=2.0, merge_gap_s=0.0)
    assert [(k, seq) for k, _, seq, _ in events] == [("start", 0), ("end", 5)]  # ends where it went quiet
    assert events[0][3] == events[1][3]


def test_a_restart_within_merge_gap_continues_the_action_with_its_id() -> None:
    scores = [0.9, 0.1, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]
    merged = calm(scores, end_hold_s=1.0, merge_gap_s=2.0)
    assert [(k, seq) for k, _, seq, _ in merged] == [("start", 0), ("end", 5), ("start", 11), ("end", 11)]
    assert merged[0][3] == merged[1][3] != merged[2][3]  # back after 1 s: the same action; after 6 s: a new one
    at_once = calm(scores, end_hold_s=0.0, merge_gap_s=0.0)
    assert [k for k, *_ in at_once] == ["start", "end", "start", "end", "start", "end"]


def test_another_label_taking_over_releases_the_held_end_first() -> None:
    tracker = ActionTracker(EventConfig(smoothing=1, end_hold_s=0.0, merge_gap_s=5.0), LABELS)
    second = Result("cam0", 9, 16, 1002.0, np.array([0.05, 0.9, 0.05], np.float32), (("air drumming", 0.9),), "w0", {})
    events = tracker.update(result(0.9, 0))[1] + tracker.update(result(0.1, 1))[1] + tracker.update(second)[1]
    assert [(e["kind"], e["label"]) for e in events] == [("start", "abseiling"), ("end", "abseiling"),
                                                         ("start", "air drumming")]


def test_a_held_end_is_written_once_its_silent_stream_passes_the_gap() -> None:
    tracker = ActionTracker(EventConfig(smoothing=1, end_hold_s=0.0, merge_gap_s=3.0), LABELS)
    tracker.update(result(0.9, 0))
    assert tracker.update(result(0.1, 1))[1] == []
    assert tracker.due_ends(1001.0 + 2.0) == []
    (end,) = tracker.due_ends(1001.0 + 3.0)
    assert end["kind"] == "end" and end["frame_index"] == 8 and end["peak"] == pytest.approx(0.9)
    assert tracker.reset_all() == []


def test_a_label_can_have_its_own_thresholds() -> None:
    from streamer.config.stages import LabelThresholds

    config = {**AT_ONCE, "labels": (("abseiling", LabelThresholds(0.3, 0.2)),)}
    assert [k for k, *_ in calm([0.35, 0.25, 0.15], **config)] == ["start", "end"]
    assert calm([0.35, 0.25, 0.15], **AT_ONCE) == []


def test_the_clock_given_counts_the_hold_not_the_capture_time() -> None:
    """Offline, a file is read faster than it was filmed: the holds count its media time."""
    tracker = ActionTracker(EventConfig(smoothing=1, end_hold_s=2.0, merge_gap_s=0.0), LABELS)
    events = []
    for seq, p in enumerate([0.9, 0.1, 0.1, 0.1]):  # capture times 1 s apart, media time 0.5 s apart
        events += tracker.update(result(p, seq), clock=seq * 0.5)[1]
    assert [e["kind"] for e in events] == ["start"] and tracker.clock_of(("cam0", None)) == 1.5
    for seq in (4, 5):
        events += tracker.update(result(0.1, seq), clock=seq * 0.5)[1]
    assert [(e["kind"], e["frame_index"] // 8) for e in events] == [("start", 0), ("end", 1)]


def test_brief_actions_stay_in_the_log_and_never_reach_the_subscribers() -> None:
    from streamer.stages.dispatcher.brief import BriefGate

    gate = BriefGate(min_duration_s=2.0)
    brief_start, brief_end = {"kind": "start", "stream": "s", "id": "a"}, {"kind": "end", "stream": "s", "id": "a"}
    assert not gate.publish(brief_start, clock=10.0)
    assert gate.lasted("s", None, 11.0) == []
    assert not gate.publish(brief_end, clock=11.5) and brief_end["brief"] is True
    long_start, long_end = {"kind": "start", "stream": "s", "id": "b"}, {"kind": "end", "stream": "s", "id": "b"}
    assert not gate.publish(long_start, clock=20.0)
    assert gate.lasted("s", None, 22.0) == [long_start]
    assert gate.publish(long_end, clock=25.0) and "brief" not in long_end
    assert BriefGate(0.0).publish({"kind": "start", "stream": "s", "id": "c"}, clock=1.0)


def test_per_label_thresholds_in_the_config_name_labels_of_the_model(tmp_path) -> None:
    from streamer.config.loader import event_config
    from streamer.config.tables import EventsTable

    table = EventsTable(labels={"abseiling": {"start_threshold": 0.5}})
    config = event_config(table, tuple(LABELS), "f.toml [events]")
    assert config.thresholds("abseiling") == (0.5, 0.4) and config.thresholds("archery") == (0.6, 0.4)
    with pytest.raises(ConfigError, match="'falling' is not a label of the model"):
        event_config(EventsTable(labels={"falling": {}}), tuple(LABELS), "f.toml [events]")
    with pytest.raises(ConfigError, match="above start_threshold"):
        event_config(EventsTable(labels={"archery": {"start_threshold": 0.3}}), tuple(LABELS), "f")


def test_a_label_taking_over_ends_the_old_action_where_it_went_quiet() -> None:
    tracker = ActionTracker(EventConfig(smoothing=1, end_hold_s=5.0), LABELS)
    other = Result("cam0", 3, 24, 1003.0, np.array([0.05, 0.9, 0.05], np.float32), (("air drumming", 0.9),), "w0", {})
    events = [e for r in (result(0.9, 0), result(0.3, 1), result(0.3, 2), other) for e in tracker.update(r)[1]]
    assert [(e["kind"], e["label"], e["frame_index"]) for e in events] == [
        ("start", "abseiling", 0), ("end", "abseiling", 8), ("start", "air drumming", 24)]


def test_labels_taught_mid_action_keep_it_going_and_a_forgotten_label_ends_its_action() -> None:
    tracker = ActionTracker(EventConfig(**AT_ONCE, smoothing=2), LABELS)
    assert run(tracker, [0.9, 0.9]) == [("start", "abseiling", 0)]
    assert tracker.relabel([*LABELS, "waving"]) == []  # taught: the same action goes on, its history re-laid
    probs = np.array([0.85, 0.05, 0.05, 0.05], np.float32)
    _, events = tracker.update(Result("cam0", 2, 16, 1002.0, probs, (("abseiling", 0.85),), "w0", {}))
    assert events == [] and tracker.active("cam0") == "abseiling"
    probs = np.array([0.02, 0.02, 0.02, 0.94], np.float32)
    for seq in (3, 4):
        _, events = tracker.update(Result("cam0", seq, seq * 8, 1000.0 + seq, probs, (("waving", 0.94),), "w0", {}))
    assert [(e["kind"], e["label"]) for e in events] == [("end", "abseiling"), ("start", "waving")]
    (end,) = tracker.relabel(LABELS)  # forgotten while under way: its action ends, named as it was
    assert (end["kind"], end["label"]) == ("end", "waving") and tracker.active("cam0") is None
