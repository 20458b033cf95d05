"""Windows that calibrate int8 (:mod:`workers.quantize`): the model's own data, cut as training cuts it.

``"synthetic"`` renders the demo generator (the shipped model's own data: videos 11-13 calibrate, 2000 and
2001 are held out, as ``workers.evaluate`` holds them out); a folder laid out as for training (one folder of
videos per class) gives every other window to calibration and the rest to the check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamer.errors import ConfigError
from workers.model import Preprocess
from workers.quantize import Calibration, CalibrationWindows
from workers.training.data import WindowSpec, concat, dataset_windows, synthetic_windows

SYNTHETIC_CALIBRATION = (11, 12, 13)  # seeds of 20 s videos
SYNTHETIC_HELD_OUT = (2000, 2001)     # 60 s each


def calibration(source: str, preprocess: Preprocess, classes: list[str]) -> Calibration:
    """``source`` ("synthetic" or a folder) as the int8 calibration of a model with ``preprocess`` and ``classes``
    (its windows are made only if the model has to be quantised)."""
    return Calibration(source, lambda: calibration_windows(source, preprocess, classes))


def calibration_windows(source: str, pre: Preprocess, classes: list[str]) -> CalibrationWindows:
    spec = WindowSpec(pre.num_frames, pre.frame_interval, max(1, pre.frame_interval))
    if source == "synthetic":
        calibrate = concat([synthetic_windows(seed, 20, pre.size, spec, classes) for seed in SYNTHETIC_CALIBRATION])
        held = concat([synthetic_windows(seed, 60, pre.size, spec, classes) for seed in SYNTHETIC_HELD_OUT])
        return CalibrationWindows(calibrate.frames, held.frames, held.targets)
    every = dataset_windows(Path(source), pre.size, spec, classes)
    if len(every.frames) < 20:
        raise ConfigError(f"int8 calibration data {source}: {len(every.frames)} windows; at least 20 are needed")
    pick = np.arange(len(every.frames)) % 2 == 0
    return CalibrationWindows(every.frames[pick], every.frames[~pick], every.targets[~pick])
