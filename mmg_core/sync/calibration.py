"""Proof that CAM-Sync measures sync: offsets that follow a known shift of the audio, on the synthetic
world (truth known) and on real footage (Big Buck Bunny), beside the AV-Align and onset baselines.

``python -m mmg_core calibrate-sync --film bbb.mp4 --out eval/sync_calibration`` writes report.json
and report.md. Both parts shift the audio against the picture by reading the same source a little
earlier or later (no wrap-around, no silence padding): delaying the audio by d seconds should raise
every method's offset by d (camsync.OFFSET_CONVENTION, positive = audio late).

Synthetic world (event scenes ball / drum / lamp; the slider's steady tone has no onsets to align):
  * offset within one frame of the shift, for shifts of +-1, +-2, +-4 frames and +-0.5 s;
  * the true pairing scores higher at lag 0 than the clip's picture with any other clip's sound.
Real footage: segments spread evenly over the film (never picked by hand), audio shifted by
+-0.2, +-0.4, +-0.8 s. A roll is tracked when |offset(roll) - offset(0) - roll| <= 0.08 s;
segments whose lag-0 measurement is unsynchronizable count separately; also reported: how often
offset(0) itself is within 0.1 s of zero (the film is mastered in sync), and the same figures for
all segments pooled (the mean of their correlation curves, camsync.pooled_sync): one 8 s segment is
often too noisy to show the film's alignment, the pooled curve shows whether the film as a whole does.
Two more figures tell a reading of zero from a habit of answering zero: how often the offset is within
0.1 s of the roll itself, over every roll (0 included; the true offset if the film is mastered in sync),
and how often it is within 0.1 s of zero when the audio was rolled by 0.4 s or more, so that zero is
wrong by at least that much (an estimator that prefers zero scores high on "offset(0) near zero" and
on this one alike).

AV-Align is a score, not an offset estimator; its offset here is the lag (whole frames, within the
same +-2 s) that maximises the AV-Align score of the audio onsets moved by that lag, the smallest
|lag| among ties; "unsynchronizable" when no lag matches any onset.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange, reduce

from .backbones import DEFAULT_FRAME_SIZE, SyncModels, load_sync_models
from .camsync import (
    DEFAULT_MAX_LAG_S, OFFSET_CONVENTION, SyncResult, audio_onset_times, av_align_score, cam_sync, centred_start,
    flow_speed, local_maxima, loudness_envelope, pooled_sync, sync_energies,
)
from .gradcam import AudioCam, VideoCam, audio_cam, motion_maps, video_cam

METHODS = ("cam_sync", "av_align", "onset_sync")
REAL_ROLLS_S = (-0.8, -0.4, -0.2, 0.2, 0.4, 0.8)
REAL_TOLERANCE_S = 0.08
ZERO_TOLERANCE_S = 0.1
# Rolls at least this large make "offset near zero" wrong by at least this much (the habit-of-zero figure).
FAR_ROLL_S = 0.4
SYNTHETIC_ROLL_FRAMES = (-4, -2, -1, 1, 2, 4)
SYNTHETIC_ROLL_SECONDS = (-0.5, 0.5)
SYNTHETIC_SCENES = ("ball", "drum", "lamp")  # scenes with events; the slider's tone has no onsets
# Targets of issue 4, point 4 (checked in the report, not enforced here).
TARGETS = {"synthetic_offset": 0.9, "synthetic_pairing": 0.9, "real_tracked": 0.8, "real_unsynchronizable": 0.25}


# ----------------------------------------------------------------------------------------------
# Offset estimators: every method maps (picture analysis, audio) -> offset in seconds or NaN


@dataclass(frozen=True)
class PictureAnalysis:
    """What each method needs of a clip's picture, computed once for all audio shifts."""

    fps: float
    duration_s: float
    cam: VideoCam
    motion: np.ndarray  # (F,) mean frame difference (the onset baseline's video energy)
    flow_peaks: tuple[int, ...]  # AV-Align's visual events (frames)


def analyse_picture(models: SyncModels, video: torch.Tensor, fps: float) -> PictureAnalysis:
    """video (F, 3, H, W) in [-1, 1]."""
    return PictureAnalysis(
        fps=float(fps), duration_s=video.shape[0] / float(fps), cam=video_cam(models.frames, video, fps),
        motion=reduce(motion_maps(video), "f h w -> f", "mean").double().numpy(),
        flow_peaks=tuple(local_maxima(flow_speed(video))),
    )


