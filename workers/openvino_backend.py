"""The OpenVINO backend for CPU workers: a TimeSformer converted once per weights and input shape, cached on
disk, compiled for the CPU in fp32, and called like the torch model (float32 ``(B, 3, T, H, W)`` → logits).

Conversion traces the torch model (``ov.convert_model``) with a dynamic batch, so cross-stream batches and
flip views need no reconversion. The converted model is saved under ``cache_dir`` keyed by a hash of the
weights (after any folded normalisation), the input shape and the OpenVINO version, so a restarted worker
only compiles it. A compiled model is used only if its logits match torch's to 1e-4 on a test input; a
cache file that does not load or does not match is converted again.
"""

from __future__ import annotations

import hashlib
import json
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

    def __init__(self, compiled, like: torch.nn.Module, threads: int, key: str = "") -> None:
        super().__init__()
        self.compiled, self.key = compiled, key  # key: cache_key of the weights and shape it was made from
        self.config, self.threads = like.config, threads
        self.labels = getattr(like, "labels", None)
        self.preprocess = getattr(like, "preprocess", None)
        self.precision, self.backend = "fp32", "openvino"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(x.detach().to("cpu", torch.float32).contiguous().numpy())[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the request reuses its buffer


def _compile(ov_model, threads: int):
    import openvino as ov

    return ov.Core().compile_model(ov_model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16 behind our back on CPUs with bf16 units
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})


def _max_difference(compiled, model: torch.nn.Module, probe: torch.Tensor) -> float:
    with torch.inference_mode():
        reference = model(probe).float().numpy()
    return float(np.abs(np.asarray(compiled(probe.numpy())[0]) - reference).max())


def to_openvino(model: torch.nn.Module, num_frames: int, size: int, *, threads: int = 1,
                cache_dir: Path | None = None, scale: float = 1.0) -> OpenVinoModel:
    """``model`` (eval, fp32, CPU) as an OpenVINO model for ``(B, 3, num_frames, size, size)`` input.

    Args:
        threads: CPU threads for each forward.
        cache_dir: where converted models are kept (default ``~/.cache/timesformer-stream/openvino``).
        scale: input values of the test that checks the logits (255 for a model with folded normalisation).
    Raises:
        BackendError: OpenVINO missing, conversion failed, or logits differ from torch's by more than 1e-4.
    """
    if not available():
        raise BackendError("the openvino package is not installed (pip install openvino)")
    import openvino as ov

    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(model, num_frames, size)
    xml = cache_dir / f"{key}.xml"
    probe = torch.rand(2, 3, num_frames, size, size, generator=torch.Generator().manual_seed(0)) * scale
    if xml.exists():
        try:
            compiled = _compile(ov.Core().read_model(xml), threads)
            if _max_difference(compiled, model, probe) <= EXACT:
                return OpenVinoModel(compiled, model, threads, key)
            logger.warning(f"OpenVINO cache {xml} does not match the model; converting it again")
        except Exception as err:  # a damaged .xml/.bin: convert again rather than fail
            logger.warning(f"OpenVINO cache {xml} is unreadable ({str(err).splitlines()[0][:120]}); converting it again")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant per input size
            ov_model = ov.convert_model(model, example_input=probe[:1],
                                        input=[ov.PartialShape([-1, 3, num_frames, size, size])])
        compiled = _compile(ov_model, threads)
    except Exception as err:
        raise BackendError(f"OpenVINO could not convert the model ({str(err).splitlines()[0][:160]})") from None
    difference = _max_difference(compiled, model, probe)
    if difference > EXACT:
        raise BackendError(f"OpenVINO's logits differ from torch's by {difference:.2e} (more than {EXACT:g})")
    _save(ov_model, xml)
    logger.info(f"converted the model to OpenVINO in {time.perf_counter() - start:.1f} s (cached in {cache_dir})")
    return OpenVinoModel(compiled, model, threads, key)


def _save(ov_model, xml: Path) -> None:
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


def faster_than_torch(model: torch.nn.Module, ov_model: OpenVinoModel, example: torch.Tensor,
                      cache_dir: Path | None = None, repeats: int = 3) -> bool:
    """Whether OpenVINO is faster than torch for this model and input, measured once and remembered
    (beside the converted model, under the key ``to_openvino`` already computed)."""
    record = (cache_dir or default_cache_dir()) / f"{ov_model.key}.speed.json"
    try:
        known = json.loads(record.read_text())
        return known["openvino_ms"] < known["torch_ms"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    times = {}
    for name, run in (("torch_ms", model), ("openvino_ms", ov_model)):
        with torch.inference_mode():
            run(example)
            start = time.perf_counter()
            for _ in range(repeats):
                run(example)
        times[name] = 1000 * (time.perf_counter() - start) / repeats
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(times))
    except OSError:
        pass
    return times["openvino_ms"] < times["torch_ms"]


BACKENDS = ("torch", "openvino", "auto")


def select(model: torch.nn.Module, backend: str, *, scale: float = 1.0, batch: int = 1,
           cache_dir: Path | None = None) -> torch.nn.Module:
    """``model`` on the backend asked for: ``torch`` as is; ``openvino`` converted (torch kept, with one log
    line, if that fails); ``auto`` converted where it is exact and faster, else torch. OpenVINO runs fp32
    on the CPU only; elsewhere both other choices keep torch."""
    if backend == "torch":
        return model
    device = next(model.parameters()).device
    if device.type != "cpu" or getattr(model, "precision", "fp32") != "fp32":
        if backend == "openvino":
            logger.warning(f"backend 'openvino' runs fp32 on the CPU; this model is {model.precision} on {device}: "
                           "using torch")
        return model
    if not available():
        if backend == "openvino":
            logger.warning("backend 'openvino' asked for but the openvino package is missing: using torch")
        return model
    pre = model.preprocess
    try:
        converted = to_openvino(model, pre.num_frames, pre.size, threads=torch.get_num_threads(),
                                cache_dir=cache_dir, scale=scale)
    except BackendError as err:
        logger.warning(f"{err}; using torch")
        return model
    if backend == "openvino":
        return converted
    example = torch.rand(batch, 3, pre.num_frames, pre.size, pre.size) * scale
    if faster_than_torch(model, converted, example, cache_dir):
        return converted
    logger.info("OpenVINO is not faster than torch for this model here: using torch")
    return model
