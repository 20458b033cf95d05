"""The OpenVINO backend against torch: the same logits to 1e-4 for every attention type and a resized input,
a disk cache shared by processes, rebuilt when the weights change or the cache is damaged."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workers.model import Preprocess, load_model, save_model
from workers.timesformer import TimeSformer, TimeSformerConfig

pytest.importorskip("openvino", reason="the openvino package is not installed")
REPO = Path(__file__).resolve().parents[1]


def tiny(folder: Path, attention: str, seed: int = 0, **shape) -> Path:
    torch.manual_seed(seed)
    config = TimeSformerConfig(img_size=32, patch_size=8, num_classes=5, num_frames=4, embed_dim=32, depth=2,
                               num_heads=2, attention_type=attention)
    pre = Preprocess(size=shape.get("size", 32), num_frames=shape.get("frames", 4), frame_interval=2)
    return save_model(TimeSformer(config), folder / f"{attention}-{seed}.safetensors",
                      labels=[f"class {i}" for i in range(5)], preprocess=pre)


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time", "space_only"])
@pytest.mark.parametrize("frames,size", [(4, 32), (6, 48)])  # as trained, and with resized embeddings
def test_openvino_logits_match_torch(tmp_path, monkeypatch, attention, frames, size):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tiny(tmp_path, attention, frames=frames, size=size)
    reference = load_model(path)  # trained at 4×32; the checkpoint's preprocessing says frames×size
    converted = load_model(path, backend="openvino")
    assert converted.backend == "openvino" and converted.labels == reference.labels
    for batch in (1, 3):  # one conversion serves every batch size
        x = torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            assert (converted(x) - reference(x)).abs().max() <= 1e-4


def load_in_a_process(cache: Path, *paths: Path) -> list[str]:
    """Load each checkpoint in turn through OpenVINO in one new process; what it logged for each."""
    code = ("import sys; from workers.model import load_model\n"
            f"for path in {[str(p) for p in paths]!r}:\n"
            "    print('=== next', file=sys.stderr, flush=True)\n"
            "    print(load_model(path, backend='openvino').backend)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 0 and done.stdout.split() == ["openvino"] * len(paths), done.stderr
    return done.stderr.split("=== next\n")[1:]


def test_the_cache_is_shared_by_processes_and_rebuilt_when_stale_or_damaged(tmp_path):
    cache = tmp_path / "cache"
    path = tiny(tmp_path, "divided_space_time")
    other = tiny(tmp_path, "divided_space_time", seed=1)  # other weights: another conversion, another file
    assert "converted the model to OpenVINO" in load_in_a_process(cache, path)[0]
    files = sorted((cache / "timesformer-stream" / "openvino").glob("*.xml"))
    assert len(files) == 1
    again, second = load_in_a_process(cache, path, other)
    assert "converted" not in again, "a second process converted again"
    assert "converted the model to OpenVINO" in second
    assert len(list((cache / "timesformer-stream" / "openvino").glob("*.xml"))) == 2

    files[0].with_suffix(".bin").write_bytes(b"\0" * 100)  # damaged: rebuilt, with one warning
    log, = load_in_a_process(cache, path)
    assert "converting it again" in log and "converted the model to OpenVINO" in log and "Traceback" not in log
    assert not any("converted" in log for log in load_in_a_process(cache, path, other))


def test_backend_torch_keeps_torch_and_the_plan_says_what_runs(tmp_path, monkeypatch):
    """(GPUs and precisions OpenVINO does not run keep torch too: the plan's own tests, tests/test_runtime.py.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tiny(tmp_path, "divided_space_time")
    model = load_model(path, backend="torch")
    assert isinstance(model, TimeSformer) and model.backend == model.plan.backend == "torch"
    converted = load_model(path, backend="openvino")
    assert converted.backend == converted.plan.backend == "openvino" and converted.plan.device == "cpu"


def test_bf16_runs_through_openvino_on_cpus_with_bf16_units(tmp_path, monkeypatch):
    """bf16 asked of OpenVINO: the fp32-checked conversion (one cache file for both precisions) compiled for
    bf16 units; close to fp32, not exact. Where the CPU has no bf16 units, fp32 as before."""
    from workers.cpu import cpu_fingerprint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tiny(tmp_path, "divided_space_time")
    reference = load_model(path)
    fast = load_model(path, precision="bf16", backend="openvino")
    exact = load_model(path, backend="openvino")
    assert fast.backend == exact.backend == "openvino" and fast.labels == reference.labels
    assert len(list((tmp_path / "cache" / "timesformer-stream" / "openvino").glob("*.xml"))) == 1
    x = torch.randn(4, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = reference(x), fast(x)
    if not cpu_fingerprint().has_units("bf16"):
        assert fast.precision == "fp32" and (got - want).abs().max() <= 1e-4
        pytest.skip("this CPU has no bf16 units (AVX-512 BF16 or AMX): checked that fp32 is kept instead")
    assert fast.precision == "bf16"
    assert 1e-4 < (got - want).abs().max() <= 0.05 * want.abs().max()  # really bf16, and close
    auto = load_model(path, precision="bf16", backend="auto")  # the faster of OpenVINO bf16 and torch bf16
    assert auto.precision == "bf16"