def av_align_offset(onsets_s: Sequence[float], peaks: Sequence[int], fps: float, duration_s: float,
                    max_lag_s: float = DEFAULT_MAX_LAG_S) -> float:
    """The lag (s) maximising AV-Align of the onsets moved back by it; NaN if no lag matches any.

    AV-Align forgives +-1 frame, so the best score is a plateau of lags; the offset is the middle
    of the plateau nearest lag 0. Onsets moved outside the clip still count in |A| (they match
    nothing), so a lag gains nothing by pushing sound out of the clip.
    """
    max_lag = int(math.floor(min(max_lag_s, duration_s / 2) * fps))
    lags = np.arange(-max_lag, max_lag + 1)
    scores = np.array([av_align_score([t - lag / fps for t in onsets_s], peaks, fps) for lag in lags])
    if not np.any(scores > 0):
        return math.nan
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)  # contiguous plateaus of the maximum
    nearest = min(runs, key=lambda run: np.abs(lags[run]).min())
    return float(lags[nearest].mean()) / fps


@dataclass(frozen=True)
class SoundAnalysis:
    """What each method needs of an audio track; it depends on the track alone, so a track compared
    with many pictures (the shuffled pairings) is analysed once."""

    cam: AudioCam
    loudness: np.ndarray  # (frames,) the onset baseline's audio energy
    loudness_rate: float
    onsets_s: tuple[float, ...]  # AV-Align's audio events


def analyse_sound(models: SyncModels, audio: torch.Tensor, sample_rate: int) -> SoundAnalysis:
    """audio (C, T) or (T,) in [-1, 1]."""
    loudness, loudness_rate = loudness_envelope(audio, sample_rate)
    return SoundAnalysis(cam=audio_cam(models.audio, audio, sample_rate), loudness=loudness,
                         loudness_rate=loudness_rate, onsets_s=tuple(audio_onset_times(audio, sample_rate)))


def _correlations(picture: PictureAnalysis, sound: SoundAnalysis, max_lag_s: float) -> dict[str, SyncResult]:
    """CAM-Sync and the onset baseline of one picture with one track."""
    cam = cam_sync(picture.cam, sound.cam, duration_s=picture.duration_s, max_lag_s=max_lag_s)
    onset = sync_energies(picture.motion, picture.fps, sound.loudness, sound.loudness_rate,
                          duration_s=picture.duration_s, audio_start_s=centred_start(sound.loudness_rate),
                          max_lag_s=max_lag_s)
    return {"cam_sync": cam, "onset_sync": onset}


def lag0_scores(picture: PictureAnalysis, sound: SoundAnalysis, max_lag_s: float) -> dict[str, float]:
    """{method: score at lag 0}: all the shuffled pairings need (AV-Align's lag search is skipped)."""
    scores = {name: result.score_at_0 for name, result in _correlations(picture, sound, max_lag_s).items()}
    return {**scores, "av_align": av_align_score(sound.onsets_s, picture.flow_peaks, picture.fps)}


def compare(picture: PictureAnalysis, sound: SoundAnalysis, max_lag_s: float = DEFAULT_MAX_LAG_S) -> dict[str, dict]:
    """{method: {"offset_s", "score_at_0", "reason"}} for one analysed track against one picture."""
    return compare_with_curves(picture, sound, max_lag_s)[0]


def compare_with_curves(picture: PictureAnalysis, sound: SoundAnalysis,
                        max_lag_s: float = DEFAULT_MAX_LAG_S) -> tuple[dict[str, dict], dict[str, SyncResult]]:
    """compare()'s records, and the correlating methods' full results (curves) for pooled_sync."""
    correlations = _correlations(picture, sound, max_lag_s)
    results = {name: {"offset_s": r.offset_s, "score_at_0": r.score_at_0, "reason": r.reason}
               for name, r in correlations.items()}
    aligned = av_align_offset(sound.onsets_s, picture.flow_peaks, picture.fps, picture.duration_s, max_lag_s)
    results["av_align"] = {
        "offset_s": aligned, "score_at_0": av_align_score(sound.onsets_s, picture.flow_peaks, picture.fps),
        "reason": None if math.isfinite(aligned) else "no audio onset matches a motion peak at any lag"}
    return results, correlations


