"""One runtime plan: on which device, in which number format and through which engine a TimeSformer runs.

:func:`plan` turns what was asked (``load_model``'s keywords, a worker's ``[model]`` table) and what this
machine has (CUDA GPUs, the CPU's matrix units, OpenVINO) into a frozen :class:`RuntimePlan` that says what
will run and why; :func:`build` makes an fp32 model into that runtime. ``load_model`` and the worker stage
both go through these two; the OpenVINO backend and int8 (:mod:`workers.quantize`) only carry the plan out.

``backend="auto"`` on the CPU converts the model to OpenVINO (kept only where its logits match torch's to
1e-4), times torch and OpenVINO after warm-up, taking turns, and keeps the lower median
(:mod:`workers.backend_choice`: how many runs, and why, is measured there); the choice is remembered with
the CPU it was made on and made again on another.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from streamer.errors import ConfigError
from workers.backend_choice import choose_backend
from workers.cpu import UNITS, CpuFingerprint, cpu_fingerprint

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
BACKENDS = ("torch", "openvino", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it: openvino and nncf take seconds)."""
    return importlib.util.find_spec(package) is not None


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class RuntimePlan:
    """What runs: ``device`` ("cpu" or "cuda:N"), ``precision`` (fp32, bf16, fp16 or int8) and ``backend``
    (torch, openvino, or auto: the faster of the two, measured by :func:`build`), and why, one line per
    choice that differs from the request or needed a fact of this machine."""

    device: str
    precision: str
    backend: str
    why: tuple[str, ...] = ()

    @property
    def autocast(self) -> bool:
        """Low precision on a GPU runs under autocast: fp32 weights, bf16/fp16 matrix products."""
        return self.device != "cpu" and self.precision in ("bf16", "fp16")

    def describe(self) -> str:
        return f"{self.device}, {self.precision}, {self.backend}" + "".join(f"; {line}" for line in self.why)


