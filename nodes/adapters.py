"""The one place where ComfyUI types meet ``mmg_core`` types.

ComfyUI conventions (0.3.75): IMAGE is float (N, H, W, C) in [0, 1] with frames as the batch;
AUDIO is ``{"waveform": (B, C, T), "sample_rate": int}``. The pack's own latent type
``MMG_AV_LATENT`` is a dict ``{"video": (B, F, C, H, W), "audio": (B, C, L), "config"}`` in the model's
space (see ``mmg_core.codec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from ..mmg_core.av import AV
from ..mmg_core.models.mmdiffusion_config import MMDiffusionConfig
from ..mmg_core.pipeline import DecodedClip

PREVIEW_SIZE = 256


def make_latent(av: AV, config: MMDiffusionConfig) -> dict[str, Any]:
    """The latent remembers its model's config: decoding needs its codec, frame rate and sample rate."""
    return {"video": av.video, "audio": av.audio, "config": config}


def latent_to_av(latent: Any) -> AV:
    if not isinstance(latent, dict) or not {"video", "audio", "config"} <= set(latent):
        raise ValueError("expected an MMG audio-video latent (from 'MMG Empty AV Latent' or 'MMG Sampler')")
    return AV(video=latent["video"], audio=latent["audio"])


def clip_to_comfy(clip: DecodedClip) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Batch of clips → (IMAGE, AUDIO, fps). Clips of a batch play back to back, in sync:
    frames are concatenated in batch order and so is the audio, each clip's audio spanning exactly
    its frames."""
    images = rearrange(clip.frames, "b f h w c -> (b f) h w c").contiguous()
    waveform = rearrange(clip.audio, "b c t -> c (b t)")[None].contiguous()
    return images, {"waveform": waveform, "sample_rate": clip.sample_rate}, clip.fps


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE (N, H, W, C) in [0, 1] → uint8 RGB (N, H, W, 3); grey and RGBA inputs are converted."""
    return (rgb_images(images).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@dataclass(frozen=True)
class AudioArray:
    samples: np.ndarray  # (C, T) float32
    sample_rate: int


def comfy_audio_to_array(audio: Any) -> AudioArray:
    """AUDIO dict → (C, T) float32; a batch of waveforms is joined end to end."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be a ComfyUI AUDIO value ({'waveform': (B, C, T), 'sample_rate': int})")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3:
        raise ValueError(f"audio waveform must be (batch, channels, samples), got {getattr(waveform, 'shape', waveform)}")
    joined = rearrange(waveform.float().cpu(), "b c t -> c (b t)")
    return AudioArray(samples=joined.numpy(), sample_rate=int(audio["sample_rate"]))


def preview_image(pixels: torch.Tensor) -> Image.Image:
    """Middle frame of the first clip of predicted pixels (B, F, C, H, W) in [-1, 1], as a PIL image."""
    frame = pixels[0, pixels.shape[1] // 2]
    pixels = ((frame.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    image = Image.fromarray(rearrange(pixels, "c h w -> h w c").cpu().numpy())
    scale = PREVIEW_SIZE / max(image.size)
    if scale > 1:  # tiny clips are hard to see in the node: upscale with crisp pixels
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    return image


def images_to_video(images: Any) -> torch.Tensor:
    """IMAGE (F, H, W, C) in [0, 1] → mmg_core's video layout (F, 3, H, W) in [-1, 1] (a new tensor)."""
    return rearrange(rgb_images(images), "f h w c -> f c h w").clamp(0, 1) * 2.0 - 1.0


def rgb_images(images: Any) -> torch.Tensor:
    """IMAGE (F, H, W, C) with 1, 3 or 4 channels → (F, H, W, 3) float on the CPU (grey repeated, alpha
    dropped); anything else is an error that says what was connected."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be an IMAGE batch (frames, height, width, channels), got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: connect at least one frame")
    channels = images.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got {channels}")
    return images.float().cpu()[..., :3].expand(-1, -1, -1, 3)


def array_to_image(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) picture → IMAGE (1, H, W, 3) in [0, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.float32)).div(255.0)[None]  # a copy: PIL arrays are read-only


def comfy_audio_waveform(audio: Any) -> tuple[torch.Tensor, int]:
    """AUDIO dict → (waveform (B, C, T) float, sample rate), checked; the batch is kept as it is."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be a ComfyUI AUDIO value ({'waveform': (B, C, T), 'sample_rate': int})")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3:
        raise ValueError(f"audio waveform must be (batch, channels, samples), got {getattr(waveform, 'shape', waveform)}")
    if waveform.shape[-1] == 0:
        raise ValueError("audio is empty (0 samples): connect a soundtrack")
    sample_rate = int(audio["sample_rate"])
    if sample_rate <= 0:
        raise ValueError(f"audio sample_rate must be positive, got {sample_rate}")
    return waveform, sample_rate


def show_text_on_node(node_cls, text: str) -> None:
    """Show ``text`` on the node in the ComfyUI frontend while the prompt runs (the "progress text"
    preview ComfyUI's API nodes use for their status); a node's ``ui`` text alone only reaches /history.

    Needs ``io.Hidden.unique_id`` in the node's schema. Outside a running ComfyUI (a node's execute
    called directly, as unit tests do) there is no node id, and nothing is sent.
    """
    node_id = getattr(getattr(node_cls, "hidden", None), "unique_id", None)
    if not node_id or not text:
        return
    from server import PromptServer  # ComfyUI's own module: importable wherever a node id was given

    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_progress_text(text, node_id, sid=instance.client_id)  # to the client that queued it