def estimate_offsets(models: SyncModels, picture: PictureAnalysis, audio: torch.Tensor, sample_rate: int,
                     max_lag_s: float = DEFAULT_MAX_LAG_S) -> dict[str, dict]:
    """{method: {"offset_s", "score_at_0", "reason"}} for one audio track against one picture."""
    return compare(picture, analyse_sound(models, audio, sample_rate), max_lag_s)


# ----------------------------------------------------------------------------------------------
# Summaries


def _fraction(hits: int, total: int) -> float | None:
    return None if total == 0 else round(hits / total, 4)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def summarise_real(segments: list[dict], tolerance_s: float = REAL_TOLERANCE_S) -> dict[str, dict]:
    """Per method: tracked rolls, unsynchronizable segments, offset(0) near zero (see module doc)."""
    summary = {}
    for method in METHODS:
        zero = [s["offsets"]["0"][method]["offset_s"] for s in segments]
        measurable = [i for i, value in enumerate(zero) if _finite(value)]
        tracked = total = 0
        for i in measurable:
            for roll, result in segments[i]["offsets"].items():
                if roll == "0":
                    continue
                total += 1
                value = result[method]["offset_s"]
                tracked += _finite(value) and abs(value - zero[i] - float(roll)) <= tolerance_s + 1e-9
        all_rolls = sum(len(s["offsets"]) - 1 for s in segments)
        # Every (segment, roll) result, measurable or not: the absolute figures below count failures as misses.
        results = [(float(roll), result[method]["offset_s"]) for s in segments for roll, result in s["offsets"].items()]
        far_rolls = [value for roll, value in results if abs(roll) >= FAR_ROLL_S - 1e-9]
        summary[method] = {
            "tracked": _fraction(tracked, total),
            "tracked_of_all_rolls": _fraction(tracked, all_rolls),
            "rolls_judged": total,
            "unsynchronizable": _fraction(len(segments) - len(measurable), len(segments)),
            "zero_within_0.1s": _fraction(sum(abs(zero[i]) <= ZERO_TOLERANCE_S for i in measurable), len(segments)),
            "median_abs_offset0_s": None if not measurable else round(float(np.median(np.abs([zero[i] for i in measurable]))), 4),
            "within_0.1s_of_roll": _fraction(
                sum(_finite(value) and abs(value - roll) <= ZERO_TOLERANCE_S + 1e-9 for roll, value in results), len(results)),
            "zero_when_rolled_far": _fraction(
                sum(_finite(value) and abs(value) <= ZERO_TOLERANCE_S for value in far_rolls), len(far_rolls)),
        }
    return summary


def summarise_pooled(curves: dict[str, dict[str, list[SyncResult]]], tolerance_s: float = REAL_TOLERANCE_S) -> dict:
    """Per correlating method: the pooled offset of all segments at each roll (camsync.pooled_sync),
    whether it moves with the roll, and whether offset(0) is within 0.1 s of zero.

    Single 8 s segments of a film are noisy (their offset(0) scatters over the lag range); pooling
    asks whether the film as a whole shows its true alignment, and whether a roll applied to every
    segment moves that alignment by the roll.
    """
    summary = {}
    for method in curves["0"]:
        pooled = {roll: pooled_sync(by_method[method]) for roll, by_method in curves.items()}
        zero = pooled["0"].offset_s
        tracked = {roll: _finite(zero) and _finite(r.offset_s) and abs(r.offset_s - zero - float(roll)) <= tolerance_s + 1e-9
                   for roll, r in pooled.items() if roll != "0"}
        summary[method] = {
            "offset_s": {roll: None if not _finite(r.offset_s) else round(r.offset_s, 4) for roll, r in pooled.items()},
            "confidence_at_0": None if not _finite(pooled["0"].confidence) else round(pooled["0"].confidence, 4),
            "segments": len([r for r in curves["0"][method] if r.synchronizable]),
            "rolls_tracked": _fraction(sum(tracked.values()), len(tracked)),
            "zero_within_0.1s": _finite(zero) and abs(zero) <= ZERO_TOLERANCE_S,
        }
    return summary


