"""Auffusion's spectrogram "image": log-mel <-> the 3-channel picture its VAE encodes and decodes.

Auffusion (``happylittlecat2333/Auffusion`` @ f44233d, ``auffusion_pipeline.py``: ``normalize_spectrogram``
/ ``denormalize_spectrogram``; MMG's inference uses the same functions) turns a log-mel into an image by
  1. clamping the natural-log magnitudes to [ln 1e-5, ln 200] and rescaling that range to [0, 1];
  2. raising to ``power`` (1: no curve);
  3. repeating it over 3 channels (the VAE is Stable Diffusion's, trained on RGB);
  4. flipping the mel axis, so low frequencies sit at the bottom as in a picture of a spectrogram.
Decoding inverts that from the *first* channel only (as the reference), after the VAE output went from
[-1, 1] to [0, 1] (diffusers' ``VaeImageProcessor.postprocess``).

Mel settings (REFERENCE.md section 3): 16 kHz, n_fft 2048, window 1024, hop 160, 256 mels up to 8 kHz,
so 3.2 s = 320 frames = a 256x320 image = a 4x32x40 latent.

Layouts: log-mel ``(b, mels, frames)``; image ``(b, 3, mels, frames)`` in [0, 1], row 0 = highest band;
waveform ``(b, 1, samples)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import repeat

from .vocoder import HiFiGAN


@dataclass(frozen=True)
class SpectrogramImageConfig:
    """The normalisation's constants (Auffusion's defaults)."""

    min_value: float = 1e-5  # magnitude floor: the log-mel's clamp value
    max_value: float = 200.0
    power: float = 1.0
    channels: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.min_value < self.max_value:
            raise ValueError(f"need 0 < min_value < max_value, got {self.min_value}, {self.max_value}")
        if self.power <= 0 or self.channels < 1:
            raise ValueError("power must be > 0 and channels >= 1")

    @property
    def log_min(self) -> float:
        return math.log(self.min_value)

    @property
    def log_max(self) -> float:
        return math.log(self.max_value)


@dataclass(frozen=True)
class MelConfig:
    """How Auffusion's (and MMG's) log-mels are computed; the vocoder inverts exactly these."""

    sampling_rate: int = 16000
    n_fft: int = 2048
    win_length: int = 1024
    hop_length: int = 160
    num_mels: int = 256
    fmin: float = 0.0
    fmax: float = 8000.0

    @property
    def frames_per_second(self) -> float:
        return self.sampling_rate / self.hop_length

    def frames_for(self, seconds: float) -> int:
        """Mel frames (image width) covering ``seconds`` of audio (3.2 s -> 320)."""
        return round(seconds * self.frames_per_second)


AUFFUSION_IMAGE = SpectrogramImageConfig()
AUFFUSION_MEL = MelConfig()


def log_mel_to_image(log_mel: torch.Tensor, config: SpectrogramImageConfig = AUFFUSION_IMAGE) -> torch.Tensor:
    """(b, mels, frames) natural-log mel -> (b, channels, mels, frames) image in [0, 1], flipped.

    Values outside [ln min_value, ln max_value] are clamped (the reference clamps too)."""
    if log_mel.dim() != 3:
        raise ValueError(f"log-mel must be (b, mels, frames), got {tuple(log_mel.shape)}")
    scaled = (log_mel.clamp(config.log_min, config.log_max) - config.log_min) / (config.log_max - config.log_min)
    image = repeat(scaled.pow(config.power), "b m t -> b c m t", c=config.channels)
    return image.flip(2)


def image_to_log_mel(image: torch.Tensor, config: SpectrogramImageConfig = AUFFUSION_IMAGE) -> torch.Tensor:
    """(b, c, mels, frames) image in [0, 1] -> (b, mels, frames) natural-log mel (inverse of
    :func:`log_mel_to_image`).

    Reads channel 0 only, as Auffusion's ``denormalize_spectrogram``: a decoded image's channels differ
    slightly and the reference vocoded the first. The image is clamped to [0, 1] first (the reference's
    postprocess clamps; a fractional power of a negative value would be NaN)."""
    if image.dim() != 4:
        raise ValueError(f"spectrogram image must be (b, channels, mels, frames), got {tuple(image.shape)}")
    data = image[:, 0].flip(1).clamp(0.0, 1.0)
    data = data if config.power == 1.0 else data.pow(1.0 / config.power)
    return data * (config.log_max - config.log_min) + config.log_min


def vae_output_to_image(decoded: torch.Tensor) -> torch.Tensor:
    """The VAE's decoded sample in [-1, 1] -> image in [0, 1] (diffusers' ``postprocess``, clamped)."""
    return (decoded / 2 + 0.5).clamp(0.0, 1.0)


def image_to_vae_input(image: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> the VAE's input range [-1, 1] (diffusers' ``preprocess``)."""
    return image * 2.0 - 1.0


def image_to_waveform(
    image: torch.Tensor,
    vocoder: HiFiGAN,
    *,
    length: int | None = None,
    config: SpectrogramImageConfig = AUFFUSION_IMAGE,
) -> torch.Tensor:
    """(b, c, mels, frames) spectrogram image in [0, 1] -> (b, 1, samples) waveform in [-1, 1].

    ``length`` trims (or zero-pads) to that many samples; the vocoder gives ``frames · hop`` samples,
    which for MMG's 320 frames is exactly 3.2 s at 16 kHz."""
    log_mel = image_to_log_mel(image, config)
    if log_mel.shape[1] != vocoder.config.num_mels:
        raise ValueError(
            f"the image has {log_mel.shape[1]} mel rows but the vocoder takes {vocoder.config.num_mels}: "
            "use the vocoder that belongs to the audio model (Auffusion's has 256)"
        )
    with torch.no_grad():
        wave = vocoder(log_mel)
    if length is None:
        return wave
    if length < 1:
        raise ValueError(f"length must be a positive number of samples, got {length}")
    if length <= wave.shape[-1]:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
