"""MMG: a text-to-video and a text-to-audio U-Net coupled by cross-modal transformers (CMTs).

The video U-Net is VideoCrafter2's lvdm 3D U-Net (:mod:`mmg_core.models.lvdm_unet`), the audio U-Net is
Auffusion's diffusers ``UNet2DConditionModel`` (used as is, driven block by block). Both run side by
side; at the end of every resampled level (down levels 0..L-2 before their downsampler, up levels
0..L-2 before their upsampler: six points for four levels) each modality's features pass through its
own CMT that attends to the other modality's features. Both CMTs of a point read the features from
before the exchange.

Time alignment: audio latents are (b, c, m, t) with m mel bins and t time columns; the video has f
frames per clip. At a level with t audio columns, column j is grouped with the k = f/t frames it
covers, so a group's video tokens are the k·h·w pixels of those frames and its audio tokens the m
mel bins of that column; attention never crosses groups.

State-dict keys equal the reference's ``CrossModalCoupledUNet`` (``chaksseu/MMG_AV`` @ 6a67cf3,
``mmg_training/train_MMG_Model_0729_MMG_RCD.py``): ``video_unet.*`` (lvdm), ``audio_unet.*``
(diffusers), ``video_cmt.{i}.*`` / ``audio_cmt.{i}.*``, i = 0..5 in forward order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange
from torch import nn

from .lvdm_unet import GROUPS, LvdmUNet, LvdmUNetConfig, TransformerBlock, dataclass_from_dict

MMG_FPS = 12.5  # MMG's clips: 40 frames in 3.2 s (the reference signature's default of 8 is never used)
CROSS_ATTN_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_ATTN_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"

# probe(point, direction, x, context, out): point 0..5, direction "video" or "audio"; x/out (n, c, l) own
# tokens before/after the CMT, context (n, c, s) the other modality's tokens.
CMTProbe = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], None]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioUNetConfig:
    """The diffusers ``UNet2DConditionModel`` arguments MMG uses (diffusers names). Defaults = Auffusion.

    Auffusion keeps Stable Diffusion 1.5's layout; every other diffusers argument stays at its default."""

    sample_size: int | None = 64  # only informs pipelines; the network takes any multiple of 8
    in_channels: int = 4
    out_channels: int = 4
    layers_per_block: int = 2
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP)
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    use_linear_projection: bool = False

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError("down_block_types and up_block_types need one entry per block_out_channels entry")
        if set(self.down_block_types) - {CROSS_ATTN_DOWN, PLAIN_DOWN}:
            raise ValueError(
                f"down_block_types must be {CROSS_ATTN_DOWN} or {PLAIN_DOWN}, got {self.down_block_types}"
            )
        if set(self.up_block_types) - {CROSS_ATTN_UP, PLAIN_UP}:
            raise ValueError(f"up_block_types must be {CROSS_ATTN_UP} or {PLAIN_UP}, got {self.up_block_types}")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Arguments for ``UNet2DConditionModel(**kwargs)`` (lists, as diffusers' own config.json)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_dict().items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CrossModalConfig:
    """Widths of the CMT pairs in forward order (down levels, then up levels) and their head size."""

    layer_channels: tuple[int, ...] = (320, 640, 1280, 1280, 1280, 640)
    d_head: int = 64

    def __post_init__(self) -> None:
        for width in self.layer_channels:
            if width % GROUPS or width % self.d_head:
                raise ValueError(f"CMT width {width} must be a multiple of {GROUPS} and of d_head={self.d_head}")


@dataclass(frozen=True)
class MMGConfig:
    """The coupled model: both U-Nets and the CMTs. Serialises to JSON (``to_json`` / ``from_json``)."""

    video: LvdmUNetConfig = LvdmUNetConfig()
    audio: AudioUNetConfig = AudioUNetConfig()
    cross_modal: CrossModalConfig = CrossModalConfig()

    def __post_init__(self) -> None:
        if self.video.num_levels != self.audio.num_levels:
            raise ValueError(
                f"the video U-Net has {self.video.num_levels} levels and the audio U-Net "
                f"{self.audio.num_levels}: MMG couples them level by level, so they must match"
            )
        if tuple(self.cross_modal.layer_channels) != tuple(self.coupling_widths):
            raise ValueError(
                f"cross_modal layer_channels {list(self.cross_modal.layer_channels)} must equal the feature "
                f"widths at the coupling points {self.coupling_widths} (equal in both U-Nets)"
            )

    @property
    def num_levels(self) -> int:
        return self.video.num_levels

    @property
    def coupling_widths(self) -> list[int]:
        """Width at each coupling point; raises if the two U-Nets differ there."""
        last = self.num_levels - 1
        video_up, audio_up = self.video.level_widths[::-1], self.audio.block_out_channels[::-1]
        video_down, audio_down = self.video.level_widths, self.audio.block_out_channels
        points = [(f"down level {d}", video_down[d], audio_down[d]) for d in range(last)]
        points += [(f"up level {u}", video_up[u], audio_up[u]) for u in range(last)]
        for name, video_width, audio_width in points:
            if video_width != audio_width:
                raise ValueError(f"at {name} the video width is {video_width} but the audio width {audio_width}")
        return [video_width for _, video_width, _ in points]

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video.to_dict(), "audio": self.audio.to_dict(), "cross_modal": asdict(self.cross_modal)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MMGConfig":
        unknown = sorted(set(data) - {"video", "audio", "cross_modal"})
        if unknown:
            raise ValueError(f"unknown MMG config section(s) {unknown}; expected video, audio, cross_modal")
        return cls(
            video=LvdmUNetConfig.from_dict(data.get("video", {})),
            audio=dataclass_from_dict(AudioUNetConfig, data.get("audio", {})),
            cross_modal=dataclass_from_dict(CrossModalConfig, data.get("cross_modal", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> "MMGConfig":
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------
# Cross-modal transformer and time groups
# ----------------------------------------------------------------------------------------------
class CrossModalTransformer(nn.Module):
    """GroupNorm own tokens and (separately) the other modality's, Linear in, one transformer block
    (self-attention, attention to the other modality, GEGLU), Linear out, plus the input.

    Only ``proj_out`` is zero-initialised, so a fresh CMT is the identity and still trains. (The public
    MMG training code zeroes every CMT parameter, norm gains included, which leaves only
    ``proj_out.bias`` with a gradient: see REFERENCE.md section 3.)"""

    def __init__(self, width: int, d_head: int = 64, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        heads = width // d_head
        self.norm = nn.GroupNorm(GROUPS, width, eps=1e-6)
        self.proj_in = nn.Linear(width, heads * d_head)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(heads * d_head, heads, d_head, context_dim=width, dropout=dropout) for _ in range(depth)
        )
        self.proj_out = nn.Linear(heads * d_head, width)
        self.context_norm = nn.GroupNorm(GROUPS, width, eps=1e-6)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (n, c, l) own tokens, context (n, c, s) the other modality's tokens -> (n, c, l)."""
        tokens = self.proj_in(rearrange(self.norm(x), "n c l -> n l c"))
        other = rearrange(self.context_norm(context), "n c s -> n s c")
        for block in self.transformer_blocks:
            tokens = block(tokens, other)
        return x + rearrange(self.proj_out(tokens), "n l c -> n c l")


def time_groups(video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens per time group: video ((b f), c, h, w), audio (b, c, m, t) ->
    video tokens ((b t), c, (k h w)) and audio tokens ((b t), c, m), k = f / t frames per audio column."""
    b, _, _, t = audio.shape
    if video.shape[0] % (b * t):
        raise ValueError(
            f"{video.shape[0] // b} video frames per clip cannot be split evenly over {t} audio latent columns"
        )
    k = video.shape[0] // (b * t)
    return rearrange(video, "(g k) c h w -> g c (k h w)", k=k), rearrange(audio, "b c m t -> (b t) c m")


def untime_groups(video_tokens: torch.Tensor, audio_tokens: torch.Tensor, height: int, width: int, columns: int):
    """Inverse of :func:`time_groups` -> video ((b f), c, h, w), audio (b, c, m, t)."""
    video = rearrange(video_tokens, "g c (k h w) -> (g k) c h w", h=height, w=width)
    return video, rearrange(audio_tokens, "(b t) c m -> b c m t", t=columns)


# ----------------------------------------------------------------------------------------------
# The audio U-Net, stage by stage
# ----------------------------------------------------------------------------------------------
def batch_timesteps(timestep, batch: int, device: torch.device) -> torch.Tensor:
    """A number, a 0-d or (b,) tensor -> (b,) (the reference's handling: ints stay int64)."""
    if not torch.is_tensor(timestep):
        dtype = torch.int64 if isinstance(timestep, int) else torch.float32
        timestep = torch.tensor([timestep], dtype=dtype)
    return timestep.to(device).reshape(-1).expand(batch)


class DiffusersUNetRun:
    """One pass of a diffusers ``UNet2DConditionModel`` with the stages of :class:`LvdmRun`.

    ``h`` is the current (b, c, m, t) feature map. Computes what the model's own ``forward`` computes
    for MMG's configuration (no class / added embeddings, no attention masks)."""

    def __init__(self, unet: UNet2DConditionModel, latents: torch.Tensor, timestep, encoder_hidden_states):
        t = batch_timesteps(timestep, latents.shape[0], latents.device)
        emb = unet.time_embedding(unet.time_proj(t).to(latents.dtype))
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        if unet.encoder_hid_proj is not None:
            encoder_hidden_states = unet.encoder_hid_proj(encoder_hidden_states)
        self.unet, self.emb, self.text = unet, emb, encoder_hidden_states
        self.h = unet.conv_in(latents)
        self.skips: list[torch.Tensor] = [self.h]

    def _resnet_attention_pairs(self, block):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        return zip(block.resnets, attentions)

    def _attend(self, attention, h: torch.Tensor) -> torch.Tensor:
        return h if attention is None else attention(h, encoder_hidden_states=self.text, return_dict=False)[0]

    def down(self, level: int) -> None:
        for resnet, attention in self._resnet_attention_pairs(self.unet.down_blocks[level]):
            self.h = self._attend(attention, resnet(self.h, self.emb))
            self.skips.append(self.h)

    def downsample(self, level: int) -> None:
        for downsampler in self.unet.down_blocks[level].downsamplers:
            self.h = downsampler(self.h)
        self.skips.append(self.h)

    def middle(self) -> None:
        mid = self.unet.mid_block
        if getattr(mid, "has_cross_attention", False):
            self.h = mid(self.h, self.emb, encoder_hidden_states=self.text)
        else:
            self.h = mid(self.h, self.emb)

    def up(self, level: int) -> None:
        for resnet, attention in self._resnet_attention_pairs(self.unet.up_blocks[level]):
            self.h = self._attend(attention, resnet(torch.cat([self.h, self.skips.pop()], dim=1), self.emb))

    def upsample(self, level: int) -> None:
        for upsampler in self.unet.up_blocks[level].upsamplers:
            self.h = upsampler(self.h)

    def output(self) -> torch.Tensor:
        """-> (b, out_channels, m, t)."""
        h = self.h
        if self.unet.conv_norm_out is not None:
            h = self.unet.conv_norm_out(h)
            h = h if self.unet.conv_act is None else self.unet.conv_act(h)
        return self.unet.conv_out(h)


# ----------------------------------------------------------------------------------------------
# The coupled model
# ----------------------------------------------------------------------------------------------
class MMGCoupledUNet(nn.Module):
    """``forward(audio_latents, audio_timestep, audio_encoder_hidden_states, video_latents,
    video_timestep, video_context, video_fps) -> (audio_eps, video_eps)`` (the reference signature)."""

    def __init__(self, config: MMGConfig):
        super().__init__()
        self.config = config
        self.audio_unet = UNet2DConditionModel(**config.audio.diffusers_kwargs())
        self.video_unet = LvdmUNet(config.video)
        d_head = config.cross_modal.d_head
        self.audio_cmt = nn.ModuleList(CrossModalTransformer(w, d_head) for w in config.cross_modal.layer_channels)
        self.video_cmt = nn.ModuleList(CrossModalTransformer(w, d_head) for w in config.cross_modal.layer_channels)

    def forward(
        self,
        audio_latents: torch.Tensor,
        audio_timestep,
        audio_encoder_hidden_states: torch.Tensor,
        video_latents: torch.Tensor,
        video_timestep,
        video_context: torch.Tensor | None = None,
        video_fps=MMG_FPS,
        *,
        coupled: bool = True,
        probe: CMTProbe | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_latents (b, c, m, t), audio text (b, L, D_a), video_latents (b, c, f, h, w), video text
        (b, L, D_v); timesteps a number or (b,); fps a number or (b,). Returns epsilon for both, same
        layouts. ``coupled=False`` skips every CMT: the two U-Nets run as if never coupled."""
        self._check_alignment(audio_latents, video_latents)
        audio = DiffusersUNetRun(self.audio_unet, audio_latents, audio_timestep, audio_encoder_hidden_states)
        video = self.video_unet.start(video_latents, video_timestep, video_context, video_fps)
        streams, last = (audio, video), self.config.num_levels - 1
        for level in range(last + 1):
            for stream in streams:
                stream.down(level)
            if level < last:
                if coupled:
                    self.exchange(level, audio, video, probe)
                for stream in streams:
                    stream.downsample(level)
        for stream in streams:
            stream.middle()
        for level in range(last + 1):
            for stream in streams:
                stream.up(level)
            if level < last:
                if coupled:
                    self.exchange(last + level, audio, video, probe)
                for stream in streams:
                    stream.upsample(level)
        return audio.output(), video.output()

    def exchange(self, point: int, audio, video, probe: CMTProbe | None = None) -> None:
        """Run CMT pair ``point`` on the streams' current features (both read the pre-exchange tokens)."""
        height, width = video.h.shape[2:]
        columns = audio.h.shape[3]
        video_tokens, audio_tokens = time_groups(video.h, audio.h)
        new_video = self.video_cmt[point](video_tokens, audio_tokens)
        new_audio = self.audio_cmt[point](audio_tokens, video_tokens)
        if probe is not None:
            probe(point, "video", video_tokens, audio_tokens, new_video)
            probe(point, "audio", audio_tokens, video_tokens, new_audio)
        video.h, audio.h = untime_groups(new_video, new_audio, height, width, columns)

    def _check_alignment(self, audio_latents: torch.Tensor, video_latents: torch.Tensor) -> None:
        if audio_latents.dim() != 4 or video_latents.dim() != 5:
            raise ValueError(
                f"audio latents must be (b, c, mel, time) and video latents (b, c, frames, h, w), got "
                f"{tuple(audio_latents.shape)} and {tuple(video_latents.shape)}"
            )
        if audio_latents.shape[0] != video_latents.shape[0]:
            raise ValueError(f"audio batch {audio_latents.shape[0]} != video batch {video_latents.shape[0]}")
        divisor = 2 ** (self.config.num_levels - 1)
        mel, columns, frames = audio_latents.shape[2], audio_latents.shape[3], video_latents.shape[2]
        if mel % divisor or columns % divisor:
            raise ValueError(f"audio latent size {mel}x{columns} must be a multiple of {divisor} on both axes")
        if frames % columns:
            raise ValueError(
                f"{frames} video frames cannot be grouped with {columns} audio latent columns: the frame count "
                f"must be a multiple of the column count (MMG: 40 frames, 40 columns for 3.2 s)"
            )