def summarise_synthetic(clips: list[dict], pair_wins: dict[str, tuple[int, int]], fps: float) -> dict[str, dict]:
    summary = {}
    for method in METHODS:
        hits = total = 0
        for clip in clips:
            for roll, result in clip["offsets"].items():
                total += 1
                value = result[method]["offset_s"]
                hits += _finite(value) and abs(value - float(roll)) <= 1.0 / fps + 1e-9
        wins, comparisons = pair_wins[method]
        summary[method] = {"offset_within_1_frame": _fraction(hits, total), "rolls": total,
                           "true_beats_shuffled": _fraction(wins, comparisons), "comparisons": comparisons}
    return summary


# ----------------------------------------------------------------------------------------------
# Synthetic world


def synthetic_calibration(models: SyncModels, *, clips_per_scene: int = 16, seed: int = 0, fps: int = 10,
                          frames: int = 80, max_lag_s: float = DEFAULT_MAX_LAG_S, progress: bool = True) -> dict:
    """Shift each event clip's audio by SYNTHETIC rolls, read from a longer render of the same clip.

    8 s clips by default, as long as the film segments: slow scenes (about one event per second at
    0.9-1.1 s intervals) are nearly periodic, and 4 s hold too few intervals to tell a shift of
    half a period from none.
    """
    from tqdm import tqdm

    from ..world.config import WorldConfig
    from ..world.render import render_clip
    from ..world.spec import sample_spec

    shifts = sorted(set(SYNTHETIC_ROLL_FRAMES) | {round(s * fps) for s in SYNTHETIC_ROLL_SECONDS})
    margin = max(abs(s) for s in shifts)
    config = WorldConfig(frames=frames + 2 * margin, fps=fps)
    per_frame = config.frame_sample(1)
    rng = np.random.default_rng([seed, 4])
    specs = [sample_spec(rng, config, split="train", scene=scene)
             for scene in SYNTHETIC_SCENES for _ in range(clips_per_scene)]
    records, pictures, tracks = [], [], []
    for spec in tqdm(specs, desc="synthetic", unit="clip", disable=not progress):
        clip = render_clip(spec, config)
        video = clip.video[margin: margin + frames]
        picture = analyse_picture(models, video, fps)

        def window(shift: int) -> torch.Tensor:  # audio delayed by `shift` frames
            start = (margin - shift) * per_frame
            return clip.audio[:, start: start + frames * per_frame]

        offsets = {f"{shift / fps:g}": estimate_offsets(models, picture, window(shift), config.sample_rate, max_lag_s)
                   for shift in shifts}
        records.append({"scene": spec.scene, "tempo": spec.tempo, "pitch": spec.pitch, "offsets": offsets})
        pictures.append(picture)
        tracks.append(window(0))
    pair_wins = shuffled_pairings(pictures, [analyse_sound(models, t, config.sample_rate) for t in tracks], max_lag_s)
    return {"clips": records, "summary": summarise_synthetic(records, pair_wins, fps),
            "setup": {"fps": fps, "frames": frames, "size": config.size, "sample_rate": config.sample_rate,
                      "clips_per_scene": clips_per_scene, "scenes": list(SYNTHETIC_SCENES), "seed": seed,
                      "shifts_s": [s / fps for s in shifts]}}


def shuffled_pairings(pictures: list[PictureAnalysis], sounds: list[SoundAnalysis],
                      max_lag_s: float) -> dict[str, tuple[int, int]]:
    """(wins, comparisons) per method: picture i with its own sound against picture i with every other
    clip's sound, judged by the lag-0 score (an unsynchronizable true pairing loses)."""
    scores = [[lag0_scores(picture, sound, max_lag_s) for sound in sounds] for picture in pictures]
    wins = {}
    for method in METHODS:
        won = compared = 0
        for i in range(len(pictures)):
            true = scores[i][i][method]
            for j in range(len(sounds)):
                if j == i:
                    continue
                other = scores[i][j][method]
                compared += 1
                won += _finite(true) and (not _finite(other) or true > other)
        wins[method] = (won, compared)
    return wins


# ----------------------------------------------------------------------------------------------
# Real footage


