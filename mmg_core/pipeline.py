"""Unconditional joint audio-video generation: noise → sampler → pixels and waveform.

Used unchanged by the ComfyUI nodes and by ``python -m mmg_core generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .av import AV, randn_av
from .denoiser import EpsDenoiser, NoiseSchedule
from .models.mmdiffusion import MMDiffusionUNet
from .models.mmdiffusion_config import MMDiffusionConfig
from .sampling import StepCallback, sample

MAX_BATCH_SIZE = 64


def noise_schedule_for(config: MMDiffusionConfig) -> NoiseSchedule:
    if config.beta_schedule != "linear":
        raise ValueError(f"unsupported beta_schedule {config.beta_schedule!r}; MM-Diffusion models use 'linear'")
    return NoiseSchedule.ddpm_linear(config.num_train_timesteps)


def model_fn_for(model: MMDiffusionUNet, shift_generator: torch.Generator):
    """Adapt the U-Net to ``model_fn(x: AV, t) -> AV``; RS-MMA shifts come from ``shift_generator``.

    With ``learn_sigma`` the network also predicts variances in the second half of its channels;
    the samplers here use fixed variances, so only the first half (the mean target) is kept.
    """
    config = model.config
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def model_fn(x: AV, t: torch.Tensor) -> AV:
        video, audio = model(
            x.video.to(device, dtype), x.audio.to(device, dtype), t.to(device), generator=shift_generator
        )
        video = video[:, :, : config.video_channels]
        audio = audio[:, : config.audio_channels]
        return AV(video=video.to(x.video.dtype), audio=audio.to(x.audio.dtype))

    return model_fn


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    steps: int = 25
    sampler: str = "dpmpp_2m"
    batch_size: int = 1

    def validate(self) -> None:
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be between 0 and 2^64-1, got {self.seed}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")


def initial_noise(config: MMDiffusionConfig, batch_size: int, generator: torch.Generator) -> AV:
    return randn_av((batch_size, *config.video_shape), (batch_size, *config.audio_shape), generator=generator)


def generate(
    model: MMDiffusionUNet,
    settings: GenerationSettings,
    *,
    noise: AV | None = None,
    callback: StepCallback | None = None,
) -> AV:
    """Sample a batch of clips. Returns video (B, F, C, H, W) and audio (B, C, L) in [-1, 1], on CPU.

    One CPU generator seeded with ``settings.seed`` draws, in order: the initial noise (unless
    given), then every RS-MMA shift and ancestral noise as the sampler needs them, so the same seed
    gives the same clip on any device.
    """
    settings.validate()
    config = model.config
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    if noise is None:
        noise = initial_noise(config, settings.batch_size, generator)
    schedule = noise_schedule_for(config)
    denoiser = EpsDenoiser(model_fn_for(model, generator), config.prediction_type, schedule)
    with torch.inference_mode():
        result = sample(
            settings.sampler, denoiser, noise, schedule,
            steps=settings.steps, generator=generator, callback=callback,
        )
    return result.map(lambda x: x.float().clamp(-1, 1).cpu())


@dataclass(frozen=True)
class DecodedClip:
    """Pixel-space output as media: frames (B, F, H, W, C) in [0, 1], audio (B, C, T) in [-1, 1]."""

    frames: torch.Tensor
    audio: torch.Tensor
    fps: float
    sample_rate: int


def decode(av: AV, fps: float, sample_rate: int) -> DecodedClip:
    """MM-Diffusion works in pixel space: decoding only rescales and reorders."""
    frames = ((av.video.float().clamp(-1, 1) + 1) / 2).permute(0, 1, 3, 4, 2).contiguous()
    return DecodedClip(frames=frames, audio=av.audio.float().clamp(-1, 1), fps=float(fps), sample_rate=int(sample_rate))
