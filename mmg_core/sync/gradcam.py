"""Grad-CAM (Selvaraju et al. 2017) and the two energies CAM-Sync correlates: VideoCAM and AudioCAM.

Grad-CAM of class c at a layer with activations A (C, h, w): weights a_k = mean over (h, w) of
d logit_c / d A_k, map = ReLU(sum_k a_k A_k). The classifier is split at that layer
(``features`` / ``head``, see backbones.CamClassifier): the features run once under no_grad, in
batches, and only the head is differentiated, so a clip of 250 frames costs one forward pass.

VideoCAM: frames -> Grad-CAM toward the clip's top class (logits averaged over all frames), maps
normalised by their maximum over the whole clip (a frame where the class is barely visible stays
dim), times the frame's motion |f_t - f_(t-1)| (shot cuts held, see motion_maps) -> video energy per frame.
AudioCAM: waveform -> log-mel -> Grad-CAM toward the clip's top class, normalised over the clip,
upsampled to the log-mel grid and summed over mel bins -> audio energy per log-mel frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from .backbones import CamClassifier


@dataclass(frozen=True)
class GradCam:
    maps: torch.Tensor  # (N, h, w) >= 0, unnormalised
    logits: torch.Tensor  # (N, K)
    target: torch.Tensor  # (N,) class index each map explains


def _features(classifier: CamClassifier, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([classifier.features(chunk) for chunk in inputs.split(batch_size)])


def grad_cam(
    classifier: CamClassifier,
    inputs: torch.Tensor,
    target: int | torch.Tensor | None = None,
    *,
    shared_target: bool = False,
    batch_size: int = 32,
) -> GradCam:
    """Grad-CAM maps of ``inputs`` (N, ...) at the classifier's feature layer.

    target: a class index for all, (N,) indices, or None: each input's own top class, or with
    ``shared_target`` the top class of the logits averaged over all N (one class for a whole clip).
    """
    features = _features(classifier, inputs, batch_size)  # (N, C, h, w)
    leaf = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier.head(leaf)  # (N, K)
        if target is None:
            target = logits.mean(0).argmax() if shared_target else logits.argmax(-1)
        target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
        # Samples are independent (eval mode), so the gradient of the summed scores is per sample.
        selected = logits.gather(1, rearrange(target, "n -> n 1")).sum()
        (grads,) = torch.autograd.grad(selected, leaf)
    weights = reduce(grads, "n c h w -> n c", "mean")
    maps = F.relu(torch.einsum("nc,nchw->nhw", weights, features))
    return GradCam(maps=maps, logits=logits.detach(), target=target)


def _normalise_over_clip(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.max()
    return maps / peak if peak > 0 else torch.zeros_like(maps)


def _device(classifier: CamClassifier) -> torch.device:
    """Where the classifier's weights live (CPU for a module without parameters)."""
    parameters = classifier.parameters() if hasattr(classifier, "parameters") else iter(())
    return next(parameters, torch.empty(0)).device


def _class_name(classifier: CamClassifier, index: int) -> str | None:
    names = getattr(classifier, "class_names", None)
    return str(names[index]) if names is not None and index < len(names) else None


# ----------------------------------------------------------------------------------------------
# VideoCAM


@dataclass(frozen=True)
class VideoCam:
    energy: np.ndarray  # (F,) float64: mean over pixels of heatmap x motion
    heatmaps: torch.Tensor  # (F, h, w) in [0, 1], normalised over the clip, at the classifier's map size
    motion: np.ndarray  # (F,) mean |f_t - f_(t-1)| / 2 per frame: the model-free motion energy
    fps: float
    top_class: int
    class_name: str | None


def check_video(video: torch.Tensor) -> torch.Tensor:
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(
            f"video must be a (F, 3, H, W) float tensor in [-1, 1], got {shape}; convert decoded "
            "(F, H, W, 3) uint8 frames with mmg_core.sync.evaluate.frames_to_video"
        )
    return video.float()


# A frame is a shot cut when its mean change from the previous frame is at least CUT_CHANGE (in
# [0, 1] units) and CUT_TO_MEDIAN times the clip's median change. Measured on Big Buck Bunny at 160 px:
# cuts change 0.2-0.4 (10-1200x the median), the fastest real motion 0.17 at 6x its clip's median.
CUT_CHANGE = 0.15
CUT_TO_MEDIAN = 8.0


def shot_cuts(change: torch.Tensor) -> torch.Tensor:
    """(F,) bool: which per-frame mean changes are cuts (see CUT_CHANGE)."""
    return (change >= CUT_CHANGE) & (change >= CUT_TO_MEDIAN * change.median())


