"""int8, the one path: post-training static quantisation with NNCF on the OpenVINO model, calibrated on windows
of the checkpoint's own data, checked against fp32 on held-out windows, and cached with that check.

``precision="int8"`` (``load_model``, a worker's ``[model]`` table) comes here through the runtime plan
(:mod:`workers.runtime`). Dynamic quantisation of every linear layer (torch's, which ``load_model`` used to
run) cost the demo model 19-30 points: its first blocks subtract nearby frames, which 8 bits cannot resolve.
Here the patch embedding, the first two blocks and the classifier stay fp32 and the rest is quantised with
statistics from real windows (BENCHMARKS.md has the speed and the agreement with fp32).

The windows come from the caller as a :class:`Calibration` (``workers.training.calibration`` makes one from
``"synthetic"`` or a folder of videos per class), so the model package never imports training code; they are
made only when the model is not in the cache yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from loguru import logger

from workers.openvino_backend import (BackendError, OpenVinoModel, cache_key, compile_cpu, default_cache_dir,
                                      save_atomically)
from workers.preprocess import to_model_input, to_raw_input

CALIBRATION_WINDOWS = 300
# Where 8 bits lose what the model looks for: the patch embedding and the first two blocks (which subtract
# nearby frames) and the classifier. With only block 0 kept, top-1 agreement with fp32 was 98.0% (98.3% with the
# classifier); with block 1 too, 99.7% (bench/int8.py, BENCHMARKS.md).
KEEP_FP32 = [".*patch_embed.*", r".*blocks\.[01]\..*", r".*head.*"]


@dataclass(frozen=True)
class CalibrationWindows:
    """uint8 RGB windows ``(N, T, H, W, 3)`` at the model's input size: some to calibrate on, others (with
    their class indices) to check int8 against fp32."""

    frames: np.ndarray
    held_frames: np.ndarray
    held_targets: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Which data calibrates (``name``: part of the cache key) and how to get its windows (called only when
    the model must be quantised: rendering or reading them takes a while)."""

    name: str
    windows: Callable[[], CalibrationWindows]


def _top1(run, frames: np.ndarray, targets: np.ndarray, as_input, batch: int = 16) -> float:
    hits = 0
    for start in range(0, len(frames), batch):
        x = as_input(torch.from_numpy(frames[start:start + batch]))
        hits += int((run(x).argmax(-1).numpy() == targets[start:start + batch]).sum())
    return hits / max(1, len(frames))


def int8_openvino(model: torch.nn.Module, calibration: Calibration, *, raw_input: bool = True, threads: int = 1,
                  cache_dir: Path | None = None) -> OpenVinoModel:
    """``model`` (fp32, CPU) quantised to int8 with OpenVINO/NNCF.

    The quantised model and its accuracy check (top-1 of fp32 and int8 on held-out windows) are cached
    by weights, shape, OpenVINO version and calibration data; the check is logged at every start.

    Args:
        raw_input: the model takes 0..255 pixels (normalisation folded in, as workers run it); else
            normalised input, as ``load_model`` returns it.
    Raises:
        BackendError: OpenVINO or NNCF missing, or quantisation failed.
        ConfigError: the calibration data cannot be read.
    """
    try:
        import nncf  # noqa: F401 - checked here, used in _quantise
        import openvino as ov
    except ImportError as err:
        raise BackendError(f"int8 needs the {err.name} package (pip install openvino nncf)") from None
    pre = model.preprocess
    tag = hashlib.blake2b(f"{calibration.name}|{KEEP_FP32}".encode(), digest_size=6).hexdigest()
    xml = (cache_dir or default_cache_dir()) / f"{cache_key(model, pre.num_frames, pre.size)}-int8-{tag}.xml"
    record = xml.with_suffix(".accuracy.json")
    if xml.exists() and record.exists():
        try:
            check = json.loads(record.read_text())
            compiled = compile_cpu(ov.Core().read_model(xml), threads)
            _log(check, cached=True)
            return _wrap(compiled, model, threads, check)
        except Exception as err:  # damaged: quantise again
            logger.warning(f"int8 cache {xml} is unreadable ({str(err).splitlines()[0][:120]}); quantising again")
    start = time.perf_counter()
    windows = calibration.windows()
    as_input = to_raw_input if raw_input else (lambda frames: to_model_input(frames, pre.mean, pre.std))
    quantised = _quantise(model, windows.frames, as_input)
    int8 = _wrap(compile_cpu(quantised, threads), model, threads, {})
    with torch.inference_mode():
        check = {"source": calibration.name, "held_out_windows": int(len(windows.held_frames)),
                 "top1_fp32": _top1(model, windows.held_frames, windows.held_targets, as_input),
                 "top1_int8": _top1(int8, windows.held_frames, windows.held_targets, as_input),
                 "seconds": round(time.perf_counter() - start, 1)}
    save_atomically(quantised, xml)
    try:
        record.write_text(json.dumps(check))
    except OSError:
        pass
    _log(check, cached=False)
    int8.accuracy = check
    return int8


def _quantise(model: torch.nn.Module, frames: np.ndarray, as_input):
    """The OpenVINO model of ``model`` with every layer but ``KEEP_FP32`` in int8, from statistics of ``frames``."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)  # its per-layer notes and progress bars are not for the pipeline's log
    pre = model.preprocess
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant per input size
            fp32 = ov.convert_model(model, example_input=torch.zeros(1, 3, pre.num_frames, pre.size, pre.size),
                                    input=[ov.PartialShape([-1, 3, pre.num_frames, pre.size, pre.size])])
        dataset = nncf.Dataset(list(frames[:CALIBRATION_WINDOWS]),
                               lambda window: as_input(torch.from_numpy(window[None])).numpy())
        return nncf.quantize(fp32, dataset, subset_size=min(CALIBRATION_WINDOWS, len(frames)),
                             model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=nncf.IgnoredScope(patterns=KEEP_FP32, validate=False))
    except Exception as err:
        raise BackendError(f"int8 quantisation failed ({str(err).splitlines()[0][:160]})") from None


def _wrap(compiled, model, threads, check) -> OpenVinoModel:
    wrapped = OpenVinoModel(compiled, model, threads)  # no speed check: int8 is asked for, not chosen
    wrapped.precision, wrapped.accuracy = "int8", check
    return wrapped


def _log(check: dict, cached: bool) -> None:
    loss = 100 * (check["top1_fp32"] - check["top1_int8"])
    text = (f"int8 ({'cached' if cached else 'quantised in ' + str(check['seconds']) + ' s'}): top-1 "
            f"{100 * check['top1_int8']:.1f}% against fp32 {100 * check['top1_fp32']:.1f}% on "
            f"{check['held_out_windows']} held-out windows of {check['source']}")
    if loss > 1.0:
        logger.warning(f"{text}; {loss:.1f} points lost: consider fp32")
    else:
        logger.info(text)
