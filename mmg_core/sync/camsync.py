"""CAM-Sync (REFERENCE.md section 4) and two baselines: AV-Align and a model-free onset-motion sync.

CAM-Sync: a video energy per frame and an audio energy per audio frame (gradcam.py) are put on one
25 Hz timeline, turned into onset form (positive differences), z-scored, and cross-correlated over
lags up to +-2 s (at most half the clip, so every lag compares at least half of it). The video side's
event signal is, per step, the larger of the motion onsets and VideoCAM's turn-back energy (motion
reversing: an impact), each divided by its own std (video_events). Reported:
  score        peak normalised cross-correlation, in [-1, 1]
  offset_s     lag of the peak in seconds, refined between timeline steps by a parabola
  confidence   peak minus the median correlation over all lags
  score_at_0   the correlation at lag 0 (what an aligned clip is judged by)
A flat energy (no motion, silence, a steady tone) cannot be synchronised: every number is NaN and
``reason`` says which side was flat, instead of a 0 that would read as "measured, uncorrelated".

Sign convention, defined here and nowhere else (OFFSET_CONVENTION): a positive offset means the
audio is late, its events come offset_s seconds after the matching picture events; delaying a
clip's audio by d seconds raises the measured offset by d.

Timing: a video frame k is on screen during [k / fps, (k + 1) / fps), and its motion (the change
from frame k - 1) shows at k / fps. A log-mel frame j is centred at j / frames_per_second. Both are
treated as piecewise constant over those intervals and averaged exactly into the timeline's bins
[i / 25, (i + 1) / 25), so a sound starting with the frame that shows its cause lands in the same bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce

from .backbones import mel_filterbank
from .gradcam import AudioCam, VideoCam, check_video, mono, motion_maps

OFFSET_CONVENTION = "positive offset_s = audio late (its events follow the picture's by offset_s seconds)"
TIMELINE_RATE = 25.0  # Hz, the common timeline of both energies
DEFAULT_MAX_LAG_S = 2.0
MIN_TIMELINE_STEPS = 4  # shorter clips (< 0.16 s) have no meaningful lag search
# An energy is flat when the std of its onset form is below this fraction of its mean level. On
# world clips (4 s, after an MP4 round trip) event clips measure 0.16-0.6 (loudness, motion and
# AudioCAM alike) and the slider's steady tone 0.035 (AudioCAM) to 0.064 (loudness); silence and a
# frozen picture measure 0. To be recalibrated on real footage.
FLAT_RELATIVE = 0.05
FLAT_ABSOLUTE = 1e-12


@dataclass(frozen=True)
class SyncResult:
    score: float
    offset_s: float
    confidence: float
    score_at_0: float
    reason: str | None = None  # why the clip is unsynchronizable (all numbers NaN), else None
    lags_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    correlation: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def synchronizable(self) -> bool:
        return self.reason is None

    def summary(self) -> dict[str, float | str | None]:
        return {"score": self.score, "offset_s": self.offset_s, "confidence": self.confidence,
                "score_at_0": self.score_at_0, "reason": self.reason}


def unsynchronizable(reason: str) -> SyncResult:
    return SyncResult(math.nan, math.nan, math.nan, math.nan, reason)


def centred_start(frames_per_second: float) -> float:
    """Where the interval of frame 0 begins for frames centred on j / frames_per_second (log-mel)."""
    return -0.5 / frames_per_second


# ----------------------------------------------------------------------------------------------
# Timeline


def resample_held(values, rate: float, target_rate: float, duration_s: float, start_s: float = 0.0) -> np.ndarray:
    """Average a piecewise-constant signal into bins [i / target_rate, (i + 1) / target_rate).

    values[j] holds during [start_s + j / rate, start_s + (j + 1) / rate). Each bin is the exact
    mean over the part of it the signal covers (0 where it covers nothing), computed from the
    signal's running integral, so up- and downsampling move no edge in time.
    """
    values = np.asarray(values, np.float64)
    edges = start_s + np.arange(values.size + 1) / rate
    integral = np.concatenate([[0.0], np.cumsum(values) / rate])
    bins = np.arange(int(math.floor(duration_s * target_rate + 1e-9)) + 1) / target_rate
    area = np.diff(np.interp(bins, edges, integral))
    covered = np.clip(np.minimum(bins[1:], edges[-1]) - np.maximum(bins[:-1], edges[0]), 0.0, None)
    return np.divide(area, covered, out=np.zeros_like(area), where=covered > 1e-12)


def onset_form(signal: np.ndarray) -> np.ndarray:
    """Positive first differences: rises in energy (onsets) count, decays do not."""
    return np.maximum(np.diff(signal, prepend=signal[:1]), 0.0)


def _unit_std(x: np.ndarray) -> np.ndarray:
    std = float(np.std(x))
    return x / std if std > 0 else np.zeros_like(x)


def video_events(timeline: np.ndarray, turn_back: np.ndarray | None = None) -> np.ndarray:
    """The picture's event signal on the timeline: motion onsets, or per step the larger of the motion
    onsets and the turn-back energy, each divided by its std.

    Why both: motion onsets mark where movement starts (a lamp switching on, a hand starting to
    strike), turn-back marks where it reverses (a ball bouncing: its motion rises all the way down,
    so the onset comes before the sound). Dividing each by its std puts them on one scale whatever
    the units; the max keeps whichever event the step has without adding a step's two views twice.
    """
    onsets = onset_form(timeline)
    if turn_back is None:
        return onsets
    return np.maximum(_unit_std(onsets), _unit_std(turn_back))


def _flatness(timeline: np.ndarray, onsets: np.ndarray) -> bool:
    return float(np.std(onsets)) <= FLAT_RELATIVE * float(np.mean(np.abs(timeline))) + FLAT_ABSOLUTE


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def normalised_xcorr(audio: np.ndarray, video: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(lags, r) for z-scored signals of length N: r[L] = sum over the overlap of a[t + L] v[t], / N.

    Positive L pairs the audio at t + L with the picture at t: audio late (OFFSET_CONVENTION).
    r[0] is the Pearson correlation. Dividing every lag by the full N (not by the overlap's own
    norms) keeps a long lag from scoring high just because it pushed the unmatched events out of
    the overlap; it lowers far lags a little, a mild prior toward alignment.
    """
    lags = np.arange(-max_lag, max_lag + 1)
    n = audio.size
    r = np.array([
        float(audio[lag:] @ video[: n - lag]) if lag >= 0 else float(audio[: n + lag] @ video[-lag:]) for lag in lags
    ]) / n
    return lags, r


