"""Which energies and peak rules make CAM-Sync track audio rolls on real footage? A held-out study.

``python scripts/sync_variant_study.py --out eval/sync_variants`` (Big Buck Bunny from
scripts/get_big_buck_bunny.py; ~12 min on one core) measures the calibration's real-footage figures
(mmg_core.sync.calibration: rolls of +-0.2/0.4/0.8 s tracked within 0.08 s, offset(0) within 0.1 s)
for variants of the correlation's inputs, on two sets of 8 s segments:

  eval  the calibration's own 20 segments, spread evenly over the film;
  dev   57 segments that start a quarter, half and three quarters of the way between two eval
        starts: held out from the eval segments, so a variant picked on dev is not tuned to eval.

Variants (every combination):
  audio   audiocam (CAM-Sync's AudioCAM energy) | loudness (the onset baseline's) | percussive: the dB
          level of the mel power that a median-filter harmonic/percussive split (Fitzgerald 2010)
          assigns to transients, which sets sustained musical notes aside without any classifier
  video   videocam+turn (CAM-Sync's video events) | videocam (motion onsets of the CAM-weighted
          motion alone) | motion (the onset baseline's frame difference, cuts held) | videocam floor A
          (motion weighted by A + (1 - A) x heatmap: the CAM still picks where to look, but motion
          elsewhere keeps weight A; A = 0 is videocam, A = 1 is motion)
  peaks   dense (every positive difference) | peaks (only local maxima above mean + 2 std, smoothed
          over +-1 step): sparse event trains, in case a few strong events carry the sync
and, for each, "gated": the quarter of segments with the smallest gap between the correlation peak and
the best rival peak more than 0.2 s away declared unsynchronizable (the most the issue allows).

The point of the study is the spread: with 20 segments one roll is ~0.8 % and a segment ~5 %, so a
variant only beats another when it does so on dev and eval alike. Writes report.json and report.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.sync.backbones import DEFAULT_FRAME_SIZE, load_sync_models  # noqa: E402
from mmg_core.sync.calibration import (  # noqa: E402
    REAL_ROLLS_S, REAL_TOLERANCE_S, ZERO_TOLERANCE_S, analyse_picture, analyse_sound, open_film, segment_starts,
)
from mmg_core.sync.camsync import (  # noqa: E402
    DEFAULT_MAX_LAG_S, TIMELINE_RATE, SyncResult, _db, centred_start, correlate_onsets, log_mel_power, onset_form,
    resample_held, video_events,
)
from study_report import write_study_report  # noqa: E402 (a sibling script)

AUDIO = ("audiocam", "loudness", "percussive")
FLOORS = (0.25, 0.5, 0.75)
VIDEO = ("videocam+turn", "videocam", "motion", *(f"videocam floor {a}" for a in FLOORS))
PEAKS = ("dense", "peaks")
DEV_PHASES = (0.25, 0.5, 0.75)
GATED_FRACTION = 0.25
RIVAL_DISTANCE_S = 0.2


# ----------------------------------------------------------------------------------------------
# Energies


def median_along(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Running median of odd ``size`` along ``dim`` of a 2-D tensor, edges repeated."""
    half = size // 2
    moved = x.movedim(dim, -1)
    padded = F.pad(moved[None], (half, half), mode="replicate")[0]
    return padded.unfold(-1, size, 1).median(-1).values.movedim(-1, dim)


def percussive_level(power: torch.Tensor, *, mel_bins: int = 9, frames: int = 31, floor_db: float = 50.0) -> np.ndarray:
    """(frames,) dB level of the transient part of a (n_mels, frames) mel power, >= 0.

    Harmonic/percussive split by median filters: a sustained note is smooth along time, a hit along
    frequency; the soft mask P^2 / (P^2 + H^2) keeps the power the frequency-median explains.
    """
    power = power.double()
    across_frequency = median_along(power, 0, mel_bins)
    along_time = median_along(power, 1, frames)
    mask = across_frequency**2 / (across_frequency**2 + along_time**2 + 1e-30)
    level = _db(reduce(mask * power, "m t -> t", "sum"), floor_db)
    return (level - level.min()).numpy()


