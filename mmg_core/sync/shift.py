"""Move a soundtrack in time against its picture: the correction CAM-Sync's offset asks for.

Sign convention (camsync.OFFSET_CONVENTION): a measured offset_s > 0 means the audio is late.
Delaying audio by d seconds raises the measured offset by d, so delaying it by -offset_s (moving it
earlier by offset_s) brings it back into sync: ``correction_s(offset_s) = -offset_s``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """Nearest whole number of samples; the error is at most half a sample (31 us at 16 kHz)."""
    if not math.isfinite(seconds):
        raise ValueError(f"a shift must be a finite number of seconds, got {seconds}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return int(round(seconds * sample_rate))


def shift_audio(waveform: torch.Tensor, delay_samples: int) -> torch.Tensor:
    """(..., T) moved later by ``delay_samples`` (earlier if negative), same length.

    The samples pushed past either end are dropped and the gap opened at the other end is silence
    (zeros), never a wrap-around: rolling would put the clip's last sound at its start. Returns a new
    tensor; the input (possibly shared by ComfyUI's cache) is not modified.
    """
    length = waveform.shape[-1]
    if abs(delay_samples) >= length:
        raise ValueError(f"a shift of {delay_samples} samples is not shorter than the audio ({length} samples): "
                         "only silence would remain")
    if delay_samples > 0:
        return F.pad(waveform[..., : length - delay_samples], (delay_samples, 0))
    if delay_samples < 0:
        return F.pad(waveform[..., -delay_samples:], (0, -delay_samples))
    return waveform.clone()


def correction_s(offset_s: float) -> float:
    """The delay that undoes a measured offset (positive = audio late): move the audio by -offset_s."""
    return -offset_s
