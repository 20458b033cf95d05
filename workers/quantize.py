"""int8 that keeps accuracy: post-training static quantisation with NNCF on the OpenVINO model, calibrated on
windows of the checkpoint's own data, checked against fp32 on held-out windows, and cached with that check.

Dynamic quantisation of every linear layer (``precision="int8"`` in ``load_model``) costs the demo model
19-30 points: its first blocks subtract nearby frames, which 8 bits cannot resolve. Here the patch
embedding, the first two blocks and the classifier stay fp32 and the rest is quantised with statistics
from real windows (BENCHMARKS.md has the speed and the agreement with fp32).

Calibration data: ``"synthetic"`` (the demo generator: the shipped model's own data) or a folder laid out
as for training (one folder of videos per class), from which every other window calibrates and the rest
are held out for the check.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from streamer.errors import ConfigError
from workers.openvino_backend import BackendError, OpenVinoModel, _compile, _save, cache_key, default_cache_dir

CALIBRATION_WINDOWS = 300
# Where 8 bits lose what the model looks for: the patch embedding and the first two blocks (which subtract
# nearby frames) and the classifier. With only block 0 kept, top-1 agreement with fp32 was 98.0% (98.3% with the
# classifier); with block 1 too, 99.7% (bench/int8.py, BENCHMARKS.md).
KEEP_FP32 = [".*patch_embed.*", r".*blocks\.[01]\..*", r".*head.*"]
SYNTHETIC_CALIBRATION = (11, 12, 13)  # seeds of 20 s videos; held out: 2000 and 2001, as workers.evaluate uses
SYNTHETIC_HELD_OUT = (2000, 2001)


def windows(source: str, model: torch.nn.Module):
    """(calibration, held-out) :class:`~workers.training.data.WindowSet` from ``source``."""
    from workers.training.data import WindowSpec, concat, dataset_windows, synthetic_windows
    from workers.model import label_names

    pre = model.preprocess
    spec = WindowSpec(pre.num_frames, pre.frame_interval, max(1, pre.frame_interval))
    classes = label_names(model.labels, model.config.num_classes)
    if source == "synthetic":
        calibration = concat([synthetic_windows(seed, 20, pre.size, spec, classes) for seed in SYNTHETIC_CALIBRATION])
        held = concat([synthetic_windows(seed, 60, pre.size, spec, classes) for seed in SYNTHETIC_HELD_OUT])
        return calibration, held
    every = dataset_windows(Path(source), pre.size, spec, classes)
    if len(every.frames) < 20:
        raise ConfigError(f"int8 calibration data {source}: {len(every.frames)} windows; at least 20 are needed")
    pick = np.arange(len(every.frames)) % 2 == 0
    split = [type(every)(every.frames[m], every.targets[m], every.ends[m], every.whole[m]) for m in (pick, ~pick)]
    return split[0], split[1]


def _top1(run, frames: np.ndarray, targets: np.ndarray, batch: int = 16) -> float:
    hits = 0
    for start in range(0, len(frames), batch):
        x = torch.from_numpy(frames[start:start + batch]).permute(0, 4, 1, 2, 3).float()  # raw 0..255 input
        hits += int((run(x).argmax(-1).numpy() == targets[start:start + batch]).sum())
    return hits / max(1, len(frames))


def int8_openvino(model: torch.nn.Module, source: str, *, threads: int = 1,
                  cache_dir: Path | None = None) -> OpenVinoModel:
    """``model`` (fp32, CPU, normalisation folded: raw 0..255 input) quantised to int8 with OpenVINO/NNCF.

    The quantised model and its accuracy check (top-1 of fp32 and int8 on held-out windows) are cached
    by weights, shape, OpenVINO version and calibration source; the check is logged at every start.

    Raises:
        BackendError: OpenVINO or NNCF missing, or quantisation failed.
        ConfigError: the calibration data cannot be read.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise BackendError(f"int8 needs the {err.name} package (pip install openvino nncf)") from None
    pre = model.preprocess
    cache_dir = cache_dir or default_cache_dir()
    tag = hashlib.blake2b(f"{source}|{KEEP_FP32}".encode(), digest_size=6).hexdigest()
    xml = cache_dir / f"{cache_key(model, pre.num_frames, pre.size)}-int8-{tag}.xml"
    record = xml.with_suffix(".accuracy.json")
    if xml.exists() and record.exists():
        try:
            check = json.loads(record.read_text())
            compiled = _compile(ov.Core().read_model(xml), threads)
            _log(check, cached=True)
            return _wrap(compiled, model, threads, check)
        except Exception as err:  # damaged: quantise again
            logger.warning(f"int8 cache {xml} is unreadable ({str(err).splitlines()[0][:120]}); quantising again")
    import logging

    nncf.set_log_level(logging.ERROR)  # its per-layer notes and progress bars are not for the pipeline's log
    start = time.perf_counter()
    calibration, held = windows(source, model)
    example = torch.zeros(1, 3, pre.num_frames, pre.size, pre.size)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp32 = ov.convert_model(model, example_input=example,
                                    input=[ov.PartialShape([-1, 3, pre.num_frames, pre.size, pre.size])])
        dataset = nncf.Dataset(list(calibration.frames[:CALIBRATION_WINDOWS]),
                               lambda w: w[None].transpose(0, 4, 1, 2, 3).astype(np.float32))
        quantised = nncf.quantize(fp32, dataset, subset_size=min(CALIBRATION_WINDOWS, len(calibration.frames)),
                                  model_type=nncf.ModelType.TRANSFORMER,
                                  ignored_scope=nncf.IgnoredScope(patterns=KEEP_FP32, validate=False))
        compiled = _compile(quantised, threads)
    except Exception as err:
        raise BackendError(f"int8 quantisation failed ({str(err).splitlines()[0][:160]})") from None
    int8 = _wrap(compiled, model, threads, {})
    with torch.inference_mode():
        check = {"source": source, "held_out_windows": int(len(held.frames)),
                 "top1_fp32": _top1(model, held.frames, held.targets),
                 "top1_int8": _top1(int8, held.frames, held.targets),
                 "seconds": round(time.perf_counter() - start, 1)}
    _save(quantised, xml)
    try:
        record.write_text(json.dumps(check))
    except OSError:
        pass
    _log(check, cached=False)
    int8.accuracy = check
    return int8


def _wrap(compiled, model, threads, check) -> OpenVinoModel:
    wrapped = OpenVinoModel(compiled, model, threads)  # no speed check: int8 is asked for, not chosen
    wrapped.precision, wrapped.accuracy = "int8", check
    return wrapped


def _log(check: dict, cached: bool) -> None:
    loss = 100 * (check["top1_fp32"] - check["top1_int8"])
    text = (f"int8 ({'cached' if cached else 'quantised in ' + str(check['seconds']) + ' s'}): top-1 "
            f"{100 * check['top1_int8']:.1f}% against fp32 {100 * check['top1_fp32']:.1f}% on "
            f"{check['held_out_windows']} held-out windows of {check['source']}")
    (logger.warning if loss > 1.0 else logger.info)(text + (f"; {loss:.1f} points lost: consider fp32" if loss > 1.0 else ""))
