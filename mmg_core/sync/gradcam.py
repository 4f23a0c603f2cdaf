"""Grad-CAM (Selvaraju et al. 2017) and the two energies CAM-Sync correlates: VideoCAM and AudioCAM.

Grad-CAM of class c at a layer with activations A (C, h, w): weights a_k = mean over (h, w) of
d logit_c / d A_k, map = ReLU(sum_k a_k A_k). The classifier is split at that layer
(``features`` / ``head``, see backbones.CamClassifier): the features run once under no_grad, in
batches, and only the head is differentiated, so a clip of 250 frames costs one forward pass.

VideoCAM: frames -> Grad-CAM toward the clip's top class (logits averaged over all frames), maps
normalised by their maximum over the whole clip (a frame where the class is barely visible stays
dim), times the frame's motion |f_t - f_(t-1)| (shot cuts held, see motion_maps) -> video energy per
frame; and the same maps times the motion "turn-back" ReLU(-(f_t - f_(t-1)) . (f_(t+1) - f_t)) -> a
turn-back energy per frame that peaks where motion reverses (a bounce, a hit), see turn_back_maps.
AudioCAM: waveform -> log-mel -> Grad-CAM toward the clip's top class (never a background class such as
music, see AudioNetConfig.background_classes), normalised over the clip and
smeared over the log-mel frames each CAM step pooled -> audio energy per log-mel frame: the level in
dB of the CAM-weighted mel power, see cam_level_db.
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
    candidates: list[int] | None = None,
) -> GradCam:
    """Grad-CAM maps of ``inputs`` (N, ...) at the classifier's feature layer.

    target: a class index for all, (N,) indices, or None: each input's own top class, or with
    ``shared_target`` the top class of the logits averaged over all N (one class for a whole clip);
    ``candidates`` limits that choice to these class indices.
    """
    features = _features(classifier, inputs, batch_size)  # (N, C, h, w)
    leaf = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier.head(leaf)  # (N, K)
        if target is None:
            target = top_class(logits.detach(), shared_target, candidates)
        target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
        # Samples are independent (eval mode), so the gradient of the summed scores is per sample.
        selected = logits.gather(1, rearrange(target, "n -> n 1")).sum()
        (grads,) = torch.autograd.grad(selected, leaf)
    weights = reduce(grads, "n c h w -> n c", "mean")
    maps = F.relu(torch.einsum("nc,nchw->nhw", weights, features))
    return GradCam(maps=maps, logits=logits.detach(), target=target)


def top_class(logits: torch.Tensor, shared: bool = False, candidates: list[int] | None = None) -> torch.Tensor:
    """(N,) each row's highest logit, or with ``shared`` one index for the mean over rows; only
    ``candidates`` (class indices) compete when given."""
    scores = logits.mean(0, keepdim=True) if shared else logits
    if candidates is not None:
        excluded = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
        excluded[candidates] = False
        scores = scores.masked_fill(excluded, float("-inf"))
    top = scores.argmax(-1)
    return top[0] if shared else top


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
    turn_back: np.ndarray | None = None  # (F,) float64: mean over pixels of heatmap x turn-back (see turn_back_maps)


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


def _hold(maps: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``maps`` (F, H, W) with each frame flagged in ``frames`` (F,) bool replaced by the map before it
    (0 for frame 0), in frame order so a run of flagged frames all hold the last clean one."""
    for frame in torch.nonzero(frames).flatten().tolist():
        maps[frame] = maps[frame - 1] if frame > 0 else 0.0
    return maps


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
        maps = _hold(maps, shot_cuts(reduce(maps, "f h w -> f", "mean")))
    return maps