@dataclass
class Film:
    """A film's whole soundtrack (mono) in memory and where its frames are; frames decode per segment."""

    path: Path
    fps: float
    duration_s: float
    sample_rate: int
    audio: np.ndarray  # (T,) float32 mono
    audio_start_s: float  # film time of audio sample 0
    video_start_s: float

    def audio_window(self, start_s: float, duration_s: float, delay_s: float) -> torch.Tensor:
        """(1, T) the soundtrack heard during [start_s, start_s + duration_s) when it is delayed by
        delay_s: film audio from start_s - delay_s; silence where that runs past the film's ends."""
        first = round((start_s - delay_s - self.audio_start_s) * self.sample_rate)
        length = round(duration_s * self.sample_rate)
        window = np.zeros(length, np.float32)
        lo, hi = max(first, 0), min(first + length, self.audio.size)
        if hi > lo:
            window[lo - first: hi - first] = self.audio[lo:hi]
        return torch.from_numpy(window)[None]

    def frames(self, start_s: float, count: int, short_side: int) -> torch.Tensor:
        """(count, 3, H, W) in [-1, 1]: the frames shown from start_s on, scaled to ``short_side``."""
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            scale = short_side / min(height, width)
            size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
            container.seek(int(max(start_s - 2.0, 0.0) / stream.time_base), stream=stream)
            pixels = []
            for frame in container.decode(stream):
                shown = float(frame.pts * stream.time_base) - self.video_start_s
                if shown < start_s - 0.5 / self.fps:
                    continue
                pixels.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                if len(pixels) == count:
                    break
        if len(pixels) < count:
            raise ValueError(f"{self.path} has only {len(pixels)} frames after {start_s:.2f} s, {count} needed")
        video = torch.from_numpy(np.stack(pixels))
        return rearrange(video, "f h w c -> f c h w").float() / 127.5 - 1.0


def open_film(path: str | Path) -> Film:
    import av

    from ..media import _decode_audio

    source = Path(path)
    with av.open(str(source)) as container:
        if not container.streams.video or not container.streams.audio:
            raise ValueError(f"{source} needs a video and an audio stream")
        video, audio_stream = container.streams.video[0], container.streams.audio[0]
        fps = float(video.average_rate)
        video_start = float((video.start_time or 0) * video.time_base)
        audio_start = float((audio_stream.start_time or 0) * audio_stream.time_base)
        duration = float(container.duration / 1e6)
        audio, sample_rate = _decode_audio(container)
    return Film(path=source, fps=fps, duration_s=duration, sample_rate=int(sample_rate),
                audio=audio.mean(0).astype(np.float32), audio_start_s=audio_start - video_start, video_start_s=video_start)


def segment_starts(film: Film, count: int, length_s: float, margin_s: float = 5.0) -> list[float]:
    """``count`` starts spread evenly from margin_s to the film's end minus length and margin, each
    put on a frame boundary (the film's first and last seconds are titles and credits)."""
    last = film.duration_s - length_s - margin_s
    if count < 1 or last <= margin_s:
        raise ValueError(f"cannot fit {count} segments of {length_s} s in a {film.duration_s:.1f} s film")
    return [round(t * film.fps) / film.fps for t in np.linspace(margin_s, last, count)]


def real_calibration(models: SyncModels, film_path: str | Path, *, segments: int = 20, length_s: float = 8.0,
                     rolls_s: Sequence[float] = REAL_ROLLS_S, short_side: int = DEFAULT_FRAME_SIZE,
                     max_lag_s: float = DEFAULT_MAX_LAG_S, progress: bool = True) -> dict:
    from tqdm import tqdm

    film = open_film(film_path)
    count = round(length_s * film.fps)
    records = []
    curves: dict[str, dict[str, list[SyncResult]]] = {f"{roll:g}": {} for roll in (0.0, *rolls_s)}
    for start in tqdm(segment_starts(film, segments, length_s), desc="film", unit="segment", disable=not progress):
        picture = analyse_picture(models, film.frames(start, count, short_side), film.fps)
        offsets = {}
        for roll in (0.0, *rolls_s):
            sound = analyse_sound(models, film.audio_window(start, count / film.fps, roll), film.sample_rate)
            offsets[f"{roll:g}"], results = compare_with_curves(picture, sound, max_lag_s)
            for method, result in results.items():
                curves[f"{roll:g}"].setdefault(method, []).append(result)
        records.append({"start_s": round(start, 4), "offsets": offsets})
    return {"segments": records, "summary": summarise_real(records), "pooled": summarise_pooled(curves),
            "setup": {"film": film.path.name, "fps": film.fps, "duration_s": round(film.duration_s, 3),
                      "segments": segments, "length_s": length_s, "rolls_s": list(rolls_s),
                      "frame_short_side": short_side, "tolerance_s": REAL_TOLERANCE_S}}


