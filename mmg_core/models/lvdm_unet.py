"""VideoCrafter2's 3D video U-Net (lvdm ``openaimodel3d.UNetModel``), written anew.

Parameter names equal the reference's (``AILab-CVC/VideoCrafter`` @ 11bcd76, also vendored by
``chaksseu/MMG_AV``), misspelling included (``temopral_conv``), so a VideoCrafter2 ``model.ckpt``
loads with a strict key check once its ``model.diffusion_model.`` prefix is stripped.

What the network computes (the reference's behaviour, checked by ``tests/test_mmg_parity.py``):
  * frames run as a batch of images, ``((b f), c, h, w)``; only temporal layers see ``(b, c, f, h, w)``;
  * the embedding is ``time_embed(sin(t)) + fps_embedding(sin(fps))``, one row per frame;
  * every ResBlock ends with a 4-conv temporal block (kernel 3 over frames, residual);
  * at attention levels a spatial transformer (per frame, cross-attends the text) is followed by a
    temporal transformer (per pixel, self-attention only over frames);
  * an extra temporal transformer (``init_attn``, 8 heads, 1x1-conv projections) follows ``conv_in``.
Attention goes through ``scaled_dot_product_attention`` (the reference's einsum/softmax path gives the
same numbers up to float rounding).

``LvdmUNet.start`` returns an ``LvdmRun`` that runs the network stage by stage (down level, resampler,
middle, up level, output head), so a coupled model can exchange features between stages.
Public layout: video ``(b, c, f, h, w)``, timesteps ``(b,)``, text context ``(b, L, context_dim)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

GROUPS = 32
INIT_ATTN_HEADS = 8  # lvdm hard-codes 8 heads for `init_attn`, whatever the width


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
def dataclass_from_dict(cls: type, data: dict[str, Any]):
    """Build a config dataclass from JSON data: lists become tuples, unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    tuple_fields = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    return cls(**{k: tuple(v) if k in tuple_fields else v for k, v in data.items()})


