"""MMG (VideoCrafter2 + Auffusion) text-to-audio-video around the joint DDIM sampler: clip sizes, noise,
precision, and the latent <-> VAE conventions, for the ComfyUI nodes and any other front end.

The VAEs and text encoders themselves are not here: a front end brings its own (ComfyUI's core loaders)
and hands over token states and decoded pixels. What this module knows is how MMG expects them:
  * video latents are per-frame Stable Diffusion VAE latents times ``scale_factor`` (0.18215,
    VideoCrafter2's ``configs/inference_t2v_512_v2.0.yaml``; ``decode_first_stage_2DAE`` divides it out);
  * audio latents are Auffusion's VAE latents of the spectrogram image times its ``vae/config.json``
    ``scaling_factor`` (0.18215), decoded image -> :func:`auffusion_audio.image_to_waveform`;
  * the time axes line up structurally: at 12.5 fps and 100 mel frames per second, f frames span f
    audio-latent columns (8 mel frames each), so one number, ``frames``, sizes both streams.

Layouts: video latents (b, 4, f, h, w); audio latents (b, 4, mel / 8, f); frames for a VAE ((b f), 4, h, w).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from einops import rearrange

from .auffusion_audio import image_to_waveform
from .mmg_loading import MMGLoadError, find_auffusion_folder, read_safetensors, unwrap_lightning
from .mmg_sampling import VIDEOCRAFTER2_SCHEDULE, LvdmSchedule, MMGConditions, MMGStep, check_sampler, sample_mmg
from .sampling import StepInfo
from .models.mmg_coupled import MMG_FPS, MMGCoupledUNet
from .vocoder import HiFiGAN, load_torch_weights

SD_VAE_SCALE = 0.18215  # Stable Diffusion's latent scale: VideoCrafter2's scale_factor, Auffusion's scaling_factor
VAE_FACTOR = 8  # pixels (or mel bins / mel frames) per latent cell of both VAEs
LATENT_CHANNELS = 4
VIDEO_VAE_PREFIX = "first_stage_model."
AUFFUSION_VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                         "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
DEFAULT_MEL_BINS = 256  # Auffusion's spectrogram height (its vocoder's num_mels)


# ----------------------------------------------------------------------------------------------
# Files next to the U-Nets
# ----------------------------------------------------------------------------------------------
def video_config_beside(checkpoint: str | Path) -> dict[str, Any] | None:
    """lvdm U-Net arguments from ``<checkpoint stem>.json`` beside the checkpoint, if there is one.

    VideoCrafter2's model.ckpt holds no network settings (its yaml does). The JSON may be the
    ``unet_config.params`` mapping, ``unet_config`` itself (``{"target", "params"}``), or the whole
    VideoCrafter config converted to JSON (``{"model": {"params": {"unet_config": ...}}}``)."""
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MMGLoadError(f"{path.name} (the video U-Net settings beside {Path(checkpoint).name}) is not valid JSON: "
                           f"{error}") from error
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"].get("params", {}).get("unet_config")
    if not isinstance(data, dict):
        raise MMGLoadError(f"{path.name}: expected lvdm UNetModel arguments (an object), got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class VAEWeights:
    """A VAE's state dict as its file stores it (ldm or diffusers names) and the latent scale to divide out."""

    state: dict[str, torch.Tensor]
    scale_factor: float
    source: str


def read_videocrafter_vae(checkpoint: str | Path) -> VAEWeights:
    """The ``first_stage_model.*`` entries of VideoCrafter2's model.ckpt (prefix removed, tensors stay
    memory-mapped) and its ``scale_factor`` buffer if stored (else 0.18215, the yaml's value)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MMGLoadError(f"video checkpoint not found: {path} (expected VideoCrafter2's model.ckpt)")
    if path.suffix.lower() == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        state = unwrap_lightning(load_torch_weights(path), path.name)
    vae = {k[len(VIDEO_VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VIDEO_VAE_PREFIX)}
    if not vae:
        raise MMGLoadError(f"{path.name} has no {VIDEO_VAE_PREFIX}* (VAE) keys: load the video VAE with a VAE loader "
                           "instead")
    scale = float(state["scale_factor"]) if "scale_factor" in state else SD_VAE_SCALE
    return VAEWeights(vae, scale, path.name)


def read_auffusion_vae(folder: str | Path) -> VAEWeights:
    """Auffusion's ``vae/`` (diffusers AutoencoderKL): weights and ``scaling_factor`` from its config.json."""
    model = find_auffusion_folder(folder).unet_config.parent.parent
    vae = model / "vae"
    weights = next((vae / name for name in AUFFUSION_VAE_WEIGHTS if (vae / name).is_file()), None)
    if weights is None:
        raise MMGLoadError(f"{vae} has no VAE weights (expected one of {list(AUFFUSION_VAE_WEIGHTS)}): download the "
                           "whole Auffusion folder, or load the audio VAE with a VAE loader instead")
    config = json.loads((vae / "config.json").read_text()) if (vae / "config.json").is_file() else {}
    if weights.suffix == ".safetensors":
        state, _ = read_safetensors(weights)
    else:
        state = unwrap_lightning(load_torch_weights(weights), weights.name)
    return VAEWeights(state, float(config.get("scaling_factor", SD_VAE_SCALE)), f"vae/{weights.name}")


