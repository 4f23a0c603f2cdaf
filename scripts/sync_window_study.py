"""How much footage does CAM-Sync need to find a film's alignment? offset(0) against window length.

``python scripts/sync_window_study.py --out eval/sync_windows`` (Big Buck Bunny from
scripts/get_big_buck_bunny.py; ~10 min on one core) cuts the film into contiguous 8 s chunks (from 5 s
in to 5 s before the end, like the calibration's segments), analyses each chunk exactly as
``calibrate-sync`` analyses a segment (VideoCAM and AudioCAM on the chunk, the onset baseline's motion
and loudness), and puts each method's two onset signals on the 25 Hz timeline. It then joins
consecutive chunks into windows of 8, 16, 32, 64, 128 s and the whole film, and for each window length
reports:

  offset(0)   how often the estimated offset of the film's own soundtrack is within 0.1 s (and 0.2 s)
              of zero, and the median |offset(0)|: the film is mastered in sync, so a measure of sync
              should land near zero once it has enough evidence;
  tracked     how often rolling the soundtrack by +-0.2, +-0.4, +-0.8 s moves the offset by the roll
              (within 0.08 s, as in the calibration).

It also pools all chunks (camsync.pooled_sync, the mean of their correlation curves) at each roll.
Why: the calibration's 8 s segments put CAM-Sync's offset(0) within 0.1 s of zero only 5 % of the
time, which reads as "it does not find sync"; this study tells whether that is a lack of evidence
(short windows of music, cuts and camera moves) or a measure that does not see sync at all.
Caveat: a window's energies are the chunks' (each chunk's VideoCAM normalised over its own 8 s and
with its own top class), joined; that is how `evaluate` would see a film cut into 8 s clips.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.sync.backbones import DEFAULT_FRAME_SIZE, load_sync_models  # noqa: E402
from mmg_core.sync.calibration import (  # noqa: E402
    REAL_ROLLS_S, REAL_TOLERANCE_S, ZERO_TOLERANCE_S, analyse_picture, analyse_sound, open_film,
)
from mmg_core.sync.camsync import (  # noqa: E402
    DEFAULT_MAX_LAG_S, TIMELINE_RATE, cam_onsets, centred_start, correlate_onsets, onset_form, pooled_sync,
    resample_held,
)
from study_report import write_study_report  # noqa: E402 (a sibling script)

CHUNK_S = 8.0
MARGIN_S = 5.0
WINDOW_CHUNKS = (1, 2, 4, 8, 16)  # 8 ... 128 s; the whole film is added
METHODS = ("cam_sync", "onset_sync")


def chunk_starts(duration_s: float, fps: float) -> list[float]:
    """Contiguous chunk starts on frame boundaries, the first MARGIN_S in, the last ending MARGIN_S before the end."""
    frames = round(CHUNK_S * fps)
    first = round(MARGIN_S * fps)
    last = int((duration_s - MARGIN_S - CHUNK_S) * fps)
    return [f / fps for f in range(first, last + 1, frames)]


def chunk_onsets(models, film, start: float) -> dict[str, dict]:
    """{method: {"video": onsets, "audio": {roll: onsets}}} on the 25 Hz timeline for one chunk."""
    count = round(CHUNK_S * film.fps)
    duration = count / film.fps
    picture = analyse_picture(models, film.frames(start, count, DEFAULT_FRAME_SIZE), film.fps)
    motion = onset_form(resample_held(picture.motion, film.fps, TIMELINE_RATE, duration))
    out = {"cam_sync": {"video": None, "audio": {}}, "onset_sync": {"video": motion, "audio": {}}}
    for roll in (0.0, *REAL_ROLLS_S):
        sound = analyse_sound(models, film.audio_window(start, duration, roll), film.sample_rate)
        video_events, audio_onsets = cam_onsets(picture.cam, sound.cam)
        out["cam_sync"]["video"] = video_events
        out["cam_sync"]["audio"][roll] = audio_onsets
        out["onset_sync"]["audio"][roll] = onset_form(resample_held(
            sound.loudness, sound.loudness_rate, TIMELINE_RATE, duration, centred_start(sound.loudness_rate)))
    return out


def window_offsets(video: list[np.ndarray], audio: list[np.ndarray], chunks_per_window: int,
                   max_lag_s: float = DEFAULT_MAX_LAG_S) -> list[float]:
    """Offset (s) of each run of ``chunks_per_window`` consecutive chunks, their onsets joined; NaN when a side is flat."""
    offsets = []
    for first in range(0, len(video) - chunks_per_window + 1, chunks_per_window):
        v = np.concatenate(video[first:first + chunks_per_window])
        a = np.concatenate(audio[first:first + chunks_per_window])
        flat = float(np.std(v)) == 0.0 or float(np.std(a)) == 0.0
        offsets.append(float("nan") if flat else correlate_onsets(a, v, TIMELINE_RATE, max_lag_s).offset_s)
    return offsets


def window_figures(onsets: list[dict], method: str, chunks_per_window: int) -> dict:
    video = [chunk[method]["video"] for chunk in onsets]
    by_roll = {roll: window_offsets(video, [chunk[method]["audio"][roll] for chunk in onsets], chunks_per_window)
               for roll in (0.0, *REAL_ROLLS_S)}
    zero = np.array(by_roll[0.0])
    measured = np.isfinite(zero)
    tracked = [abs(by_roll[roll][i] - zero[i] - roll) <= REAL_TOLERANCE_S + 1e-9
               for roll in REAL_ROLLS_S for i in np.flatnonzero(measured)]
    return {"window_s": chunks_per_window * CHUNK_S, "label": f"{chunks_per_window * CHUNK_S:g} s",
            "windows": int(zero.size), "measured": int(measured.sum()),
            "zero_within_0.1s": round(float(np.mean(np.abs(zero[measured]) <= ZERO_TOLERANCE_S)), 4),
            "zero_within_0.2s": round(float(np.mean(np.abs(zero[measured]) <= 2 * ZERO_TOLERANCE_S)), 4),
            "median_abs_offset0_s": round(float(np.median(np.abs(zero[measured]))), 4),
            "tracked": round(float(np.mean(tracked)), 4) if tracked else None,
            "offsets0_s": [round(float(x), 3) for x in zero]}


def pooled_figures(onsets: list[dict], method: str) -> dict:
    """pooled_sync of all chunks' correlations at each roll."""
    out = {}
    for roll in (0.0, *REAL_ROLLS_S):
        results = [correlate_onsets(chunk[method]["audio"][roll], chunk[method]["video"], TIMELINE_RATE, DEFAULT_MAX_LAG_S)
                   for chunk in onsets if np.std(chunk[method]["audio"][roll]) > 0 and np.std(chunk[method]["video"]) > 0]
        pooled = pooled_sync(results)
        out[f"{roll:g}"] = {"offset_s": round(pooled.offset_s, 4), "confidence": round(pooled.confidence, 4),
                            "chunks": len(results)}
    return out