# ----------------------------------------------------------------------------------------------
# Report


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def verdicts(report: dict) -> dict[str, bool]:
    """Each point-4 criterion met or not (CAM-Sync; and beating both baselines on real footage)."""
    checks = {}
    synthetic = report.get("synthetic", {}).get("summary")
    if synthetic:
        checks["synthetic offset within 1 frame >= 90 %"] = (synthetic["cam_sync"]["offset_within_1_frame"] or 0) >= TARGETS["synthetic_offset"]
        checks["synthetic true beats shuffled >= 90 %"] = (synthetic["cam_sync"]["true_beats_shuffled"] or 0) >= TARGETS["synthetic_pairing"]
    real = report.get("real", {}).get("summary")
    if real:
        cam = real["cam_sync"]
        checks["real rolls tracked >= 80 %"] = (cam["tracked"] or 0) >= TARGETS["real_tracked"]
        checks["real unsynchronizable <= 25 %"] = (cam["unsynchronizable"] or 0) <= TARGETS["real_unsynchronizable"]
        checks["CAM-Sync tracks more rolls than both baselines"] = all(
            (cam["tracked_of_all_rolls"] or 0) > (real[m]["tracked_of_all_rolls"] or 0) for m in ("av_align", "onset_sync"))
        # "CAM-Sync must beat both on the real-footage figures": offset(0) near zero is one of them.
        checks["CAM-Sync has offset(0) within 0.1 s more often than both baselines"] = all(
            (cam["zero_within_0.1s"] or 0) > (real[m]["zero_within_0.1s"] or 0) for m in ("av_align", "onset_sync"))
    return checks


def markdown_report(report: dict) -> str:
    lines = ["# CAM-Sync calibration", "", f"Sign convention: {OFFSET_CONVENTION}.",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s). Models: "
             + ", ".join(f"{k}: {v}" for k, v in report["models"].items()) + ".", ""]
    if "synthetic" in report:
        setup, summary = report["synthetic"]["setup"], report["synthetic"]["summary"]
        lines += ["## Synthetic world (truth known)", "",
                  f"{setup['clips_per_scene']} clips per scene ({', '.join(setup['scenes'])}), {setup['frames']} frames "
                  f"at {setup['fps']} fps; audio shifted by {', '.join(f'{s:+g}' for s in setup['shifts_s'])} s.", "",
                  "| method | offset within 1 frame of the shift | true pairing beats shuffled (lag 0) |",
                  "|---|---|---|"]
        for method in METHODS:
            s = summary[method]
            lines.append(f"| {method} | {_percent(s['offset_within_1_frame'])} of {s['rolls']} | "
                         f"{_percent(s['true_beats_shuffled'])} of {s['comparisons']} |")
        lines.append("")
    if "real" in report:
        setup, summary = report["real"]["setup"], report["real"]["summary"]
        lines += ["## Real footage", "",
                  f"{setup['film']} ({setup['duration_s']:.0f} s, {setup['fps']:g} fps): {setup['segments']} segments of "
                  f"{setup['length_s']:g} s spread evenly, audio shifted by {', '.join(f'{r:+g}' for r in setup['rolls_s'])} s. "
                  f"Tracked: |offset(roll) - offset(0) - roll| <= {setup['tolerance_s']} s.", "",
                  "| method | rolls tracked (synchronizable segments) | rolls tracked (all) | unsynchronizable segments "
                  "| offset(0) within 0.1 s of 0 | median abs offset(0) |", "|---|---|---|---|---|---|"]
        for method in METHODS:
            s = summary[method]
            median = "n/a" if s["median_abs_offset0_s"] is None else f"{s['median_abs_offset0_s']:.3f} s"
            lines.append(f"| {method} | {_percent(s['tracked'])} of {s['rolls_judged']} | {_percent(s['tracked_of_all_rolls'])} "
                         f"| {_percent(s['unsynchronizable'])} | {_percent(s['zero_within_0.1s'])} | {median} |")
        lines.append("")
        if "within_0.1s_of_roll" in summary[METHODS[0]]:
            lines += [f"Reading zero, or answering zero? Over all {setup['segments']} segments and every roll (failures "
                      "count as misses):", "",
                      "| method | offset within 0.1 s of the roll (all rolls, 0 included) "
                      f"| offset within 0.1 s of 0 when rolled by >= {FAR_ROLL_S:g} s (zero is wrong) |", "|---|---|---|"]
            lines += [f"| {method} | {_percent(summary[method]['within_0.1s_of_roll'])} | "
                      f"{_percent(summary[method]['zero_when_rolled_far'])} |" for method in METHODS]
            lines.append("")
        if report["real"].get("pooled"):
            lines += pooled_markdown(report["real"]["pooled"], setup)
    lines += ["## Criteria (issue 4, point 4)", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in report["verdicts"].items()]
    return "\n".join(lines) + "\n"


