"""When things happen in a clip: event frames, per-frame motion, lamp on/off intervals.

Events sit on frame boundaries: event k happens at time k / fps, frame k shows it (ball on the
floor, stick on the drum, lamp lit) and its sound starts at sample config.frame_sample(k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import WorldConfig
from .spec import ClipSpec


@dataclass(frozen=True)
class Timeline:
    all_events: tuple[int, ...]  # event frames including the virtual ones before and after the clip
    events: tuple[int, ...]  # event frames inside the clip, all >= 1
    lamp_on: tuple[tuple[int, int], ...]  # [on, off) frame intervals overlapping the clip (unclipped)
    motion: np.ndarray  # (F,) float: ball/drum lift in [0, 1], lamp lit 0/1, slider bar height in [0, 1]


def lamp_lit_frames(interval: int) -> int:
    """Frames the lamp stays lit after switching on: half the interval to the next switch-on, at least 1."""
    return max(1, interval // 2)


def event_frames(spec: ClipSpec, config: WorldConfig) -> tuple[int, ...]:
    """All event frames from the virtual one before the clip to the first one after it."""
    frames = [spec.first_event - spec.intervals[0], spec.first_event]
    for interval in spec.intervals[1:]:
        frames.append(frames[-1] + interval)
    if frames[-1] <= config.frames - 1:
        raise ValueError(
            f"the spec's intervals end at frame {frames[-1]}, inside a {config.frames}-frame clip: "
            "the spec was drawn for a shorter clip; draw it with sample_spec(..., config) for this config"
        )
    return tuple(frames)


def _lift(all_events: tuple[int, ...], num_frames: int) -> np.ndarray:
    """0 on event frames, rising as a parabola 4u(1-u) to 1 halfway to the next event."""
    frames = np.arange(num_frames)
    starts = np.asarray(all_events[:-1])
    index = np.searchsorted(starts, frames, side="right") - 1
    start, stop = starts[index], np.asarray(all_events[1:])[index]
    u = (frames - start) / (stop - start)
    return (4.0 * u * (1.0 - u)).astype(np.float32)


def slider_height(spec: ClipSpec, seconds: np.ndarray) -> np.ndarray:
    """Bar height in [0.05, 0.95] at the given times: a sinusoid at the tempo's frequency."""
    swing = 0.45 * spec.amplitude
    return 0.5 + swing * np.sin(2 * math.pi * spec.slider_hz * seconds + spec.slider_phase)


def _lamp_intervals(all_events: tuple[int, ...], num_frames: int) -> tuple[tuple[int, int], ...]:
    pairs = zip(all_events[:-1], all_events[1:], strict=True)
    spans = [(on, on + lamp_lit_frames(nxt - on)) for on, nxt in pairs]
    return tuple((on, off) for on, off in spans if off > 0 and on < num_frames)


def build_timeline(spec: ClipSpec, config: WorldConfig) -> Timeline:
    num_frames = config.frames
    if spec.scene == "slider":
        seconds = np.arange(num_frames) / config.fps
        height = slider_height(spec, seconds).astype(np.float32)
        return Timeline(all_events=(), events=(), lamp_on=(), motion=height)
    all_events = event_frames(spec, config)
    events = tuple(k for k in all_events if 0 <= k < num_frames)
    lamp_on = _lamp_intervals(all_events, num_frames) if spec.scene == "lamp" else ()
    if spec.scene == "lamp":
        motion = np.zeros(num_frames, np.float32)
        for on, off in lamp_on:
            motion[max(on, 0) : off] = 1.0
    else:
        motion = _lift(all_events, num_frames)
    return Timeline(all_events=all_events, events=events, lamp_on=lamp_on, motion=motion)