def study(onsets: list[dict]) -> dict:
    results = {}
    for method in METHODS:
        windows = [window_figures(onsets, method, k) for k in (*WINDOW_CHUNKS, len(onsets))]
        windows[-1]["label"] = f"whole film ({windows[-1]['label']})"
        results[method] = {"windows": windows, "pooled": pooled_figures(onsets, method)}
    return results


def markdown(report: dict) -> str:
    lines = ["# How much footage CAM-Sync needs: offset(0) against window length", "",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s); see the script's docstring. "
             f"Film: {report['film']}, {report['chunks']} contiguous chunks of {CHUNK_S:g} s. "
             "Models: " + ", ".join(f"{k}: {v}" for k, v in report["models"].items()) + ".", "",
             "| method | window | windows | offset(0) within 0.1 s | within 0.2 s | median abs offset(0) | rolls tracked |",
             "|---|---|---|---|---|---|---|"]
    for method, result in report["methods"].items():
        for w in result["windows"]:
            tracked = "n/a" if w["tracked"] is None else f"{100 * w['tracked']:.1f} %"
            lines.append(f"| {method} | {w['label']} | {w['measured']} of {w['windows']} | {100 * w['zero_within_0.1s']:.1f} % "
                         f"| {100 * w['zero_within_0.2s']:.1f} % | {w['median_abs_offset0_s']:.3f} s | {tracked} |")
    lines += ["", "All chunks pooled (mean of the chunks' correlation curves, `pooled_sync`), per roll of the soundtrack:", "",
              "| method | " + " | ".join(f"roll {float(r):+g} s" for r in report["methods"]["cam_sync"]["pooled"]) + " |",
              "|---" * (1 + len(report["methods"]["cam_sync"]["pooled"])) + "|"]
    for method, result in report["methods"].items():
        cells = " | ".join(f"{p['offset_s']:+.3f} s (conf. {p['confidence']:.4f})" for p in result["pooled"].values())
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines) + "\n"


def _to_json(onsets: list[dict]) -> list[dict]:
    return [{m: {"video": c[m]["video"].tolist(), "audio": {f"{r:g}": a.tolist() for r, a in c[m]["audio"].items()}}
             for m in METHODS} for c in onsets]


def _from_json(onsets: list[dict]) -> list[dict]:
    return [{m: {"video": np.asarray(c[m]["video"]), "audio": {float(r): np.asarray(a) for r, a in c[m]["audio"].items()}}
             for m in METHODS} for c in onsets]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for report.json and report.md")
    parser.add_argument("--film", help="default: scripts/get_big_buck_bunny.py's copy")
    parser.add_argument("--cache", help="JSON file of the chunks' onsets: read if present, else written")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.film is None:
        from get_big_buck_bunny import fetch  # noqa: PLC0415 (a sibling script)

        args.film = str(fetch(Path.home() / ".cache" / "mmg" / "bbb"))
    film = open_film(args.film)
    models = load_sync_models()
    cache = None if args.cache is None else Path(args.cache)
    if cache is not None and cache.is_file():
        onsets = _from_json(json.loads(cache.read_text()))
    else:
        onsets = [chunk_onsets(models, film, start) for start in tqdm(chunk_starts(film.duration_s, film.fps),
                                                                         desc="chunks", unit="chunk")]
        if cache is not None:
            cache.write_text(json.dumps(_to_json(onsets)))
    report = {"command": "python scripts/sync_window_study.py " + " ".join(sys.argv[1:]),
              "film": Path(args.film).name, "chunks": len(onsets), "models": dict(models.notes),
              "methods": study(onsets)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_study_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