def _peak(r: np.ndarray, lags: np.ndarray) -> tuple[int, float]:
    """Index of the highest correlation (the smallest |lag| among ties) and its parabola-refined lag."""
    index = max(range(r.size), key=lambda i: (r[i], -abs(lags[i])))
    lag = float(lags[index])
    if 0 < index < r.size - 1:
        left, mid, right = r[index - 1], r[index], r[index + 1]
        curvature = left - 2.0 * mid + right
        if curvature < 0:
            lag += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return index, lag


def correlate_onsets(audio_onsets: np.ndarray, video_onsets: np.ndarray, rate: float, max_lag_s: float) -> SyncResult:
    """Score, offset, confidence and lag-0 score of two onset signals on one timeline at ``rate``."""
    max_lag = min(int(round(max_lag_s * rate)), audio_onsets.size // 2)
    if max_lag < 1:
        return unsynchronizable(f"max_lag_s={max_lag_s} is shorter than one timeline step (1/{rate:g} s)")
    lags, r = normalised_xcorr(_zscore(audio_onsets), _zscore(video_onsets), max_lag)
    index, lag = _peak(r, lags)
    return SyncResult(
        score=float(r[index]), offset_s=lag / rate, confidence=float(r[index] - np.median(r)),
        score_at_0=float(r[lags == 0][0]), lags_s=lags / rate, correlation=r,
    )


def pooled_sync(results: Sequence[SyncResult]) -> SyncResult:
    """One offset for many clips: the mean of their correlation curves, read like one clip's.

    Why pool curves rather than take the median of per-clip offsets: on a short clip of real footage
    (music, cuts, camera moves) the true lag is often not the highest peak, so per-clip offsets
    scatter over the whole lag range; but the true lag is raised a little in most clips while the
    spurious peaks fall at different lags, so it stands out in the mean curve. This is what tells a
    set of clips (one model's outputs, one film) whose audio is late by a constant amount.
    Unsynchronizable results are skipped; the curves are compared on the lags every clip has
    (short clips search a shorter range). NaN with a reason when no clip can be used.
    """
    usable = [r for r in results if r.synchronizable and r.correlation.size]
    if not usable:
        return unsynchronizable("no synchronizable clip to pool")
    common_max_lag_s = min(float(np.max(np.abs(r.lags_s))) for r in usable)
    step_s = float(usable[0].lags_s[1] - usable[0].lags_s[0])
    curves = []
    for result in usable:
        if not math.isclose(float(result.lags_s[1] - result.lags_s[0]), step_s):
            raise ValueError("pooled_sync needs every clip's correlation on the same lag step")
        keep = np.abs(result.lags_s) <= common_max_lag_s + 1e-9
        curves.append(result.correlation[keep])
    lags_s = usable[0].lags_s[np.abs(usable[0].lags_s) <= common_max_lag_s + 1e-9]
    mean = np.mean(curves, axis=0)
    index, lag_steps = _peak(mean, np.round(lags_s / step_s))
    return SyncResult(score=float(mean[index]), offset_s=lag_steps * step_s,
                      confidence=float(mean[index] - np.median(mean)),
                      score_at_0=float(mean[np.argmin(np.abs(lags_s))]), lags_s=lags_s, correlation=mean)


def sync_energies(
    video_energy, video_rate: float, audio_energy, audio_rate: float, *, duration_s: float,
    video_start_s: float = 0.0, audio_start_s: float = 0.0, rate: float = TIMELINE_RATE,
    max_lag_s: float = DEFAULT_MAX_LAG_S, video_turn_back=None,
) -> SyncResult:
    """Correlate any video and audio energy (each piecewise constant from its start, see module doc).

    ``video_turn_back`` (optional, per video frame like ``video_energy``) joins the motion onsets in
    the video's event signal (video_events); flatness is judged on the motion energy alone.
    """
    if not duration_s * rate >= MIN_TIMELINE_STEPS:
        steps = f"{MIN_TIMELINE_STEPS} steps of 1/{rate:g} s"
        return unsynchronizable(f"clip of {duration_s:.3f} s is shorter than {steps}: too short to align")
    signals, timelines = {}, {}
    for name, energy, energy_rate, start in (("video", video_energy, video_rate, video_start_s),
                                               ("audio", audio_energy, audio_rate, audio_start_s),
                                               ("turn-back", video_turn_back, video_rate, video_start_s)):
        if energy is None:
            continue
        timelines[name] = resample_held(energy, energy_rate, rate, duration_s, start)
        if not np.all(np.isfinite(timelines[name])):
            return unsynchronizable(f"{name} energy has NaN or infinite values")
    for name in ("video", "audio"):
        signals[name] = onset_form(timelines[name])
        if _flatness(timelines[name], signals[name]):
            what = "no motion where the classifier looks" if name == "video" else "silence or a steady sound"
            return unsynchronizable(f"{name} energy is flat ({what}): nothing to align")
    signals["video"] = video_events(timelines["video"], timelines.get("turn-back"))
    return correlate_onsets(signals["audio"], signals["video"], rate, max_lag_s)


def cam_sync(video: VideoCam, audio: AudioCam, *, duration_s: float | None = None,
             max_lag_s: float = DEFAULT_MAX_LAG_S) -> SyncResult:
    """CAM-Sync of a clip's VideoCAM and AudioCAM; the duration defaults to the video's (frames / fps)."""
    duration = video.energy.size / video.fps if duration_s is None else duration_s
    return sync_energies(
        video.energy, video.fps, audio.energy, audio.frames_per_second, duration_s=duration,
        audio_start_s=centred_start(audio.frames_per_second), max_lag_s=max_lag_s, video_turn_back=video.turn_back,
    )


def cam_onsets(video: VideoCam, audio: AudioCam, rate: float = TIMELINE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(video events, audio onsets) on the timeline, exactly as cam_sync correlates them (for plots)."""
    duration = video.energy.size / video.fps
    turn_back = None if video.turn_back is None else resample_held(video.turn_back, video.fps, rate, duration)
    video_onsets = video_events(resample_held(video.energy, video.fps, rate, duration), turn_back)
    start = centred_start(audio.frames_per_second)
    audio_onsets = onset_form(resample_held(audio.energy, audio.frames_per_second, rate, duration, start))
    return video_onsets, audio_onsets


# ----------------------------------------------------------------------------------------------
# Model-free baseline: loudness onsets against frame-difference motion


def log_mel_power(audio, sample_rate: int, *, n_mels: int = 64) -> tuple[torch.Tensor, float]:
    """(n_mels, frames) mel power of 25 ms Hann windows centred every 10 ms, and frames per second."""
    wave = mono(audio)[0].double()
    hop, win = max(round(sample_rate * 0.010), 1), max(round(sample_rate * 0.025), 2)
    n_fft = 1 << (win - 1).bit_length()
    if wave.numel() <= n_fft // 2:
        raise ValueError(f"audio of {wave.numel()} samples is too short for a {n_fft}-point spectrum")
    spec = torch.stft(wave, n_fft, hop, win, torch.hann_window(win, dtype=torch.float64), center=True,
                      pad_mode="reflect", return_complex=True)
    fbank = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, 50.0, min(8000.0, sample_rate / 2)).double()
    return fbank @ spec.abs() ** 2, sample_rate / hop


def _db(power: torch.Tensor, top_db: float) -> torch.Tensor:
    db = 10.0 * torch.log10(power + 1e-12)
    return torch.maximum(db, db.max() - top_db)


def loudness_envelope(audio, sample_rate: int, *, top_db: float = 50.0) -> tuple[np.ndarray, float]:
    """(frames,) level in dB of each frame's total mel power, floored ``top_db`` below the clip's
    loudest frame (background hiss then adds no onsets), and its frames per second."""
    power, frames_per_second = log_mel_power(audio, sample_rate)
    level = _db(reduce(power, "m t -> t", "sum"), top_db)
    return (level - level.min()).double().numpy(), frames_per_second


def onset_motion_sync(video: torch.Tensor, audio, fps: float, sample_rate: int, *,
                      max_lag_s: float = DEFAULT_MAX_LAG_S) -> SyncResult:
    """CAM-Sync's correlation on model-free energies: mean frame difference against loudness."""
    motion = reduce(motion_maps(video), "f h w -> f", "mean").double().numpy()
    loudness, frames_per_second = loudness_envelope(audio, sample_rate)
    return sync_energies(motion, fps, loudness, frames_per_second, duration_s=motion.size / fps,
                         audio_start_s=centred_start(frames_per_second), max_lag_s=max_lag_s)


# ----------------------------------------------------------------------------------------------
# AV-Align (Yariv et al. 2024): audio onset peaks against peaks of the picture's motion


@dataclass(frozen=True)
class AVAlign:
    score: float  # I / (|A| + |V| - I), NaN when both sides are empty
    audio_onsets_s: tuple[float, ...]
    video_peaks: tuple[int, ...]  # frame indices
    reason: str | None = None


def flow_speed(video: torch.Tensor) -> np.ndarray:
    """(F,) mean normal-flow speed (pixels per frame) from frame t - 1 to t; frame 0 gets 0.

    AV-Align used dense Farneback optical flow; no flow library ships offline, so this is the
    least-squares speed along the image gradient, sum |I_t| |grad I| / sum |grad I|^2 on the grey,
    3x3-smoothed frames: the component of optical flow a brightness change reveals.
    """
    grey = reduce(check_video(video), "f c h w -> f 1 h w", "mean")
    grey = F.avg_pool2d(grey, 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    if grey.shape[0] < 2:
        return np.zeros(grey.shape[0])
    change = grey[1:] - grey[:-1]
    gy, gx = torch.gradient(0.5 * (grey[1:] + grey[:-1]), dim=(1, 2))
    gradient = torch.sqrt(gx**2 + gy**2)
    agreement = reduce(change.abs() * gradient, "f h w -> f", "sum")
    speed = agreement / reduce(gradient**2, "f h w -> f", "sum").clamp_min(1e-12)
    return np.concatenate([[0.0], speed.double().numpy()])


def local_maxima(signal: np.ndarray, min_relative: float = 0.1) -> list[int]:
    """Indices 1..n-2 above their left neighbour and not below their right one (a plateau's first
    index), reaching ``min_relative`` of the signal's maximum so codec noise on a still picture
    makes no peaks. The ends cannot be judged with one neighbour and are never peaks."""
    signal = np.asarray(signal, np.float64)
    if signal.size < 3 or signal.max() <= 0:
        return []
    level = min_relative * signal.max()
    middle = np.arange(1, signal.size - 1)
    keep = (signal[middle] > signal[middle - 1]) & (signal[middle] >= signal[middle + 1]) & (signal[middle] >= level)
    return [int(i) for i in middle[keep]]


def audio_onset_times(audio, sample_rate: int, *, delta: float = 0.07, wait_s: float = 0.03) -> list[float]:
    """Onset times (s): peaks of the spectral flux (summed positive log-mel rises), librosa-style:
    a frame is an onset when it is the maximum within +-30 ms, exceeds the mean within +-100 ms by
    ``delta`` (flux normalised to [0, 1]) and follows the previous onset by ``wait_s`` or more."""
    power, frames_per_second = log_mel_power(audio, sample_rate)
    db = _db(power, 80.0)
    flux = reduce(torch.relu(db[:, 1:] - db[:, :-1]), "m t -> t", "sum").double().numpy()
    flux = np.concatenate([[0.0], flux])
    if flux.max() - flux.min() <= 1e-9:
        return []
    flux = (flux - flux.min()) / (flux.max() - flux.min())
    near, around = round(0.03 * frames_per_second), round(0.1 * frames_per_second)
    padded = np.pad(flux, around, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * around + 1)  # (T, 2 * around + 1)
    is_max = flux >= windows[:, around - near: around + near + 1].max(axis=1)
    candidates = np.flatnonzero(is_max & (flux >= windows.mean(axis=1) + delta))
    onsets: list[float] = []
    for frame in candidates:  # the frame is centred (frame - 0.5) hops after the rise began
        time = max(frame - 0.5, 0.0) / frames_per_second
        if not onsets or time - onsets[-1] >= wait_s:
            onsets.append(time)
    return onsets


def av_align_score(audio_onsets_s, video_peaks, fps: float, tolerance_frames: int = 1) -> float:
    """I / (|A| + |V| - I): I counts audio onsets matched one-to-one to a visual peak at most
    ``tolerance_frames`` frames away (onset frame = round(t * fps)). NaN when both are empty."""
    audio_frames = sorted(round(t * fps) for t in audio_onsets_s)
    free = sorted(int(v) for v in video_peaks)
    if not audio_frames and not free:
        return math.nan
    matched = 0
    for frame in audio_frames:
        near = [v for v in free if abs(v - frame) <= tolerance_frames]
        if near:
            free.remove(min(near, key=lambda v: (abs(v - frame), v)))
            matched += 1
    return matched / (len(audio_frames) + len(video_peaks) - matched)


def av_align(video: torch.Tensor, audio, fps: float, sample_rate: int) -> AVAlign:
    """AV-Align of one clip: video (F, 3, H, W) in [-1, 1], audio (T,) or (C, T)."""
    onsets = tuple(audio_onset_times(audio, sample_rate))
    peaks = tuple(local_maxima(flow_speed(video)))
    score = av_align_score(onsets, peaks, fps)
    reason = "no audio onsets and no motion peaks" if math.isnan(score) else None
    return AVAlign(score=score, audio_onsets_s=onsets, video_peaks=peaks, reason=reason)
