"""render_clip: a ClipSpec becomes tensors in mmg_core's layouts, a caption and the ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from .captions import default_caption
from .config import DEFAULT_CONFIG, WorldConfig
from .render_audio import render_audio
from .render_video import render_frames
from .spec import ClipSpec
from .timeline import build_timeline


@dataclass(frozen=True)
class Clip:
    """One rendered clip with its ground truth.

    motion is per scene: ball height above the floor and drum stick lift (0 on event frames, 1 at
    the top), lamp lit (0/1), slider bar height (0 bottom .. 1 top).
    """

    video: torch.Tensor  # (F, C, H, W) float32 in [-1, 1]
    audio: torch.Tensor  # (1, T) float32 in [-1, 1]
    caption: str
    spec: ClipSpec
    config: WorldConfig
    event_frames: tuple[int, ...]  # ball contacts, drum strikes, lamp switch-ons (empty for slider)
    off_frames: tuple[int, ...]  # lamp switch-offs inside the clip (empty for other scenes)
    motion: np.ndarray  # (F,) float32

    @property
    def events(self) -> tuple[float, ...]:
        """Event times in seconds (frame / fps); each sound starts exactly then."""
        return tuple(k / self.config.fps for k in self.event_frames)

    @property
    def off_events(self) -> tuple[float, ...]:
        return tuple(k / self.config.fps for k in self.off_frames)

    @property
    def event_samples(self) -> tuple[int, ...]:
        return tuple(self.config.frame_sample(k) for k in self.event_frames)

    def frames_uint8(self) -> np.ndarray:
        """(F, H, W, 3) uint8 RGB, as mmg_core.media writes and the analysis functions read."""
        pixels = rearrange(self.video, "f c h w -> f h w c")
        return ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def render_clip(
    spec: ClipSpec, config: WorldConfig = DEFAULT_CONFIG, *, caption_split: str = "train"
) -> Clip:
    """Render one clip; the caption is drawn from the spec's seed with ``caption_split``'s wording."""
    timeline = build_timeline(spec, config)
    frames = render_frames(spec, timeline, config)  # (F, H, W, 3) in 0..255
    # numpy until the end: torch's thread pool costs more than the arithmetic on tensors this small.
    pixels = np.ascontiguousarray(rearrange(frames, "f h w c -> f c h w"))
    video = torch.from_numpy(np.clip(pixels / np.float32(127.5) - np.float32(1.0), -1.0, 1.0))
    audio = torch.from_numpy(render_audio(spec, timeline, config))[None]  # (1, T)
    off_frames = tuple(off for _, off in timeline.lamp_on if 0 < off < config.frames)
    return Clip(
        video=video,
        audio=audio,
        caption=default_caption(spec, caption_split),
        spec=spec,
        config=config,
        event_frames=timeline.events,
        off_frames=off_frames,
        motion=timeline.motion,
    )


def render_batch(
    specs: Sequence[ClipSpec], config: WorldConfig = DEFAULT_CONFIG, *, caption_split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Clip]]:
    """Stacked (B, F, C, H, W) video, (B, 1, T) audio, captions and the clips themselves."""
    if not specs:
        raise ValueError("render_batch needs at least one ClipSpec")
    clips = [render_clip(spec, config, caption_split=caption_split) for spec in specs]
    video = torch.stack([clip.video for clip in clips])
    audio = torch.stack([clip.audio for clip in clips])
    return video, audio, [clip.caption for clip in clips], clips
