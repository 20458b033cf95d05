"""Static int8 through OpenVINO/NNCF: calibrated on a folder of the model's classes, its accuracy check against
fp32 recorded beside the cached model and reused by the next load; and load_model(precision="int8") is that
same path, on normalised input."""

import json

import cv2
import numpy as np
import pytest
import torch

from workers.model import Preprocess, load_model, save_model
from workers.preprocess import fold_normalisation
from workers.timesformer import TimeSformer, TimeSformerConfig

pytest.importorskip("nncf", reason="the nncf package is not installed")
LABELS = ["still", "blinking"]


def class_videos(folder, frames: int = 30) -> None:
    for label in LABELS:
        for n in range(2):
            (folder / label).mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(folder / label / f"{n}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 32))
            for t in range(frames):
                level = 60 + 20 * n + (120 * (t % 2) if label == "blinking" else 0)
                writer.write(np.full((32, 40, 3), level, np.uint8))
            writer.release()


@pytest.mark.timeout(240)
def test_int8_is_calibrated_checked_against_fp32_and_cached(tmp_path):
    from workers.quantize import int8_openvino
    from workers.training.calibration import calibration

    torch.manual_seed(0)
    net = TimeSformer(TimeSformerConfig(img_size=32, patch_size=8, num_classes=2, num_frames=4, embed_dim=32,
                                        depth=2, num_heads=2))
    path = save_model(net, tmp_path / "m.safetensors", labels=LABELS,
                      preprocess=Preprocess(size=32, num_frames=4, frame_interval=2))
    class_videos(tmp_path / "clips")
    model = load_model(path)
    fold_normalisation(model, model.preprocess.mean, model.preprocess.std)
    cache = tmp_path / "cache"
    clips = calibration(str(tmp_path / "clips"), model.preprocess, LABELS)
    int8 = int8_openvino(model, clips, cache_dir=cache)
    check = int8.accuracy
    assert check["held_out_windows"] >= 10 and 0 <= check["top1_int8"] <= 1 and 0 <= check["top1_fp32"] <= 1
    records = list(cache.glob("*int8*.accuracy.json"))
    assert len(records) == 1 and json.loads(records[0].read_text()) == check
    x = torch.rand(3, 3, 4, 32, 32) * 255
    with torch.inference_mode():
        assert int8(x).shape == (3, 2) and torch.isfinite(int8(x)).all()
        agreement = (int8(x).argmax(-1) == model(x).argmax(-1)).float().mean()
    assert agreement >= 2 / 3
    again = int8_openvino(model, clips, cache_dir=cache)  # from the cache, same check
    assert again.accuracy == check and again.precision == "int8"


@pytest.mark.timeout(240)
def test_load_model_int8_is_the_calibrated_openvino_path(tmp_path, monkeypatch):
    """The one int8 path: load_model's int8 is the static OpenVINO model (normalised input, float32 logits),
    and without calibration windows it is refused in one line rather than quantised blind."""
    from streamer.errors import ConfigError
    from workers.training.calibration import calibration

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = TimeSformer(TimeSformerConfig(img_size=32, patch_size=8, num_classes=2, num_frames=4, embed_dim=32,
                                        depth=4, num_heads=2))  # blocks 2 and 3 are quantised
    path = save_model(net, tmp_path / "m.safetensors", labels=LABELS,
                      preprocess=Preprocess(size=32, num_frames=4, frame_interval=2))
    class_videos(tmp_path / "clips")
    with pytest.raises(ConfigError, match="precision 'int8' calibrates on windows of the model's own data"):
        load_model(path, precision="int8")
    exact = load_model(path)
    int8 = load_model(path, precision="int8", calibration=calibration(str(tmp_path / "clips"), exact.preprocess,
                                                                      LABELS))
    assert int8.precision == int8.plan.precision == "int8" and int8.backend == "openvino"
    assert int8.labels == LABELS and int8.preprocess == exact.preprocess
    assert int8.accuracy["held_out_windows"] >= 10
    x = torch.randn(4, 3, 4, 32, 32)  # normalised input, as load_model's models take it
    with torch.inference_mode():
        got, want = int8(x), exact(x)
    assert got.dtype == torch.float32 and got.shape == want.shape == (4, 2)
    assert 0 < (got - want).abs().max() <= 0.25 * want.abs().max() + 0.05  # quantised, and close
