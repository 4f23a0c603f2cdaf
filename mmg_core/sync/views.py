"""What a person looks at after scoring a clip: the VideoCAM overlay, a figure of the energies and the
correlation over lag, and a plain-text report. Pure PIL and torch (no matplotlib needed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, ImageDraw

from .camsync import OFFSET_CONVENTION, TIMELINE_RATE, centred_start, resample_held
from .evaluate import ClipScores

# A "jet"-like ramp: cold (dark blue) -> cyan -> yellow -> hot (red), as (position, RGB in [0, 1]).
HEAT_STOPS = ((0.0, (0.0, 0.0, 0.5)), (0.25, (0.0, 0.3, 1.0)), (0.5, (0.0, 0.9, 0.9)), (0.75, (1.0, 0.9, 0.0)),
              (1.0, (0.9, 0.0, 0.0)))
VIDEO_COLOUR, AUDIO_COLOUR, XCORR_COLOUR = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def heat_colours(heat: torch.Tensor) -> torch.Tensor:
    """(...) values in [0, 1] -> (..., 3) RGB in [0, 1] on the HEAT_STOPS ramp."""
    positions = torch.tensor([p for p, _ in HEAT_STOPS], dtype=torch.float32)
    colours = torch.tensor([c for _, c in HEAT_STOPS], dtype=torch.float32)  # (S, 3)
    heat = heat.float().clamp(0, 1)
    upper = torch.searchsorted(positions, heat.contiguous(), right=True).clamp(1, len(HEAT_STOPS) - 1)
    low, high = positions[upper - 1], positions[upper]
    weight = ((heat - low) / (high - low)).unsqueeze(-1)
    return colours[upper - 1] * (1 - weight) + colours[upper] * weight


def cam_overlay(frames: torch.Tensor, heatmaps: torch.Tensor, strength: float = 0.6) -> torch.Tensor:
    """Frames (F, H, W, 3) in [0, 1] with VideoCAM heatmaps (F, h, w) in [0, 1] blended on top.

    Each pixel moves toward its heat colour by ``strength`` x heat: where the classifier does not
    look the frame stays as it was, where it looks hardest the colour is red. The maps are
    upsampled bilinearly from the classifier's grid (5 x 5 at the default frame size).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or heatmaps.ndim != 3 or heatmaps.shape[0] != frames.shape[0]:
        raise ValueError(f"need frames (F, H, W, 3) and heatmaps (F, h, w) with one F, got {tuple(frames.shape)} "
                         f"and {tuple(heatmaps.shape)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"overlay strength must be in [0, 1], got {strength}")
    heat = F.interpolate(rearrange(heatmaps.float().cpu(), "f h w -> f 1 h w"), size=frames.shape[1:3],
                         mode="bilinear", align_corners=False)
    heat = rearrange(heat, "f 1 h w -> f h w").clamp(0, 1)
    alpha = strength * rearrange(heat, "f h w -> f h w 1")
    frames = frames.float().cpu()
    return (frames * (1 - alpha) + heat_colours(heat) * alpha).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Figure


def timeline_energies(scores: ClipScores) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(times, video energy, audio energy or None) on CAM-Sync's 25 Hz timeline, each scaled to a max of 1."""
    visual = scores.video
    duration = visual.energy.size / visual.fps
    video = resample_held(visual.energy, visual.fps, TIMELINE_RATE, duration)
    audio = None
    if scores.audio is not None:
        rate = scores.audio.frames_per_second
        audio = resample_held(scores.audio.energy, rate, TIMELINE_RATE, duration, centred_start(rate))
    scale = lambda x: x / max(float(np.max(x)), 1e-12) if x is not None and x.size else x  # noqa: E731
    return np.arange(video.size) / TIMELINE_RATE, scale(video), scale(audio)


class _Panel:
    """A rectangle of the figure with data coordinates: x in [x0, x1], y in [y0, y1]."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xs: tuple[float, float],
                 ys: tuple[float, float]):
        self.draw, self.box = draw, box
        self.x0, self.x1 = xs[0], xs[1] if xs[1] > xs[0] else xs[0] + 1.0
        self.y0, self.y1 = ys[0], ys[1] if ys[1] > ys[0] else ys[0] + 1.0
        draw.rectangle(box, outline=(0, 0, 0))

    def point(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + (x - self.x0) / (self.x1 - self.x0) * (right - left),
                bottom - (y - self.y0) / (self.y1 - self.y0) * (bottom - top))

    def line(self, xs, ys, colour, width: int = 2) -> None:
        points = [self.point(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=width)

    def vertical(self, x: float, colour, width: int = 1) -> None:
        top, bottom = self.box[1], self.box[3]
        px = self.point(x, self.y0)[0]
        self.draw.line([(px, top), (px, bottom)], fill=colour, width=width)

    def x_ticks(self, values, fmt: str) -> None:
        for value in values:
            px, py = self.point(value, self.y0)
            self.draw.line([(px, py), (px, py + 4)], fill=(0, 0, 0))
            self.draw.text((px - 12, py + 6), fmt.format(value), fill=(0, 0, 0))

    def y_ticks(self, values, fmt: str) -> None:
        for value in values:
            px, py = self.point(self.x0, value)
            self.draw.line([(px - 4, py), (px, py)], fill=(0, 0, 0))
            self.draw.text((px - 40, py - 6), fmt.format(value), fill=(0, 0, 0))


def sync_figure(scores: ClipScores, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """(H, W, 3) uint8: top, VideoCAM and AudioCAM energies over time; bottom, CAM-Sync's correlation
    over lag with lag 0 (grey) and the peak (red) marked. An unsynchronizable clip shows its reason."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    result = scores.cam_sync
    left, right, gap = 56, width - 16, 56
    panel_height = (height - 3 * gap) // 2
    times, video, audio = timeline_energies(scores)
    draw.text((left, 8), "CAM energies on the 25 Hz timeline (each scaled to max 1)", fill=(0, 0, 0))
    top = _Panel(draw, (left, 28, right, 28 + panel_height), (0.0, float(times[-1]) if times.size else 1.0),
                 (0.0, 1.05))
    top.line(times, video, VIDEO_COLOUR)
    if audio is not None:
        top.line(times, audio, AUDIO_COLOUR)
    top.x_ticks(np.linspace(top.x0, top.x1, 5), "{:.2f}")
    top.y_ticks((0.0, 0.5, 1.0), "{:.1f}")
    draw.text((right - 150, 32), "video (VideoCAM)", fill=VIDEO_COLOUR)
    draw.text((right - 150, 46), "audio (AudioCAM)", fill=AUDIO_COLOUR)
    draw.text((width // 2 - 30, 28 + panel_height + 20), "time (s)", fill=(0, 0, 0))

    lower_top = 28 + panel_height + gap
    box = (left, lower_top, right, lower_top + panel_height)
    if not result.synchronizable or result.lags_s.size == 0:
        draw.rectangle(box, outline=(0, 0, 0))
        draw.text((left + 10, lower_top + panel_height // 2 - 14), "unsynchronizable:", fill=(200, 0, 0))
        draw.text((left + 10, lower_top + panel_height // 2 + 2), str(result.reason), fill=(200, 0, 0))
        return np.asarray(image)
    lags, r = result.lags_s, result.correlation
    low, high = min(float(r.min()), 0.0), max(float(r.max()), 0.0)
    pad = 0.05 * (high - low or 1.0)
    bottom = _Panel(draw, box, (float(lags[0]), float(lags[-1])), (low - pad, high + pad))
    bottom.vertical(0.0, (160, 160, 160))
    bottom.vertical(result.offset_s, (214, 39, 40))
    bottom.line(lags, r, XCORR_COLOUR)
    bottom.x_ticks(np.linspace(bottom.x0, bottom.x1, 5), "{:+.2f}")
    bottom.y_ticks(np.linspace(low, high, 3), "{:+.2f}")
    draw.text((left, lower_top - 20), f"CAM-Sync {result.score:.3f} at offset {result.offset_s:+.3f} s "
                                      f"(+ = audio late), confidence {result.confidence:.3f}", fill=(0, 0, 0))
    draw.text((width // 2 - 30, lower_top + panel_height + 20), "lag (s)", fill=(0, 0, 0))
    return np.asarray(image)


# ----------------------------------------------------------------------------------------------
# Text


def _fmt(value: float, spec: str = ".3f") -> str:
    return "NaN" if value is None or not math.isfinite(value) else format(value, spec)


def sync_report(scores: ClipScores, *, sample_rate: int | None = None, audio_seconds: float | None = None,
                notes: dict[str, str] | None = None) -> str:
    """A few lines a person can read: CAM-Sync's numbers and what they mean, the baselines, the clip."""
    result, visual = scores.cam_sync, scores.video
    lines = []
    if result.synchronizable:
        lines += [
            f"CAM-Sync score {_fmt(result.score)} (peak correlation, -1..1) at offset {_fmt(result.offset_s, '+.3f')} s",
            f"confidence {_fmt(result.confidence)} (peak minus median correlation); score at lag 0 "
            f"{_fmt(result.score_at_0)}",
        ]
    else:
        lines.append(f"CAM-Sync: unsynchronizable ({result.reason}); score, offset and confidence are NaN")
    lines.append(f"offset sign: {OFFSET_CONVENTION}")
    baseline = scores.onset_sync
    lines.append(f"baselines: AV-Align {_fmt(scores.av_align.score)}, model-free onset sync "
                 f"{_fmt(baseline.score)} at {_fmt(baseline.offset_s, '+.3f')} s")
    video_class = visual.class_name or f"#{visual.top_class}"
    audio_class = "-" if scores.audio is None else (scores.audio.class_name or f"#{scores.audio.top_class}")
    lines.append(f"top classes: video {video_class}, audio {audio_class}")
    clip = f"clip: {visual.energy.size} frames at {visual.fps:g} fps ({visual.energy.size / visual.fps:.2f} s)"
    if audio_seconds is not None:
        clip += f", audio {audio_seconds:.2f} s" + (f" at {sample_rate} Hz" if sample_rate else "")
    lines.append(clip)
    for name, value in (notes or {}).items():
        lines.append(f"{name.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def check_clip(frames: int, fps: float, audio_samples: int, sample_rate: int) -> None:
    """Refuse what cannot be a clip with its soundtrack, saying what to fix.

    The audio may differ from frames / fps by up to two frames or 10 % (codecs pad a little); more
    than that usually means a wrong fps, or frames and audio from different clips.
    """
    if frames < 1:
        raise ValueError("images is empty: connect at least one frame")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}: connect the fps output of the node that made the frames")
    if audio_samples < 1:
        raise ValueError("audio is empty (0 samples): connect the soundtrack of these frames")
    if sample_rate <= 0:
        raise ValueError(f"audio sample_rate must be positive, got {sample_rate}")
    video_s, audio_s = frames / fps, audio_samples / sample_rate
    if abs(video_s - audio_s) > max(2.0 / fps, 0.1 * video_s):
        raise ValueError(
            f"the audio lasts {audio_s:.3f} s but {frames} frames at {fps:g} fps last {video_s:.3f} s: check fps "
            f"({frames / audio_s:.3g} fps would match the audio), or connect the audio of these frames"
        )
