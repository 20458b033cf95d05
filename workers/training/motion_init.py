"""Hand-set starting weights that let a small TimeSformer see motion direction from step 0.

Trained from random weights, a TimeSformer learns *that* something changes quickly but
*which way* (left vs right, clockwise vs anticlockwise, growing vs shrinking) only after
hundreds of thousands of clips: direction is a product of a temporal and a spatial
difference, two layers deep. Here the first block is set to compute exactly that, as
classic gradient-based optical flow does (I_t · I_x has the sign of -v_x · I_x²):

- ``patch_embed`` writes, per colour channel, the means of 4 vertical and 4 horizontal
  strips of the patch (a coarse picture of where the edges are);
- block 0's temporal attention copies the previous frame's strips and writes the change
  (I_t) beside them; a static background gives exactly zero, whatever its colour;
- block 0's MLP multiplies I_t by the strip-to-strip differences (I_x, I_y) with GELU
  pairs, |a+b| - |a-b| ≈ sign(ab)·min(|a|,|b|), and adds a per-channel change energy
  (blinking vs still);
- block 1's spatial attention pools these into cls, with their first moments in x and y
  (rotation and growth), so the head reads them linearly.

Every other residual branch starts at zero and is trained from there; ``FROZEN`` lists
the hand-set parameters a training run may keep fixed. Width layout, in head-width
bands of ``hd`` = embed_dim / heads: ``[content | change | motion | time]``.
"""

from __future__ import annotations

import math

import torch

from streamer.errors import ConfigError

FROZEN = ("patch_embed.", "pos_embed", "time_embed", "blocks.0.", "blocks.1.attn.")  # hand-set; a run may keep them fixed
STRIPS = 4  # strips per axis and colour channel
MOTION_GAIN = 6.0  # makes the pooled motion features O(1) next to the fixed cls token after the final norm


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim) unit-scale sin/cos features of position (as in 'Attention is all you need')."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(100.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table[None]


def time_frequencies(count: int) -> torch.Tensor:
    """Angular steps (radians per frame) spread so that no two frames of a window look alike."""
    return torch.linspace(0.3, 2.8, count)


def check(model) -> None:
    cfg = model.config
    hd = cfg.embed_dim // cfg.num_heads
    if cfg.attention_type != "divided_space_time" or cfg.num_heads < 4 or hd % 4 or hd < 6 * STRIPS \
            or cfg.patch_size % STRIPS or len(model.blocks) < 2:
        raise ConfigError(
            f"motion init needs divided attention, ≥ 2 blocks, ≥ 4 heads of width ≥ {6 * STRIPS} divisible by 4 "
            f"and a patch size divisible by {STRIPS}; got width {cfg.embed_dim} / {cfg.num_heads} heads, "
            f"patch {cfg.patch_size}, depth {len(model.blocks)}")


@torch.no_grad()
def motion_init(model, scale: float = 1.5, gain: float = 1.0, motion_gain: float = MOTION_GAIN) -> None:
    """Set ``model`` (fresh, divided attention) up as described in the module docstring."""
    check(model)
    _temporal_difference(model, scale)
    _strip_embedding(model)
    _pool_into_cls(model)
    _flow_mlp(model, gain, motion_gain)
    _pool_moments(model)


