"""The joint audio-video state that samplers and models pass around.

Layouts used everywhere in ``mmg_core`` (one per modality):
  video: (B, F, C, H, W)  frames, values in [-1, 1] in pixel space
  audio: (B, C, T)        waveform samples, values in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class AV:
    """A pair of tensors treated as one state by the solvers."""

    video: torch.Tensor  # (B, F, C, H, W)
    audio: torch.Tensor  # (B, C, T)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "AV":
        return AV(video=fn(self.video), audio=fn(self.audio))

    def zip_map(self, other: "AV", fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> "AV":
        return AV(video=fn(self.video, other.video), audio=fn(self.audio, other.audio))

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]

    def to(self, *args, **kwargs) -> "AV":
        return self.map(lambda x: x.to(*args, **kwargs))

    def items(self):
        return (("video", self.video), ("audio", self.audio))


def randn_av(video_shape, audio_shape, *, generator: torch.Generator, device=None, dtype=torch.float32) -> AV:
    """Gaussian noise for both streams, drawn video first then audio from one generator.

    The draw happens on the generator's device and is then moved, so a CPU generator gives the
    same noise whatever device the model runs on.
    """
    gen_device = generator.device
    video = torch.randn(tuple(video_shape), generator=generator, device=gen_device, dtype=torch.float32)
    audio = torch.randn(tuple(audio_shape), generator=generator, device=gen_device, dtype=torch.float32)
    return AV(video=video.to(device=device, dtype=dtype), audio=audio.to(device=device, dtype=dtype))
