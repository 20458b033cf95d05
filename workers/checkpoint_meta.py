"""What a checkpoint says about itself, read without torch: our format's name, its preprocessing and labels.

The supervisor describes the checkpoint before any stage starts (to build every stage's config); for our own
safetensors files that is the header alone, read here in milliseconds, so starting a pipeline or telling a
config mistake never waits for torch to import. Other formats (official .pyth, Hugging Face folders, plain
safetensors) are read in full by :func:`workers.model.read_checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from streamer.errors import CheckpointError, ConfigError
from workers.flips import check_flip_views
from workers.sampling import window_span

FORMAT_NAME = "timesformer-stream"
FORMAT_VERSION = "1"
KINETICS400_LABELS = Path(__file__).resolve().parent / "data" / "kinetics400_labels.txt"


@dataclass(frozen=True)
class Preprocess:
    """How frames must be prepared for a checkpoint: pixel statistics (0..1 units), crop side, window shape."""

    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    size: int = 224
    num_frames: int = 8
    frame_interval: int = 32
    flip_views: tuple[str, ...] = ()  # mirror images its classes allow averaging in at test time (workers.views)

    @property
    def span(self) -> int:
        """Source frames from a window's first frame to its last, inclusive."""
        return window_span(self.num_frames, self.frame_interval)


def label_names(labels: list[str] | None, num_classes: int) -> list[str]:
    """The checkpoint's labels, or the class indices as names when it has none (a head trained elsewhere)."""
    return list(labels) if labels else [str(i) for i in range(num_classes)]


def check_preprocess(pre: Preprocess, where: Path) -> None:
    """Refuse preprocessing read from a file that would fail later, mid-stream, in a worker."""
    try:
        check_flip_views(pre.flip_views, f"{where}: metadata")
    except ConfigError as err:  # the same rules as a config's flip_views, but the checkpoint is what is wrong
        raise CheckpointError(str(err)) from None
    stats_ok = all(len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in (pre.mean, pre.std))
    sizes_ok = all(isinstance(n, int) and n > 0 for n in (pre.size, pre.num_frames, pre.frame_interval))
    if not stats_ok or not sizes_ok or min(pre.std) <= 0:
        raise CheckpointError(f"{where}: preprocessing in its metadata is damaged ({pre}); "
                              "mean/std must be 3 numbers (std > 0), sizes positive integers")


def read_metadata(meta: dict[str, str], path: Path) -> tuple[dict, list[str] | None, Preprocess]:
    """Our format's metadata → (architecture hints, labels, preprocessing); CheckpointError when damaged."""
    try:
        arch = json.loads(meta.get("config", "{}"))
        labels = json.loads(meta["labels"]) if "labels" in meta else None
        pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in json.loads(meta.get("preprocess", "{}")).items()})
        if not isinstance(arch, dict) or not (labels is None or isinstance(labels, list)):
            raise TypeError("config must be an object and labels a list")
        heads = {"num_heads": int(arch["num_heads"])} if "num_heads" in arch else {}
        labels = None if labels is None else [str(label) for label in labels]
    except (AttributeError, LookupError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: metadata is damaged ({err}); re-save the model with save_model") from None
    check_preprocess(pre, path)
    return heads, labels, pre


def checked_labels(labels: list[str] | None, num_classes: int, path: Path) -> list[str] | None:
    """The labels of a head of ``num_classes``: Kinetics-400's for a 400-class head without any."""
    if labels is None and num_classes == 400:
        labels = KINETICS400_LABELS.read_text().splitlines()
    if labels is not None and len(labels) != num_classes:
        raise CheckpointError(f"{path}: {len(labels)} labels for a head of {num_classes} classes")
    return labels


def described(path: str | Path) -> tuple[Preprocess, list[str]] | None:
    """Preprocessing and labels of one of our safetensors files, from its header (CheckpointError when it is
    damaged); None for any other checkpoint, which :func:`workers.model.describe_checkpoint` reads in full."""
    path = Path(path)
    CheckpointError.unless_found(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
            head = f.get_slice("head.weight").get_shape() if "head.weight" in keys else None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != FORMAT_NAME or head is None or len(head) != 2:
        return None
    _, labels, pre = read_metadata(meta, path)
    return pre, label_names(checked_labels(labels, head[0], path), head[0])