def turn_back_maps(video: torch.Tensor, *, hold_cuts: bool = False) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W) >= 0: ReLU(-(f_t - f_(t-1)) . (f_(t+1) - f_t)), the dot
    product over channels of the half-differences (so each term is in [-1, 1] units).

    Why: an impact is where motion reverses. A pixel a bouncing ball covers only at the bounce
    brightens from t-1 to t and darkens from t to t+1: the two changes point opposite ways and the
    map is positive on frame t, the frame the sound belongs to. Steady motion (a pixel changing the
    same way twice, or once) gives 0; motion energy |f_t - f_(t-1)| instead rises all the way down
    and peaks before the bounce. Frames 0 and F-1 lack a neighbour and get 0. With ``hold_cuts``,
    a frame whose product involves a shot cut (the cut frame itself, or the frame before it) keeps
    the previous frame's map: a new picture is no reversal of motion.
    """
    video = check_video(video)
    maps = torch.zeros_like(video[:, 0])
    if video.shape[0] < 3:
        return maps
    change = (video[1:] - video[:-1]) / 2.0  # (F-1, 3, H, W): change[k] = f_(k+1) - f_k
    maps[1:-1] = F.relu(-reduce(change[:-1] * change[1:], "f c h w -> f h w", "sum"))
    if hold_cuts:
        mean_change = reduce(change.abs(), "f c h w -> f", "mean")
        cuts = shot_cuts(torch.cat([mean_change[:1], mean_change]))  # per frame, as in motion_maps
        touched = cuts | torch.cat([cuts[1:], cuts.new_zeros(1)])  # frame t uses f_(t+1) - f_t too
        maps = _hold(maps, touched)
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
        turn_back=_weighted_energy(heatmaps, turn_back_maps(video, hold_cuts=True), batch_size),
    )


# ----------------------------------------------------------------------------------------------
# AudioCAM


@dataclass(frozen=True)
class AudioCam:
    energy: np.ndarray  # (frames,) float64 >= 0: dB level of the CAM-weighted mel power (cam_level_db)
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


# The audio energy's floor, below the clip's loudest CAM-weighted frame: without one, a frame where
# the CAM is 0 would sit at -inf dB and the next frame's return to the sound would be a huge onset.
# 50 dB, as loudness_envelope's floor (camsync.py).
LEVEL_FLOOR_DB = 50.0


def mel_power(classifier: CamClassifier, log_mel: torch.Tensor) -> torch.Tensor:
    """The mel power (n_mels, frames) behind a classifier's normalised log-mel, undoing
    AudioNetConfig's (log(power + 1e-6) - log_mean) / log_std, so energy and CAM share one grid."""
    config = classifier.config
    return torch.exp(log_mel.double() * config.log_std + config.log_mean)


def smear(cam_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) CAM -> (n_mels, frames): each cell spread evenly over the log-mel cells it pooled.

    Nearest, not bilinear: a CAM step summarises exactly ``time_pool`` log-mel frames, so its weight
    belongs to those frames and to no neighbour; a bilinear ramp would leak a loud step's weight
    into the quiet frames before it and blur the onset the energy is read for.
    """
    spread = F.interpolate(rearrange(cam_map, "h w -> 1 1 h w"), size=size, mode="nearest-exact")
    return rearrange(spread, "1 1 m t -> m t")


def cam_level_db(heatmap: torch.Tensor, power: torch.Tensor, floor_db: float = LEVEL_FLOOR_DB) -> np.ndarray:
    """(frames,) level in dB of the CAM-weighted mean mel power, minus its minimum (so >= 0).

    Why dB: onsets are rises of the signal, and loudness is heard (and a classifier's log-mel input
    scaled) logarithmically, so a rise of 20 dB is an event at any level; the heatmap alone would
    leave the sound's own level out, and a linear power would let the loudest note drown the rest.
    Frames are floored ``floor_db`` below the loudest one (a silent clip stays all 0, hence flat).
    Floor and minimum are relative to the clip, so the energy ignores the clip's overall gain.
    """
    weighted = reduce(heatmap.double() * power.double(), "m t -> t", "mean")
    peak = float(weighted.max())
    if not peak > 0:
        return np.zeros(weighted.shape[0])
    level = 10.0 * torch.log10(weighted + peak * 10.0 ** (-floor_db / 10.0))
    return (level - level.min()).numpy()


def audio_cam(classifier: CamClassifier, audio, sample_rate: int) -> AudioCam:
    """AudioCAM of one clip: audio (T,) or (C, T) in [-1, 1] at ``sample_rate`` (mixed to mono)."""
    config = getattr(classifier, "config", None)
    if not (hasattr(classifier, "log_mel") and all(hasattr(config, k) for k in ("sample_rate", "log_mean", "log_std"))):
        raise ValueError("the audio classifier must have .log_mel and .config with sample_rate, log_mean and log_std "
                         "(see AudioEventNet and AudioNetConfig)")
    wave = resample_audio(mono(audio), int(sample_rate), config.sample_rate)
    batch = rearrange(wave, "1 t -> 1 1 t").to(_device(classifier))
    background = getattr(config, "background_classes", ())
    cam = grad_cam(classifier, batch, candidates=config.event_class_indices if background else None)
    with torch.no_grad():
        log_mel = rearrange(classifier.log_mel(batch), "1 1 m t -> m t").cpu()
    heatmap = _normalise_over_clip(smear(cam.maps[0].cpu(), tuple(log_mel.shape)))
    top = int(cam.target[0])
    return AudioCam(
        energy=cam_level_db(heatmap, mel_power(classifier, log_mel)),
        heatmap=heatmap,
        log_mel=log_mel,
        frames_per_second=float(classifier.frames_per_second),
        top_class=top,
        class_name=_class_name(classifier, top),
    )