def plan(device: str | torch.device = "cpu", precision: str = "fp32", backend: str = "torch", *, index: int = 0,
         gpus: int | None = None, cpu: CpuFingerprint | None = None, have=installed) -> RuntimePlan:
    """Decide device, precision and backend.

    Args:
        device: ``auto`` (GPU ``index mod count`` when CUDA has one, else the CPU), ``cpu``, ``cuda`` (GPU
            ``index mod count``) or ``cuda:N``.
        precision: ``fp32``; ``bf16``/``fp16`` (autocast on a GPU; on the CPU kept only where it has matrix
            units for it, else fp32 with one log line); ``int8`` (CPU only, static int8 through OpenVINO).
        backend: ``torch``, ``openvino`` (CPU) or ``auto``.
        index: the worker's number, for the round robin over GPUs.
        gpus, cpu, have: facts of this machine (CUDA GPUs, the CPU, ``have(package)``), found when not given.
    Raises:
        ConfigError: a value that is not one of those, or a GPU this machine does not have.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    why: list[str] = []
    requested = str(device)
    if requested == "auto" and precision == "int8":
        requested = "cpu"
        why.append("device auto: the CPU, as int8 runs only there")
    where = pick_device(requested, index, cuda_count() if gpus is None else gpus, why)
    if where != "cpu":
        return _gpu_plan(where, precision, backend, why)
    return _cpu_plan(precision, backend, cpu or cpu_fingerprint(), have, why)


def pick_device(requested: str, index: int, gpus: int, why: list[str]) -> str:
    """``cpu`` or ``cuda:N`` for ``requested`` (auto, cpu, cuda, cuda:N); round robin over GPUs by ``index``."""
    match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", requested)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ConfigError(f"device {requested!r} is not auto, cpu, cuda or cuda:N")
    kind, number = match.groups()
    if kind == "cpu":
        return "cpu"
    if not gpus:
        if kind == "auto":
            why.append("device auto: no CUDA GPU here, so the CPU")
            return "cpu"
        raise ConfigError(f"device {requested!r}: no CUDA GPU here (torch.cuda.is_available() is False); "
                          "use cpu or auto")
    if number is None:
        where = f"cuda:{index % gpus}"
        why.append(f"device {kind}: {where} (worker {index}, {gpus} GPU{'s' * (gpus > 1)}, round robin)")
        return where
    if int(number) >= gpus:
        raise ConfigError(f"device {requested!r}: this machine has {gpus} CUDA GPU{'s' * (gpus > 1)} "
                          f"(cuda:0 to cuda:{gpus - 1})")
    return f"cuda:{int(number)}"


def _gpu_plan(where: str, precision: str, backend: str, why: list[str]) -> RuntimePlan:
    if precision == "int8":
        raise ConfigError(f"precision 'int8' runs on the CPU only (through OpenVINO); use bf16 or fp16 on {where}")
    if backend != "torch":
        why.append(f"backend {backend}: torch, as OpenVINO runs on the CPU only")
        if backend == "openvino":
            logger.warning(f"backend 'openvino' asked for on {where}: OpenVINO runs on the CPU only, using torch")
    if precision != "fp32":
        why.append(f"{precision} autocast on {where} (fp32 weights, {precision} matrix products, fp32 logits)")
    return RuntimePlan(where, precision, "torch", tuple(why))


def _cpu_plan(precision: str, backend: str, cpu: CpuFingerprint, have, why: list[str]) -> RuntimePlan:
    def fall_back(line: str) -> None:
        logger.warning(line)
        why.append(line)

    if precision in UNITS and not cpu.has_units(precision):
        fall_back(f"{precision} asked for, but this CPU ({cpu.model}) has no {precision} matrix units "
                  f"({' or '.join(UNITS[precision])}): running fp32, as {precision} would be several times slower")
        precision = "fp32"
    if precision == "int8":
        missing = [package for package in ("openvino", "nncf") if not have(package)]
        if missing:
            fall_back(f"int8 needs the {' and '.join(missing)} package (pip install openvino nncf): running fp32")
            precision = "fp32"
        elif backend != "openvino":
            why.append("int8 runs through OpenVINO (static int8, calibrated on the model's own data)")
            backend = "openvino"
    if backend != "torch" and precision == "fp16":
        why.append(f"backend {backend}: torch, as OpenVINO runs fp32, bf16 or int8 here")
        backend = "torch"
    if backend != "torch" and not have("openvino"):
        line = f"backend {backend}: torch, as the openvino package is not installed"
        fall_back(line) if backend == "openvino" else why.append(line)
        backend = "torch"
    return RuntimePlan("cpu", precision, backend, tuple(why))


def build(model: torch.nn.Module, chosen: RuntimePlan, *, raw_input: bool = False, batch: int = 1,
          calibration=None, cache_dir: Path | None = None) -> torch.nn.Module:
    """``model`` (an fp32 :class:`~workers.timesformer.TimeSformer` in eval mode, with ``labels`` and
    ``preprocess``) made into the runtime ``chosen`` says: the one place where casting, autocast, OpenVINO
    conversion, int8 and the auto choice happen.

    Args:
        raw_input: the model takes 0..255 pixels (normalisation folded in, as the workers run it).
        batch: the batch ``auto`` times (a worker's ``max_batch`` × views).
        calibration: a :class:`workers.quantize.Calibration`, needed for int8.
        cache_dir: where converted models and choices are kept (default ``~/.cache/timesformer-stream/openvino``).
    Returns:
        A module taking float32 ``(B, 3, T, H, W)`` on ``chosen.device`` and returning float32 logits, with
        ``labels``, ``preprocess``, ``precision``, ``backend`` and ``plan`` set.
    """
    model = model.to(chosen.device).eval()
    if chosen.precision == "int8":
        return _int8(model, chosen, raw_input, batch, calibration, cache_dir)
    if chosen.backend == "torch":
        return _torch(model, chosen)
    from workers.openvino_backend import BackendError, to_openvino

    pre = model.preprocess
    try:
        converted = to_openvino(model, pre.num_frames, pre.size, threads=torch.get_num_threads(),
                                cache_dir=cache_dir, scale=255.0 if raw_input else 1.0, precision=chosen.precision)
    except BackendError as err:
        logger.warning(f"{err}; using torch")
        return _torch(model, chosen)
    if chosen.backend == "openvino":
        return _tag(converted, chosen, "openvino")

    example = torch.rand(batch, 3, pre.num_frames, pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    rival = _torch(model, chosen)
    picked = choose_backend({"torch": rival, "openvino": converted}, example * (255.0 if raw_input else 1.0),
                            converted.key, f"{chosen.precision}-b{batch}", cache_dir)
    why = (f"backend auto: {picked}, the faster here at batch {batch}",)
    return _tag(converted, chosen, "openvino", why) if picked == "openvino" else _tag(rival, chosen, "torch", why)


def _torch(model: torch.nn.Module, chosen: RuntimePlan) -> torch.nn.Module:
    """fp32 as it is (bit-faithful); bf16/fp16 cast on the CPU, under autocast on a GPU; fused when not fp32."""
    if chosen.precision != "fp32":
        if chosen.autocast:
            model.autocast_dtype = DTYPES[chosen.precision]
        else:
            model = model.to(DTYPES[chosen.precision])
        model.fuse()  # exact up to rounding; kept off the fp32 path so fp32 stays bit-faithful
    return _tag(model, chosen, "torch")


def _tag(model: torch.nn.Module, chosen: RuntimePlan, backend: str, why: tuple[str, ...] = ()):
    """What runs, on the model: ``precision``, ``backend`` and the ``plan`` with the backend resolved."""
    model.precision, model.backend = chosen.precision, backend
    model.plan = RuntimePlan(chosen.device, chosen.precision, backend, chosen.why + why)
    return model


def _int8(model, chosen: RuntimePlan, raw_input: bool, batch: int, calibration, cache_dir: Path | None):
    """Static int8 through OpenVINO (:mod:`workers.quantize`, the one int8 path); fp32 if quantising fails."""
    from workers.openvino_backend import BackendError
    from workers.quantize import int8_openvino

    if calibration is None:
        raise ConfigError("precision 'int8' calibrates on windows of the model's own data: pass "
                          "calibration=workers.quantize.Calibration(...) (workers.training.calibration makes one)")
    try:
        return _tag(int8_openvino(model, calibration, raw_input=raw_input, threads=torch.get_num_threads(),
                                  cache_dir=cache_dir), chosen, "openvino")
    except BackendError as err:
        logger.warning(f"{err}; running fp32 instead")
    fp32 = RuntimePlan(chosen.device, "fp32", "auto", chosen.why + ("int8 failed: fp32",))
    return build(model, fp32, raw_input=raw_input, batch=batch, cache_dir=cache_dir)
