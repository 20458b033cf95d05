"""The OpenVINO backend for CPU workers: a TimeSformer converted once per weights and input shape, cached on
disk, compiled for the CPU in fp32 (or bf16 on CPUs with bf16 units, when asked), and called like the torch
model (float32 ``(B, 3, T, H, W)`` → logits).

Conversion traces the torch model (``ov.convert_model``) with a dynamic batch, so cross-stream batches and
flip views need no reconversion. The converted model is saved under ``cache_dir`` keyed by a hash of the
weights (after any folded normalisation), the input shape and the OpenVINO version, so a restarted worker
only compiles it. A compiled model is used only if its fp32 logits match torch's to 1e-4 on a test input; a
cache file that does not load or does not match is converted again. bf16 compiles that checked model with
bf16 inference (oneDNN's AVX-512 BF16 / AMX kernels): a fast path, like torch's bf16, not an exact one.

Whether this backend runs at all, in which precision, and whether ``auto`` keeps it, is decided by the
runtime plan (:mod:`workers.runtime`); this module only carries it out.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from loguru import logger

EXACT = 1e-4  # largest |logit difference| against torch that counts as the same model


class BackendError(RuntimeError):
    """OpenVINO is missing, or the model does not convert or does not match torch."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/timesformer-stream/openvino`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "timesformer-stream" / "openvino"


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_key(model: torch.nn.Module, num_frames: int, size: int) -> str:
    """What a converted model depends on: every weight, the input shape, the architecture, OpenVINO's version."""
    import openvino

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{openvino.__version__}|{num_frames}|{size}|{model.config}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class OpenVinoModel(torch.nn.Module):
    """The compiled model behind the torch model's interface (``config``, ``labels``, ``preprocess``...)."""

    def __init__(self, compiled, like: torch.nn.Module, threads: int, key: str = "", precision: str = "fp32") -> None:
        super().__init__()
        self.compiled, self.key = compiled, key  # key: cache_key of the weights and shape it was made from
        self.config, self.threads = like.config, threads
        self.labels = getattr(like, "labels", None)
        self.preprocess = getattr(like, "preprocess", None)
        self.precision, self.backend = precision, "openvino"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x.detach().to("cpu", torch.float32).contiguous().numpy())[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the request reuses its buffer


def compile_cpu(ov_model, threads: int, precision: str = "fp32"):
    """``ov_model`` compiled for this CPU with ``threads`` threads, in fp32 or bf16 (never chosen by OpenVINO)."""
    import openvino as ov

    return ov.Core().compile_model(ov_model, "CPU", {
        # f32 unless asked: OpenVINO would pick bf16 by itself on CPUs with bf16 units
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})


def _max_difference(compiled, model: torch.nn.Module, probe: torch.Tensor) -> float:
    with torch.inference_mode():
        reference = model(probe).float().numpy()
    return float(np.abs(np.asarray(compiled(probe.numpy())[0]) - reference).max())


def to_openvino(model: torch.nn.Module, num_frames: int, size: int, *, threads: int = 1,
                cache_dir: Path | None = None, scale: float = 1.0, precision: str = "fp32") -> OpenVinoModel:
    """``model`` (eval, fp32, CPU) as an OpenVINO model for ``(B, 3, num_frames, size, size)`` input.

    Args:
        threads: CPU threads for each forward.
        precision: ``"fp32"``, or ``"bf16"`` (the fp32-checked model compiled for bf16 units).
        cache_dir: where converted models are kept (default ``~/.cache/timesformer-stream/openvino``).
        scale: input values of the test that checks the logits (255 for a model with folded normalisation).
    Raises:
        BackendError: OpenVINO missing, conversion failed, or logits differ from torch's by more than 1e-4.
    """
    if not available():
        raise BackendError("the openvino package is not installed (pip install openvino)")
    if precision not in ("fp32", "bf16"):
        raise BackendError(f"OpenVINO runs fp32 or bf16 here (int8 through workers.quantize), not {precision}")
    import openvino as ov

    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(model, num_frames, size)
    xml = cache_dir / f"{key}.xml"
    probe = torch.rand(2, 3, num_frames, size, size, generator=torch.Generator().manual_seed(0)) * scale
    if xml.exists():
        try:
            ov_model = ov.Core().read_model(xml)
            compiled = compile_cpu(ov_model, threads)
            if _max_difference(compiled, model, probe) <= EXACT:
                return _in_precision(ov_model, compiled, model, threads, key, precision)
            logger.warning(f"OpenVINO cache {xml} does not match the model; converting it again")
        except Exception as err:  # a damaged .xml/.bin: convert again rather than fail
            logger.warning(f"OpenVINO cache {xml} is unreadable ({str(err).splitlines()[0][:120]}); converting it again")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant per input size
            ov_model = ov.convert_model(model, example_input=probe[:1],
                                        input=[ov.PartialShape([-1, 3, num_frames, size, size])])
        compiled = compile_cpu(ov_model, threads)
    except Exception as err:
        raise BackendError(f"OpenVINO could not convert the model ({str(err).splitlines()[0][:160]})") from None
    difference = _max_difference(compiled, model, probe)
    if difference > EXACT:
        raise BackendError(f"OpenVINO's logits differ from torch's by {difference:.2e} (more than {EXACT:g})")
    save_atomically(ov_model, xml)
    logger.info(f"converted the model to OpenVINO in {time.perf_counter() - start:.1f} s (cached in {cache_dir})")
    return _in_precision(ov_model, compiled, model, threads, key, precision)


def _in_precision(ov_model, compiled_fp32, model, threads: int, key: str, precision: str) -> OpenVinoModel:
    if precision == "fp32":
        return OpenVinoModel(compiled_fp32, model, threads, key)
    return OpenVinoModel(compile_cpu(ov_model, threads, precision), model, threads, key, precision)


def save_atomically(ov_model, xml: Path) -> None:
    """Write the .xml/.bin pair under temporary names and rename them, so a reader never sees half a model."""
    import openvino as ov

    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        tmp = xml.with_name(f"{xml.stem}.{os.getpid()}.tmp.xml")
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    except OSError as err:
        logger.warning(f"OpenVINO cache {xml.parent} not writable ({err.strerror}); the model is converted at every start")
