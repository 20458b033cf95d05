"""bench/event_scores.py: recorded probabilities replayed through the real ActionTracker and scored against
true segments. A flickering label (the demo's blinking) starts once per dip without a hold and once with one;
the scores count that, the segments found, the false starts and the onset."""

from __future__ import annotations

import numpy as np

from bench.event_scores import Recording, replay, score
from streamer.config.stages import EventConfig

LABELS = ["blinking", "still", "growing"]
FPS, HOP = 30.0, 4


def recording(scores: list[tuple[str, float]], truth: list[dict]) -> Recording:
    """One result every HOP frames; each gives its label ``p`` and the others the rest."""
    probs = np.zeros((len(scores), len(LABELS)), np.float32)
    for row, (label, p) in zip(probs, scores):
        row[:] = (1 - p) / (len(LABELS) - 1)
        row[LABELS.index(label)] = p
    frames = np.arange(1, len(scores) + 1) * HOP
    return Recording("demo", FPS, LABELS, truth, frames, 1000 + frames / FPS, np.full(len(scores), -1),
                     np.full((len(scores), 4), np.nan, np.float32), probs)


def test_a_flickering_label_restarts_without_a_hold_and_not_with_one() -> None:
    flicker = [("blinking", 0.9)] * 4 + ([("blinking", 0.1)] * 3 + [("blinking", 0.9)] * 4) * 3  # dips of 0.4 s
    rest = [("growing", 0.95)] * 20
    truth = [{"start_frame": 0, "end_frame": len(flicker) * HOP + 1, "label": "blinking"},
             {"start_frame": len(flicker) * HOP + 2, "end_frame": (len(flicker) + 20) * HOP + 10, "label": "growing"}]
    rec = recording(flicker + rest, truth)
    plain = EventConfig(smoothing=1, start_threshold=0.7, end_threshold=0.5, end_hold_s=0.0, merge_gap_s=0.0)
    held = EventConfig(smoothing=1, start_threshold=0.7, end_threshold=0.5, end_hold_s=1.0, merge_gap_s=0.0)
    before, after = score(rec, replay(rec, plain), 1), score(rec, replay(rec, held), 1)
    assert before.starts_in_segments == [4, 1] and before.twice == 1
    assert before.restarts == {"score dipped": 3}
    assert after.starts_in_segments == [1, 1] and after.twice == 0 and after.restarts == {}
    assert after.found == after.long_segments == 2 and after.false_starts == 0
    assert after.onsets[0] == HOP / FPS  # the first result's frame
    assert after.end_lags[0] == (truth[1]["start_frame"] + 2 - truth[0]["end_frame"]) / FPS  # growing takes over
    # at its first result (frame 104, the segment ended at 101): the end line is written then


def test_a_label_never_confident_enough_is_missed_and_a_wrong_label_is_a_false_start() -> None:
    truth = [{"start_frame": 0, "end_frame": 40 * HOP, "label": "blinking"}]
    rec = recording([("blinking", 0.6)] * 20 + [("still", 0.9)] * 20, truth)
    config = EventConfig(smoothing=3, start_threshold=0.7, end_threshold=0.5, end_hold_s=0.0, merge_gap_s=0.0)
    scores = score(rec, replay(rec, config), 3)
    assert scores.found == 0 and scores.long_segments == 1
    assert [label for label, _ in scores.missed] == ["blinking"] and abs(scores.missed[0][1] - 0.6) < 1e-6
    assert scores.starts == scores.false_starts == 1