@dataclass(frozen=True)
class LvdmUNetConfig:
    """Constructor arguments of the lvdm U-Net (reference names). Defaults = VideoCrafter2 (512x320)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = -1  # used only when num_head_channels == -1
    transformer_depth: int = 1
    temporal_transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True
    temporal_conv: bool = True
    tempspatial_aware: bool = False
    temporal_attention: bool = True
    addition_attention: bool = True
    fps_cond: bool = True
    use_scale_shift_norm: bool = False
    conv_resample: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def level_widths(self) -> list[int]:
        return [mult * self.model_channels for mult in self.channel_mult]

    @property
    def spatial_divisor(self) -> int:
        """Frame height and width must be multiples of this (one halving per resampled level)."""
        return 2 ** (self.num_levels - 1)

    def heads(self, width: int) -> tuple[int, int]:
        """(heads, head dim) of the transformers at a level of this width (the reference's rule)."""
        if self.num_head_channels != -1:
            return width // self.num_head_channels, self.num_head_channels
        return self.num_heads, width // self.num_heads

    def validate(self) -> None:
        if self.num_head_channels == -1 and self.num_heads == -1:
            raise ValueError("set num_head_channels (VideoCrafter2: 64) or num_heads")
        if self.addition_attention and self.num_head_channels <= 0:
            raise ValueError("addition_attention needs num_head_channels > 0 (init_attn uses 8 heads of that size)")
        for width in [self.model_channels, *self.level_widths]:
            if width % GROUPS:
                raise ValueError(f"channel width {width} must be a multiple of {GROUPS} (GroupNorm groups)")
            heads, dim = self.heads(width)
            if heads * dim != width:
                raise ValueError(f"width {width} does not split into heads of {dim} channels")
        if self.num_res_blocks < 1 or not self.channel_mult:
            raise ValueError("num_res_blocks must be >= 1 and channel_mult non-empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LvdmUNetConfig":
        return dataclass_from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "LvdmUNetConfig":
        return cls.from_dict(json.loads(text))


@dataclass
class VideoConditioning:
    """What every layer of one forward pass may read. Rows are frames: ``(b f)``."""

    emb: torch.Tensor  # ((b f), time_embed_dim) timestep (+ fps) embedding, repeated per frame
    context: torch.Tensor  # ((b f), L, context_dim) text tokens, repeated per frame
    batch: int  # b: clips in the batch


# ----------------------------------------------------------------------------------------------
# Small layers
# ----------------------------------------------------------------------------------------------
def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """lvdm's timestep embedding: ``[cos(t·ω) | sin(t·ω)]``, ω_i = max_period^(-i/half). t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def embedding_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-SiLU-Linear (keys ``0`` and ``2``), used for the timestep and the fps embeddings."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class FloatGroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input dtype (lvdm's ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def project(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Apply a Linear, or a 1x1 Conv1d/Conv2d as the Linear it equals, to tokens (..., C_in) -> (..., C_out).

    The reference projects with 1x1 convs on (N, C, L) before moving channels last; doing it on tokens
    keeps one layout and gives the same numbers."""
    if isinstance(layer, nn.Linear):
        return layer(tokens)
    return F.linear(tokens, layer.weight.flatten(1), layer.bias)


def zero_init(module: nn.Module) -> nn.Module:
    """New residual paths start as identity (the reference's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Attention(nn.Module):
    """Multi-head attention with lvdm's names: bias-free ``to_q/to_k/to_v``, ``to_out.0`` with bias."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, query_dim); context (N, S, context_dim), None = self-attention -> (N, L, query_dim)."""
        context = x if context is None else context
        q, k, v = (
            rearrange(proj(src), "n l (h d) -> n h l d", h=self.heads)
            for proj, src in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v, as the reference
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))


class GEGLU(nn.Module):
    """``a · gelu(b)`` where ``[a | b] = proj(x)``. (..., dim_in) -> (..., dim_out)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, inner width 4x (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: self-attention, attention to ``context`` (itself if None), GEGLU feed-forward.

    lvdm's ``BasicTransformerBlock``; the coupled model's cross-modal transformers reuse it."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, context_dim or dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, dim), context (N, S, context_dim) or None -> (N, L, dim)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


# ----------------------------------------------------------------------------------------------
# Layers of the U-Net blocks. Each takes (h, cond) with h ((b f), c, h, w).
# ----------------------------------------------------------------------------------------------
class ConvIn(nn.Conv2d):
    """``input_blocks.0.0``: the per-frame input convolution."""

    def forward(self, x: torch.Tensor, cond: VideoConditioning | None = None) -> torch.Tensor:
        return super().forward(x)


class SpatialTransformer(nn.Module):
    """Per-frame transformer: tokens are the pixels of one frame; attn2 reads the text context."""

    def __init__(self, width: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(GROUPS, width, eps=1e-6)
        self.proj_in = nn.Linear(width, inner) if use_linear else nn.Conv2d(width, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Linear(inner, width) if use_linear else nn.Conv2d(inner, width, 1))

    def forward(self, x: torch.Tensor, cond: VideoConditioning) -> torch.Tensor:
        height = x.shape[2]
        tokens = project(self.proj_in, rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, cond.context)
        out = rearrange(project(self.proj_out, tokens), "n (h w) c -> n c h w", h=height)
        return x + out


class TemporalTransformer(nn.Module):
    """Per-pixel transformer over frames, self-attention only (VideoCrafter2's ``temporal_selfatt_only``).

    GroupNorm statistics span all frames of a clip, as the reference normalises (b, c, f, h, w)."""

    def __init__(self, width: int, heads: int, dim_head: int, depth: int, use_linear: bool, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(GROUPS, width, eps=1e-6)
        self.proj_in = nn.Linear(width, inner) if use_linear else nn.Conv1d(width, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head, None, dropout) for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Linear(inner, width) if use_linear else nn.Conv1d(inner, width, 1))

    def forward(self, x: torch.Tensor, cond: VideoConditioning) -> torch.Tensor:
        height, width = x.shape[2:]
        video = rearrange(x, "(b f) c h w -> b c f h w", b=cond.batch)
        tokens = rearrange(self.norm(video), "b c f h w -> (b h w) f c")
        tokens = project(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)  # no context: attn2 is a second self-attention, as in the reference
        tokens = project(self.proj_out, tokens)
        return x + rearrange(tokens, "(b h w) f c -> (b f) c h w", b=cond.batch, h=height, w=width)


class TemporalConvBlock(nn.Module):
    """Four GroupNorm-SiLU-Conv3d layers over frames, residual (ModelScope's block, kept by lvdm).

    Kernels (3,1,1); (3,3,3) for the first two when ``spatial_aware``. x (b, c, f, h, w) -> same."""

    # The reference fixes this dropout at 0.1 whatever the U-Net's dropout (inactive in eval mode).
    DROPOUT = 0.1

    def __init__(self, width: int, spatial_aware: bool = False):
        super().__init__()
        wide = ((3, 3, 3), (1, 1, 1)) if spatial_aware else ((3, 1, 1), (1, 0, 0))
        narrow = ((3, 1, 1), (1, 0, 0))

        def layer(kernel_padding, dropout: bool) -> nn.Sequential:
            kernel, padding = kernel_padding
            conv = nn.Conv3d(width, width, kernel, padding=padding)
            head = [nn.GroupNorm(GROUPS, width), nn.SiLU()] + ([nn.Dropout(self.DROPOUT)] if dropout else [])
            return nn.Sequential(*head, conv)

        self.conv1 = layer(wide, dropout=False)
        self.conv2 = layer(wide, dropout=True)
        self.conv3 = layer(narrow, dropout=True)
        self.conv4 = layer(narrow, dropout=True)
        zero_init(self.conv4[-1])  # the block starts as identity (reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """Two 3x3 convs with the embedding added in between, a skip path, then the temporal conv block."""

    def __init__(self, width_in: int, width_out: int, config: LvdmUNetConfig):
        super().__init__()
        self.use_scale_shift_norm = config.use_scale_shift_norm
        self.in_layers = nn.Sequential(
            FloatGroupNorm(GROUPS, width_in), nn.SiLU(), nn.Conv2d(width_in, width_out, 3, padding=1)
        )
        emb_out = 2 * width_out if config.use_scale_shift_norm else width_out
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(config.time_embed_dim, emb_out))
        self.out_layers = nn.Sequential(
            FloatGroupNorm(GROUPS, width_out), nn.SiLU(), nn.Dropout(config.dropout),
            zero_init(nn.Conv2d(width_out, width_out, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if width_in == width_out else nn.Conv2d(width_in, width_out, 1)
        self.temopral_conv = (  # sic: the reference's key name
            TemporalConvBlock(width_out, config.tempspatial_aware) if config.temporal_conv else None
        )

    def forward(self, x: torch.Tensor, cond: VideoConditioning) -> torch.Tensor:
        h = self.in_layers(x)
        emb = self.emb_layers(cond.emb).to(h.dtype)[..., None, None]  # ((b f), C, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb)
        h = self.skip_connection(x) + h
        if self.temopral_conv is None:
            return h
        video = self.temopral_conv(rearrange(h, "(b f) c h w -> b c f h w", b=cond.batch))
        return rearrange(video, "b c f h w -> (b f) c h w")


class Downsample(nn.Module):
    """Halve height and width: stride-2 3x3 conv (``op``), or 2x2 average pooling without conv_resample."""

    def __init__(self, width: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(width, width, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor, cond: VideoConditioning | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double height and width (nearest), then a 3x3 conv when conv_resample."""

    def __init__(self, width: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor, cond: VideoConditioning | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class LayerStack(nn.ModuleList):
    """One ``input_blocks`` / ``output_blocks`` entry or the ``middle_block`` (lvdm's TimestepEmbedSequential)."""

    def forward(self, h: torch.Tensor, cond: VideoConditioning, upsample: bool = True) -> torch.Tensor:
        """h ((b f), c, h, w) -> ((b f), c', h', w'); ``upsample=False`` stops before a trailing Upsample."""
        for layer in self:
            if isinstance(layer, Upsample) and not upsample:
                break
            h = layer(h, cond)
        return h


# ----------------------------------------------------------------------------------------------
# The U-Net
# ----------------------------------------------------------------------------------------------
def attention_layers(width: int, config: LvdmUNetConfig) -> list[nn.Module]:
    """Spatial (+ temporal) transformer of an attention level."""
    heads, dim_head = config.heads(width)
    layers: list[nn.Module] = [
        SpatialTransformer(width, heads, dim_head, config.transformer_depth, config.context_dim,
                           config.use_linear, config.dropout)
    ]
    if config.temporal_attention:
        layers.append(TemporalTransformer(width, heads, dim_head, config.temporal_transformer_depth,
                                          config.use_linear, config.dropout))
    return layers


class LvdmUNet(nn.Module):
    """The lvdm 3D U-Net. ``forward(x (b,c,f,h,w), timesteps (b,), context (b,L,D), fps) -> (b,c,f,h,w)``."""

    def __init__(self, config: LvdmUNetConfig):
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = embedding_mlp(mc, emb_dim)
        if config.fps_cond:
            self.fps_embedding = embedding_mlp(mc, emb_dim)
        self.input_blocks = nn.ModuleList([LayerStack([ConvIn(config.in_channels, mc, 3, padding=1)])])
        if config.addition_attention:
            # lvdm builds it with 1x1-conv projections (use_linear left at False) and 8 heads.
            self.init_attn = LayerStack([TemporalTransformer(
                mc, INIT_ATTN_HEADS, config.num_head_channels, config.transformer_depth, use_linear=False,
                dropout=config.dropout)])
        skip_widths = self._build_input_blocks()
        self._build_middle_block()
        self._build_output_blocks(skip_widths)
        self.out = nn.Sequential(
            FloatGroupNorm(GROUPS, mc), nn.SiLU(), zero_init(nn.Conv2d(mc, config.out_channels, 3, padding=1))
        )

    def _build_input_blocks(self) -> list[int]:
        """Append the encoder blocks; returns the width of every skip connection, in push order."""
        config = self.config
        width, ds, skip_widths = config.model_channels, 1, [config.model_channels]
        for level, level_width in enumerate(config.level_widths):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(width, level_width, config)]
                width = level_width
                if ds in config.attention_resolutions:
                    layers += attention_layers(width, config)
                self.input_blocks.append(LayerStack(layers))
                skip_widths.append(width)
            if level != config.num_levels - 1:
                self.input_blocks.append(LayerStack([Downsample(width, config.conv_resample)]))
                skip_widths.append(width)
                ds *= 2
        return skip_widths

    def _build_middle_block(self) -> None:
        width = self.config.level_widths[-1]
        self.middle_block = LayerStack(
            [ResBlock(width, width, self.config), *attention_layers(width, self.config),
             ResBlock(width, width, self.config)]
        )

    def _build_output_blocks(self, skip_widths: list[int]) -> None:
        config = self.config
        width, ds = config.level_widths[-1], config.spatial_divisor
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(config.num_levels)):
            level_width = config.level_widths[level]
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(width + skip_widths.pop(), level_width, config)]
                width = level_width
                if ds in config.attention_resolutions:
                    layers += attention_layers(width, config)
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(width, config.conv_resample))
                    ds //= 2
                self.output_blocks.append(LayerStack(layers))

    # ----- stage-by-stage use -----------------------------------------------------------------
    def conditioning(self, timesteps: torch.Tensor, context: torch.Tensor, fps, frames: int) -> VideoConditioning:
        """Embeddings for one pass. timesteps (b,), context (b, L, D), fps (b,) or a number."""
        mc = self.config.model_channels
        emb = self.time_embed(sinusoidal_embedding(timesteps, mc).to(self.time_embed[0].weight.dtype))
        if self.config.fps_cond:
            if fps is None:
                raise ValueError("this U-Net is fps-conditioned (fps_cond): pass fps (VideoCrafter2 / MMG: 12.5)")
            fps = torch.as_tensor(fps, device=timesteps.device).expand(timesteps.shape[0])
            emb = emb + self.fps_embedding(sinusoidal_embedding(fps, mc).to(emb.dtype))
        return VideoConditioning(
            emb=emb.repeat_interleave(frames, dim=0), context=context.repeat_interleave(frames, dim=0),
            batch=timesteps.shape[0],
        )

    def start(self, x: torch.Tensor, timesteps, context: torch.Tensor | None, fps=None) -> "LvdmRun":
        """Begin a pass on x (b, c, f, h, w); timesteps a number or (b,) (int or float)."""
        self._check_inputs(x, context)
        b, _, frames = x.shape[:3]
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)
        cond = self.conditioning(timesteps, context, fps, frames)
        weight = self.input_blocks[0][0].weight
        return LvdmRun(self, rearrange(x, "b c f h w -> (b f) c h w").to(weight.dtype), cond)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"video latents must be (b, {self.config.in_channels}, f, h, w), got {tuple(x.shape)}")
        if x.shape[3] % self.config.spatial_divisor or x.shape[4] % self.config.spatial_divisor:
            raise ValueError(
                f"latent height/width {tuple(x.shape[3:])} must be multiples of {self.config.spatial_divisor}"
            )
        if context is None or context.dim() != 3 or context.shape[-1] != self.config.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"video context must be (b, L, {self.config.context_dim}) text states, got {got}; for the "
                "unconditional branch pass the empty prompt's embedding (VideoCrafter2 uncond_type empty_seq)"
            )

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor, fps=None) -> torch.Tensor:
        """x (b, c, f, h, w) noisy latents -> epsilon (b, out_channels, f, h, w)."""
        run = self.start(x, timesteps, context, fps)
        last = self.config.num_levels - 1
        for level in range(last + 1):
            run.down(level)
            if level < last:
                run.downsample(level)
        run.middle()
        for level in range(last + 1):
            run.up(level)
            if level < last:
                run.upsample(level)
        return run.output()