def motion_maps(video: torch.Tensor, *, hold_cuts: bool = False) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W) in [0, 1]: |f_t - f_(t-1)| averaged over channels.

    Frame 0 has no predecessor and takes frame 1's map, so the clip's first frame never looks like
    a sudden onset of motion. With ``hold_cuts`` a shot cut (a new picture, not motion, and silent
    as a rule) keeps the previous frame's map instead of a burst that would outweigh every real event.
    """
    video = check_video(video)
    if video.shape[0] < 2:
        return torch.zeros_like(video[:, 0])
    change = reduce((video[1:] - video[:-1]).abs(), "f c h w -> f h w", "mean") / 2.0
    maps = torch.cat([change[:1], change])
    if hold_cuts:
        cuts = shot_cuts(reduce(maps, "f h w -> f", "mean"))
        for frame in torch.nonzero(cuts).flatten().tolist():
            maps[frame] = maps[frame - 1] if frame > 0 else 0.0
    return maps


def _weighted_energy(heatmaps: torch.Tensor, motion: torch.Tensor, batch_size: int) -> np.ndarray:
    """(F,) mean over pixels of the heatmaps (upsampled to the frame size) times the motion."""
    energies = []
    for heat, move in zip(heatmaps.split(batch_size), motion.split(batch_size)):
        upsampled = F.interpolate(rearrange(heat, "f h w -> f 1 h w"), size=move.shape[-2:], mode="bilinear",
                                  align_corners=False)
        energies.append(reduce(rearrange(upsampled, "f 1 h w -> f h w") * move, "f h w -> f", "mean"))
    return torch.cat(energies).double().cpu().numpy()


def video_cam(classifier: CamClassifier, video: torch.Tensor, fps: float, *, batch_size: int = 32) -> VideoCam:
    """VideoCAM of one clip: video (F, 3, H, W) in [-1, 1] at ``fps`` frames per second."""
    video = check_video(video)
    cam = grad_cam(classifier, video.to(_device(classifier)), shared_target=True, batch_size=batch_size)
    heatmaps = _normalise_over_clip(cam.maps).cpu()
    motion = motion_maps(video, hold_cuts=True)
    top = int(cam.target[0])
    return VideoCam(
        energy=_weighted_energy(heatmaps, motion, batch_size),
        heatmaps=heatmaps,
        motion=reduce(motion, "f h w -> f", "mean").double().numpy(),
        fps=float(fps),
        top_class=top,
        class_name=_class_name(classifier, top),
    )


# ----------------------------------------------------------------------------------------------
# AudioCAM


@dataclass(frozen=True)
class AudioCam:
    energy: np.ndarray  # (frames,) float64: heatmap summed over mel bins, per log-mel frame
    heatmap: torch.Tensor  # (n_mels, frames) in [0, 1], normalised over the clip
    log_mel: torch.Tensor  # (n_mels, frames): the classifier's input, for plots
    frames_per_second: float  # log-mel frame j is centred at j / frames_per_second seconds
    top_class: int
    class_name: str | None


def resample_audio(audio: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """(..., T) resampled by zero-padding / truncating its spectrum: an ideal low-pass with zero phase,
    so no sample is shifted in time (a filter delay would bias every offset CAM-Sync measures)."""
    if rate_in == rate_out:
        return audio
    length = round(audio.shape[-1] * rate_out / rate_in)
    spectrum = torch.fft.rfft(audio.double(), dim=-1)
    bins = length // 2 + 1
    kept = spectrum[..., :bins] if bins <= spectrum.shape[-1] else F.pad(spectrum, (0, bins - spectrum.shape[-1]))
    return (torch.fft.irfft(kept, n=length, dim=-1) * (length / audio.shape[-1])).to(audio.dtype)


def mono(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(T,) or (C, T) -> (1, T) float32, channels averaged."""
    audio = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).float()
    if audio.ndim == 1:
        audio = rearrange(audio, "t -> 1 t")
    if audio.ndim != 2 or audio.shape[-1] == 0:
        raise ValueError(f"audio must be (T,) or (C, T) samples, got shape {tuple(audio.shape)}")
    return reduce(audio, "c t -> 1 t", "mean")


def audio_cam(classifier: CamClassifier, audio, sample_rate: int) -> AudioCam:
    """AudioCAM of one clip: audio (T,) or (C, T) in [-1, 1] at ``sample_rate`` (mixed to mono)."""
    config = getattr(classifier, "config", None)
    if config is None or not hasattr(classifier, "log_mel"):
        raise ValueError("the audio classifier must have .config (sample_rate) and .log_mel (see AudioEventNet)")
    wave = resample_audio(mono(audio), int(sample_rate), config.sample_rate)
    batch = rearrange(wave, "1 t -> 1 1 t").to(_device(classifier))
    cam = grad_cam(classifier, batch)
    with torch.no_grad():
        log_mel = rearrange(classifier.log_mel(batch), "1 1 m t -> m t").cpu()
    heat = F.interpolate(rearrange(cam.maps, "1 h w -> 1 1 h w"), size=log_mel.shape, mode="bilinear",
                         align_corners=False)
    heatmap = _normalise_over_clip(rearrange(heat, "1 1 m t -> m t")).cpu()
    top = int(cam.target[0])
    return AudioCam(
        energy=reduce(heatmap, "m t -> t", "sum").double().numpy(),
        heatmap=heatmap,
        log_mel=log_mel,
        frames_per_second=float(classifier.frames_per_second),
        top_class=top,
        class_name=_class_name(classifier, top),
    )
