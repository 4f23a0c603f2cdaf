"""Measure a clip of the synthetic world from its decoded pixels and samples only.

These functions judge generated clips after an MP4 encode/decode, so they never look at a ClipSpec:
they read colours against the documented palette, follow the coloured object and the grey props,
and find sound onsets in the waveform. Inputs:
  frames: (F, H, W, 3) uint8 RGB (as mmg_core.media.read_mp4 returns them)
  audio:  (T,) float in [-1, 1] (a (C, T) array is averaged over channels)
Rules and thresholds are documented where they are applied; they were validated on rendered clips
through an H.264/AAC round trip (tests/test_world.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import BACKGROUNDS, COLOURS, PROP_GREY, SCENES

COLOUR_NAMES = tuple(COLOURS)
_BACKGROUND_LABEL = len(COLOUR_NAMES)
_PROP_LABEL = len(COLOUR_NAMES) + 1
# Lightness counts 0.75 of a CIELAB unit: shading and codecs move lightness more than hue.
_LAB_WEIGHTS = np.array([0.75, 1.0, 1.0], np.float32)
_MIN_OBJECT_PIXELS = 12  # fewer object-coloured pixels over the whole clip: "no object"
_PITCH_SPLIT_HZ = 600.0  # low sounds stay below ~500 Hz, high ones above ~740 Hz (config.PITCH_HZ)
_FAST_INTERVAL_S = 0.6  # median gap between events below this: fast (slow ~1 s, fast 0.3-0.4 s)
_FAST_SLIDER_HZ = 1.6  # slider oscillation above this: fast (slow 0.7-1.1 Hz, fast 2.2-2.8 Hz)


# ----------------------------------------------------------------------------------------------
# Inputs and colour space


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be (F, H, W, 3) uint8 RGB, got {frames.dtype} {frames.shape}; "
            "convert a (F, C, H, W) [-1, 1] tensor with mmg_core.media.video_to_uint8"
        )
    return frames


def _check_audio(audio) -> np.ndarray:
    samples = np.asarray(audio, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples.mean(axis=0)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"audio must be (T,) or (C, T) float samples, got shape {np.shape(audio)}")
    return samples


def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0..255, shape (..., 3) -> (..., 3)."""
    c = np.asarray(rgb, np.float32) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1
    )


def background_rgb(frames) -> np.ndarray:
    """(3,) median colour over all pixels of all frames: objects cover well under half the image."""
    return np.median(_check_frames(frames).reshape(-1, 3), axis=0)


def detect_background(frames) -> str:
    """Background name: the documented one ("dark", "light") nearest the median colour's lightness."""
    lightness = srgb_to_lab(background_rgb(frames))[0]
    return min(BACKGROUNDS, key=lambda name: abs(srgb_to_lab(BACKGROUNDS[name])[0] - lightness))


def label_pixels(frames, background=None) -> np.ndarray:
    """(F, H, W) nearest palette entry per pixel: 0..6 = COLOUR_NAMES, 7 = background, 8 = prop grey.

    background: None measures it (background_rgb), which also copes with a generated clip whose
    background is off the documented value; or "dark" / "light" (the documented RGB); or an RGB triple.
    """
    frames = _check_frames(frames)
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(
                f"background must be one of {list(BACKGROUNDS)}, an RGB triple or None, got {background!r}"
            )
        background = BACKGROUNDS[background]
    bg = background_rgb(frames) if background is None else np.asarray(background, np.float32)
    palette = np.array([*COLOURS.values(), bg, PROP_GREY], np.float32)
    # Label each distinct colour once: a clip has far fewer colours than pixels.
    packed = frames.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
    distinct, inverse = np.unique(packed, return_inverse=True)
    rgb = np.stack([distinct >> 16, (distinct >> 8) & 255, distinct & 255], -1)
    colours = srgb_to_lab(rgb) * _LAB_WEIGHTS  # (U, 3)
    targets = srgb_to_lab(palette) * _LAB_WEIGHTS  # (9, 3)
    distance = ((colours[:, None, :] - targets[None, :, :]) ** 2).sum(-1)  # (U, 9)
    return distance.argmin(-1).astype(np.int8)[inverse.ravel()].reshape(frames.shape[:3])