def segment_energies(models, film, start: float) -> dict:
    """Everything the variants need of one segment: the picture once, each rolled soundtrack once."""
    count = round(8.0 * film.fps)
    picture = analyse_picture(models, film.frames(start, count, DEFAULT_FRAME_SIZE), film.fps)
    cam = picture.cam
    record = {"start_s": start, "fps": film.fps, "duration_s": picture.duration_s, "videocam": cam.energy,
              "turn_back": cam.turn_back, "motion": cam.motion, "audio": {}}
    for roll in (0.0, *REAL_ROLLS_S):
        audio = film.audio_window(start, count / film.fps, roll)
        sound = analyse_sound(models, audio, film.sample_rate)
        power, rate = log_mel_power(audio, film.sample_rate)
        record["audio"][roll] = {"audiocam": (sound.cam.energy, sound.cam.frames_per_second),
                                 "loudness": (sound.loudness, sound.loudness_rate),
                                 "percussive": (percussive_level(power), rate)}
    return record


# ----------------------------------------------------------------------------------------------
# Correlation per variant


def peak_train(x: np.ndarray, k: float = 2.0) -> np.ndarray:
    """Local maxima above mean + k std, everything else 0, smoothed over +-1 step."""
    keep = np.zeros_like(x)
    middle = np.arange(1, x.size - 1)
    is_peak = (x[middle] > x[middle - 1]) & (x[middle] >= x[middle + 1]) & (x[middle] >= x.mean() + k * x.std())
    keep[middle[is_peak]] = x[middle[is_peak]]
    return np.convolve(keep, [0.25, 0.5, 0.25], "same")


def picture_energy(record: dict, video: str) -> np.ndarray:
    """The per-frame motion energy a video variant correlates (before the onset form)."""
    if video == "motion":
        return np.asarray(record["motion"])
    if video.startswith("videocam floor "):
        # mean((a + (1 - a) heatmap) x motion) = a mean(motion) + (1 - a) mean(heatmap x motion)
        floor = float(video.rsplit(" ", 1)[1])
        return floor * np.asarray(record["motion"]) + (1 - floor) * np.asarray(record["videocam"])
    return np.asarray(record["videocam"])


def correlation(record: dict, roll: float, audio: str, video: str, peaks: str) -> SyncResult | None:
    """CAM-Sync's correlation step (camsync.correlate_onsets) on one variant's onsets; None when a side is flat."""
    rate, duration = TIMELINE_RATE, record["duration_s"]
    energy, energy_rate = record["audio"][roll][audio]
    audio_onsets = onset_form(resample_held(energy, energy_rate, rate, duration, centred_start(energy_rate)))
    picture = resample_held(picture_energy(record, video), record["fps"], rate, duration)
    turn = resample_held(record["turn_back"], record["fps"], rate, duration) if video == "videocam+turn" else None
    video_onsets = video_events(picture, turn)
    if peaks == "peaks":
        audio_onsets, video_onsets = peak_train(audio_onsets), peak_train(video_onsets)
    if audio_onsets.std() == 0 or video_onsets.std() == 0:
        return None
    return correlate_onsets(audio_onsets, video_onsets, rate, DEFAULT_MAX_LAG_S)


def rival_gap(result: SyncResult) -> float:
    """Peak correlation minus the best correlation more than RIVAL_DISTANCE_S away from the peak's lag."""
    steps = np.round(result.lags_s * TIMELINE_RATE)
    peak = steps[np.argmin(np.abs(result.lags_s - result.offset_s))]  # the grid lag the refined offset came from
    rivals = np.abs(steps - peak) > RIVAL_DISTANCE_S * TIMELINE_RATE
    r = result.correlation
    return float(result.score - (r[rivals].max() if rivals.any() else r.min()))


def score_variant(records: list[dict], audio: str, video: str, peaks: str) -> dict:
    rows = []  # per measurable segment: (rival gap, [tracked per roll], offset(0) near zero)
    for record in records:
        zero = correlation(record, 0.0, audio, video, peaks)
        if zero is None:
            continue
        offset0 = zero.offset_s
        tracked = []
        for roll in REAL_ROLLS_S:
            rolled = correlation(record, roll, audio, video, peaks)
            offset = math.nan if rolled is None else rolled.offset_s
            tracked.append(math.isfinite(offset) and abs(offset - offset0 - roll) <= REAL_TOLERANCE_S + 1e-9)
        rows.append((rival_gap(zero), tracked, abs(offset0) <= ZERO_TOLERANCE_S))
    segments, rolls = len(records), len(REAL_ROLLS_S)

    def figures(kept: list) -> dict:
        hits = sum(sum(t) for _, t, _ in kept)
        return {"tracked": round(hits / max(1, rolls * len(kept)), 4), "tracked_of_all": round(hits / (rolls * segments), 4),
                "unsynchronizable": round(1 - len(kept) / segments, 4),
                "zero_within_0.1s": round(sum(z for *_, z in kept) / segments, 4)}

    confident = sorted(rows, key=lambda row: -row[0])[: math.ceil(segments * (1 - GATED_FRACTION))]
    return {"plain": figures(rows), "gated": figures(confident)}