def pooled_markdown(pooled: dict, setup: dict) -> list[str]:
    rolls = ["0"] + [f"{r:g}" for r in setup["rolls_s"]]
    lines = ["### All segments pooled", "",
             "One offset per roll from the mean of the segments' correlation curves (camsync.pooled_sync): does "
             "the film as a whole show its alignment, and does a roll of every segment move it by the roll?", "",
             "| method | " + " | ".join(f"offset at roll {float(r):+g} s" for r in rolls)
             + " | rolls tracked | confidence at roll 0 |", "|---" * (len(rolls) + 3) + "|"]
    for method, s in pooled.items():
        offsets = " | ".join("n/a" if s["offset_s"][r] is None else f"{s['offset_s'][r]:+.3f}" for r in rolls)
        confidence = "n/a" if s["confidence_at_0"] is None else f"{s['confidence_at_0']:.4f}"
        lines.append(f"| {method} ({s['segments']} segments) | {offsets} | {_percent(s['rolls_tracked'])} | {confidence} |")
    return lines + [""]


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "verdicts": verdicts(report)}
    clean = json.loads(json.dumps(report, default=float), parse_constant=lambda _: None)  # NaN -> null
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown_report(report))
    return json_path, md_path


def cmd_calibrate_sync(args: argparse.Namespace) -> int:
    if args.film is None and args.skip_synthetic:
        raise ValueError("nothing to do: give --film and/or drop --skip-synthetic")
    if args.film is not None and not Path(args.film).is_file():
        raise FileNotFoundError(f"--film {args.film} not found (see scripts/get_big_buck_bunny.sh)")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = load_sync_models(args.frame_classifier, args.audio_classifier, frame_size=args.frame_size)
    report = {"command": "python -m mmg_core calibrate-sync " + " ".join(sys.argv[2:]), "models": dict(models.notes)}
    if not args.skip_synthetic:
        report["synthetic"] = synthetic_calibration(models, clips_per_scene=args.synthetic_clips, seed=args.seed)
    if args.film is not None:
        report["real"] = real_calibration(models, args.film, segments=args.segments, length_s=args.segment_seconds,
                                          short_side=args.frame_size)
    report["seconds"] = time.perf_counter() - started
    json_path, md_path = write_report(args.out, report)
    print(md_path.read_text())
    print(json_path)
    return 0


def add_calibrate_command(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate-sync", help="prove CAM-Sync tracks known audio shifts (synthetic + a film)")
    cal.add_argument("--film", help="a film with sound, e.g. Big Buck Bunny (scripts/get_big_buck_bunny.sh)")
    cal.add_argument("--out", required=True, help="folder for report.json and report.md")
    cal.add_argument("--segments", type=int, default=20, help="film segments, spread evenly (default 20)")
    cal.add_argument("--segment-seconds", type=float, default=8.0)
    cal.add_argument("--synthetic-clips", type=int, default=16, help="world clips per event scene (default 16)")
    cal.add_argument("--skip-synthetic", action="store_true")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--frame-classifier", metavar="FILE")
    cal.add_argument("--audio-classifier", metavar="FILE")
    cal.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE)
    cal.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    cal.set_defaults(func=cmd_calibrate_sync)
    return cal