def _colour_from_labels(labels: np.ndarray) -> str | None:
    votes = np.bincount(labels.ravel(), minlength=_PROP_LABEL + 1)[: len(COLOUR_NAMES)]
    return COLOUR_NAMES[int(votes.argmax())] if votes.max() >= _MIN_OBJECT_PIXELS else None


def object_colour(frames, background=None) -> str | None:
    """Colour name of the coloured object, or None when no pixel is nearer a colour than bg/prop grey.

    Each pixel votes for its nearest entry of the palette extended by the background and the prop
    grey (weighted CIELAB); the colour with most votes over the clip wins. Voting (rather than
    averaging) ignores the blended rim pixels a codec leaves around small objects.
    """
    return _colour_from_labels(label_pixels(frames, background))


# ----------------------------------------------------------------------------------------------
# The coloured object over time


@dataclass(frozen=True)
class ObjectTrack:
    """Per-frame statistics of the pixels labelled with the object's colour (rows/cols in pixels)."""

    colour: str | None
    area: np.ndarray  # (F,) pixel count
    row: np.ndarray  # (F,) centroid row, NaN where absent
    width: np.ndarray  # (F,) horizontal extent (5th-95th percentile), NaN where absent
    height: np.ndarray  # (F,) vertical extent, NaN where absent
    top: np.ndarray  # (F,) 5th-percentile row, NaN where absent


