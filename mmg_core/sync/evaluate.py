"""Score clips for audio-video sync: files or folders in, per-clip records, aggregates, CSV and plots out.

``python -m mmg_core evaluate FILE_OR_DIR... --json OUT [--csv OUT] [--plots DIR]`` writes, per clip,
``cam_sync`` (peak correlation), ``offset_s`` (see camsync.OFFSET_CONVENTION: positive = audio
late), ``confidence``, ``cam_sync_at_0``, ``av_align`` and the model-free ``onset_sync``, and
aggregates over all clips, among them ``pooled``: one offset for the whole set from the mean of the
clips' correlation curves (camsync.pooled_sync), the way to tell a systematic lag (a model's, a
film's) that single short clips are too noisy to show. Unsynchronizable clips keep NaN scores
(``null`` in JSON, empty in CSV) with a ``reason``; a file that cannot be read (or is too short to
score) gets an ``error`` and the run goes on.

``rank_by_cam_sync`` is the best-of-N helper: it orders generated candidates by CAM-Sync.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

from .backbones import DEFAULT_FRAME_SIZE, SyncModels, load_sync_models
from .camsync import (
    DEFAULT_MAX_LAG_S, OFFSET_CONVENTION, TIMELINE_RATE, AVAlign, SyncResult, av_align, cam_onsets, cam_sync,
    onset_motion_sync, pooled_sync, unsynchronizable,
)
from .gradcam import AudioCam, VideoCam, audio_cam, video_cam

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
CSV_FIELDS = ("path", "cam_sync", "offset_s", "confidence", "cam_sync_at_0", "av_align", "onset_sync",
              "onset_offset_s", "reason", "video_class", "audio_class", "frames", "fps", "duration_s",
              "sample_rate", "seconds", "error")


@dataclass(frozen=True)
class ClipScores:
    cam_sync: SyncResult
    onset_sync: SyncResult  # the model-free baseline (frame differences against loudness)
    av_align: AVAlign
    video: VideoCam
    audio: AudioCam | None  # None when the clip has no sound


def frames_to_video(frames) -> torch.Tensor:
    """(F, H, W, 3) uint8 RGB (as mmg_core.media.read_mp4 gives) -> (F, 3, H, W) float32 in [-1, 1]."""
    pixels = torch.as_tensor(np.asarray(frames))
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != torch.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8 RGB, got {pixels.dtype} {tuple(pixels.shape)}")
    return rearrange(pixels, "f h w c -> f c h w").float() / 127.5 - 1.0


def score_clip(models: SyncModels, video: torch.Tensor, audio, fps: float, sample_rate: int | None, *,
               max_lag_s: float = DEFAULT_MAX_LAG_S) -> ClipScores:
    """All sync measures of one clip: video (F, 3, H, W) in [-1, 1]; audio (C, T) or (T,), or None."""
    fps = float(fps)
    visual = video_cam(models.frames, video, fps)
    if audio is None or np.asarray(audio).size == 0:
        silent = unsynchronizable("the clip has no audio")
        return ClipScores(silent, silent, AVAlign(math.nan, (), (), "the clip has no audio"), visual, None)
    sound = audio_cam(models.audio, audio, sample_rate)
    return ClipScores(
        cam_sync=cam_sync(visual, sound, max_lag_s=max_lag_s),
        onset_sync=onset_motion_sync(video, audio, fps, sample_rate, max_lag_s=max_lag_s),
        av_align=av_align(video, audio, fps, sample_rate),
        video=visual,
        audio=sound,
    )


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _label(cam: VideoCam | AudioCam) -> str:
    """The top class's name, or "#index" for a classifier without names (ImageNet's come unnamed)."""
    return cam.class_name or f"#{cam.top_class}"


def clip_record(path: str, scores: ClipScores, sample_rate: int | None, seconds: float) -> dict:
    """The per-clip JSON record (NaN written as null)."""
    visual = scores.video
    return {
        "path": path,
        "cam_sync": _number(scores.cam_sync.score),
        "offset_s": _number(scores.cam_sync.offset_s),
        "confidence": _number(scores.cam_sync.confidence),
        "cam_sync_at_0": _number(scores.cam_sync.score_at_0),
        "av_align": _number(scores.av_align.score),
        "onset_sync": _number(scores.onset_sync.score),
        "onset_offset_s": _number(scores.onset_sync.offset_s),
        "reason": scores.cam_sync.reason,
        "video_class": _label(visual),
        "audio_class": None if scores.audio is None else _label(scores.audio),
        "frames": int(visual.energy.size),
        "fps": round(visual.fps, 6),
        "duration_s": round(visual.energy.size / visual.fps, 6),
        "sample_rate": sample_rate,
        "seconds": round(seconds, 3),
        "error": None,
        # The correlation over lag, so aggregate() can pool clips (pooled_sync); not in the CSV.
        "cam_sync_curve": _curve(scores.cam_sync),
    }


def _curve(result: SyncResult) -> dict[str, list[float]] | None:
    if not result.synchronizable:
        return None
    return {"lags_s": [round(float(lag), 6) for lag in result.lags_s],
            "correlation": [round(float(r), 6) for r in result.correlation]}


def _from_curve(curve: dict[str, list[float]]) -> SyncResult:
    """A SyncResult carrying just a record's stored curve (all pooled_sync reads)."""
    return SyncResult(math.nan, math.nan, math.nan, math.nan, lags_s=np.asarray(curve["lags_s"]),
                      correlation=np.asarray(curve["correlation"]))


