"""The runtime plan (workers.runtime) and the auto backend choice (workers.backend_choice).

Plan decisions are checked against facts of other machines (a CPU without bf16 units, two GPUs) given as
the plan's inputs; the backend choice times real models (tiny TimeSformers, their real OpenVINO conversion)."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from loguru import logger

from streamer.errors import ConfigError
from workers.backend_choice import choose_backend, faster, rounds_for, time_interleaved
from workers.model import Preprocess, load_model, save_model
from workers.cpu import CpuFingerprint, cpu_fingerprint
from workers.runtime import plan
from workers.timesformer import TimeSformer, TimeSformerConfig

REPO = Path(__file__).resolve().parents[1]
OLD_XEON = CpuFingerprint("Intel(R) Xeon(R) CPU E5-2680 v4", ("avx2",), 2, torch.__version__)
SAPPHIRE_RAPIDS = CpuFingerprint("Intel(R) Xeon(R) Platinum 8480+", ("avx2", "avx512f", "avx512_bf16",
                                                                     "amx_tile", "amx_bf16"), 2, torch.__version__)
EVERYTHING = lambda package: True  # noqa: E731 - openvino and nncf installed


@pytest.fixture
def said():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def tiny(depth: int = 1, seed: int = 0, size: int = 32) -> TimeSformer:
    torch.manual_seed(seed)
    model = TimeSformer(TimeSformerConfig(img_size=size, patch_size=8, num_classes=5, num_frames=4, embed_dim=32,
                                          depth=depth, num_heads=2)).eval()
    model.labels, model.preprocess = None, Preprocess(size=size, num_frames=4, frame_interval=2)
    return model


def test_bf16_is_refused_without_bf16_units_with_one_log_line(said):
    chosen = plan("cpu", "bf16", "torch", cpu=OLD_XEON, have=EVERYTHING)
    assert (chosen.device, chosen.precision, chosen.backend) == ("cpu", "fp32", "torch")
    warnings = [line for line in said if "no bf16 matrix units" in line]
    assert len(warnings) == 1 and "E5-2680" in warnings[0] and warnings[0] in chosen.why
    kept = plan("cpu", "bf16", "auto", cpu=SAPPHIRE_RAPIDS, have=EVERYTHING)
    assert (kept.precision, kept.backend, kept.why) == ("bf16", "auto", ())
    assert plan("cpu", "fp16", "torch", cpu=SAPPHIRE_RAPIDS).precision == "fp32"  # bf16 units, no fp16 ones
    # this machine's own /proc/cpuinfo decides the same way
    here = cpu_fingerprint()
    assert plan("cpu", "bf16").precision == ("bf16" if here.has_units("bf16") else "fp32")


def test_the_cpu_is_read_from_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    cpu = cpu_fingerprint(text)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+" and cpu.threads == torch.get_num_threads()
    assert cpu.flags == ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    assert cpu.has_units("bf16") and not cpu.has_units("fp16")
    assert not cpu_fingerprint(text.replace(" avx512_bf16 amx_bf16", "")).has_units("bf16")


@pytest.mark.parametrize("device,index,gpus,expected", [
    ("auto", 0, 0, "cpu"), ("cpu", 3, 2, "cpu"), (torch.device("cpu"), 0, 0, "cpu"),
    ("auto", 0, 2, "cuda:0"), ("auto", 3, 2, "cuda:1"), ("cuda", 4, 3, "cuda:1"), ("cuda:1", 0, 2, "cuda:1"),
])
def test_device_parsing_and_gpu_round_robin(device, index, gpus, expected):
    assert plan(device, index=index, gpus=gpus, cpu=OLD_XEON).device == expected


@pytest.mark.parametrize("device,gpus,message", [
    ("cuda:2", 2, r"device 'cuda:2': this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"),
    ("cuda", 0, r"device 'cuda': no CUDA GPU here"),
    ("gpu", 1, r"device 'gpu' is not auto, cpu, cuda or cuda:N"),
    ("cpu:1", 1, r"device 'cpu:1' is not auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_there_is_one_error(device, gpus, message):
    with pytest.raises(ConfigError, match=message):
        plan(device, gpus=gpus)


def test_gpus_run_torch_with_autocast_and_int8_stays_on_the_cpu(said):
    gpu = plan("auto", "bf16", "openvino", index=1, gpus=2)
    assert (gpu.device, gpu.precision, gpu.backend, gpu.autocast) == ("cuda:1", "bf16", "torch", True)
    assert any("OpenVINO runs on the CPU only" in line for line in said)
    assert not plan("cuda:0", "fp32", "auto", gpus=1).autocast
    with pytest.raises(ConfigError, match="precision 'int8' runs on the CPU only"):
        plan("cuda:0", "int8", gpus=1)
    int8 = plan("auto", "int8", "torch", gpus=2, cpu=OLD_XEON, have=EVERYTHING)
    assert (int8.device, int8.precision, int8.backend) == ("cpu", "int8", "openvino")  # the one int8 path
    without_nncf = plan("cpu", "int8", "auto", cpu=OLD_XEON, have=lambda package: package != "nncf")
    assert (without_nncf.precision, without_nncf.backend) == ("fp32", "auto")
    assert plan("cpu", "fp32", "openvino", have=lambda package: False).backend == "torch"
    with pytest.raises(ConfigError, match="precision 'int4' is not one of fp32, bf16, fp16, int8"):
        plan("cpu", "int4")
    with pytest.raises(ConfigError, match="backend 'onnx' is not one of torch, openvino, auto"):
        plan("cpu", "fp32", "onnx")


def test_autocast_computes_in_low_precision_and_returns_float32():
    """What a GPU plan with bf16 sets on the model, run here on the CPU (autocast works on both)."""
    model, x = tiny(depth=2), torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        exact = model(x)
        model.autocast_dtype = torch.bfloat16
        fast = model(x)
    assert fast.dtype == torch.float32 and model.cls_token.dtype == torch.float32
    assert 1e-4 < (fast - exact).abs().max() <= 0.05 * exact.abs().max() + 0.05


def test_medians_decide_not_means_and_near_ties_keep_torch():
    # one call of torch was hit by a busy neighbour: its mean is the slower, its median the faster
    samples = {"torch": [10.0, 10.1, 9.9, 10.0, 60.0], "openvino": [15.0, 15.2, 14.9, 15.1, 15.0]}
    assert faster(samples) == "torch"
    assert faster({"torch": [10.0] * 5, "openvino": [9.7] * 5}) == "torch"  # 3% faster: a tie, the reference
    assert faster({"torch": [10.0] * 5, "openvino": [9.0] * 5}) == "openvino"
    # short forwards: 9 rounds with a settling call each; long ones: no settling call, fewer rounds, never below 5
    assert rounds_for(0.02) == (9, 1) and rounds_for(4.0) == (9, 0) and rounds_for(10.0) == (6, 0)
    assert rounds_for(50.0) == (5, 0)


def test_interleaved_timing_warms_up_settles_and_times_every_run():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, warmup=2,
                             settle=1)
    assert [len(t) for t in times.values()] == [4, 4]
    # warm-up, then each timed call after one of its own; the order reversed every round
    assert calls == ["a", "b"] * 2 + ["a", "a", "b", "b", "b", "b", "a", "a"] * 2


def test_auto_keeps_the_faster_of_two_real_models_and_decides_again_on_another_cpu(tmp_path, said):
    """The 'backends' here are two real TimeSformers, one eight times deeper: which is faster is known."""
    small, big = tiny(depth=1), tiny(depth=8)
    x = torch.rand(2, 3, 4, 32, 32)
    here = cpu_fingerprint()
    assert choose_backend({"torch": big, "openvino": small}, x, "k", "fp32-b2", tmp_path, here) == "openvino"
    record = json.loads((tmp_path / f"k-fp32-b2-t{here.threads}.choice.json").read_text())
    assert record["choice"] == "openvino" and record["cpu"] == here.as_record() and record["rounds"] >= 5
    assert record["medians_ms"]["openvino"] < record["medians_ms"]["torch"]

    # the same CPU: remembered, not measured (measuring these two the other way round would say torch)
    assert choose_backend({"torch": small, "openvino": big}, x, "k", "fp32-b2", tmp_path, here) == "openvino"
    # another CPU: measured again, and recorded with that CPU
    said.clear()
    other = replace(here, model="another CPU")
    assert choose_backend({"torch": small, "openvino": big}, x, "k", "fp32-b2", tmp_path, other) == "torch"
    assert any("measuring again" in line for line in said)
    assert json.loads((tmp_path / f"k-fp32-b2-t{here.threads}.choice.json").read_text())["cpu"] == other.as_record()
    # other threads (another worker size): measured and kept beside, the first size's choice left as it was
    wider = replace(here, threads=here.threads + 1)
    assert choose_backend({"torch": small, "openvino": big}, x, "k", "fp32-b2", tmp_path, wider) == "torch"
    assert json.loads((tmp_path / f"k-fp32-b2-t{wider.threads}.choice.json").read_text())["cpu"] == wider.as_record()
    assert json.loads((tmp_path / f"k-fp32-b2-t{here.threads}.choice.json").read_text())["cpu"] == other.as_record()


def test_load_model_auto_measures_once_per_cpu_with_real_openvino(tmp_path, monkeypatch, said):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = save_model(tiny(depth=2), tmp_path / "m.safetensors", labels=[f"c{i}" for i in range(5)],
                      preprocess=Preprocess(size=32, num_frames=4, frame_interval=2))
    first = load_model(path, backend="auto")
    records = list((tmp_path / "cache" / "timesformer-stream" / "openvino").glob("*.choice.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["cpu"] == cpu_fingerprint().as_record() and record["choice"] == first.backend
    assert first.plan.backend == first.backend and first.plan.precision == "fp32"
    said.clear()
    again = load_model(path, backend="auto")
    assert again.backend == first.backend and any("on this CPU" in line for line in said)
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.inference_mode():
        assert (again(x) - load_model(path)(x)).abs().max() <= 1e-4  # whichever won, the same model


def test_the_model_package_imports_neither_the_pipeline_nor_cv2_scipy_or_training():
    modules = ["timesformer", "model", "runtime", "backend_choice", "openvino_backend", "quantize", "views",
               "flips", "preprocess", "sampling"]
    code = (f"import sys\nfor name in {modules!r}: __import__('workers.' + name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('cv2', 'scipy') or m.startswith('workers.training')"
            " or (m.startswith('streamer') and m not in ('streamer', 'streamer.errors'))]\nprint(bad)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
