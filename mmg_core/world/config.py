"""Clip geometry and the attribute tables of the synthetic world (see the package docstring)."""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass

from ..media import audio_length_for_video

SCENES = ("ball", "drum", "lamp", "slider")
TEMPOS = ("slow", "fast")
PITCHES = ("low", "high")

# Saturated object colours (sRGB, 0-255). Chosen so that every pair lies >= 40 apart in CIELAB
# (lightness weighted 0.75, as analysis.py measures it) and far from both backgrounds and the props.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 60),
    "blue": (20, 110, 250),
    "yellow": (245, 220, 30),
    "purple": (180, 30, 200),
    "orange": (250, 140, 0),
    "white": (250, 250, 250),
}

# "light" is a mid-light grey, not white, so that a white object stays visible on it (CIELAB
# lightness 69 against 98) without outlines that would mix a second colour into the object.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark": (18, 18, 22),
    "light": (168, 168, 168),
}

# Neutral grey of everything that is not the coloured object: floor, drumstick, lamp stand and unlit
# bulb, slider track. Grey is never the nearest palette colour of a saturated pixel, so the object's
# colour can be read without knowing the scene.
PROP_GREY = (96, 96, 96)

# Base frequency (Hz) of each scene's sound per pitch class: impact resonance, drum membrane, beep,
# slider tone at height 0 (the tone spans base .. 2 * base). Low stays below 500 Hz and high above
# 740 Hz after the per-clip detune of +-6 %, so analysis.estimate_pitch splits them at 600 Hz.
PITCH_HZ: dict[str, dict[str, float]] = {
    "ball": {"low": 300.0, "high": 1200.0},
    "drum": {"low": 200.0, "high": 800.0},
    "lamp": {"low": 330.0, "high": 1320.0},
    "slider": {"low": 220.0, "high": 800.0},
}

# Seconds between events (ball contacts, drum strikes, lamp switch-ons), drawn independently for
# every interval and rounded to whole frames: slow ~1 event/s, fast ~3 events/s. In a 1.6 s clip
# that gives 1-2 events when slow and 3-5 when fast. Irregular fast intervals (3 or 4 frames at
# 10 fps) make two clips' rhythms rarely coincide, so another clip's audio is audibly misaligned.
TEMPO_INTERVALS_S: dict[str, tuple[float, ...]] = {
    "slow": (0.9, 1.0, 1.1),
    "fast": (0.3, 0.4),
}
# Oscillation frequency range (Hz) of the slider bar per tempo.
# Fast stays at most 2.8 Hz: at 10 fps that is still 3.6 frames per cycle, a readable up-and-down.
SLIDER_HZ: dict[str, tuple[float, float]] = {
    "slow": (0.7, 1.1),
    "fast": (2.2, 2.8),
}

# (scene, colour, tempo) triples never sampled for training, used to evaluate generation of unseen
# attribute combinations. Every scene, colour and tempo still occurs in training in other triples:
# two held-out triples per scene, four per tempo, at most two per colour.
EVAL_HOLDOUT_COMBOS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("ball", "purple", "fast"),
        ("ball", "white", "slow"),
        ("drum", "yellow", "slow"),
        ("drum", "blue", "fast"),
        ("lamp", "green", "fast"),
        ("lamp", "orange", "slow"),
        ("slider", "red", "slow"),
        ("slider", "white", "fast"),
    }
)
ALL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(SCENES, COLOURS, TEMPOS))
TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c not in EVAL_HOLDOUT_COMBOS)
EVAL_COMBOS: tuple[tuple[str, str, str], ...] = tuple(c for c in ALL_COMBOS if c in EVAL_HOLDOUT_COMBOS)


def _positive_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"WorldConfig.{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class WorldConfig:
    """Size and timing of every clip; the defaults are MM-Diffusion's 16 x 64 x 64 at 10 fps, 16 kHz."""

    frames: int = 16
    fps: int = 10
    size: int = 64  # square frames, size x size pixels
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        # Fewer than 8 frames cannot show a slow event, and the scene layout needs 32 px.
        _positive_int("frames", self.frames, 8)
        _positive_int("fps", self.fps, 1)
        _positive_int("size", self.size, 32)
        _positive_int("sample_rate", self.sample_rate, 8000)

    @property
    def num_samples(self) -> int:
        """Audio samples covering the clip (25600 for the defaults)."""
        return self.frame_sample(self.frames)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, 3, self.size, self.size)  # (F, C, H, W)

    @property
    def audio_shape(self) -> tuple[int, int]:
        return (1, self.num_samples)  # (C, T)

    @property
    def scale(self) -> float:
        """Pixels per unit of the 64-pixel layout every scene is drawn in."""
        return self.size / 64.0

    def frame_sample(self, frame: int) -> int:
        """Index of the audio sample at which frame ``frame`` starts (frame * sr / fps, rounded).

        Uses mmg_core.media's rounding so written files and ground truth agree; exact for 10 fps at 16 kHz.
        """
        return audio_length_for_video(frame, self.fps, self.sample_rate)


DEFAULT_CONFIG = WorldConfig()  # frozen, so one shared default instance is safe
