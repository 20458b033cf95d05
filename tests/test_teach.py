"""Taught actions (contract 9): the adapter beside a checkpoint (its logits untouched, its checkpoint named),
``python -m workers.teach`` from folders of real clips, its one-line refusals, and ``--adapter`` at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import make_video
from tests.test_pipeline import LABELS, PRE, checkpoint  # noqa: F401  (fixture re-used)
from workers.adapter import Adapter, checkpoint_digest, load_adapter, save_adapter
from workers.heads import adapt
from streamer.config.loader import Overrides, load_config
from streamer.errors import CheckpointError
from workers.model import checkpoint_model, describe_checkpoint, load_model
from workers.teach import main as teach_main
from workers.training.teaching import Examples, check

REPO = Path(__file__).resolve().parents[1]


def teach(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.teach", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def random_adapter(checkpoint: Path, labels=("waving", "falling")) -> Adapter:
    width = checkpoint_model(checkpoint).head.in_features
    g = torch.Generator().manual_seed(0)
    return Adapter(tuple(labels), torch.randn(len(labels), width, generator=g), torch.randn(len(labels), generator=g),
                   checkpoint_digest(checkpoint), {"waving": {"precision": 1.0, "recall": 0.5, "windows": 4.0}})


def test_an_adapter_adds_labels_and_leaves_the_checkpoints_logits_exactly_as_they_were(tmp_path, checkpoint):
    path = save_adapter(random_adapter(checkpoint), tmp_path / "a.safetensors")
    plain, adapted = checkpoint_model(checkpoint), adapt(checkpoint_model(checkpoint), load_adapter(path, checkpoint))
    x = torch.randn(3, 3, PRE.num_frames, PRE.size, PRE.size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before, after = plain(x), adapted(x)
    assert after.shape == (3, len(LABELS) + 2) and adapted.labels == [*LABELS, "waving", "falling"]
    assert torch.equal(after[:, : len(LABELS)], before)  # bit for bit
    assert load_adapter(path, checkpoint).checks["waving"]["recall"] == 0.5


def test_an_adapter_of_another_checkpoint_or_with_a_clashing_label_is_refused_in_one_line(tmp_path, checkpoint):
    other = tmp_path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes() + b"")  # the same bytes: the same checkpoint
    other_model = checkpoint_model(checkpoint)
    with torch.no_grad():
        other_model.head.bias += 1.0
    from workers.model import save_model

    save_model(other_model, other, labels=LABELS, preprocess=PRE)
    wrong = save_adapter(random_adapter(other), tmp_path / "wrong.safetensors")
    clash = save_adapter(random_adapter(checkpoint, ("still", "x")), tmp_path / "clash.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    cases = [(wrong, "taught on another checkpoint"), (clash, "'still' is a label of the checkpoint"),
             (junk, "not an adapter file"), (tmp_path / "none.safetensors", "no such file")]
    for adapter, says in cases[1:]:  # as the loader meets them, before any stage starts
        with pytest.raises(CheckpointError, match=says) as err:
            load_config(Overrides(checkpoint=str(checkpoint), adapter=str(adapter), headless=True), describe_checkpoint)
        assert "\n" not in str(err.value)
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--checkpoint", checkpoint, "--adapter", wrong,
                           "--headless", "--duration", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and cases[0][1] in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def clips(folder: Path, counts: dict[str, int]) -> Path:
    """Clips of each label: the indexed frames of make_video, and for ``none/`` a plain grey scene, unlike them (the
    adapter's neighbours vote a label down on windows that are nearer its negatives than its own examples)."""
    for label, n in counts.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if label == "none":
                writer = cv2.VideoWriter(str(folder / label / f"{i}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30.0,
                                         (64, 48))
                for _ in range(20):
                    writer.write(np.full((48, 64, 3), 60 + 40 * i, np.uint8))
                writer.release()
            else:
                make_video(folder / label / f"{i}.avi", num_frames=20, size=(64, 48))
    return folder


@pytest.mark.parametrize("counts,says", [
    ({}, "no videos found"),
    ({"none": 2}, "only none/ holds clips"),
    ({"waving": 1, "none": 2}, "waving: 1 clip; teaching needs at least 2"),
    ({"still": 3}, "'still' is a label of the checkpoint already"),
])
def test_a_folder_that_cannot_teach_is_one_line_and_exit_2(tmp_path, checkpoint, counts, says, capsys):
    folder = clips(tmp_path / "clips", counts)
    folder.mkdir(exist_ok=True)
    args = ("--checkpoint", checkpoint, "--clips", folder, "--out", tmp_path / "a.safetensors")
    if counts:  # in this process: what main() prints and returns
        code, stderr = teach_main([str(a) for a in args]), capsys.readouterr().err
    else:  # one of them as a user meets it, in a process of its own
        proc = teach(*args)
        code, stderr = proc.returncode, proc.stderr
    assert code == 2 and says in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "a.safetensors").exists()


def test_teaching_writes_an_adapter_that_the_pipeline_runs_with_its_labels(tmp_path, checkpoint):
    folder = clips(tmp_path / "clips", {"waving": 3, "none": 2})
    out = tmp_path / "taught.safetensors"
    proc = teach("--checkpoint", checkpoint, "--clips", folder, "--out", out)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith(f"wrote {out}: taught waving (held-out precision") and "from 5 clips" in line
    adapter = load_adapter(out, checkpoint, LABELS)
    assert adapter.labels == ("waving",) and set(adapter.checks["waving"]) == {"precision", "recall", "windows"}
    model = load_model(str(checkpoint))
    assert model.labels == LABELS  # load_model stays the checkpoint's own (contract 1)
    video = make_video(tmp_path / "clip.avi", num_frames=40)
    events = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "run_pipeline.py", "--checkpoint", checkpoint, "--adapter", out,
                           "--source", video, "--offline", "--headless", "--events", events], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "adapter" in proc.stderr and "waving (held-out precision" in proc.stderr  # its check, at load
    import json

    tops = [json.loads(x)["top"] for x in events.read_text().splitlines() if '"prediction"' in x]
    assert tops and all({name for name, _ in top} == {*LABELS, "waving"} for top in tops)
    assert all(abs(sum(p for _, p in top) - 1.0) < 1e-3 for top in tops)  # one softmax over all four


