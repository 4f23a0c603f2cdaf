"""Exact, parameter-free transforms between media and the space an MM-Diffusion-family U-Net denoises.

Video: p×p pixel blocks folded into channels (``video_patch``); p = 1 is the reference's raw pixels.
Audio: the raw waveform (reference), a magnitude-compressed complex STFT ("stft"), or its compressed
magnitude alone ("stft_mag", phase recovered by Griffin-Lim when decoding). STFT frame k covers
samples [k·hop, (k+1)·hop), so 1.6 s at 16 kHz with hop 100 is 256 frames, 16 per video frame at
10 fps, and an audio event and the video frame it belongs to sit at the same place in both streams.
Compression |X|^c keeps quiet and loud partials in a similar numeric range (as in SGMSE); phase is
kept, so decoding is an inverse STFT with no vocoder.

Layouts: video pixels (B, F, C, H, W) in [-1, 1]; waveform (B, C, T) in [-1, 1]; STFT latent
(B, 2·bins·C, frames) with channels ordered (real|imag, audio channel, bin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .av import AV
from .models.mmdiffusion_config import MMDiffusionConfig

EPS = 1e-8


def fold_patches(video: torch.Tensor, patch: int) -> torch.Tensor:
    if patch == 1:
        return video
    return rearrange(video, "b f c (h p) (w q) -> b f (c p q) h w", p=patch, q=patch)


def unfold_patches(latent: torch.Tensor, patch: int) -> torch.Tensor:
    if patch == 1:
        return latent
    return rearrange(latent, "b f (c p q) h w -> b f c (h p) (w q)", p=patch, q=patch)


def _window(n_fft: int, like: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=like.device)


def stft_frames(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """(N, T) → complex (N, bins, T/hop); frame k is centred on hop interval k."""
    pad = (n_fft - hop) // 2
    padded = F.pad(wave.float(), (pad, pad))
    frames = padded.unfold(-1, n_fft, hop)  # (N, frames, n_fft)
    return torch.fft.rfft(frames * _window(n_fft, wave), dim=-1).transpose(1, 2)


def istft_frames(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """Inverse of :func:`stft_frames` by weighted overlap-add (least squares for any spectrogram)."""
    window = _window(n_fft, spec)
    frames = torch.fft.irfft(spec.transpose(1, 2), n=n_fft, dim=-1) * window  # (N, frames, n_fft)
    count = frames.shape[1]
    total = (count - 1) * hop + n_fft
    overlap = F.fold(rearrange(frames, "n k s -> n s k"), (1, total), (1, n_fft), stride=(1, hop))
    norm = F.fold(
        (window**2)[None, :, None].expand(1, n_fft, count), (1, total), (1, n_fft), stride=(1, hop)
    )
    wave = (overlap / norm.clamp_min(EPS)).reshape(spec.shape[0], total)
    pad = (n_fft - hop) // 2
    return wave[:, pad : pad + length]


def compress(spec: torch.Tensor, power: float, scale: float) -> torch.Tensor:
    magnitude = spec.abs()
    return spec * (magnitude.clamp_min(EPS) ** (power - 1)) * scale


def decompress(spec: torch.Tensor, power: float, scale: float) -> torch.Tensor:
    spec = spec / scale
    magnitude = spec.abs()
    return spec * (magnitude.clamp_min(EPS) ** (1 / power - 1))


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, length: int, iterations: int,
                momentum: float = 0.99) -> torch.Tensor:
    """(N, bins, frames) magnitude → (N, length) waveform whose STFT magnitude approximates it.

    Fast Griffin-Lim (Perraudin et al. 2013): alternate projections between the set of spectrograms
    with this magnitude and the set of consistent ones, with momentum. Starts from zero phase, so it is
    deterministic and needs no random draw.
    """
    magnitude = magnitude.float()
    spec = torch.complex(magnitude, torch.zeros_like(magnitude))
    previous = torch.zeros_like(spec)
    for _ in range(iterations):
        wave = istft_frames(spec, n_fft, hop, length)
        consistent = stft_frames(wave, n_fft, hop)
        accelerated = consistent + (momentum / (1 + momentum)) * (consistent - previous)
        previous = consistent
        spec = magnitude * torch.exp(1j * torch.angle(accelerated))
    return istft_frames(spec, n_fft, hop, length)


def encode_magnitude(config: MMDiffusionConfig, magnitude: torch.Tensor) -> torch.Tensor:
    return magnitude.clamp_min(0) ** config.stft_compression * config.stft_scale - 1


def decode_magnitude(config: MMDiffusionConfig, latent: torch.Tensor) -> torch.Tensor:
    return ((latent + 1) / config.stft_scale).clamp_min(0) ** (1 / config.stft_compression)


def encode_audio(config: MMDiffusionConfig, wave: torch.Tensor) -> torch.Tensor:
    """(B, C, T) waveform → (B, C', L) model audio."""
    if config.audio_codec == "waveform":
        return wave
    b = wave.shape[0]
    spec = stft_frames(rearrange(wave, "b c t -> (b c) t"), config.stft_n_fft, config.stft_hop)
    if config.audio_codec == "stft_mag":
        return rearrange(encode_magnitude(config, spec.abs()), "(b c) f k -> b (c f) k", b=b).to(wave.dtype)
    spec = compress(spec, config.stft_compression, config.stft_scale)
    parts = torch.stack([spec.real, spec.imag])  # (2, B*C, bins, frames)
    return rearrange(parts, "ri (b c) f k -> b (ri c f) k", b=b).to(wave.dtype)


def decode_audio(config: MMDiffusionConfig, latent: torch.Tensor) -> torch.Tensor:
    """(B, C', L) model audio → (B, C, T) waveform."""
    if config.audio_codec == "waveform":
        return latent
    if config.audio_codec == "stft_mag":
        magnitude = decode_magnitude(config, rearrange(latent.float(), "b (c f) k -> (b c) f k", c=config.audio_channels))
        wave = griffin_lim(magnitude, config.stft_n_fft, config.stft_hop, config.audio_length, config.griffin_lim_iters)
        return rearrange(wave, "(b c) t -> b c t", c=config.audio_channels)
    parts = rearrange(latent.float(), "b (ri c f) k -> ri (b c) f k", ri=2, c=config.audio_channels)
    spec = decompress(torch.complex(parts[0], parts[1]), config.stft_compression, config.stft_scale)
    wave = istft_frames(spec, config.stft_n_fft, config.stft_hop, config.audio_length)
    return rearrange(wave, "(b c) t -> b c t", c=config.audio_channels)


def encode_media(config: MMDiffusionConfig, video: torch.Tensor, audio: torch.Tensor) -> AV:
    """Pixels (B, F, C, H, W) and waveform (B, C, T), both in [-1, 1] → the model's AV state."""
    return AV(video=fold_patches(video, config.video_patch), audio=encode_audio(config, audio))


def decode_latent(config: MMDiffusionConfig, latent: AV) -> AV:
    """The model's AV state → pixels (B, F, C, H, W) and waveform (B, C, T), clamped to [-1, 1]."""
    video = unfold_patches(latent.video, config.video_patch)
    audio = decode_audio(config, latent.audio)
    return AV(video=video.float().clamp(-1, 1), audio=audio.float().clamp(-1, 1))
