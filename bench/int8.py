"""The shipped demo model on the CPU, same trained weights everywhere: transformers fp32, ours (torch fp32,
OpenVINO fp32, OpenVINO static int8), speed interleaved in one run, accuracy on held-out synthetic windows.

    python bench/int8.py                   # batch 4, one thread; writes its BENCHMARKS.md section
    python bench/int8.py --batch 1 --no-write
"""

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.model import time_interleaved  # noqa: E402
from bench.report import write_section  # noqa: E402
from workers.model import load_model, official_to_hf  # noqa: E402
from workers.openvino_backend import to_openvino  # noqa: E402
from workers.preprocess import fold_normalisation  # noqa: E402
from workers.quantize import int8_openvino  # noqa: E402
from workers.training.calibration import calibration  # noqa: E402

DEMO = REPO / "models" / "demo.safetensors"


def transformers_model(ours: torch.nn.Module):
    """TimesformerForVideoClassification holding the demo model's weights."""
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    c = ours.config
    config = TimesformerConfig(image_size=c.img_size, patch_size=c.patch_size, num_frames=c.num_frames,
                               hidden_size=c.embed_dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
                               intermediate_size=int(c.embed_dim * c.mlp_ratio), attention_type=c.attention_type,
                               num_labels=c.num_classes, layer_norm_eps=1e-6)
    hf = TimesformerForVideoClassification(config).eval()
    missing, unexpected = hf.load_state_dict(official_to_hf(ours.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing per variant")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="bench-int8-"))

    ours = load_model(DEMO)
    hf = transformers_model(ours)
    folded = load_model(DEMO)
    fold_normalisation(folded, ours.preprocess.mean, ours.preprocess.std)  # raw 0..255 input, as workers run it
    pre = ours.preprocess
    ov_fp32 = to_openvino(folded, pre.num_frames, pre.size, threads=args.threads, cache_dir=cache, scale=255.0)
    started = time.perf_counter()
    synthetic = calibration("synthetic", pre, ours.labels)
    ov_int8 = int8_openvino(folded, synthetic, threads=args.threads, cache_dir=cache)
    quantise_s = time.perf_counter() - started
    held = synthetic.windows()

    mean = torch.tensor(pre.mean).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(pre.std).view(1, 3, 1, 1, 1) * 255

    def raw(frames):  # (B, T, H, W, 3) uint8 → (B, 3, T, H, W) 0..255
        return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float()

    variants = {  # name → the model called on raw 0..255 input
        "transformers fp32": lambda x: hf(pixel_values=((x - mean) / std).permute(0, 2, 1, 3, 4)).logits,
        "ours torch fp32": lambda x: ours((x - mean) / std),
        "ours OpenVINO fp32": ov_fp32,
        "ours OpenVINO int8 (static, calibrated)": ov_int8,
    }
    logits = {}
    with torch.inference_mode():
        for name, run in variants.items():
            logits[name] = torch.cat([run(raw(held.held_frames[i:i + 32]))
                                      for i in range(0, len(held.held_frames), 32)])
        x = raw(held.held_frames[: args.batch])
        seconds = time_interleaved({name: (lambda run=run: run(x)) for name, run in variants.items()}, args.budget)
    reference = logits["ours torch fp32"].argmax(-1)
    targets = torch.as_tensor(held.held_targets)
    base = seconds["transformers fp32"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    rows = "\n".join(
        f"| {name} | {1000 * sec / args.batch:.1f} | {base / sec:.2f} | "
        f"{100 * (logits[name].argmax(-1) == targets).float().mean():.1f}% | "
        f"{100 * (logits[name].argmax(-1) == reference).float().mean():.1f}% |"
        for name, sec in seconds.items())
    body = f"""`python bench/int8.py --batch {args.batch} --threads {args.threads}` on {datetime.date.today()}, {cpu},
torch {torch.__version__}. The shipped demo model's trained weights in every variant (loaded into
`transformers`' TimesformerForVideoClassification for its row); one view, no flips. Accuracy on
{len(held.held_frames)} held-out windows of synthetic videos 2000 and 2001 (the int8 model was calibrated on
videos 11-13; quantising took {quantise_s:.0f} s, once, then cached).

| variant | ms / window (batch {args.batch}) | × transformers fp32 | top-1 | top-1 agreement with fp32 |
|---|---|---|---|---|
{rows}

Goal (issue 13): int8 ≥ 2.5× transformers fp32 with ≥ 99% top-1 agreement on trained weights.
"""
    print(body)
    if not args.no_write:
        write_section("Demo model: int8 and OpenVINO against transformers (CPU)", body)


if __name__ == "__main__":
    main()