def test_the_held_out_check_scores_a_window_as_the_pipeline_would_with_its_mirror_images_mapped_back():
    """The check says what the workers would say. Here one window, seen as it is and as its horizontal mirror, and
    a taught label scoring the same in both views: the original view says moving left, the mirror (rightly)
    moving right. Mapped back, both views say moving left, which wins, as in the pipeline; averaged without the
    map, the two old labels would split and the taught label would take it."""
    names = ["moving_left", "moving_right"]
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])  # one window, two views (window-major rows)
    adapter = Adapter(("bouncing",), np.array([[3.5]], np.float32), np.array([0.0], np.float32), "x")
    held_out = Examples(torch.ones(2, 1), logits, np.array([0, 0]), np.array([0, 0]))
    assert check(adapter, held_out, names, ("horizontal",))["bouncing"]["recall"] == 0.0
    # labels that are their own mirrors (no left/right in their names): the views are averaged as they are, split,
    # and the taught label takes the window
    assert check(adapter, held_out, ["jumping", "waving"], ("horizontal",))["bouncing"]["recall"] == 1.0


def test_the_neighbours_vote_keeps_a_label_off_windows_that_lie_among_its_negatives(tmp_path):
    """The layer alone scores a window by one direction: one far along it but among the negatives wins; with the
    neighbours it is voted down, while a window among the label's own examples keeps its logit. The vote goes
    with the file and with the message that hands the adapter to a worker; a label taught from fewer rows than
    the vote asks needs that share of what it has; without neighbours (a version-1 file) there is no vote, and
    neighbours that do not match their counts are one line."""
    from streamer.stages.adapters import from_message, update_message
    from streamer.transport.messages import ProtocolError, decode, encode
    from workers.adapter import NEIGHBOURS, VETOED, adapter_bytes, neighbours_from, parse_adapter

    rng = np.random.default_rng(3)
    width, direction = 16, np.eye(16)[0]
    examples = direction + 0.1 * rng.normal(size=(30, width))  # the label's: along its direction
    negatives = np.concatenate([np.eye(16)[1] + 0.1 * rng.normal(size=(40, width)),  # ordinary windows
                                direction + np.eye(16)[2] + 0.1 * rng.normal(size=(20, width))])  # look-alikes
    rows, counts = neighbours_from(np.concatenate([negatives, examples]), np.r_[np.full(60, -1), np.zeros(30, int)], 1)
    adapter = Adapter(("waving",), direction[None] * 10, np.zeros(1), "ab", {}, rows, counts)
    plain = Adapter(("waving",), direction[None] * 10, np.zeros(1), "ab")
    near_examples, look_alike = direction + 0.05, direction + np.eye(16)[2] + 0.05
    windows = np.stack([near_examples, look_alike]).astype(np.float32)
    assert plain.logits(windows)[1, 0] > 5  # the layer alone: the look-alike wins
    assert adapter.logits(windows)[0, 0] == plain.logits(windows)[0, 0] and adapter.logits(windows)[1, 0] == VETOED
    assert counts == (60, 30) and len(rows) >= NEIGHBOURS
    few_rows, few = neighbours_from(np.concatenate([negatives, examples[:4]]), np.r_[np.full(60, -1), np.zeros(4, int)], 1)
    taught_from_few = Adapter(("waving",), direction[None] * 10, np.zeros(1), "ab", {}, few_rows, few)
    assert taught_from_few.logits(windows)[0, 0] > 5  # four rows: three of its ten nearest are enough

    for back in (parse_adapter(adapter_bytes(adapter)), from_message(decode(encode(update_message(adapter))))):
        assert back.key == adapter.key and np.array_equal(back.logits(windows), adapter.logits(windows))
    old = parse_adapter(adapter_bytes(plain))
    assert old.neighbours is None and np.array_equal(old.logits(windows), plain.logits(windows))
    wrong = Adapter(("waving",), direction[None], np.zeros(1), "ab", {}, rows, (60, 29))
    with pytest.raises(CheckpointError, match="do not match their counts") as err:
        parse_adapter(adapter_bytes(wrong))
    assert "\n" not in str(err.value)
    with pytest.raises(ProtocolError, match="do not match their counts"):
        encode(update_message(wrong))
