"""MM-Diffusion coupled audio-video U-Net (Ruan et al., "MM-Diffusion", CVPR 2023).

One U-Net with a video branch and a raw-waveform audio branch that share the timestep embedding and
exchange information through random-shift multimodal attention (RS-MMA).

Module and parameter names follow the released checkpoints (``researchmm/MM-Diffusion``,
``mm_diffusion/multimodal_unet.py``) so their state dicts load with a strict key check; the
computation is written anew:
  * video runs internally as ``(B, C, F, H, W)``; the factorised "2d+1d" convs apply the reference
    Conv2d / Conv1d weights as (1,k,k) / (k,1,1) Conv3d kernels, so no frame loop and no transposes;
  * attention goes through ``scaled_dot_product_attention`` (on CPU without autograd, long
    sequences through two oneDNN convs per head instead); RS-MMA reads each frame's audio window (and
    each audio segment's frame window) as an overlapping strided view of the keys, built per call, so
    any shape, device or dtype works on the same instance (the reference cached index tensors);
  * speed on CPU (``benchmarks/bench_mmdiffusion.py``): every 1x1 projection runs as a oneDNN
    convolution on channels-last memory, GroupNorm reads tokens through channels-last views, FiLM is
    folded into the GroupNorm affine, upsampling ResBlocks run their out layers before the
    (commuting) nearest upsampling, and without autograd SiLU / residual adds write into the fresh
    intermediate they consume (never into a caller's tensor);
  * the random shift R of each RS-MMA block comes from an injected ``torch.Generator`` or an explicit
    list, never from Python's global ``random``.
Public layout (reference): video ``(B, F, C, H, W)``, audio ``(B, C, L)``, timesteps ``(B,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

from .mmdiffusion_config import (
    MAX_DILATION_EXPONENT,
    VIDEO_RESAMPLE_FACTOR,
    MMDiffusionConfig,
)

GROUPS = 32


# ----------------------------------------------------------------------------------------------
# Small layers
# ----------------------------------------------------------------------------------------------
class GroupNorm32(nn.Module):
    """GroupNorm(32) computed in float32. The inner ``GroupNorm`` attribute keeps the released key names.

    For video ``(B, C, F, H, W)`` the statistics span all frames of a group, as in the reference.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm = nn.GroupNorm(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.GroupNorm
        return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)

    def tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalise (N, L, C) tokens with statistics per sequence (the reference's (N, C, L) layout).

        Seen as a channels-last (N, C, L, 1) image the tokens hit GroupNorm's channels-last kernel and
        come back (N, L, C) contiguous: ~5x cheaper than normalising the transposed view (two copies)."""
        n, length, c = tokens.shape
        image = tokens.contiguous().view(n, length, 1, c).permute(0, 3, 1, 2)
        return self(image).permute(0, 2, 3, 1).reshape(n, length, c)

    def modulated(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``norm(x) * scale + shift`` with per-sample (B, C) scale and shift (the FiLM of ResBlock).

        The FiLM is folded into the GroupNorm affine: one pass over x at batch 1, two otherwise
        (instead of three); equal to the unfolded form up to float rounding."""
        norm = self.GroupNorm
        weight = norm.weight.float() * scale.float()  # (B, C)
        bias = norm.bias.float() * scale.float() + shift.float()
        if x.shape[0] == 1:
            return F.group_norm(x.float(), norm.num_groups, weight[0], bias[0], norm.eps).to(x.dtype)
        normed = F.group_norm(x.float(), norm.num_groups, None, None, norm.eps)
        per_sample = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return torch.addcmul(bias.view(per_sample), normed, weight.view(per_sample)).to(x.dtype)


class FactorisedVideoConv(nn.Module):
    """Reference '2d+1d' conv: a k×k conv per frame, then a k conv over time. x: (B, C, F, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.video_conv_spatial = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same")
        self.video_conv_temporal = nn.Conv1d(out_channels, out_channels, kernel_size, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, temporal = self.video_conv_spatial, self.video_conv_temporal
        k_s, k_t = spatial.kernel_size[0], temporal.kernel_size[0]
        x = F.conv3d(x, spatial.weight.unsqueeze(2), spatial.bias, padding=(0, k_s // 2, k_s // 2))
        return F.conv3d(x, temporal.weight[..., None, None], temporal.bias, padding=(k_t // 2, 0, 0))


class VideoConv3d(nn.Module):
    """Reference '3d' conv (used with k=1 for projections, k=3 at the output). x: (B, C, F, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.video_conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.video_conv
        if conv.kernel_size == (1, 1, 1):
            # A 1x1x1 conv is a matmul over channels; on channels-last memory the tokens are a view.
            out = tokens_linear(x.permute(0, 2, 3, 4, 1), conv.weight.flatten(1), conv.bias)
            return out.permute(0, 4, 1, 2, 3)
        return conv(x)


class AudioConv(nn.Module):
    """1-D conv over the waveform features. x: (B, C, L)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        self.audio_conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding="same", dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio_conv(x)


def to_channels_last(video: torch.Tensor) -> torch.Tensor:
    """Video features live channels-last: convs run ~30 % faster and token views need no copy."""
    return video.contiguous(memory_format=torch.channels_last_3d)


def zero_init(module: nn.Module) -> nn.Module:
    """New residual paths start as identity (the reference's zero_module)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv1x1_as_linear(conv: nn.Conv1d, tokens: torch.Tensor) -> torch.Tensor:
    """Apply a k=1 Conv1d (reference qkv / proj layers) to tokens (..., C_in) -> (..., C_out)."""
    return tokens_linear(tokens, conv.weight.flatten(1), conv.bias)


def tokens_linear(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` over the last axis, computed as a 1x1 oneDNN conv on a channels-last view.

    (..., C_in) -> (..., C_out), contiguous. Same result as ``F.linear``, but on CPU 1.2-2.5x faster than
    the MKL sgemm behind it for these token counts on the benchmark machine (and the bias add is
    fused); other devices keep ``F.linear``."""
    if tokens.device.type != "cpu":
        return F.linear(tokens, weight, bias)
    # Row-major tokens (a copy only if they are not) make a channels-last image, so the output rows
    # come back contiguous too: SDPA's fused kernel needs q/k/v with unit stride on the last axis.
    rows = tokens.contiguous().view(-1, tokens.shape[-1])
    out = rows_of_image(F.conv2d(image_of_rows(rows), weight[:, :, None, None], bias))
    return out.view(tokens.shape[:-1] + (weight.shape[0],))


def image_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """(M, C) row-major -> the same memory as a channels-last (1, C, M, 1) image (a view)."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def rows_of_image(image: torch.Tensor) -> torch.Tensor:
    """(1, C, M, 1) image -> (M, C) rows; a view when the image is channels-last (oneDNN's output)."""
    return image.permute(0, 2, 3, 1).reshape(image.shape[2], image.shape[1])


# Query x key positions per (sequence, head) from which attention runs as two oneDNN convs on CPU
# rather than SDPA: measured on the benchmark machine, the convs win by 20-30 % at 1024x1024 and
# 1024x400 (the 2x-downsampled level) and lose by 10-60 % at 256x400 and below.
CONV_ATTENTION_MIN_SCORES = 200_000


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √D) v. q (N, H, L, D), k and v (N, H, S, D) -> (N, H, L, D)."""
    length, keys = q.shape[2], k.shape[2]
    if (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and not torch.is_grad_enabled()  # SDPA's fused backward keeps training memory flat
        and length * keys >= CONV_ATTENTION_MIN_SCORES
    ):
        return attention_by_convs(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_by_convs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact attention with both matmuls as 1x1 convs per (sequence, head); shapes as ``attention``.

    SDPA's CPU flash kernel multiplies through the BLAS sgemm; oneDNN's convolution runs the same
    products ~1.5x faster here, and one (L, S) score matrix per (sequence, head) stays small."""
    n, heads, length, dim = q.shape
    queries = q.contiguous()
    # Each (S, D) block of the scaled keys is the first conv's weight (scaled on the way: one pass).
    k = torch.mul(k, dim**-0.5, out=torch.empty(k.shape, dtype=k.dtype, device=k.device))
    v_t = v.transpose(2, 3).contiguous()  # each (D, S) block is the second conv's weight
    out = q.new_empty(n, length, heads, dim)  # the memory layout SDPA returns too
    for i in range(n):
        for h in range(heads):
            scores = rows_of_image(F.conv2d(image_of_rows(queries[i, h]), k[i, h][:, :, None, None]))
            probs = scores.softmax(dim=-1)
            out[i, :, h] = rows_of_image(F.conv2d(image_of_rows(probs), v_t[i, h][:, :, None, None]))
    return out.transpose(1, 2)


def can_overwrite() -> bool:
    """Without autograd, a fresh intermediate may be overwritten in place (saves a pass and an
    allocation); with autograd, a saved tensor might be that intermediate, so stay out of place."""
    return not torch.is_grad_enabled()


def silu_fresh(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a tensor this module just produced (never a caller's tensor)."""
    return F.silu(x, inplace=can_overwrite())


def add_to_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``; ``fresh`` must be a tensor this module just produced (never a caller's)."""
    return fresh.add_(other) if can_overwrite() else fresh + other


def norm_silu_conv(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a (GroupNorm32, SiLU, conv) stack with the SiLU in place on the norm's fresh output."""
    norm, _, conv = layers
    return conv(silu_fresh(norm(x)))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps. (B,) -> (B, dim)."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def video_resample(x: torch.Tensor, up: bool) -> torch.Tensor:
    """Only space is resampled (nearest up / 2x2 mean down); all frames are kept. x: (B, C, F, H, W).

    Works on views of channels-last memory, so the result is born channels-last: 4x faster up and
    ~20x faster down (``avg_pool2d``'s channels-last kernel) than einops on the NCDHW view."""
    k = VIDEO_RESAMPLE_FACTOR
    if up:
        out = repeat(rearrange(x, "b c f h w -> b f h w c"), "b f h w c -> b f (h p) (w q) c", p=k, q=k)
        return to_channels_last(rearrange(out, "b f h w c -> b c f h w"))
    frames = rearrange(x, "b c f h w -> (b f) c h w")  # a channels-last 4-D view
    return to_channels_last(rearrange(F.avg_pool2d(frames, k), "(b f) c h w -> b c f h w", b=x.shape[0]))


def audio_resample(x: torch.Tensor, up: bool, k: int) -> torch.Tensor:
    """Audio is resampled by k per level (4 in the reference; nearest up / mean down). x: (B, C, L)."""
    if up:
        return repeat(x, "b c l -> b c (l p)", p=k)
    return reduce(x, "b c (l p) -> b c l", "mean", p=k)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Self-attention within each sequence of tokens (N, L, C); the caller decides what a sequence is."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return add_to_fresh(self.update(tokens), tokens)

    def update(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual update alone: (N, L, C) -> (N, L, C), contiguous."""
        # GroupNorm statistics span the whole sequence, as the reference's (N, C, L) layout gives.
        qkv = conv1x1_as_linear(self.qkv, self.norm.tokens(tokens))
        # q, k, v stay strided views of qkv: the CPU flash kernel reads them in place.
        q, k, v = rearrange(qkv, "n l (three h d) -> three n h l d", three=3, h=self.num_heads)
        attended = rearrange(attention(q, k, v), "n h l d -> n l (h d)")
        return conv1x1_as_linear(self.proj_out, attended)


def rs_window_index(num_frames: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(F, S) segment indices: segment i attends segments (i + R ... i + R + S - 1) mod F."""
    frames = torch.arange(num_frames, device=device)[:, None]
    offsets = torch.arange(window, device=device)[None, :]
    return (frames + shift + offsets) % num_frames


class CrossAttentionBlock(nn.Module):
    """RS-MMA: each video frame attends a window of S audio segments and each audio segment a window
    of S frames, the window rotated by a shift R (random per call when ``window_shift``).

    The audio is cut into F equal segments, one per frame. Both directions read the pre-exchange
    features and share R, as in the reference.
    """

    def __init__(self, channels: int, num_heads: int, local_window: int, window_shift: bool, centered: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.local_window = local_window
        self.window_shift = window_shift
        # Used when not shifting at random: 0 (reference) or centring the window on the query's frame.
        self.fixed_shift = -((local_window - 1) // 2) if centered else 0
        self.v_norm = GroupNorm32(channels)
        self.a_norm = GroupNorm32(channels)
        self.v_qkv = nn.Conv1d(channels, channels * 3, 1)
        self.a_qkv = nn.Conv1d(channels, channels * 3, 1)
        self.video_proj_out = zero_init(VideoConv3d(channels, channels, 1))
        self.audio_proj_out = zero_init(AudioConv(channels, channels, 1))

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, shift: int, gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, C, F, H, W), audio (B, C, L) with L = F * segment; gate (B,) scales the exchange
        (0 switches it off for that sample: modality guidance runs the model that way)."""
        _, _, frames, height, width = video.shape
        # Tokens in frame order, (B, F*N, C): a view of channels-last video, one small copy for audio.
        video_qkv = conv1x1_as_linear(self.v_qkv, rearrange(self.v_norm(video), "b c f h w -> b (f h w) c"))
        audio_qkv = conv1x1_as_linear(self.a_qkv, rearrange(self.a_norm(audio), "b c l -> b l c"))
        window = dict(frames=frames, window=self.local_window, shift=shift, heads=self.num_heads)
        video_h = windowed_attention(video_qkv, audio_qkv, **window)
        audio_h = windowed_attention(audio_qkv, video_qkv, **window)
        video_h = self.video_proj_out(rearrange(video_h, "b (f y x) c -> b c f y x", f=frames, y=height, x=width))
        audio_h = self.audio_proj_out(rearrange(audio_h, "b l c -> b c l"))
        if gate is not None:
            video_h = video_h * gate.to(video_h.dtype).view(-1, 1, 1, 1, 1)
            audio_h = audio_h * gate.to(audio_h.dtype).view(-1, 1, 1)
        return add_to_fresh(video_h, video), add_to_fresh(audio_h, audio)


def windowed_attention(
    query_qkv: torch.Tensor, key_qkv: torch.Tensor, *, frames: int, window: int, shift: int, heads: int
) -> torch.Tensor:
    """Each query segment attends the S = ``window`` key segments (i + R ... i + R + S - 1) mod F.

    query_qkv (B, F*N, 3C) and key_qkv (B, F*M, 3C) hold [q | k | v] per token, segments in frame
    order. Returns (B, F*N, C). Laid out once in the order R, R+1, ... (mod F) for F + S - 1 segments,
    the keys of query segment i are the contiguous run of S*M tokens starting at segment i, so all
    windows are overlapping strided views: no S-fold gather (the reference indexes a copy per window).
    """
    c = query_qkv.shape[-1] // 3
    m = key_qkv.shape[1] // frames
    q = rearrange(query_qkv[..., :c], "b (f n) (h d) -> b f h n d", f=frames, h=heads)
    kv = key_qkv[..., c:]
    if window > 1 or shift % frames:
        order = (torch.arange(frames + window - 1, device=kv.device) + shift) % frames
        kv = rearrange(kv, "b (f m) c -> b f m c", f=frames).index_select(1, order).flatten(1, 2)
    batch, _, two_c = kv.shape
    runs = kv.as_strided(
        (batch, frames, window * m, two_c),
        (kv.stride(0), m * kv.stride(1), kv.stride(1), kv.stride(2)),
        kv.storage_offset(),
    )
    k, v = rearrange(runs, "b f l (two h d) -> two b f h l d", two=2, h=heads)
    # One 4-D call per sample keeps SDPA on its fused CPU kernel (5-D falls back to the slow math
    # path, and the overlapping windows cannot be merged with the batch axis into one 4-D view).
    outputs = [rearrange(attention(q[i], k[i], v[i]), "f h n d -> (f n) (h d)") for i in range(batch)]
    return outputs[0].unsqueeze(0) if batch == 1 else torch.stack(outputs)


# ----------------------------------------------------------------------------------------------
# Residual block
# ----------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Two-branch residual block sharing one FiLM scale/shift from the timestep embedding.

    Optional resampling (``up``/``down``) and per-branch self-attention (video: spatial then temporal).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        audio_dilation: int = 1,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
        video_attention: bool = False,
        audio_attention: bool = False,
        num_heads: int = 4,
        audio_resample_factor: int = 4,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.audio_resample_factor = audio_resample_factor
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = "up" if up else "down" if down else None
        self.video_in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), FactorisedVideoConv(channels, out_channels, 3))
        self.audio_in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), AudioConv(channels, out_channels, 3, dilation=audio_dilation)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.video_out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), zero_init(VideoConv3d(out_channels, out_channels, 1))
        )
        self.audio_out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), zero_init(AudioConv(out_channels, out_channels, 1))
        )
        if out_channels == channels:
            self.video_skip_connection, self.audio_skip_connection = nn.Identity(), nn.Identity()
        else:
            self.video_skip_connection = VideoConv3d(channels, out_channels, 1)
            self.audio_skip_connection = AudioConv(channels, out_channels, 1)
        if video_attention:
            self.spatial_attention_block = SelfAttention(out_channels, num_heads)
            self.temporal_attention_block = SelfAttention(out_channels, num_heads)
        if audio_attention:
            self.audio_attention_block = SelfAttention(out_channels, num_heads)

    def _modulate(self, h: torch.Tensor, out_layers: nn.Sequential, emb_out: torch.Tensor) -> torch.Tensor:
        """Norm → FiLM (scale, shift) or additive embedding → SiLU → dropout → conv. emb_out: (B, E) ."""
        norm, _, dropout, conv = out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm.modulated(h, 1 + scale, shift)
        else:
            h = norm(h + emb_out.reshape(emb_out.shape + (1,) * (h.dim() - 2)))
        return conv(dropout(silu_fresh(h)))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video_h = norm_silu_conv(self.video_in_layers, video)
        audio_h = norm_silu_conv(self.audio_in_layers, audio)
        # Nearest upsampling commutes with the out layers and the skip: GroupNorm statistics of a
        # block-replicated tensor are the original's and everything else acts per position. So they
        # run before upsampling (4x less work there, one resample instead of two) unless dropout
        # would draw per high-resolution element.
        late_up = self.resample == "up" and not (self.training and self.video_out_layers[2].p > 0)
        if self.resample and not late_up:
            video_h, video, audio_h, audio = self._resample(video_h, video, audio_h, audio)
        emb_out = self.emb_layers(emb).to(video.dtype)
        # The 1x1 conv output is fresh, so the skip is added into it.
        video = add_to_fresh(self._modulate(video_h, self.video_out_layers, emb_out), self.video_skip_connection(video))
        audio = add_to_fresh(self._modulate(audio_h, self.audio_out_layers, emb_out), self.audio_skip_connection(audio))
        if late_up:
            video, audio = video_resample(video, up=True), audio_resample(audio, True, self.audio_resample_factor)
        if hasattr(self, "spatial_attention_block"):
            video = self._video_self_attention(video)
        if hasattr(self, "audio_attention_block"):
            audio = self.audio_attention_block(audio.transpose(1, 2)).transpose(1, 2)
        return video, audio

    def _resample(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Resample (video_h, video, audio_h, audio) as this block says."""
        up, k = self.resample == "up", self.audio_resample_factor
        video_h, video, audio_h, audio = features
        video_h, video = video_resample(video_h, up), video_resample(video, up)
        return video_h, video, audio_resample(audio_h, up, k), audio_resample(audio, up, k)

    def _video_self_attention(self, video: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = video.shape
        # Channels-last video is (b f) (h w) c in memory: the spatial tokens are a view.
        per_frame = self.spatial_attention_block(rearrange(video, "b c f h w -> (b f) (h w) c"))
        per_pixel = rearrange(per_frame, "(b f) (h w) c -> (b h w) f c", b=b, h=h).contiguous()
        update = self.temporal_attention_block.update(per_pixel)
        # Adding the per-pixel update back onto the per-frame layout is the one reordering pass.
        per_frame = rearrange(per_frame, "(b f) (h w) c -> b c f h w", b=b, h=h)
        return add_to_fresh(per_frame, rearrange(update, "(b h w) f c -> b c f h w", b=b, h=h, w=w))


class InitialBlock(nn.Module):
    def __init__(self, video_in: int, audio_in: int, channels: int):
        super().__init__()
        self.video_conv = FactorisedVideoConv(video_in, channels, 3)
        self.audio_conv = AudioConv(audio_in, channels, 3)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video_conv(video), self.audio_conv(audio)


class TextAttention(nn.Module):
    """One branch's cross-attention to its prompt's token states (keys masked to real tokens)."""

    def __init__(self, channels: int, text_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(text_dim, 2 * channels)
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def forward(self, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C) raw features; text (B, T, D); mask (B, T) True = real token. Returns the update."""
        normed = self.norm.tokens(tokens)
        q = rearrange(tokens_linear(normed, self.to_q.weight, self.to_q.bias), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.to_kv(text.to(tokens.dtype)), "b t (two h d) -> two b h t d", two=2, h=self.num_heads)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return tokens_linear(rearrange(attended, "b h n d -> b n (h d)"), self.proj_out.weight, self.proj_out.bias)


class TextAttentionBlock(nn.Module):
    """Video tokens attend the video prompt, audio tokens the audio prompt."""

    def __init__(self, channels: int, text_dim: int, num_heads: int):
        super().__init__()
        self.video = TextAttention(channels, text_dim, num_heads)
        self.audio = TextAttention(channels, text_dim, num_heads)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, text: "TextContext") -> tuple[torch.Tensor, torch.Tensor]:
        b, _, f, h, w = video.shape
        video_tokens = rearrange(video, "b c f h w -> b (f h w) c")
        video_update = self.video(video_tokens, text.video_tokens, text.video_mask)
        video = video + to_channels_last(rearrange(video_update, "b (f h w) c -> b c f h w", f=f, h=h, w=w))
        audio = audio + self.audio(audio.transpose(1, 2), text.audio_tokens, text.audio_mask).transpose(1, 2)
        return video, audio


@dataclass(frozen=True)
class TextContext:
    """Prompt encodings for one batch: token states (B, T, D) with masks (B, T), pooled (B, D)."""

    video_tokens: torch.Tensor
    video_mask: torch.Tensor
    video_pooled: torch.Tensor
    audio_tokens: torch.Tensor
    audio_mask: torch.Tensor
    audio_pooled: torch.Tensor


@dataclass
class StageContext:
    """What every stage of one forward pass shares."""

    emb: torch.Tensor  # (B, E) timestep (+ prompt) embedding
    shifts: Iterator[int]  # RS-MMA shifts, consumed in call order
    text: TextContext | None = None
    coupling: torch.Tensor | None = None  # (B,) gate of the audio-video exchange; None = on


class CoupledSequential(nn.ModuleList):
    """A U-Net stage: runs its layers on (video, audio), feeding each the inputs it needs."""

    def forward(self, video, audio, ctx: StageContext):
        for layer in self:
            if isinstance(layer, ResBlock):
                video, audio = layer(video, audio, ctx.emb)
            elif isinstance(layer, CrossAttentionBlock):
                video, audio = layer(video, audio, next(ctx.shifts) if layer.window_shift else layer.fixed_shift, ctx.coupling)
            elif isinstance(layer, TextAttentionBlock):
                video, audio = layer(video, audio, ctx.text)
            else:
                video, audio = layer(video, audio)
        return video, audio


# ----------------------------------------------------------------------------------------------
# The U-Net
# ----------------------------------------------------------------------------------------------
class _DilationCounter:
    """Reference schedule: dilation 2^(n mod 10), n counts ResBlocks down the encoder and back up."""

    def __init__(self) -> None:
        self.n = 1

    def value(self) -> int:
        return 2 ** (self.n % MAX_DILATION_EXPONENT)


class MMDiffusionUNet(nn.Module):
    """Coupled two-branch U-Net predicting epsilon (or the configured target) for video and audio."""

    def __init__(self, config: MMDiffusionConfig):
        super().__init__()
        self.config = config
        c = config
        emb_dim = c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.text_conditioned:
            # Pooled video and audio prompts join the timestep embedding (starts at zero: a new path).
            self.text_embed = nn.Sequential(
                nn.Linear(2 * c.text_dim, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim))
            )
        self._dilation = _DilationCounter()
        skip_channels = self._build_encoder(emb_dim)
        self._build_middle(emb_dim)
        self._build_decoder(emb_dim, skip_channels)
        width = c.channel_widths[0]
        self.audio_out = nn.Sequential(
            GroupNorm32(width), nn.SiLU(), zero_init(AudioConv(width, c.audio_out_channels, 3))
        )
        self.video_out = nn.Sequential(
            GroupNorm32(width), nn.SiLU(), zero_init(VideoConv3d(width, c.video_out_channels, 3))
        )
        self.shifting_windows = c.shifting_windows_in_call_order()
        del self._dilation

    # -- construction helpers --------------------------------------------------------------------
    def _res_block(self, channels: int, emb_dim: int, out_channels: int, **kwargs) -> ResBlock:
        c = self.config
        return ResBlock(
            channels,
            emb_dim,
            out_channels,
            dropout=c.dropout,
            audio_dilation=self._dilation.value(),
            use_scale_shift_norm=c.use_scale_shift_norm,
            num_heads=c.num_heads,
            audio_resample_factor=c.audio_resample_factor,
            **kwargs,
        )

    def _attention_at(self, ds: int) -> dict[str, bool]:
        c = self.config
        return dict(video_attention=ds in c.video_attention_resolutions, audio_attention=ds in c.audio_attention_resolutions)

    def _cross_block(self, channels: int, window: int, shift: bool, centered: bool = False) -> CrossAttentionBlock:
        heads = self.config.num_heads if self.config.num_head_channels == -1 else channels // self.config.num_head_channels
        return CrossAttentionBlock(channels, heads, window, shift, centered)

    def _maybe_cross(self, layers: list, channels: int, ds: int) -> None:
        c = self.config
        if ds in c.cross_attention_resolutions:
            layers.append(self._cross_block(channels, c._window_at(ds), c.cross_attention_shift, c.cross_attention_centered))
        if c.text_conditioned and ds in c.text_attention_resolutions:
            layers.append(TextAttentionBlock(channels, c.text_dim, c.text_heads))

    def _build_encoder(self, emb_dim: int) -> list[int]:
        c = self.config
        ch = c.channel_widths[0]
        self.input_blocks = nn.ModuleList([CoupledSequential([InitialBlock(c.latent_video_shape[1], c.latent_audio_shape[0], ch)])])
        skip_channels, ds = [ch], 1
        for level, width in enumerate(c.channel_widths):
            for _ in range(c.num_res_blocks):
                layers = [self._res_block(ch, emb_dim, width, **self._attention_at(ds))]
                self._dilation.n += 1
                ch = width
                self._maybe_cross(layers, ch, ds)
                self.input_blocks.append(CoupledSequential(layers))
                skip_channels.append(ch)
            if level != c.num_levels - 1:
                self.input_blocks.append(CoupledSequential([self._res_block(ch, emb_dim, ch, down=True)]))
                self._dilation.n += 1
                skip_channels.append(ch)
                ds *= VIDEO_RESAMPLE_FACTOR
        self._bottom_ds = ds
        return skip_channels

    def _build_middle(self, emb_dim: int) -> None:
        c = self.config
        ch = c.channel_widths[-1]
        attn = dict(video_attention=True, audio_attention=True)
        layers: list[nn.Module] = [self._res_block(ch, emb_dim, ch, **attn)]
        if c.has_middle_cross_attention:
            layers.append(self._cross_block(ch, c.video_frames, shift=False))
        if c.text_conditioned:
            layers.append(TextAttentionBlock(ch, c.text_dim, c.text_heads))
        layers.append(self._res_block(ch, emb_dim, ch, **attn))
        self.middle_blocks = CoupledSequential(layers)

    def _build_decoder(self, emb_dim: int, skip_channels: list[int]) -> None:
        c = self.config
        ch, ds = c.channel_widths[-1], self._bottom_ds
        self._dilation.n -= 1
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(c.num_levels)):
            width = c.channel_widths[level]
            for block_id in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res_block(ch + skip_channels.pop(), emb_dim, width, **self._attention_at(ds))]
                self._dilation.n -= 1
                ch = width
                self._maybe_cross(layers, ch, ds)
                if level and block_id == c.num_res_blocks:
                    layers.append(self._res_block(ch, emb_dim, ch, up=True))
                    ds //= VIDEO_RESAMPLE_FACTOR
                self.output_blocks.append(CoupledSequential(layers))

    # -- forward ---------------------------------------------------------------------------------
    def resolve_shifts(self, shifts: Sequence[int] | None, generator: torch.Generator | None) -> list[int]:
        """One shift R in [0, F - S] per shifting RS-MMA block, in call order."""
        frames = self.config.video_frames
        windows = self.shifting_windows
        if shifts is not None:
            shifts = [int(s) for s in shifts]
            if len(shifts) != len(windows):
                raise ValueError(f"shifts needs {len(windows)} values (one per shifting RS-MMA block), got {len(shifts)}")
            for i, (s, w) in enumerate(zip(shifts, windows)):
                if not 0 <= s <= frames - w:
                    raise ValueError(f"shifts[{i}]={s} is outside [0, {frames - w}] for window {w}")
            return shifts
        if not windows:
            return []
        if generator is None:
            raise ValueError(
                "this model shifts its RS-MMA windows at random: pass generator=torch.Generator() "
                "or an explicit shifts=[...] list"
            )
        return [
            int(torch.randint(0, frames - w + 1, (), generator=generator, device=generator.device)) for w in windows
        ]

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        t: torch.Tensor,
        shifts: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        text: TextContext | None = None,
        coupling: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, F, C, H, W), audio (B, C, L), t (B,) -> (video_out, audio_out), same layouts.

        ``text`` is required by text-conditioned configs (and refused by others); ``coupling`` (B,)
        gates the audio-video exchange per sample (1 = on, 0 = off; None = on for all).
        """
        self._check_inputs(video, audio, text)
        batch = video.shape[0]
        dtype = self.time_embed[0].weight.dtype
        t = torch.as_tensor(t, device=video.device).reshape(-1).expand(batch)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        if text is not None:
            emb = emb + self.text_embed(torch.cat([text.video_pooled, text.audio_pooled], dim=-1).to(dtype))
        ctx = StageContext(emb=emb, shifts=iter(self.resolve_shifts(shifts, generator)), text=text, coupling=coupling)
        v = to_channels_last(rearrange(video, "b f c h w -> b c f h w").to(dtype))
        a = audio.to(dtype)
        skips = []
        for block in self.input_blocks:
            v, a = block(v, a, ctx)
            skips.append((v, a))
        v, a = self.middle_blocks(v, a, ctx)
        for block in self.output_blocks:
            v_skip, a_skip = skips.pop()
            v, a = block(torch.cat([v, v_skip], dim=1), torch.cat([a, a_skip], dim=1), ctx)
        v, a = norm_silu_conv(self.video_out, v), norm_silu_conv(self.audio_out, a)
        return rearrange(v, "b c f h w -> b f c h w"), a

    def _check_inputs(self, video: torch.Tensor, audio: torch.Tensor, text: TextContext | None) -> None:
        c = self.config
        if c.text_conditioned and text is None:
            raise ValueError("this model is text-conditioned: pass text=TextContext(...) (encode a prompt, or '' for none)")
        if not c.text_conditioned and text is not None:
            raise ValueError("this model is unconditional: it takes no text")
        frames, video_channels = c.latent_video_shape[:2]
        audio_channels = c.latent_audio_shape[0]
        if video.dim() != 5 or tuple(video.shape[1:3]) != (frames, video_channels):
            raise ValueError(f"video must be (B, {frames}, {video_channels}, H, W), got {tuple(video.shape)}")
        if audio.dim() != 3 or audio.shape[1] != audio_channels:
            raise ValueError(f"audio must be (B, {audio_channels}, L), got {tuple(audio.shape)}")
        if audio.shape[0] != video.shape[0]:
            raise ValueError(f"video batch {video.shape[0]} and audio batch {audio.shape[0]} differ")
        spatial_div = VIDEO_RESAMPLE_FACTOR ** (c.num_levels - 1)
        if video.shape[-1] % spatial_div or video.shape[-2] % spatial_div:
            raise ValueError(f"video height and width must be divisible by {spatial_div}, got {tuple(video.shape[-2:])}")
        if audio.shape[-1] % c.audio_divisor:
            raise ValueError(f"audio length must be divisible by {c.audio_divisor}, got {audio.shape[-1]}")