# ----------------------------------------------------------------------------------------------
# Clip size and noise
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSize:
    """One clip: ``frames`` at 12.5 fps (40 = MMG's 3.2 s), ``height`` x ``width`` pixels (320 x 512),
    and the spectrogram height ``mel_bins`` (256, Auffusion's)."""

    frames: int = 40
    height: int = 320
    width: int = 512
    mel_bins: int = DEFAULT_MEL_BINS

    def check(self, levels: int) -> None:
        """Both U-Nets halve every axis ``levels - 1`` times: say what to change if a size does not allow it."""
        latent_step = 2 ** (levels - 1)
        pixel_step = latent_step * VAE_FACTOR
        for name, value, step, unit in (("height", self.height, pixel_step, "pixels"),
                                        ("width", self.width, pixel_step, "pixels"),
                                        ("frames", self.frames, latent_step, "frames")):
            if value < step or value % step:
                raise ValueError(f"{name} must be a positive multiple of {step} {unit} for this model, got {value}")
        if self.mel_bins % pixel_step:
            raise ValueError(f"the audio model's {self.mel_bins} mel bins are not a multiple of {pixel_step}")

    @property
    def seconds(self) -> float:
        return self.frames / MMG_FPS

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int]:
        return LATENT_CHANNELS, self.frames, self.height // VAE_FACTOR, self.width // VAE_FACTOR

    @property
    def audio_latent_shape(self) -> tuple[int, int, int]:
        # frames / 12.5 s * 100 mel frames/s / 8 = frames columns
        return LATENT_CHANNELS, self.mel_bins // VAE_FACTOR, self.frames


def draw_noise(size: ClipSize, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio noise, video noise), float32 on the generator's device. Video first, as the reference draws."""
    video = torch.randn((batch, *size.video_latent_shape), generator=generator, device=generator.device)
    audio = torch.randn((batch, *size.audio_latent_shape), generator=generator, device=generator.device)
    return audio, video


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
class PrecisionCast:
    """Calls the coupled model with its weights' dtype and device; returns float32 epsilons, so the
    schedulers' arithmetic stays float32 whatever precision the weights have."""

    def __init__(self, model: MMGCoupledUNet):
        parameter = next(model.parameters())
        self.model, self.dtype, self.device = model, parameter.dtype, parameter.device

    def _cast(self, value):
        if not torch.is_tensor(value):
            return value
        dtype = self.dtype if value.is_floating_point() else value.dtype
        return value.to(device=self.device, dtype=dtype)

    def __call__(self, audio, audio_t, audio_text, video, video_t, video_text, fps, **kwargs):
        # Timesteps and fps keep their own dtype: bf16 cannot even hold 751 exactly.
        audio, audio_text, video, video_text = (self._cast(v) for v in (audio, audio_text, video, video_text))
        with torch.no_grad():
            a, v = self.model(audio, audio_t, audio_text, video, video_t, video_text, fps, **kwargs)
        return a.float(), v.float()


@dataclass(frozen=True)
class MMGSettings:
    steps: int = 25
    audio_cfg: float = 7.5  # MMG's inference defaults (REFERENCE.md section 3)
    video_cfg: float = 12.0
    modality: float = 0.0
    fps: int = 12  # the video U-Net's fps condition; the reference passes int(12.5)
    sampler: str = "ddim"  # MMG's; any of mmg_sampling.SAMPLER_NAMES

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.fps < 1:
            raise ValueError(f"fps must be at least 1, got {self.fps}")


