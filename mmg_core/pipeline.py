"""Joint audio-video generation: noise → guided sampler → pixels and waveform.

Used unchanged by the ComfyUI nodes and by ``python -m mmg_core generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .av import AV, randn_av
from .codec import decode_latent, unfold_patches
from .conditioning import Conditioning, Guidance, concat_contexts, repeat_context
from .denoiser import EpsDenoiser, NoiseSchedule
from .models.mmdiffusion import MMDiffusionUNet
from .models.mmdiffusion_config import MMDiffusionConfig
from .sampling import StepCallback, sample

MAX_BATCH_SIZE = 64


def noise_schedule_for(config: MMDiffusionConfig) -> NoiseSchedule:
    if config.beta_schedule != "linear":
        raise ValueError(f"unsupported beta_schedule {config.beta_schedule!r}; MM-Diffusion models use 'linear'")
    return NoiseSchedule.ddpm_linear(config.num_train_timesteps)


def _mean_prediction(model: MMDiffusionUNet, video: torch.Tensor, audio: torch.Tensor) -> AV:
    """With ``learn_sigma`` the second half of the channels predicts variances: the samplers here use
    fixed variances, so only the first half is kept."""
    video_channels, audio_channels = model.config.latent_video_shape[1], model.config.latent_audio_shape[0]
    return AV(video=video[:, :, :video_channels], audio=audio[:, :audio_channels])


def model_fn_for(
    model: MMDiffusionUNet,
    shift_generator: torch.Generator,
    conditioning: Conditioning | None = None,
    guidance: Guidance = Guidance(),
):
    """Adapt the U-Net to ``model_fn(x: AV, t) -> AV`` with guidance; RS-MMA shifts come from
    ``shift_generator``. The guided passes (conditional, unconditional, uncoupled) run as one batch
    and share the same shifts."""
    guidance.validate()
    config = model.config
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    if config.text_conditioned and conditioning is None:
        raise ValueError("this model is text-conditioned: give it a prompt (MMG Text Encode / --prompt)")
    use_text = config.text_conditioned
    passes = ["cond"] + (["uncond"] if use_text and guidance.needs_unconditional else [])
    passes += ["uncoupled"] if guidance.needs_uncoupled else []

    def model_fn(x: AV, t: torch.Tensor) -> AV:
        batch = x.batch_size
        n = len(passes)
        video = x.video.to(device, dtype).repeat(n, 1, 1, 1, 1)
        audio = x.audio.to(device, dtype).repeat(n, 1, 1)
        text = None
        if use_text:
            per_pass = [conditioning.negative if p == "uncond" else conditioning.positive for p in passes]
            text = concat_contexts([repeat_context(c, batch, device, dtype) for c in per_pass])
        coupling = torch.tensor([0.0 if p == "uncoupled" else 1.0 for p in passes], device=device)
        coupling = coupling.repeat_interleave(batch)
        out_video, out_audio = model(video, audio, t.to(device).repeat(n), generator=shift_generator,
                                     text=text, coupling=coupling)
        preds = {p: _mean_prediction(model, v, a) for p, v, a in
                 zip(passes, out_video.chunk(n), out_audio.chunk(n))}
        combined = combine_guidance(preds, guidance)
        return AV(video=combined.video.to(x.video.dtype), audio=combined.audio.to(x.audio.dtype))

    return model_fn


def combine_guidance(preds: dict[str, AV], guidance: Guidance) -> AV:
    """cond + (s - 1)(cond - uncond) per modality, then + m (cond - uncoupled)."""
    cond = preds["cond"]
    video, audio = cond.video, cond.audio
    if "uncond" in preds:
        uncond = preds["uncond"]
        video = video + (guidance.video_cfg - 1) * (cond.video - uncond.video)
        audio = audio + (guidance.audio_cfg - 1) * (cond.audio - uncond.audio)
    if "uncoupled" in preds:
        uncoupled = preds["uncoupled"]
        video = video + guidance.modality * (cond.video - uncoupled.video)
        audio = audio + guidance.modality * (cond.audio - uncoupled.audio)
    return AV(video=video, audio=audio)


@dataclass(frozen=True)
class GenerationSettings:
    seed: int = 0
    steps: int = 25
    sampler: str = "dpmpp_2m"
    batch_size: int = 1
    guidance: Guidance = Guidance()

    def validate(self) -> None:
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be between 0 and 2^64-1, got {self.seed}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {self.batch_size}")
        self.guidance.validate()


def initial_noise(config: MMDiffusionConfig, batch_size: int, generator: torch.Generator) -> AV:
    return randn_av((batch_size, *config.latent_video_shape), (batch_size, *config.latent_audio_shape), generator=generator)


def generate(
    model: MMDiffusionUNet,
    settings: GenerationSettings,
    *,
    conditioning: Conditioning | None = None,
    noise: AV | None = None,
    callback: StepCallback | None = None,
) -> AV:
    """Sample a batch of clips in the model's space (see ``decode``), on CPU in float32.

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
    model_fn = model_fn_for(model, generator, conditioning if config.text_conditioned else None, settings.guidance)
    denoiser = EpsDenoiser(model_fn, config.prediction_type, schedule)
    with torch.inference_mode():
        result = sample(settings.sampler, denoiser, noise, schedule, steps=settings.steps, generator=generator,
                        callback=callback)
    return result.map(lambda x: x.float().cpu())


@dataclass(frozen=True)
class DecodedClip:
    """Media: frames (B, F, H, W, C) in [0, 1], audio (B, C, T) in [-1, 1]."""

    frames: torch.Tensor
    audio: torch.Tensor
    fps: float
    sample_rate: int


def decode(latent: AV, config: MMDiffusionConfig) -> DecodedClip:
    """Model space → media, through the model's analytic codec (pixels/waveform for the reference)."""
    media = decode_latent(config, latent)
    frames = ((media.video + 1) / 2).permute(0, 1, 3, 4, 2).contiguous()
    return DecodedClip(frames=frames, audio=media.audio, fps=float(config.fps), sample_rate=int(config.sample_rate))


def preview_frames(denoised: AV, config: MMDiffusionConfig) -> torch.Tensor:
    """Pixels (B, F, C, H, W) of a predicted x0, for step previews."""
    return unfold_patches(denoised.video, config.video_patch).clamp(-1, 1)
