"""Checkpoint formats: ``load_model`` reads official, Hugging Face and our own files; ``save_model`` writes ours.

Whatever the format, the architecture is read from the weights (which keys exist and
their shapes), so a checkpoint never needs a matching config to load. Loading never
unpickles anything but tensors.
"""

import json
import pickle
import re
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from streamer.errors import CheckpointError
from workers.checkpoint_meta import (FORMAT_NAME, FORMAT_VERSION, Preprocess, check_preprocess, checked_labels,
                                     label_names, read_metadata)
from workers.quantize import Calibration
from workers.runtime import build, plan
from workers.timesformer import TimeSformer, TimeSformerConfig

# Hugging Face key → official key, applied in order (the official names are ours).
HF_KEY_RULES = [
    (r"^timesformer\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^timesformer\.embeddings\.cls_token$", "cls_token"),
    (r"^timesformer\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^timesformer\.embeddings\.time_embeddings$", "time_embed"),
    (r"^timesformer\.encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^timesformer\.layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"\.temporal_attention\.attention\.qkv\.", ".temporal_attn.qkv."),
    (r"\.temporal_attention\.output\.dense\.", ".temporal_attn.proj."),
    (r"\.temporal_layernorm\.", ".temporal_norm1."),
    (r"\.temporal_dense\.", ".temporal_fc."),
    (r"\.attention\.attention\.qkv\.", ".attn.qkv."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face ``TimesformerForVideoClassification`` keys to the official ones."""
    renamed = {}
    for key, tensor in state.items():
        for pattern, repl in HF_KEY_RULES:
            key = re.sub(pattern, repl, key)
        renamed[key] = tensor
    return renamed


def official_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_official` (used to write Hugging Face folders in tests and tools)."""
    inverse = [
        ("patch_embed.proj.", "timesformer.embeddings.patch_embeddings.projection."),
        ("cls_token", "timesformer.embeddings.cls_token"),
        ("pos_embed", "timesformer.embeddings.position_embeddings"),
        ("time_embed", "timesformer.embeddings.time_embeddings"),
        ("norm.", "timesformer.layernorm."),
        ("head.", "classifier."),
    ]
    block_parts = [
        (".temporal_attn.qkv.", ".temporal_attention.attention.qkv."),
        (".temporal_attn.proj.", ".temporal_attention.output.dense."),
        (".temporal_norm1.", ".temporal_layernorm."),
        (".temporal_fc.", ".temporal_dense."),
        (".attn.qkv.", ".attention.attention.qkv."),
        (".attn.proj.", ".attention.output.dense."),
        (".norm1.", ".layernorm_before."),
        (".norm2.", ".layernorm_after."),
        (".mlp.fc1.", ".intermediate.dense."),
        (".mlp.fc2.", ".output.dense."),
    ]
    out = {}
    for key, tensor in state.items():
        match = re.match(r"^blocks\.(\d+)(\..*)$", key)
        if match:
            rest = match.group(2)
            for old, new in block_parts:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f"timesformer.encoder.layer.{match.group(1)}{rest}"
        else:
            for old, new in inverse:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
        out[key] = tensor
    return out


def infer_config(state: dict[str, torch.Tensor], source: str, **overrides) -> TimeSformerConfig:
    """Read the architecture from the weights' names and shapes; ``overrides`` win."""
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a TimeSformer checkpoint (no {missing[0]!r} among its weights)")
    try:  # names right but shapes wrong (a bad conversion) must not end in an IndexError
        dim = state["cls_token"].shape[-1]
        proj = state["patch_embed.proj.weight"]                     # (D, C, p, p)
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        head = state.get("head.weight")
        inferred = {
            "img_size": grid * proj.shape[-1],
            "patch_size": proj.shape[-1],
            "in_chans": proj.shape[1],
            "num_classes": head.shape[0] if head is not None else 0,
            "num_frames": state["time_embed"].shape[1] if "time_embed" in state else 8,
            "embed_dim": dim,
            "depth": 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))),
            "num_heads": max(1, dim // 64),
            "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
            "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        }
    except (IndexError, KeyError, TypeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{source}: weights named like TimeSformer's but shaped otherwise ({err!r})") from None
    if "blocks.0.temporal_attn.qkv.weight" in state:
        inferred["attention_type"] = "divided_space_time"
    elif "time_embed" in state:
        inferred["attention_type"] = "joint_space_time"
    else:
        inferred["attention_type"] = "space_only"
    known = {f.name for f in fields(TimeSformerConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown override {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        return TimeSformerConfig(**{**inferred, **overrides})
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def _starts_like_pickle(path: Path) -> bool:
    """A torch.save zip or a raw pickle (protocol 2+ starts with 0x80), as opposed to unrelated bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _read_official(path: Path) -> tuple[dict, list[str] | None]:
    try:
        with warnings.catch_warnings():  # garbage that starts like a pickle makes torch warn on stderr first
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found or _starts_like_pickle(path):
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: it holds Python objects{what}, not only tensors, and loading it could run code; "
                "re-save its state_dict with torch.save or convert it to safetensors"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (neither a torch.save zip nor a pickle)") from None
    except Exception as err:  # noqa: BLE001 - damaged pickles trip the unpickler in many ways (IndexError, ...)
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model_state"), dict):
        state = ckpt["model_state"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise CheckpointError(f"{path}: not a TimeSformer checkpoint (no 'model_state' dict of tensors inside)")
    clean = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = re.sub(r"^(module\.)?(model\.)?", "", key)
        clean[key] = tensor
    return clean, None


def _read_hf(folder: Path) -> tuple[dict, dict, list[str] | None, Preprocess]:
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: a folder, but not a Hugging Face model (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    if weights_path.is_file():
        state = _read_safetensors(weights_path)
    elif (folder / "pytorch_model.bin").is_file():
        state, _ = _read_official(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin) beside config.json")
    try:
        id2label = config.get("id2label") or {}
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else None
        heads = config.get("num_attention_heads")
        hf_arch = {"num_heads": int(heads)} if heads is not None else {}
        pre = Preprocess(size=int(config.get("image_size", 224)), num_frames=int(config.get("num_frames", 8)))
        processor = folder / "preprocessor_config.json"
        proc = json.loads(processor.read_text()) if processor.is_file() else {}
        if "image_mean" in proc and "image_std" in proc:
            pre = replace(pre, mean=tuple(proc["image_mean"]), std=tuple(proc["image_std"]))
    except (AttributeError, LookupError, TypeError, ValueError) as err:  # JSON of the wrong shape, text for a number
        raise CheckpointError(f"{folder}: config.json or preprocessor_config.json is damaged ({err})") from None
    check_preprocess(pre, folder)
    return hf_to_official(state), hf_arch, labels, pre


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _read_ours(path: Path) -> tuple[dict, dict, list[str] | None, Preprocess]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    state = _read_safetensors(path)
    if meta.get("format") != FORMAT_NAME:  # plain safetensors of official or HF keys
        if any(k.startswith("timesformer.") for k in state):
            state = hf_to_official(state)
        state = {re.sub(r"^(module\.)?(model\.)?", "", k): v for k, v in state.items()}
        return state, {}, None, Preprocess()
    heads, labels, pre = read_metadata(meta, path)
    return state, heads, labels, pre


def read_checkpoint(path: str | Path, **overrides) -> tuple[dict, TimeSformerConfig, list[str] | None, Preprocess]:
    """Read weights, architecture, labels and preprocessing from any supported format (no model built)."""
    path = Path(path)
    CheckpointError.unless_found(path)
    if path.is_dir():
        state, arch, labels, pre = _read_hf(path)
    elif path.suffix == ".safetensors":
        state, arch, labels, pre = _read_ours(path)
    else:
        (state, labels), arch, pre = _read_official(path), {}, Preprocess()
    config = infer_config(state, str(path), **{**arch, **overrides})
    if "num_frames" in overrides or "img_size" in overrides:
        pre = replace(pre, num_frames=config.num_frames, size=config.img_size)
    return state, config, checked_labels(labels, config.num_classes, path), pre


class CheckpointHead(NamedTuple):
    """A checkpoint's head as float32 arrays, with the labels it names and the flip views its windows are seen in."""

    weight: np.ndarray  # (classes, width)
    bias: np.ndarray  # (classes,)
    labels: tuple[str, ...]
    flips: tuple[str, ...]


def checkpoint_head(path: str | Path) -> CheckpointHead:
    """The checkpoint's head without building the model: what a taught label is trained beside
    (:mod:`workers.training.teaching`)."""
    state, config, labels, pre = read_checkpoint(path)
    if "head.weight" not in state or "head.bias" not in state:
        raise CheckpointError(f"{path}: holds no classification head to teach labels beside")
    return CheckpointHead(state["head.weight"].float().numpy().copy(), state["head.bias"].float().numpy().copy(),
                          tuple(labels or ()), tuple(pre.flip_views))


def checkpoint_model(path: str | Path, **overrides) -> TimeSformer:
    """The checkpoint as an fp32 :class:`TimeSformer` on the CPU in eval mode, ``labels`` and ``preprocess`` set."""
    state, config, labels, pre = read_checkpoint(path, **overrides)
    model = TimeSformer(config)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} is {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the architecture read from them ({problems[0]})")
    model.load_state_dict(state)
    model.labels, model.preprocess = labels, pre
    return model.eval()


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", precision: str = "fp32", compile: bool = False,
    backend: str = "torch", calibration: Calibration | None = None, **overrides,
) -> torch.nn.Module:
    """Load any supported checkpoint into an eval-mode model on ``device`` (contract 1).

    Device, precision and backend are decided by the runtime plan (:func:`workers.runtime.plan`), the
    same one the workers use.

    Args:
        path: official ``.pyth``/``.pth``, Hugging Face folder, or our ``.safetensors``.
        device: ``cpu`` (default), ``cuda``/``cuda:N`` or ``auto``; input must be float32 on that device.
        precision: ``"fp32"`` (exact) or ``"bf16"``/``"fp16"`` (fast paths: autocast on a GPU; on a CPU
            without matrix units for that type fp32 is kept, since it would run several times slower), or
            ``"int8"`` (CPU: static int8 through OpenVINO, calibrated on ``calibration``; :mod:`workers.quantize`).
        compile: wrap a torch model's forward in ``torch.compile`` (first call compiles).
        backend: ``"torch"`` (the default, the one to train), ``"openvino"`` (CPU; converted once and
            cached, see :mod:`workers.openvino_backend`) or ``"auto"`` (OpenVINO where it is exact to 1e-4
            and faster here, measured once per CPU, else torch).
        calibration: windows of the model's own data, for int8 (``workers.training.calibration``).
        overrides: any :class:`TimeSformerConfig` field (e.g. ``num_heads``, ``num_frames``).
    Returns:
        A module taking float32 ``(B, 3, T, H, W)`` normalised input and returning float32 logits, with
        ``.labels`` (list or None), ``.preprocess``, ``.precision``, ``.backend`` and ``.plan`` set (a
        :class:`TimeSformer` on the torch backend).
    """
    chosen = plan(device, precision, backend)
    model = build(checkpoint_model(path, **overrides), chosen, calibration=calibration)
    if compile and isinstance(model, TimeSformer):
        model.forward = torch.compile(model.forward, dynamic=False)
    return model


def save_model(model: TimeSformer, path: str | Path, *, labels: list[str] | None = None,
               preprocess: Preprocess | None = None) -> Path:
    """Write our single-file format: safetensors weights + architecture, labels, preprocessing as metadata."""
    path = Path(path)
    labels = labels if labels is not None else getattr(model, "labels", None)
    preprocess = preprocess or getattr(model, "preprocess", None) or Preprocess(
        size=model.config.img_size, num_frames=model.config.num_frames)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()
             if ".temporal_out." not in k}  # the fused inference projection is derived, not stored
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": json.dumps(asdict(model.config)),
        "preprocess": json.dumps(asdict(preprocess)),
    }
    if labels is not None:
        meta["labels"] = json.dumps(list(labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half checkpoint
    return path


def describe_checkpoint(path: str | Path) -> tuple[Preprocess, list[str]]:
    """Preprocessing and labels of a checkpoint, checked for loadability (raises CheckpointError); the header
    alone, without torch, is :func:`workers.checkpoint_meta.described`."""
    _, config, labels, pre = read_checkpoint(path)
    return pre, label_names(labels, config.num_classes)
