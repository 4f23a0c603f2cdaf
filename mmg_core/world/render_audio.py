"""Soundtracks: each event's sound starts exactly at its frame's first sample.

impact (ball): a 5 ms noise burst plus a decaying resonance at the pitch frequency.
drum: a membrane thump whose pitch glides down to the base frequency, plus a short stick click.
beep (lamp): a sine exactly while the lamp is lit, with 4 ms raised-cosine ramps at both ends.
tone (slider): a phase-continuous sine whose frequency is base * 2 ** height(t).
"""

from __future__ import annotations

import math

import numpy as np

from .config import PITCH_HZ, WorldConfig
from .spec import ClipSpec
from .timeline import Timeline, slider_height

PEAK = 0.85  # loudest sample after normalisation (the brief's limit is 0.9)
NOISE_FLOOR = 0.002  # std of the constant background hiss, about -54 dBFS
RAMP_S = 0.004  # beep fade in / out
# Length of one impact / drum sound, ending with a 10 ms fade: both end before the next event even at
# the shortest interval (0.3 s), so every onset rises out of silence (plus hiss).
IMPACT_S, DRUM_S, FADE_S = 0.25, 0.28, 0.01


def base_frequency(spec: ClipSpec) -> float:
    return PITCH_HZ[spec.scene][spec.pitch] * spec.detune


def _impact(length: int, sr: int, hz: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length) / sr
    click = 0.45 * rng.standard_normal(length) * np.exp(-t / 0.005)
    return click + 0.7 * np.sin(2 * math.pi * hz * t) * np.exp(-t / 0.045)


def _drum(length: int, sr: int, hz: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length) / sr
    glide = hz * (1.0 + 0.6 * np.exp(-t / 0.025))
    phase = 2 * math.pi * (np.cumsum(glide) - glide[0]) / sr  # phase 0 at the onset sample
    click = 0.25 * rng.standard_normal(length) * np.exp(-t / 0.003)
    return 0.8 * np.sin(phase) * np.exp(-t / 0.06) + click


def _raised_cosine(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(math.pi * (np.arange(length) + 0.5) / length)


def _beep(length: int, sr: int, hz: float, ramp_in: bool, ramp_out: bool, start_phase: float) -> np.ndarray:
    wave = 0.5 * np.sin(2 * math.pi * hz * np.arange(length) / sr + start_phase)
    ramp = min(round(RAMP_S * sr), length // 2)
    if ramp_in:
        wave[:ramp] *= _raised_cosine(ramp)
    if ramp_out:
        wave[length - ramp :] *= _raised_cosine(ramp)[::-1]
    return wave


def _add_events(out, spec, timeline, config, rng, make) -> None:
    hz, sr = base_frequency(spec), config.sample_rate
    full = round((IMPACT_S if spec.scene == "ball" else DRUM_S) * sr)
    fade = round(FADE_S * sr)
    for frame in timeline.events:
        start = config.frame_sample(frame)
        sound = make(full, sr, hz, rng)
        sound[full - fade :] *= _raised_cosine(fade)[::-1]
        length = min(full, out.shape[0] - start)  # the last events are cut by the clip's end
        out[start : start + length] += sound[:length]


def _add_beeps(out, spec, timeline, config) -> None:
    hz, sr = base_frequency(spec), config.sample_rate
    for on, off in timeline.lamp_on:
        start, stop = config.frame_sample(max(on, 0)), config.frame_sample(min(off, config.frames))
        # A beep already sounding when the clip starts continues its phase from its true onset.
        start_phase = 2 * math.pi * hz * max(-on, 0) / config.fps
        out[start:stop] += _beep(stop - start, sr, hz, on >= 0, off <= config.frames, start_phase)


def _add_tone(out, spec, config) -> None:
    sr = config.sample_rate
    seconds = np.arange(out.shape[0]) / sr
    hz = base_frequency(spec) * 2.0 ** slider_height(spec, seconds)
    phase = 2 * math.pi * np.cumsum(hz) / sr  # integrating frequency keeps the phase continuous
    out += 0.45 * np.sin(phase)


def render_audio(spec: ClipSpec, timeline: Timeline, config: WorldConfig, *, hiss: bool = True) -> np.ndarray:
    """(T,) float32 in [-PEAK, PEAK]; ``hiss=False`` leaves out the background noise (for exact checks)."""
    rng = np.random.default_rng([spec.seed, 1])  # stream 1: sound noise (stream 0 is the caption)
    out = np.zeros(config.num_samples, np.float64)
    if spec.scene == "ball":
        _add_events(out, spec, timeline, config, rng, _impact)
    elif spec.scene == "drum":
        _add_events(out, spec, timeline, config, rng, _drum)
    elif spec.scene == "lamp":
        _add_beeps(out, spec, timeline, config)
    else:
        _add_tone(out, spec, config)
    if hiss:  # drawn last, so leaving it out changes no other draw
        out += NOISE_FLOOR * rng.standard_normal(out.shape[0])
    peak = np.abs(out).max()
    if peak > PEAK:
        out *= PEAK / peak
    return out.astype(np.float32)
