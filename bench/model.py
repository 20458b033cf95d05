"""Model speed: ours (torch and OpenVINO) vs Hugging Face `transformers` and ONNX Runtime, same weights, same
input, interleaved.

    python bench/model.py                 # tiny and base, batch 1 and 8, writes BENCHMARKS.md section
    python bench/model.py --sizes tiny --batches 1 --budget 20

Each cell is the median of repeated forwards, the variants taking turns so that load from
other processes hits all of them alike; speed is reported as ratios against transformers fp32.
ONNX Runtime (a peer engine) runs our model exported with ``torch.onnx.export``, the same graph
OpenVINO converts. The matrix-multiply peak is the best of torch's and OpenVINO's (oneDNN) GEMM.
"""

import argparse
import math
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section  # noqa: E402
from tests.hf_models import make_hf_folder  # noqa: E402
from workers.model import load_model  # noqa: E402
from workers.quantize import Calibration, CalibrationWindows  # noqa: E402
from workers.cpu import cpu_fingerprint  # noqa: E402

BF16_UNITS = cpu_fingerprint().has_units("bf16")
SIZES = {"tiny": dict(hidden_size=192, layers=12, heads=3), "base": dict(hidden_size=768, layers=12, heads=12)}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matrix product (best of torch.mm and F.linear, which take different
    kernels for bf16): the ceiling any model can reach here."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = 0.0
    for product in (lambda: a @ b, lambda: torch.nn.functional.linear(a, b)):
        product()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 2:
            product()
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def openvino_matmul_peak(precision: str, threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of OpenVINO's (oneDNN's) n×n GEMM on the CPU in ``precision`` ("f32" or "bf16")."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([n, n], ov.Type.f32)
    product = ops.matmul(a, ops.constant(np.random.rand(n, n).astype(np.float32)), False, False)
    compiled = ov.Core().compile_model(ov.Model([product], [a]), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    x = np.random.rand(n, n).astype(np.float32)
    request = compiled.create_infer_request()
    request.infer([x])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        request.infer([x])
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def onnxruntime_model(model, x, path: Path, threads: int):
    """``model`` exported to ONNX and run by ONNX Runtime's CPU provider (None when it is not installed)."""
    import warnings

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda inputs: torch.from_numpy(session.run(None, {"x": inputs.numpy()})[0])


def random_calibration(size: str) -> Calibration:
    """Random windows for the static int8 path: enough to time it (random weights have no data of their own)."""
    frames = torch.randint(0, 256, (12, 8, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Calibration(f"random-{size}", lambda: CalibrationWindows(frames[:8].numpy(), frames[8:].numpy(),
                                                                    torch.zeros(4, dtype=torch.int64).numpy()))


def model_flops(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def time_interleaved(variants: dict, budget_s: float, min_reps: int = 2) -> dict[str, float]:
    """Median seconds per forward of each variant, taking turns until the budget is spent."""
    times = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    start = time.perf_counter()
    while True:
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        reps = len(next(iter(times.values())))
        if reps >= min_reps and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_size(size: str, batches: list[int], budget_s: float, workdir: Path) -> list[dict]:
    folder = workdir / size
    hf = make_hf_folder(folder, "divided_space_time", num_labels=400, image_size=224, patch_size=16,
                        num_frames=8, **SIZES[size])
    hf_bf16 = make_hf_folder(workdir / f"{size}-copy", "divided_space_time", num_labels=400, image_size=224,
                             patch_size=16, num_frames=8, **SIZES[size]).to(torch.bfloat16)
    ours = load_model(folder)
    fast = load_model(folder, precision="bf16")
    int8 = load_model(folder, precision="int8", calibration=random_calibration(size))
    openvino = load_model(folder, backend="openvino")  # converted for 8×224 with a dynamic batch
    openvino_bf16 = load_model(folder, precision="bf16", backend="openvino")  # bf16 units: OpenVINO in bf16
    onnx = onnxruntime_model(ours, torch.zeros(1, 3, 8, 224, 224), workdir / f"{size}.onnx", torch.get_num_threads())
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 8, 224, 224)
        pixels, pixels_bf16 = x.permute(0, 2, 1, 3, 4).contiguous(), x.permute(0, 2, 1, 3, 4).to(torch.bfloat16)
        outputs = {}

        def run(name, fn):
            def call():
                with torch.no_grad():
                    outputs[name] = fn().float()
            return call

        variants = {
            "transformers fp32": run("transformers fp32", lambda: hf(pixel_values=pixels).logits),
            "transformers bf16": run("transformers bf16", lambda: hf_bf16(pixel_values=pixels_bf16).logits),
            "ours fp32": run("ours fp32", lambda: ours(x)),
            f"ours precision=bf16 (runs {fast.precision})": run("fast", lambda: fast(x)),
            "ours precision=int8 (static, OpenVINO)": run("int8", lambda: int8(x)),
            f"ours backend=openvino ({getattr(openvino, 'backend', 'torch')}, fp32)": run("openvino", lambda: openvino(x)),
        }
        if getattr(openvino_bf16, "backend", "torch") == "openvino":
            variants["ours backend=openvino precision=bf16"] = run("openvino bf16", lambda: openvino_bf16(x))
        if onnx is not None:
            variants["ONNX Runtime fp32 (our graph)"] = run("onnxruntime", lambda: onnx(x))
        slow_bf16 = not BF16_UNITS and size == "base"
        if slow_bf16:  # emulated bf16 takes minutes per base clip here: one timed call at batch 1, none at 8
            hf_bf16_call = variants.pop("transformers bf16")
            hf_bf16_seconds = float("nan")
            if batch == 1:
                t0 = time.perf_counter()
                hf_bf16_call()
                hf_bf16_seconds = time.perf_counter() - t0
            else:
                outputs["transformers bf16"] = torch.full((batch, 400), float("nan"))
        seconds = time_interleaved(variants, budget_s)
        if slow_bf16:
            seconds = {"transformers fp32": seconds.pop("transformers fp32"), "transformers bf16": hf_bf16_seconds,
                       **seconds}
        flops = model_flops(ours, x)
        exact = outputs["ours fp32"]
        rows.append(dict(
            size=size, batch=batch, seconds=seconds, flops=flops,
            max_abs_diff_fp32=(exact - outputs["transformers fp32"]).abs().max().item(),
            max_abs_diff_openvino=(exact - outputs["openvino"]).abs().max().item(),
            max_abs_diff_onnxruntime=(exact - outputs["onnxruntime"]).abs().max().item() if onnx else float("nan"),
            top1_agree_openvino_bf16=((outputs["openvino bf16"].argmax(-1) == exact.argmax(-1)).float().mean().item()
                                      if "openvino bf16" in outputs else float("nan")),
            top1_agree_fast=(outputs["fast"].argmax(-1) == exact.argmax(-1)).float().mean().item(),
            top1_agree_hf_bf16=(outputs["transformers bf16"].argmax(-1) == exact.argmax(-1)).float().mean().item(),
            top1_agree_int8=(outputs["int8"].argmax(-1) == exact.argmax(-1)).float().mean().item(),
            fast_precision=fast.precision,
        ))
        print(rows[-1], flush=True)
    return rows


def render(rows: list[dict], peaks: dict[str, float], args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"Command: `python bench/model.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 matmul: {BF16_UNITS}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        "Matrix-multiply peak measured in this run (2048² GEMM, GFLOP/s; % of peak uses the best): "
        + ", ".join(f"{name} {value / 1e9:.0f}" for name, value in peaks.items() if "/" in name),
        "",
        "| model | batch | variant | ms / clip | × transformers fp32 | × transformers bf16 | % of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base, hf_bf16 = row["seconds"]["transformers fp32"], row["seconds"]["transformers bf16"]
        for name, sec in row["seconds"].items():
            if math.isnan(sec):
                lines.append(f"| {row['size']} | {row['batch']} | {name} | not run (emulated bf16: minutes per "
                             "call) | | | |")
                continue
            dtype = "bf16" if ("bf16" in name and "runs fp32" not in name) else "fp32"
            pct = "-" if "int8" in name else f"{100 * row['flops'] / sec / peaks[dtype]:.0f}%"  # no int8 peak measured
            vs_hf_bf16 = "-" if math.isnan(hf_bf16) else f"{hf_bf16 / sec:.2f}"
            lines.append(f"| {row['size']} | {row['batch']} | {name} | {1000 * sec / row['batch']:.1f} | "
                         f"{base / sec:.2f} | {vs_hf_bf16} | {pct} |")
    lines += ["", "| model | batch | GFLOP / clip | max abs logit diff ours fp32 vs transformers fp32 | "
                  "OpenVINO vs ours fp32 | ONNX Runtime vs ours fp32 | top-1 agreement fast path vs fp32 | "
                  "OpenVINO bf16 vs fp32 | int8 vs fp32 | transformers bf16 vs fp32 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        hf_bf16_agree = ("-" if math.isnan(row["seconds"]["transformers bf16"])
                         else f"{100 * row['top1_agree_hf_bf16']:.0f}%")
        lines.append(f"| {row['size']} | {row['batch']} | {row['flops'] / row['batch'] / 1e9:.1f} | "
                     f"{row['max_abs_diff_fp32']:.2e} | {row['max_abs_diff_openvino']:.2e} | "
                     f"{row['max_abs_diff_onnxruntime']:.2e} | {100 * row['top1_agree_fast']:.0f}% | "
                     f"{100 * row['top1_agree_openvino_bf16']:.0f}% | "
                     f"{100 * row['top1_agree_int8']:.0f}% | {hf_bf16_agree} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timing per cell (after warm-up)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"torch fp32": matmul_peak(torch.float32), "torch bf16": matmul_peak(
        torch.bfloat16, n=2048 if BF16_UNITS else 1024)}  # 2048² mm takes ~1 min without
    try:
        peaks["OpenVINO fp32"] = openvino_matmul_peak("f32", args.threads)
        if BF16_UNITS:
            peaks["OpenVINO bf16"] = openvino_matmul_peak("bf16", args.threads)
    except ImportError:
        pass
    peaks = {f"{engine} / {dtype}": value for key, value in peaks.items() for engine, dtype in [key.split()]}
    for dtype in ("fp32", "bf16"):
        peaks[dtype] = max(v for k, v in peaks.items() if k.endswith(f"/ {dtype}"))
    print({k: f"{v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()}, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows += bench_size(size, args.batches, args.budget, Path(tmp))
    text = render(rows, peaks, args)
    print(text)
    if not args.no_write:
        write_section("Model: ours vs transformers (CPU)", text)


if __name__ == "__main__":
    main()