def text_batch(states: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """(1 or batch, L, D) prompt states -> (batch, L, D) float32."""
    if states.dim() != 3 or states.shape[0] not in (1, batch):
        raise ValueError(f"{name} must be (1 or {batch}, tokens, width) token states, got {tuple(states.shape)}")
    return states.float().expand(batch, -1, -1).contiguous()


def generate_mmg(
    model: MMGCoupledUNet,
    conditions: MMGConditions,
    size: ClipSize,
    settings: MMGSettings,
    *,
    generator: torch.Generator,
    video_schedule: LvdmSchedule = VIDEOCRAFTER2_SCHEDULE,
    callback: Callable[[MMGStep | StepInfo], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise from ``generator`` -> ``settings.sampler`` -> (audio latents, video latents), float32 on the
    model's device. ``conditions`` hold float32 states of batch b; the batch is taken from them."""
    size.check(model.config.num_levels)
    video_width = model.config.video.context_dim
    for states in (conditions.video_text, conditions.video_negative):
        if states is not None and states.shape[-1] != video_width:
            raise ValueError(f"a video prompt has {states.shape[-1]}-d token states but the video U-Net takes "
                             f"{video_width} (VideoCrafter2: OpenCLIP ViT-H/14): encode it with the CLIP-H text encoder")
    audio_width = model.config.audio.cross_attention_dim
    if conditions.audio_text.shape[-1] != audio_width:
        raise ValueError(f"the audio prompt states are {conditions.audio_text.shape[-1]}-d but the audio U-Net takes "
                         f"{audio_width}: encode it with Auffusion's CLIP-L text encoder")
    runner = PrecisionCast(model)
    batch = conditions.audio_text.shape[0]
    audio_noise, video_noise = draw_noise(size, batch, generator)
    move = lambda states: None if states is None else states.to(runner.device)  # noqa: E731
    conditions = MMGConditions(
        move(conditions.audio_text), move(conditions.video_text), move(conditions.audio_negative),
        move(conditions.video_negative), fps=torch.full((batch,), settings.fps, dtype=torch.int64, device=runner.device),
    )
    return sample_mmg(
        settings.sampler, runner, audio_noise.to(runner.device), video_noise.to(runner.device), conditions,
        generator=generator, steps=settings.steps, audio_guidance=settings.audio_cfg, video_guidance=settings.video_cfg,
        modality_guidance=settings.modality, video_schedule=video_schedule, callback=callback,
    )


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def video_latents_for_vae(video: torch.Tensor, scale_factor: float = SD_VAE_SCALE) -> torch.Tensor:
    """(b, 4, f, h, w) sampled latents -> ((b f), 4, h, w) latents a Stable Diffusion VAE decodes."""
    return rearrange(video.float(), "b c f h w -> (b f) c h w") / scale_factor


def audio_latents_for_vae(audio: torch.Tensor, scale_factor: float = SD_VAE_SCALE) -> torch.Tensor:
    """(b, 4, mel/8, t) sampled latents -> the same, unscaled, for Auffusion's VAE."""
    return audio.float() / scale_factor


def spectrogram_to_waveform(image: torch.Tensor, vocoder: HiFiGAN) -> torch.Tensor:
    """Decoded spectrogram images (b, 3, mels, frames) in [0, 1] -> waveform (b, 1, frames · hop)."""
    parameter = next(vocoder.parameters())
    wave = image_to_waveform(image.to(device=parameter.device, dtype=parameter.dtype), vocoder)
    return wave.float().cpu()


def frames_per_second(frames: int, samples: int, sample_rate: int) -> float:
    """The playback rate that makes ``frames`` last exactly as long as the audio (12.5 for MMG)."""
    return frames * sample_rate / samples


def conditions_from_states(video: torch.Tensor, video_negative: torch.Tensor, audio: torch.Tensor,
                           audio_negative: torch.Tensor | None, batch: int) -> MMGConditions:
    """Prompt states of batch 1 (or ``batch``) -> :class:`MMGConditions` of ``batch``."""
    return MMGConditions(
        audio_text=text_batch(audio, batch, "audio prompt"),
        video_text=text_batch(video, batch, "video prompt"),
        audio_negative=None if audio_negative is None else text_batch(audio_negative, batch, "negative audio prompt"),
        video_negative=text_batch(video_negative, batch, "negative video prompt"),
    )