def _frame_stats(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    if rows.size < 3:
        return math.nan, math.nan, math.nan, math.nan
    r5, r95 = np.percentile(rows, [5, 95])
    c5, c95 = np.percentile(cols, [5, 95])
    return float(rows.mean()), float(c95 - c5 + 1), float(r95 - r5 + 1), float(r5)


def track_object(labels: np.ndarray) -> ObjectTrack:
    """Follow the most voted colour through the (F, H, W) labels of label_pixels."""
    colour = _colour_from_labels(labels)
    if colour is None:
        empty = np.full(labels.shape[0], math.nan)
        return ObjectTrack(None, np.zeros(labels.shape[0]), empty, empty, empty, empty)
    masks = labels == COLOUR_NAMES.index(colour)
    stats = np.array([_frame_stats(mask) for mask in masks])  # (F, 4)
    return ObjectTrack(colour, masks.sum((1, 2)).astype(np.float64), *stats.T)


@dataclass(frozen=True)
class Observation:
    """What the analysis reads from the frames, computed once per clip (see observe)."""

    size: int  # frame height in pixels
    labels: np.ndarray  # (F, H, W) label_pixels
    track: ObjectTrack

    @property
    def scale(self) -> float:
        return self.size / 64.0


def observe(frames) -> Observation:
    frames = _check_frames(frames)
    labels = label_pixels(frames)
    return Observation(size=frames.shape[1], labels=labels, track=track_object(labels))


def _present(track: ObjectTrack) -> np.ndarray:
    """Frames where the object shows at least 30 % of its largest area (a lamp's lit frames)."""
    return track.area >= 0.3 * max(track.area.max(), 1.0)


# ----------------------------------------------------------------------------------------------
# Audio envelopes, onsets, pitch


def _envelope_db(samples: np.ndarray, sr: int, hop_s: float, window_s: float) -> np.ndarray:
    """Energy in dB of a centred window every hop (hop i is centred on sample i * hop)."""
    hop, half = max(1, round(hop_s * sr)), max(1, round(window_s * sr / 2))
    cumulative = np.concatenate([[0.0], np.cumsum(samples**2)])
    centres = np.arange(0, samples.size, hop)
    lo, hi = np.clip(centres - half, 0, samples.size), np.clip(centres + half, 0, samples.size)
    energy = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
    return 10.0 * np.log10(energy + 1e-12)


def _sliding(values: np.ndarray, start: int, stop: int, reduce) -> np.ndarray:
    """reduce(values[i + start : i + stop]) for every i, with NaN where the window leaves the array."""
    out = np.full(values.size, math.nan)
    span = stop - start
    if values.size < span:
        return out
    windows = reduce(np.lib.stride_tricks.sliding_window_view(values, span), axis=-1)
    first = max(0, -start)
    last = min(values.size - stop, values.size - 1)  # last i whose window fits
    out[first : last + 1] = windows[first + start : last + start + 1]
    return out


def _refine_onset(db: np.ndarray, centre: int, level: float, hop_s: float) -> float:
    """Time where the envelope first crosses ``level`` near hop ``centre``, interpolated between hops."""
    j = max(centre - 10, 1)
    while j < min(centre + 10, db.size - 1) and db[j] < level:
        j += 1
    fraction = np.clip((level - db[j - 1]) / max(db[j] - db[j - 1], 1e-9), 0.0, 1.0)
    return (j - 1 + float(fraction)) * hop_s


def audio_onsets(
    audio, sr: int, *, rise_db: float = 15.0, range_db: float = 35.0, min_gap_s: float = 0.05
) -> list[float]:
    """Onset times (s) of sounds: points where the 2 ms energy envelope jumps by >= ``rise_db``.

    The jump compares the loudest level of the next 10 ms with the median level 5-25 ms before, so
    a steady tone (the slider) has no onsets while a click, a thump or a beep start has one; onsets
    quieter than ``range_db`` below the clip's peak are ignored. The time is refined to where the
    envelope crosses 10 dB below the new sound's peak (1 ms hops, interpolated: sub-millisecond).
    The first 25 ms cannot hold an onset (no level before them to compare with).
    """
    samples = _check_audio(audio)
    hop_s = 0.001
    db = _envelope_db(samples, sr, hop_s, 0.002)
    future = _sliding(db, 0, 10, np.max)
    past = _sliding(db, -25, -5, np.median)
    strength = future - past
    candidate = (strength >= rise_db) & (future >= db.max() - range_db)
    onsets: list[float] = []
    for run in np.split(np.arange(db.size), np.flatnonzero(np.diff(candidate.astype(np.int8))) + 1):
        if not candidate[run[0]]:
            continue
        best = run[np.nanargmax(strength[run])]
        time = _refine_onset(db, int(best), future[best] - 10.0, hop_s)
        if not onsets or time - onsets[-1] >= min_gap_s:
            onsets.append(time)
    return onsets


def _power_spectrum(windows: np.ndarray) -> np.ndarray:
    """(..., n_fft // 2 + 1) power of Hann-windowed windows (..., N) with 8x zero padding."""
    size = windows.shape[-1]
    return np.abs(np.fft.rfft(windows * np.hanning(size), 8 * size)) ** 2


def _spectral_peak(power: np.ndarray, sr: int, low_hz: float = 80.0, high_hz: float = 4000.0) -> float:
    """Frequency of the strongest peak of a power spectrum (parabolic interpolation in log power)."""
    n_fft = 2 * (power.size - 1)
    spectrum = np.log(power + 1e-24)
    lo, hi = int(low_hz * n_fft / sr), int(high_hz * n_fft / sr)
    k = lo + int(np.argmax(spectrum[lo:hi]))
    a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return (k + offset) * sr / n_fft


def _peak_frequency(window: np.ndarray, sr: int) -> float:
    return _spectral_peak(_power_spectrum(window), sr)


def frame_pitch_hz(audio, sr: int, fps: float, num_frames: int, window_s: float = 0.032) -> np.ndarray:
    """(num_frames,) peak frequency of a ``window_s`` window centred on each frame's time k / fps."""
    samples = _check_audio(audio)
    size = min(round(window_s * sr), samples.size)
    starts = [round(k * sr / fps) - size // 2 for k in range(num_frames)]
    return np.array(
        [_peak_frequency(samples[s : s + size], sr) for s in np.clip(starts, 0, samples.size - size)]
    )


def dominant_pitch_hz(audio, sr: int) -> float:
    """Peak of the mean power spectrum of the loud (within 20 dB of the loudest) 32 ms windows.

    Averaging power before peak picking lets a tonal component stand out of broadband noise.
    """
    samples = _check_audio(audio)
    size = min(round(0.032 * sr), samples.size)
    starts = np.arange(0, samples.size - size + 1, max(size // 2, 1))
    windows = np.stack([samples[s : s + size] for s in starts])
    energy = (windows**2).mean(-1)
    loud = windows[energy >= energy.max() * 0.01]
    return _spectral_peak(_power_spectrum(loud).mean(0), sr)


def estimate_pitch(audio, sr: int) -> str:
    """Pitch class, "low" or "high", by the dominant frequency (split at 600 Hz, see config.PITCH_HZ)."""
    return "low" if dominant_pitch_hz(audio, sr) < _PITCH_SPLIT_HZ else "high"


def audio_texture(audio, sr: int) -> str:
    """Sound kind: "continuous" (slider tone), "sustained" (beeps) or "impulsive" (impacts, drum hits).

    continuous: the 8 ms envelope stays within 30 dB of its peak for > 85 % of the clip.
    Otherwise the median level drop from 8-16 ms to 48-56 ms after each onset decides: decaying
    sounds lose > 3 dB there, a beep holds its level.
    """
    samples = _check_audio(audio)
    db = _envelope_db(samples, sr, 0.001, 0.008)
    if np.mean(db > db.max() - 30.0) > 0.85:
        return "continuous"
    drops = []
    for onset in audio_onsets(samples, sr):
        i = round(onset * 1000)
        if i + 56 <= db.size:
            drops.append(np.mean(db[i + 8 : i + 16]) - np.mean(db[i + 48 : i + 56]))
    return "impulsive" if drops and np.median(drops) > 3.0 else "sustained"


# ----------------------------------------------------------------------------------------------
# Scenes and visual events


def classify_scene(frames, audio, sr: int) -> str:
    """ball / drum / lamp / slider from the coloured object's behaviour, or from the audio alone.

    Rules on the coloured object's track (pixel sizes at 64 px, scaled with the frame): where it is
    visible it keeps still (centroid row std < 3 px): a lamp if it vanishes in some frames
    (smallest area < 40 % of the largest), else a drum (whose colour is the drum body while the grey
    stick moves); it moves: a slider if wide (median width >= 20 px: the bar is 28 px, the ball
    14 px; width survives motion blur and ghosting, which stretch an object vertically), else ball.
    Without a coloured object the audio decides: continuous -> slider, sustained -> lamp,
    impulsive -> ball (a ball and a drum sound alike to these rules).
    """
    return _classify(observe(frames), audio, sr)


def _classify(seen: Observation, audio, sr: int) -> str:
    track = seen.track
    visible = _present(track) & np.isfinite(track.row)
    if track.colour is None or not visible.any():
        return {"continuous": "slider", "sustained": "lamp", "impulsive": "ball"}[audio_texture(audio, sr)]
    if np.std(track.row[visible]) < 3.0 * seen.scale:
        return "lamp" if track.area.min() < 0.4 * track.area.max() else "drum"
    return "slider" if np.nanmedian(track.width[visible]) >= 20.0 * seen.scale else "ball"


def _peak_frames(signal: np.ndarray, min_level: float, edge_level: float) -> list[int]:
    """Frames at a local maximum (first frame of a plateau) reaching at least ``min_level``.

    The first and last frame see only one neighbour, so a motion cut off by the clip's edge looks
    like a maximum there; they must reach the stricter ``edge_level``.
    """
    peaks = []
    for f, value in enumerate(signal):
        edge = f == 0 or f == signal.size - 1
        if not np.isfinite(value) or value < (edge_level if edge else min_level):
            continue
        before = signal[f - 1] if f > 0 else -np.inf
        after = signal[f + 1] if f + 1 < signal.size else -np.inf
        if value > np.nan_to_num(before, nan=-np.inf) and value >= np.nan_to_num(after, nan=-np.inf):
            peaks.append(f)
    return peaks


def _lowest_frames(signal: np.ndarray) -> list[int]:
    """Local maxima of a row signal within the lowest 30 % of its range (at least 2 px); on the
    clip's first and last frame within the lowest 10 % (at least 1 px)."""
    finite = signal[np.isfinite(signal)]
    if finite.size < 2:
        return []
    top, bottom = finite.min(), finite.max()
    return _peak_frames(
        signal, bottom - max(0.3 * (bottom - top), 2.0), bottom - max(0.1 * (bottom - top), 1.0)
    )


def _stick_row(seen: Observation) -> np.ndarray:
    """(F,) mean row of the grey stick's pixels above the drum: largest when the stick is down."""
    top = seen.track.top
    drum_top = np.nanmedian(top) if np.isfinite(top).any() else seen.size
    rows = np.arange(seen.size)[None, :, None]
    stick = (seen.labels == _PROP_LABEL) & (rows < drum_top - 2 * seen.scale)
    counts = stick.sum((1, 2))
    return np.where(counts >= 3, (stick * rows).sum((1, 2)) / np.maximum(counts, 1), np.nan)


def visual_event_frames(frames, scene: str) -> list[int]:
    """Frames of visible events: ball floor contacts (lowest positions), drum strikes (stick down),
    lamp switch-ons (lit after an unlit frame). The slider has none (use slider_pitch_correlation)."""
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {list(SCENES)}, got {scene!r}")
    return _event_frames(observe(frames), scene)


def _event_frames(seen: Observation, scene: str) -> list[int]:
    track = seen.track
    if scene == "ball":
        return _lowest_frames(track.row)
    if scene == "drum":
        return _lowest_frames(_stick_row(seen))
    if scene == "lamp":
        lit = _present(track) & (track.area > 0)
        return [f for f in range(1, lit.size) if lit[f] and not lit[f - 1]]
    return []


def visual_events(frames, fps: float, scene: str) -> list[float]:
    """Times (s) of visual events, frame / fps (see visual_event_frames)."""
    return [f / fps for f in visual_event_frames(frames, scene)]


def slider_heights(frames) -> np.ndarray:
    """(F,) height of the coloured bar in pixels above the bottom row (NaN where not found)."""
    return _heights(observe(frames))


def _heights(seen: Observation) -> np.ndarray:
    return seen.size - 1 - seen.track.row


def dominant_frequency(signal: np.ndarray, rate: float, low_hz: float = 0.4) -> float:
    """Frequency (Hz) of the sinusoid (plus offset) that best fits ``signal`` sampled at ``rate``."""
    valid = np.isfinite(signal)
    t, y = np.arange(signal.size)[valid] / rate, signal[valid]
    best, best_residual = math.nan, math.inf
    for hz in np.linspace(low_hz, 0.48 * rate, 200):
        design = np.stack([np.cos(2 * math.pi * hz * t), np.sin(2 * math.pi * hz * t), np.ones_like(t)], -1)
        residual = np.linalg.lstsq(design, y, rcond=None)[1]
        value = float(residual[0]) if residual.size else 0.0
        if value < best_residual:
            best, best_residual = float(hz), value
    return best


def tempo_from_events(times: list[float]) -> str:
    """Tempo "fast" when the median gap between events is under 0.6 s, else (or with < 2 events) "slow"."""
    if len(times) < 2:
        return "slow"
    return "fast" if np.median(np.diff(sorted(times))) < _FAST_INTERVAL_S else "slow"


def estimate_tempo(frames, audio, sr: int, fps: float, scene: str | None = None) -> str:
    """Tempo "slow" or "fast": the slider's oscillation frequency, else the gaps between visual events
    (or between audio onsets when the picture shows fewer than two events)."""
    seen = observe(frames)
    return _tempo(seen, audio, sr, fps, _classify(seen, audio, sr) if scene is None else scene)


def _tempo(seen: Observation, audio, sr: int, fps: float, scene: str) -> str:
    if scene == "slider":
        heights = _heights(seen)
        if np.isfinite(heights).sum() < 4:
            return "slow"
        return "fast" if dominant_frequency(heights, fps) > _FAST_SLIDER_HZ else "slow"
    events = [f / fps for f in _event_frames(seen, scene)]
    if len(events) < 2:
        events = audio_onsets(audio, sr)
    return tempo_from_events(events)


# ----------------------------------------------------------------------------------------------
# Synchrony


@dataclass(frozen=True)
class SyncStats:
    """Distances between audio onsets and visual events; NaN when either side is empty."""

    median_s: float  # median over onsets of the distance to the nearest visual event
    mean_s: float
    within_half_frame: float  # fraction of onsets within half a frame of a visual event
    event_median_s: float  # median over visual events of the distance to the nearest onset
    num_onsets: int
    num_events: int


def _nearest_distances(points, targets) -> np.ndarray:
    points, targets = np.asarray(points, float), np.asarray(targets, float)
    return np.abs(points[:, None] - targets[None, :]).min(axis=1)


def sync_offset_stats(onsets, visual_events, fps: float) -> SyncStats:
    """How close each audio onset lies to a visual event (and each event to an onset), in seconds."""
    if len(onsets) == 0 or len(visual_events) == 0:
        return SyncStats(math.nan, math.nan, math.nan, math.nan, len(onsets), len(visual_events))
    distance = _nearest_distances(onsets, visual_events)
    return SyncStats(
        median_s=float(np.median(distance)),
        mean_s=float(distance.mean()),
        within_half_frame=float(np.mean(distance <= 0.5 / fps)),
        event_median_s=float(np.median(_nearest_distances(visual_events, onsets))),
        num_onsets=len(onsets),
        num_events=len(visual_events),
    )


def slider_pitch_correlation(frames, audio, sr: int, fps: float) -> float:
    """Pearson r between the bar's height and the tone's log-frequency per frame (NaN if undefined).

    Pitch per frame is the spectral peak of a 32 ms window centred on the frame's time, so the
    bar drawn in frame k is compared with the tone at k / fps.
    """
    return _slider_r(observe(frames), audio, sr, fps)


def _slider_r(seen: Observation, audio, sr: int, fps: float) -> float:
    heights = _heights(seen)
    pitch = np.log2(frame_pitch_hz(audio, sr, fps, heights.size))
    valid = np.isfinite(heights) & np.isfinite(pitch)
    if valid.sum() < 3 or np.std(heights[valid]) == 0 or np.std(pitch[valid]) == 0:
        return math.nan
    return float(np.corrcoef(heights[valid], pitch[valid])[0, 1])


# ----------------------------------------------------------------------------------------------
# Everything at once


@dataclass(frozen=True)
class ClipAnalysis:
    background: str
    colour: str | None
    scene: str
    tempo: str
    pitch: str
    onsets: tuple[float, ...]
    events: tuple[float, ...]
    sync: SyncStats
    slider_r: float  # NaN unless the scene is the slider

    @property
    def attributes(self) -> dict[str, str | None]:
        return {
            "scene": self.scene,
            "colour": self.colour,
            "background": self.background,
            "tempo": self.tempo,
            "pitch": self.pitch,
        }


def analyse_clip(frames, audio, sr: int, fps: float) -> ClipAnalysis:
    """All measurements of one decoded clip."""
    seen, samples = observe(frames), _check_audio(audio)
    scene = _classify(seen, samples, sr)
    onsets = tuple(audio_onsets(samples, sr))
    events = tuple(f / fps for f in _event_frames(seen, scene))
    slider_r = _slider_r(seen, samples, sr, fps) if scene == "slider" else math.nan
    return ClipAnalysis(
        background=detect_background(frames),
        colour=seen.track.colour,
        scene=scene,
        tempo=_tempo(seen, samples, sr, fps, scene),
        pitch=estimate_pitch(samples, sr),
        onsets=onsets,
        events=events,
        sync=sync_offset_stats(onsets, events, fps),
        slider_r=slider_r,
    )