def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders searched recursively for VIDEO_SUFFIXES (sorted); missing paths fail."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return found


def evaluate_file(path: Path, models: SyncModels, *, max_lag_s: float, plots_dir: Path | None) -> dict:
    """One file's record; a file that cannot be decoded gets an ``error`` instead of scores."""
    from ..media import read_mp4

    started = time.perf_counter()
    try:
        clip = read_mp4(path)
        video = frames_to_video(clip.frames)
        scores = score_clip(models, video, clip.audio, float(clip.fps), clip.sample_rate, max_lag_s=max_lag_s)
    except (ValueError, FileNotFoundError) as error:  # unreadable, or too short to score: say so, go on
        return {**{name: None for name in CSV_FIELDS}, "path": str(path), "error": str(error)}
    if plots_dir is not None:
        plot_clip(plots_dir, path.stem, scores, video)
    return clip_record(str(path), scores, clip.sample_rate, time.perf_counter() - started)


def evaluate_files(paths: Sequence[str | os.PathLike], models: SyncModels, *, max_lag_s: float = DEFAULT_MAX_LAG_S,
                   plots_dir: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """Records of every clip under ``paths`` (see expand_paths), with a progress bar on stderr."""
    from tqdm import tqdm

    files = expand_paths(paths)
    plots = None if plots_dir is None else Path(plots_dir)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
    records = []
    for path in tqdm(files, desc="sync", unit="clip", disable=not progress):
        records.append(evaluate_file(path, models, max_lag_s=max_lag_s, plots_dir=plots))
    return records


def _stats(values: list[float | None]) -> dict[str, float | None]:
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if finite.size == 0:
        return {"mean": None, "median": None, "count": 0}
    return {"mean": _number(finite.mean()), "median": _number(np.median(finite)), "count": int(finite.size)}


def aggregate(records: list[dict]) -> dict:
    """Means and medians over the clips that have each measure (NaN / null ones are left out)."""
    scored = [r for r in records if r.get("error") is None]
    summary = {"clips": len(records), "errors": len(records) - len(scored),
               "synchronizable": sum(r["cam_sync"] is not None for r in scored)}
    for name in ("cam_sync", "cam_sync_at_0", "confidence", "av_align", "onset_sync"):
        summary[name] = _stats([r[name] for r in scored])
    summary["abs_offset_s"] = _stats([abs(r["offset_s"]) for r in scored if r["offset_s"] is not None])
    curves = [_from_curve(r["cam_sync_curve"]) for r in scored if r.get("cam_sync_curve")]
    pooled = pooled_sync(curves)
    summary["pooled"] = {"offset_s": _number(pooled.offset_s), "score": _number(pooled.score),
                         "confidence": _number(pooled.confidence), "score_at_0": _number(pooled.score_at_0),
                         "clips": len(curves), "reason": pooled.reason}
    return summary


def write_json(path: str | os.PathLike, records: list[dict], models: SyncModels | None = None) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    report = {"offset_convention": OFFSET_CONVENTION, "models": dict(models.notes) if models else {},
              "aggregate": aggregate(records), "clips": records}
    target.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    return target


def write_csv(path: str | os.PathLike, records: list[dict]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow({name: "" if record.get(name) is None else record[name] for name in CSV_FIELDS})
    return target


# ----------------------------------------------------------------------------------------------
# Plots


def _cam_strip(scores: ClipScores, video: torch.Tensor, count: int = 8) -> "Image.Image":
    """Up to ``count`` evenly spaced frames tinted red where VideoCAM looks, above the log-mel tinted
    red where AudioCAM looks."""
    from PIL import Image

    size = 96
    picks = np.linspace(0, video.shape[0] - 1, min(count, video.shape[0])).round().astype(int)
    strip = Image.new("RGB", (size * len(picks), 2 * size), "white")
    for slot, frame in enumerate(picks):
        grey = ((video[frame].mean(0).numpy() + 1.0) * 127.5).astype(np.uint8)
        grey = np.asarray(Image.fromarray(grey).resize((size, size)), np.float32)
        heat = np.asarray(Image.fromarray((scores.video.heatmaps[frame].numpy() * 255).astype(np.uint8))
                          .resize((size, size), Image.BILINEAR), np.float32)
        tinted = np.stack([np.maximum(grey, heat), grey * (1 - heat / 255), grey * (1 - heat / 255)], -1)
        strip.paste(Image.fromarray(tinted.astype(np.uint8)), (slot * size, 0))
    if scores.audio is not None:
        mel = scores.audio.log_mel.numpy()[::-1]  # low frequencies at the bottom
        mel = (mel - mel.min()) / max(float(mel.max() - mel.min()), 1e-9)
        heat = scores.audio.heatmap.numpy()[::-1]
        picture = np.stack([np.maximum(mel, heat), mel * (1 - heat), mel * (1 - heat)], -1) * 255
        strip.paste(Image.fromarray(picture.astype(np.uint8)).resize((strip.width, size)), (0, size))
    return strip


def plot_clip(directory: str | os.PathLike, name: str, scores: ClipScores, video: torch.Tensor) -> list[Path]:
    """PNGs of one clip (video (F, 3, H, W) in [-1, 1]): CAM maps, onset timelines, correlation."""
    from ..plotting import line_plot

    folder = Path(directory)
    written = [folder / f"{name}_cam.png"]
    _cam_strip(scores, video).save(written[0])
    if scores.audio is None or not scores.cam_sync.synchronizable:
        return written
    video_onsets, audio_onsets = cam_onsets(scores.video, scores.audio)
    times = (np.arange(video_onsets.size) / TIMELINE_RATE).tolist()
    scaled = {label: (times, (x / max(float(x.max()), 1e-12)).tolist())
              for label, x in (("video onsets", video_onsets), ("audio onsets", audio_onsets))}
    written.append(folder / f"{name}_onsets.png")
    line_plot(written[-1], scaled, f"{name}: CAM energies in onset form", x_label="seconds", log_y=False)
    result = scores.cam_sync
    written.append(folder / f"{name}_xcorr.png")
    line_plot(written[-1], {"CAM-Sync": (result.lags_s.tolist(), result.correlation.tolist())},
              f"{name}: score {result.score:.3f} at offset {result.offset_s:+.3f} s (+ = audio late)",
              x_label="lag (s)", log_y=False)
    return written


# ----------------------------------------------------------------------------------------------
# Best of N


@dataclass(frozen=True)
class RankedCandidate:
    index: int  # position in the candidate batch
    cam_sync: SyncResult


def rank_by_cam_sync(models: SyncModels, video: torch.Tensor, audio: torch.Tensor, fps: float, sample_rate: int, *,
                     key: str = "score_at_0", max_lag_s: float = DEFAULT_MAX_LAG_S) -> list[RankedCandidate]:
    """Candidates ordered best first by CAM-Sync: video (B, F, C, H, W) in [-1, 1], audio (B, C, T).

    ``key`` "score_at_0" (default) prefers clips already aligned: a clip whose sound is half a second
    late can still have a high peak ``score``. Unsynchronizable candidates (NaN) come last.
    """
    if key not in ("score_at_0", "score"):
        raise ValueError(f"key must be 'score_at_0' or 'score', got {key!r}")
    if video.ndim != 5 or audio.ndim != 3 or video.shape[0] != audio.shape[0]:
        raise ValueError(f"need video (B, F, C, H, W) and audio (B, C, T) with one B, got {tuple(video.shape)} "
                         f"and {tuple(audio.shape)}")
    ranked = []
    for index in range(video.shape[0]):
        visual = video_cam(models.frames, video[index], fps)
        result = cam_sync(visual, audio_cam(models.audio, audio[index], sample_rate), max_lag_s=max_lag_s)
        ranked.append(RankedCandidate(index, result))
    value = lambda item: getattr(item.cam_sync, key)  # noqa: E731
    return sorted(ranked, key=lambda item: (math.isnan(value(item)), -np.nan_to_num(value(item)), item.index))


# ----------------------------------------------------------------------------------------------
# Command line


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.frame_size < 32:
        raise ValueError(f"--frame-size must be >= 32 pixels (the network downsamples 32x), got {args.frame_size}")
    if not args.max_lag > 0:
        raise ValueError(f"--max-lag must be > 0 seconds, got {args.max_lag}")
    files = expand_paths(args.paths)  # a wrong path fails before any model loads
    models = load_sync_models(args.frame_classifier, args.audio_classifier, frame_size=args.frame_size,
                              device=args.device)
    records = evaluate_files(files, models, max_lag_s=args.max_lag, plots_dir=args.plots,
                             progress=not args.quiet)
    print(write_json(args.json, records, models))
    if args.csv:
        print(write_csv(args.csv, records))
    summary = aggregate(records)
    print(f"{summary['clips']} clips, {summary['synchronizable']} synchronizable, {summary['errors']} unreadable; "
          f"mean cam_sync {summary['cam_sync']['mean']}, mean av_align {summary['av_align']['mean']}; "
          f"pooled offset {summary['pooled']['offset_s']} s over {summary['pooled']['clips']} clips", file=sys.stderr)
    return 0


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on ``python -m mmg_core``'s subcommands."""
    ev = subparsers.add_parser("evaluate", help="score audio-video sync of clips (CAM-Sync, AV-Align) as JSON/CSV")
    ev.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="video files, or folders searched for them")
    ev.add_argument("--json", required=True, help="output report: per-clip records and aggregates")
    ev.add_argument("--csv", help="also write the per-clip records as CSV")
    ev.add_argument("--plots", metavar="DIR", help="also write per-clip PNGs (onsets, correlation, CAM maps)")
    ev.add_argument("--frame-classifier", metavar="FILE",
                    help="EfficientNet-Lite0 weights (.safetensors/.pt, same keys); default: the ImageNet package")
    ev.add_argument("--audio-classifier", metavar="FILE",
                    help="audio classifier .safetensors (scripts/train_audio_classifier.py); default: the shipped one")
    ev.add_argument("--frame-size", type=int, default=DEFAULT_FRAME_SIZE,
                    help=f"short side (px) of the frames the frame classifier sees (default {DEFAULT_FRAME_SIZE}; "
                         "224 = ImageNet's: finer maps, 1.8x slower)")
    ev.add_argument("--max-lag", type=float, default=DEFAULT_MAX_LAG_S, help="largest offset searched, seconds")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)
    return ev
