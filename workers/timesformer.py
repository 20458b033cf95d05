"""TimeSformer (Bertasius et al., 2021) for inference and training, in the paper's order.

PatchEmbed → Mlp → Attention → Block (temporal step, spatial step, MLP) → TimeSformer.
Parameter names are the official checkpoint's (`patch_embed.proj`, `pos_embed`,
`time_embed`, `blocks.i.temporal_norm1`, `temporal_attn`, `temporal_fc`, `attn.qkv`,
`attn.proj`, `norm`, `head`), so an official `model_state` loads without renaming.

Token layout (official): ``[cls] + patches`` with patches ordered ``(h w t)``, time
varying fastest. Shapes below use B batch, T frames, H×W patch grid, N = H·W, D width.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")


@dataclass(frozen=True)
class TimeSformerConfig:
    """Architecture of one TimeSformer.

    Args:
        img_size: side of the square frames it was trained on (trained grid = img_size // patch_size).
        patch_size: side of a square patch.
        num_frames: frames per clip it was trained on (length of ``time_embed``).
        num_heads: attention heads; ``embed_dim`` must divide by it.
        attention_type: one of ``ATTENTION_TYPES``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 400
    num_frames: int = 8
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    attention_type: str = "divided_space_time"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type {self.attention_type!r} is not one of {ATTENTION_TYPES}")
        sizes = ("img_size", "patch_size", "in_chans", "num_frames", "embed_dim", "depth", "num_heads")
        if not_positive := [name for name in sizes if getattr(self, name) <= 0]:
            raise ValueError(f"{not_positive[0]} must be positive, not {getattr(self, not_positive[0])}")
        if int(self.embed_dim * self.mlp_ratio) <= 0:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves the MLP no hidden units")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} does not divide into {self.num_heads} heads")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample, in training only."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class PatchEmbed(nn.Module):
    """Each frame's non-overlapping patches → D-dim tokens, by one strided convolution."""

    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        B, C, T, H, W = x.shape
        x = rearrange(x, "b c t h w -> (b t) c h w")      # (B·T, 3, H, W)
        x = self.proj(x)                                   # (B·T, D, H', W')
        grid_h, grid_w = x.shape[-2:]
        x = rearrange(x, "bt d h w -> bt (h w) d")         # (B·T, N, D)
        return x, T, grid_h, grid_w


class Mlp(nn.Module):
    """Two linear layers with exact GELU between."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention without the output projection (so a caller may fuse ``proj`` with what follows)."""
        qkv = self.qkv(x)                                                      # (B, L, 3·D)
        q, k, v = rearrange(qkv, "b l (s h e) -> s b h l e", s=3, h=self.num_heads)  # 3 × (B, heads, L, D/heads)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)        # (B, heads, L, D/heads)
        return rearrange(out, "b h l e -> b l (h e)")                         # (B, L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.attend(x)))