def _temporal_difference(model, scale: float) -> None:
    """Block 0's temporal step: head 0 attends to frame t-1, head 1 to frame t; the change goes to band 1.

    Time features are quadruples ``(sin, cos, -sin, -cos)``: zero mean and constant energy,
    so the layer norm treats a patch identically in every frame. A query is its key rotated
    back one frame (head 0) or not (head 1).
    """
    cfg = model.config
    dim, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    content, change, time = slice(0, hd), slice(hd, 2 * hd), slice(dim - hd, dim)
    freqs = time_frequencies(hd // 4)
    t = torch.arange(cfg.num_frames, dtype=torch.float32)[:, None]
    table = torch.zeros(cfg.num_frames, dim)
    for k, part in enumerate((torch.sin(t * freqs), torch.cos(t * freqs), -torch.sin(t * freqs), -torch.cos(t * freqs))):
        table[:, time.start + k::4] = part
    model.time_embed.copy_(table[None])
    back, same = torch.zeros(hd, hd), torch.zeros(hd, hd)
    for j, w in enumerate(freqs.tolist()):
        c, s = math.cos(w), math.sin(w)
        back[4 * j:4 * j + 2, 4 * j:4 * j + 2] = torch.tensor([[c, -s], [s, c]])
        same[4 * j:4 * j + 2, 4 * j:4 * j + 2] = torch.eye(2)
    attn = model.blocks[0].temporal_attn
    qkv = torch.zeros(3 * dim, dim)
    for h, rotation in ((0, back), (1, same)):
        qkv[h * hd:(h + 1) * hd, time] = scale * rotation                       # queries
        qkv[dim + h * hd: dim + (h + 1) * hd, time] = scale * same              # keys
        qkv[2 * dim + h * hd: 2 * dim + (h + 1) * hd, content] = torch.eye(hd)  # values: the content band
    attn.qkv.weight.copy_(qkv)
    attn.qkv.bias.zero_()
    attn.proj.weight.copy_(torch.eye(dim))
    attn.proj.bias.zero_()
    fc = model.blocks[0].temporal_fc
    fc.weight.zero_()
    fc.bias.zero_()
    fc.weight[change, hd:2 * hd] = torch.eye(hd)   # + frame t
    fc.weight[change, 0:hd] = -torch.eye(hd)       # - frame t-1


def _strip_embedding(model) -> None:
    """Content band: per channel, the means of ``STRIPS`` vertical then ``STRIPS`` horizontal strips."""
    cfg = model.config
    hd, p = cfg.embed_dim // cfg.num_heads, cfg.patch_size
    weight, bias = model.patch_embed.proj.weight, model.patch_embed.proj.bias     # (D, 3, p, p), (D,)
    weight[:hd] = 0
    bias[:hd] = 0
    width = p // STRIPS
    for channel in range(3):
        for i in range(STRIPS):
            across = slice(i * width, (i + 1) * width)
            weight[_strip(channel, 0, i), channel, :, across] = 1.0 / (p * width)  # vertical strip i
            weight[_strip(channel, 1, i), channel, across, :] = 1.0 / (p * width)  # horizontal strip i
    weight[hd:] = 0  # only content comes from pixels; change, motion and time start empty
    bias[hd:] = 0
    model.pos_embed[..., :] = 0  # position is learned; at init it would only blur the strips


def _strip(channel: int, axis: int, i: int) -> int:
    return channel * 2 * STRIPS + axis * STRIPS + i


def _pool_into_cls(model) -> None:
    """Uniform spatial attention and zero residual branches after block 0 (block 1's pooling: :func:`_pool_moments`).

    A fixed, zero-mean cls token sets the final layer norm's scale, so the pooled motion
    reaches the head with its magnitude (still vs. moving) instead of normalised away.
    """
    cfg = model.config
    dim, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    for i, block in enumerate(model.blocks):
        block.attn.qkv.weight[: 2 * dim] = 0
        block.attn.qkv.bias[: 2 * dim] = 0
        block.attn.proj.weight.zero_()
        block.attn.proj.bias.zero_()
        if i > 0:
            for layer in (block.mlp.fc2, block.temporal_fc):
                layer.weight.zero_()
                layer.bias.zero_()
    model.cls_token.zero_()
    model.cls_token[..., :hd] = torch.tensor([1.0, -1.0]).repeat(hd // 2)


def _flow_mlp(model, gain: float, motion_gain: float) -> None:
    """Block 0's MLP: I_t·I_x and I_t·I_y per channel and strip boundary, and per-channel |I_t|.

    The MLP sees its input through a layer norm, which subtracts the token's mean from every
    width; the motion band is still empty there, so its mean input is exactly -mean/std and
    adding it back recovers I_t.
    """
    cfg = model.config
    dim, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    change, motion = hd, 2 * hd
    mlp = model.blocks[0].mlp
    fc1, fc2 = mlp.fc1.weight, mlp.fc2.weight
    for tensor in (fc1, mlp.fc1.bias, fc2, mlp.fc2.bias):
        tensor.zero_()
    undo_mean = torch.zeros(dim)
    undo_mean[motion:motion + hd] = -1.0 / hd
    unit, out = 0, motion
    for channel in range(3):
        for axis in range(2):
            for i in range(STRIPS - 1):
                here, next_ = _strip(channel, axis, i), _strip(channel, axis, i + 1)
                dt = undo_mean.clone()
                dt[change + here] += 0.5
                dt[change + next_] += 0.5                     # I_t at the boundary
                dx = torch.zeros(dim)
                dx[next_] += 1.0
                dx[here] -= 1.0                               # I_x (or I_y) at the boundary
                for combined, sign in ((dt + dx, 1.0), (dt - dx, -1.0)):  # |a+b| - |a-b|
                    for polarity in (1.0, -1.0):
                        fc1[unit] = gain * polarity * combined
                        fc2[out, unit] = sign * motion_gain
                        unit += 1
                out += 1
    for channel in range(3):  # change energy: sum of |I_t| over the channel's strips
        for axis in range(2):
            for i in range(STRIPS):
                dt = undo_mean.clone()
                dt[change + _strip(channel, axis, i)] += 1.0
                for polarity in (1.0, -1.0):
                    fc1[unit] = gain * polarity * dt
                    fc2[out, unit] = motion_gain / (2 * STRIPS)
                    unit += 1
        out += 1


def _positions(model, amplitude: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch coordinates in -1..1 written into the content band where no later step sees them but block 1's keys.

    Channel 0's vertical strips get +x and its horizontal strips +y; channel 1's get +x and -y.
    Every strip of a group moves together, so strip differences (I_x, I_y) and frame
    differences (I_t) are unchanged; and the vertical and horizontal strips of a channel
    both average to the patch mean, so (mean of one) - (mean of the other) holds the
    position alone: ``x - y`` from channel 0, ``x + y`` from channel 1.
    Returns the two content-band readouts (x, y) for keys.
    """
    cfg = model.config
    grid = cfg.img_size // cfg.patch_size
    steps = torch.linspace(-1.0, 1.0, grid)
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()                                         # (N,) row-major, like the patches
    for channel, (x_sign, y_sign) in ((0, (1.0, 1.0)), (1, (1.0, -1.0))):
        for i in range(STRIPS):
            model.pos_embed[0, 1:, _strip(channel, 0, i)] += amplitude * x_sign * xs
            model.pos_embed[0, 1:, _strip(channel, 1, i)] += amplitude * y_sign * ys
    dim = cfg.embed_dim
    diff = [torch.zeros(dim), torch.zeros(dim)]                                 # (vertical - horizontal) per channel
    for channel in range(2):
        for i in range(STRIPS):
            diff[channel][_strip(channel, 0, i)] += 1.0 / STRIPS
            diff[channel][_strip(channel, 1, i)] -= 1.0 / STRIPS
    read_x = (diff[0] + diff[1]) / (2 * amplitude)
    read_y = (diff[1] - diff[0]) / (2 * amplitude)
    return read_x, read_y


def _pool_moments(model, amplitude: float = 0.5, tilt: float = 0.5, moment_gain: float = 3.0) -> None:
    """Block 1's spatial attention pools the motion band into cls, and its first moments in x and y.

    Rotation and growth leave the mean flow near zero but not its moments about any point:
    sum(x·v_y - y·v_x) has the sign of the rotation, sum(x·v_x + y·v_y) that of growth.
    Heads 0/1 attend with weights tilted by exp(±tilt·x), heads 2/3 by exp(±tilt·y); half
    their sum is (about) the uniform mean, their difference (about) the moment. The four
    moments of (V_x, V_y) go to cls's change band, empty on cls.
    """
    cfg = model.config
    dim, hd = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    change, motion, time = hd, 2 * hd, dim - hd
    read_x, read_y = _positions(model, amplitude)
    attn = model.blocks[1].attn
    qkv, bias = attn.qkv.weight, attn.qkv.bias
    qkv.zero_()
    bias.zero_()
    undo_mean = torch.zeros(dim)
    undo_mean[time:] = -1.0 / hd      # the time band sums to zero before the layer norm
    products = STRIPS - 1
    flow = [torch.zeros(dim), torch.zeros(dim)]  # V_x, V_y: all channels' and boundaries' products of one axis
    for channel in range(3):
        for axis in range(2):
            for i in range(products):
                flow[axis][motion + (channel * 2 + axis) * products + i] = 1.0
    scale = math.sqrt(hd) * tilt
    for head, (read, sign) in enumerate(((read_x, 1.0), (read_x, -1.0), (read_y, 1.0), (read_y, -1.0))):
        bias[head * hd] = sign * scale                                   # constant query
        qkv[dim + head * hd] = read                                      # key: the patch's coordinate
        values = 2 * dim + head * hd
        qkv[values] = flow[0] + flow[0].sum() * undo_mean
        qkv[values + 1] = flow[1] + flow[1].sum() * undo_mean
        if head < 2:                                                     # the motion band itself, for the mean
            for j in range(hd - 2):
                qkv[values + 2 + j, motion + j] = 1.0
                qkv[values + 2 + j] += undo_mean
    proj = attn.proj.weight
    proj.zero_()
    attn.proj.bias.zero_()
    for j in range(hd - 2):
        proj[motion + j, 2 + j] = 0.5
        proj[motion + j, hd + 2 + j] = 0.5
    for k, (head_plus, component) in enumerate(((0, 0), (0, 1), (2, 0), (2, 1))):
        proj[change + k, head_plus * hd + component] = moment_gain
        proj[change + k, (head_plus + 1) * hd + component] = -moment_gain