# ----------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    lines = ["# CAM-Sync variants on held-out film segments", "",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s). Segments: eval {report['segments']['eval']}, "
             f"dev {report['segments']['dev']} (see the script's docstring). Models: "
             + ", ".join(f"{k}: {v}" for k, v in report["models"].items()) + ". Figures: rolls tracked among "
             "synchronizable segments / of all rolls / offset(0) within 0.1 s; gated = the least distinct quarter "
             "of peaks declared unsynchronizable.", "",
             "| audio | video | peaks | eval tracked | eval of all | eval zero | dev tracked | dev of all | dev zero "
             "| eval gated | dev gated |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    for row in report["variants"]:
        e, d = row["eval"], row["dev"]
        lines.append(f"| {row['audio']} | {row['video']} | {row['peaks']} | {pct(e['plain']['tracked'])} | "
                     f"{pct(e['plain']['tracked_of_all'])} | {pct(e['plain']['zero_within_0.1s'])} | {pct(d['plain']['tracked'])} | "
                     f"{pct(d['plain']['tracked_of_all'])} | {pct(d['plain']['zero_within_0.1s'])} | "
                     f"{pct(e['gated']['tracked'])} | {pct(d['gated']['tracked'])} |")
    return "\n".join(lines) + "\n"


def _to_json(record: dict) -> dict:
    audio = {str(roll): {k: [np.asarray(e).tolist(), r] for k, (e, r) in series.items()} for roll, series in record["audio"].items()}
    plain = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items() if k != "audio"}
    return {**plain, "audio": audio}


def _from_json(record: dict) -> dict:
    audio = {float(roll): {k: (np.asarray(e), r) for k, (e, r) in series.items()} for roll, series in record["audio"].items()}
    plain = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in record.items() if k != "audio"}
    return {**plain, "audio": audio}


def study_segments(film) -> dict[str, list[float]]:
    """The start times (s) of the eval segments (the calibration's 20) and the dev segments between them."""
    eval_starts = segment_starts(film, 20, 8.0)
    spacing = eval_starts[1] - eval_starts[0]
    dev_starts = [round((s + phase * spacing) * film.fps) / film.fps for phase in DEV_PHASES for s in eval_starts[:-1]]
    return {"eval": eval_starts, "dev": dev_starts}


def cached_energies(cache: str | None, models, film, starts: dict[str, list[float]], tqdm) -> dict[str, list[dict]]:
    """Each set's segment energies, from ``cache`` (JSON) when it holds the same starts and models."""
    key = {"starts": starts, "models": dict(models.notes)}
    if cache and Path(cache).is_file():
        stored = json.loads(Path(cache).read_text())
        if stored.get("key") == json.loads(json.dumps(key)):
            return {name: [_from_json(r) for r in records] for name, records in stored["sets"].items()}
        print(f"{cache} was made for other segments or models: measuring again", file=sys.stderr)
    sets = {name: [segment_energies(models, film, s) for s in tqdm(values, desc=name, unit="segment")]
            for name, values in starts.items()}
    if cache:
        payload = {"key": key, "sets": {name: [_to_json(r) for r in records] for name, records in sets.items()}}
        Path(cache).write_text(json.dumps(payload))
    return sets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--film", help="Big Buck Bunny (default: scripts/get_big_buck_bunny.py's copy)")
    parser.add_argument("--out", required=True, help="folder for report.json and report.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--audio-classifier", metavar="FILE", help="AudioCAM's classifier (default: the shipped one)")
    parser.add_argument("--cache", metavar="FILE.json",
                        help="keep the segments' energies here: read if it exists (same film and models), else written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.film is None:
        from get_big_buck_bunny import fetch  # noqa: PLC0415 (a sibling script)

        args.film = str(fetch(Path.home() / ".cache" / "mmg" / "bbb"))
    from tqdm import tqdm

    models = load_sync_models(None, args.audio_classifier, frame_size=DEFAULT_FRAME_SIZE)
    film = open_film(args.film)
    sets = cached_energies(args.cache, models, film, study_segments(film), tqdm)
    variants = [{"audio": a, "video": v, "peaks": p, **{name: score_variant(records, a, v, p) for name, records in sets.items()}}
                for a, v, p in itertools.product(AUDIO, VIDEO, PEAKS)]
    report = {"command": "python scripts/sync_variant_study.py " + " ".join(sys.argv[1:]),
              "seconds": time.perf_counter() - started, "models": dict(models.notes), "segments": {k: len(v) for k, v in sets.items()},
              "variants": variants}
    write_study_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