class Block(nn.Module):
    """One TimeSformer block; divided attention is a temporal step, then a spatial step, then the MLP."""

    def __init__(self, cfg: TimeSformerConfig, drop_path: float) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.attention_type = cfg.attention_type
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        if cfg.attention_type == "divided_space_time":
            self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.temporal_attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)
        # Inference fast path: temporal_fc ∘ temporal_attn.proj folded into one linear (see fuse()).
        self.temporal_out: nn.Linear | None = None

    def fuse(self) -> None:
        """Fold ``temporal_fc(temporal_attn.proj(a))`` into one matrix product, for inference.

        Both are affine, so W = W_fc·W_proj and b = W_fc·b_proj + b_fc give the same map
        with one (D×D) product fewer per token and block.
        """
        if self.attention_type != "divided_space_time":
            return
        proj, fc = self.temporal_attn.proj, self.temporal_fc
        fused = nn.Linear(proj.in_features, fc.out_features).to(proj.weight.device)
        with torch.no_grad():
            w = fc.weight.double() @ proj.weight.double()
            b = fc.weight.double() @ proj.bias.double() + fc.bias.double()
            fused.weight.copy_(w.to(proj.weight.dtype))
            fused.bias.copy_(b.to(proj.weight.dtype))
        self.temporal_out = fused.to(proj.weight.dtype)

    def temporal(self, x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """Each patch attends to itself across frames; returns the patch tokens updated."""
        patches = x[:, 1:]                                                   # (B, N·T, D)
        xt = rearrange(patches, "b (n t) d -> (b n) t d", t=T)                # (B·N, T, D)
        xt = self.temporal_norm1(xt)
        if self.temporal_out is not None and not self.training:
            res = self.temporal_out(self.temporal_attn.attend(xt))           # (B·N, T, D)
        else:
            res = self.temporal_fc(self.drop_path(self.temporal_attn(xt)))   # (B·N, T, D)
        res = rearrange(res, "(b n) t d -> b (n t) d", b=B)                   # (B, N·T, D)
        return patches + res

    def spatial(self, cls: torch.Tensor, patches: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """Each frame's patches attend to each other with a copy of cls; cls results are averaged over T."""
        xs = rearrange(patches, "b (n t) d -> (b t) n d", t=T)                # (B·T, N, D)
        cls_t = cls.repeat_interleave(T, dim=0)                              # (B·T, 1, D)
        xs = torch.cat((cls_t, xs), dim=1)                                    # (B·T, 1+N, D)
        res = self.drop_path(self.attn(self.norm1(xs)))                      # (B·T, 1+N, D)
        res_cls = rearrange(res[:, :1], "(b t) one d -> b t one d", b=B).mean(dim=1)  # (B, 1, D)
        res_patches = rearrange(res[:, 1:], "(b t) n d -> b (n t) d", b=B)    # (B, N·T, D)
        return torch.cat((cls + res_cls, patches + res_patches), dim=1)      # (B, 1+N·T, D)

    def forward(self, x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        if self.attention_type == "divided_space_time":
            x = self.spatial(x[:, :1], self.temporal(x, B, T), B, T)           # (B, 1+N·T, D)
        else:  # joint (B, 1+N·T, D) or space-only (B·T, 1+N, D): one attention over all tokens
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Position embedding for another patch grid: cls kept, the square grid resized with legacy 2-D nearest."""
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]                    # (1, 1, D), (1, P², D)
    side = math.isqrt(grid_pos.shape[1])
    if (side, side) == (grid_h, grid_w):
        return pos_embed
    grid_pos = rearrange(grid_pos, "one (h w) d -> one d h w", h=side)        # (1, D, P, P)
    grid_pos = F.interpolate(grid_pos, size=(grid_h, grid_w), mode="nearest")  # (1, D, H, W)
    grid_pos = rearrange(grid_pos, "one d h w -> one (h w) d")                # (1, H·W, D)
    return torch.cat((cls_pos, grid_pos), dim=1)


def resize_time_embed(time_embed: torch.Tensor, T: int) -> torch.Tensor:
    """Time embedding for another clip length, by legacy 1-D nearest interpolation."""
    if time_embed.shape[1] == T:
        return time_embed
    resized = F.interpolate(time_embed.transpose(1, 2), size=T, mode="nearest")  # (1, D, T)
    return resized.transpose(1, 2)                                               # (1, T, D)


def init_layers(module: nn.Module) -> None:
    """Linear layers truncated-normal (std 0.02, zero bias), LayerNorms to the identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class TimeSformer(nn.Module):
    """Video classifier: (B, 3, T, H, W) normalised RGB → (B, num_classes) float32 logits.

    T, H and W may differ from the trained ones; the embeddings are resized to match.
    The model computes in the dtype of its parameters (or, with ``autocast_dtype`` set, as a GPU runs bf16 and
    fp16: under autocast to that type) and always returns float32.
    """

    def __init__(self, cfg: TimeSformerConfig) -> None:
        super().__init__()
        self.config = cfg
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        if cfg.attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, dim))
            self.time_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.labels: list[str] | None = None
        self.autocast_dtype: torch.dtype | None = None  # set by workers.runtime for low precision on GPUs
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal init as in the official code (pretrained weights replace it)."""
        for p in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        init_layers(self)

    def fuse(self) -> "TimeSformer":
        """Prepare the inference fast path (fused temporal projection); training ignores it."""
        for block in self.blocks:
            block.fuse()
        return self

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patches + cls + position (+ time) embeddings, laid out for the blocks."""
        B = x.shape[0]
        x, T, grid_h, grid_w = self.patch_embed(x)                           # (B·T, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)                       # (B·T, 1, D)
        x = torch.cat((cls, x), dim=1) + resize_pos_embed(self.pos_embed, grid_h, grid_w)  # (B·T, 1+N, D)
        x = self.pos_drop(x)
        if self.config.attention_type == "space_only":
            return x, B, T                                                    # frames stay apart
        cls = x[:B, :1]                                                       # (B, 1, D) no time embedding
        patches = rearrange(x[:, 1:], "(b t) n d -> (b n) t d", b=B)          # (B·N, T, D)
        patches = self.time_drop(patches + resize_time_embed(self.time_embed, T))
        patches = rearrange(patches, "(b n) t d -> b (n t) d", b=B)           # (B, N·T, D)
        return torch.cat((cls, patches), dim=1), B, T                         # (B, 1+N·T, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.cls_token.dtype)
        x, B, T = self.embed(x)
        for block in self.blocks:
            x = block(x, B, T)
        if self.config.attention_type == "space_only":
            x = rearrange(x, "(b t) l d -> b t l d", b=B).mean(dim=1)         # (B, 1+N, D) frames averaged
        return self.norm(x)[:, 0]                                             # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.head(self.forward_features(x)).float()
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self.head(self.forward_features(x)).float()