class LvdmRun:
    """One pass of an :class:`LvdmUNet`, stage by stage. ``h`` is the current ((b f), c, h, w) feature map.

    Down level ``l`` is the encoder's ResBlocks at that resolution (level 0 starts with conv_in and
    init_attn); up level ``u`` counts from the deepest level (u=0) and stops before its upsampler,
    so ``h`` between stages is where a coupled model reads and writes features."""

    def __init__(self, unet: LvdmUNet, h: torch.Tensor, cond: VideoConditioning):
        self.unet, self.h, self.cond = unet, h, cond
        self.skips: list[torch.Tensor] = []
        self._blocks_per_level = unet.config.num_res_blocks + 1

    def down(self, level: int) -> None:
        unet = self.unet
        if level == 0:
            self.h = unet.input_blocks[0](self.h, self.cond)
            if unet.config.addition_attention:
                self.h = unet.init_attn(self.h, self.cond)
            self.skips.append(self.h)
        first = 1 + level * self._blocks_per_level
        for block in unet.input_blocks[first:first + unet.config.num_res_blocks]:
            self.h = block(self.h, self.cond)
            self.skips.append(self.h)

    def downsample(self, level: int) -> None:
        index = (level + 1) * self._blocks_per_level
        self.h = self.unet.input_blocks[index](self.h, self.cond)
        self.skips.append(self.h)

    def middle(self) -> None:
        self.h = self.unet.middle_block(self.h, self.cond)

    def up(self, level: int) -> None:
        first = level * self._blocks_per_level
        for block in self.unet.output_blocks[first:first + self._blocks_per_level]:
            self.h = block(torch.cat([self.h, self.skips.pop()], dim=1), self.cond, upsample=False)

    def upsample(self, level: int) -> None:
        upsampler = self.unet.output_blocks[(level + 1) * self._blocks_per_level - 1][-1]
        assert isinstance(upsampler, Upsample), f"up level {level} is the last one: it has no upsampler"
        self.h = upsampler(self.h, self.cond)

    def output(self) -> torch.Tensor:
        """-> (b, out_channels, f, h, w)."""
        return rearrange(self.unet.out(self.h), "(b f) c h w -> b c f h w", b=self.cond.batch)
