"""ClipSpec: every choice that determines one clip, and how specs are drawn at random."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .config import (
    ALL_COMBOS,
    BACKGROUNDS,
    COLOURS,
    DEFAULT_CONFIG,
    EVAL_COMBOS,
    PITCHES,
    SCENES,
    SLIDER_HZ,
    TEMPO_INTERVALS_S,
    TEMPOS,
    TRAIN_COMBOS,
    WorldConfig,
)

GeneratorLike = np.random.Generator | torch.Generator | int
Combo = tuple[str, str, str]  # (scene, colour, tempo)

SPLIT_COMBOS: dict[str, tuple[Combo, ...]] = {
    "train": TRAIN_COMBOS,
    "eval": EVAL_COMBOS,
    "all": ALL_COMBOS,
}

# Per-clip jitter ranges (64-pixel layout units); see render_video for where each applies.
_X_RANGE = {"ball": (16.0, 48.0), "drum": (22.0, 34.0), "lamp": (18.0, 46.0), "slider": (18.0, 46.0)}
_AMPLITUDE_RANGE = (0.75, 1.0)
_DETUNE_RANGE = (0.94, 1.06)


@dataclass(frozen=True)
class ClipSpec:
    """Fully determines a clip (together with a WorldConfig).

    scene, colour, background, tempo, pitch: the attributes (keys of the tables in config.py).
    first_event: frame of the first event inside the clip (>= 1, so frame 0 never holds one).
    intervals: frames between consecutive events; intervals[0] leads from a virtual event before the
        clip (at first_event - intervals[0] <= -1) to first_event, the rest continue until past the
        clip's end. Ignored by the slider.
    x: horizontal centre of the object in the 64-pixel layout.
    amplitude: motion size in [0.75, 1] (bounce height, stick lift, slider swing).
    detune: multiplies the scene's base frequency.
    slider_hz, slider_phase: the slider's oscillation (ignored by other scenes).
    seed: source of the noise in the sounds and of the caption's wording.
    """

    scene: str
    colour: str
    background: str
    tempo: str
    pitch: str
    first_event: int
    intervals: tuple[int, ...]
    x: float
    amplitude: float
    detune: float
    slider_hz: float
    slider_phase: float
    seed: int

    def __post_init__(self) -> None:
        for name, table in (
            ("scene", SCENES),
            ("colour", COLOURS),
            ("background", BACKGROUNDS),
            ("tempo", TEMPOS),
            ("pitch", PITCHES),
        ):
            if getattr(self, name) not in table:
                raise ValueError(f"ClipSpec.{name} must be one of {list(table)}, got {getattr(self, name)!r}")
        if not self.intervals or any(not isinstance(i, numbers.Integral) or i < 2 for i in self.intervals):
            raise ValueError(f"ClipSpec.intervals must be ints >= 2 frames, got {self.intervals!r}")
        if not 1 <= self.first_event < self.intervals[0]:
            raise ValueError(
                f"ClipSpec.first_event must be in [1, intervals[0] - 1] = [1, {self.intervals[0] - 1}] "
                f"so that no event falls on frame 0, got {self.first_event}"
            )

    @property
    def combo(self) -> Combo:
        return (self.scene, self.colour, self.tempo)

    @property
    def attributes(self) -> dict[str, str]:
        return {
            "scene": self.scene,
            "colour": self.colour,
            "background": self.background,
            "tempo": self.tempo,
            "pitch": self.pitch,
        }


def numpy_rng(generator: GeneratorLike) -> np.random.Generator:
    """A numpy Generator from a numpy Generator (returned as is), a torch.Generator or an int seed.

    A torch.Generator is advanced by one draw that seeds the numpy generator, so the result is as
    deterministic as the torch generator's state.
    """
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        return np.random.default_rng(seed)
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise ValueError(
        "generator must be a numpy.random.Generator, a torch.Generator or an int seed, "
        f"got {type(generator).__name__}"
    )


def _interval_frames(seconds: float, fps: int) -> int:
    # At least 3 frames so a bounce always has two airborne frames between contacts.
    return max(3, round(seconds * fps))


def draw_timing(rng: np.random.Generator, tempo: str, config: WorldConfig) -> tuple[int, tuple[int, ...]]:
    """(first_event, intervals) for a tempo: enough intervals to run past the clip's last frame."""
    choices = [_interval_frames(s, config.fps) for s in TEMPO_INTERVALS_S[tempo]]
    intervals = [int(rng.choice(choices))]
    # Phase: uniform in [1, intervals[0] - 1], and inside the clip so that it holds an event.
    first_event = int(rng.integers(1, min(intervals[0], config.frames)))
    position = first_event
    while position <= config.frames - 1:
        intervals.append(int(rng.choice(choices)))
        position += intervals[-1]
    return first_event, tuple(intervals)


def make_spec(
    generator: GeneratorLike,
    config: WorldConfig,
    *,
    scene: str,
    colour: str,
    background: str,
    tempo: str,
    pitch: str,
) -> ClipSpec:
    """A spec with the given attributes and randomly drawn phase, rhythm, position and detune."""
    rng = numpy_rng(generator)
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {list(SCENES)}, got {scene!r}")
    if tempo not in TEMPOS:
        raise ValueError(f"tempo must be one of {list(TEMPOS)}, got {tempo!r}")
    first_event, intervals = draw_timing(rng, tempo, config)
    return ClipSpec(
        scene=scene,
        colour=colour,
        background=background,
        tempo=tempo,
        pitch=pitch,
        first_event=first_event,
        intervals=intervals,
        x=float(rng.uniform(*_X_RANGE[scene])),
        amplitude=float(rng.uniform(*_AMPLITUDE_RANGE)),
        detune=float(rng.uniform(*_DETUNE_RANGE)),
        slider_hz=float(rng.uniform(*SLIDER_HZ[tempo])),
        slider_phase=float(rng.uniform(0.0, 2 * math.pi)),
        seed=int(rng.integers(0, 2**31)),
    )


def _allowed_combos(split: str, combos: Iterable[Combo] | None, fixed: dict[str, str | None]) -> list[Combo]:
    if combos is None:
        if split not in SPLIT_COMBOS:
            raise ValueError(f"split must be one of {list(SPLIT_COMBOS)}, got {split!r}")
        combos = SPLIT_COMBOS[split]
    keys = ("scene", "colour", "tempo")
    allowed = [c for c in combos if all(fixed[k] in (None, v) for k, v in zip(keys, c, strict=True))]
    if not allowed:
        wanted = {k: fixed[k] for k in keys if fixed[k] is not None}
        raise ValueError(
            f"no (scene, colour, tempo) combination of split {split!r} matches {wanted}; "
            "held-out combinations (EVAL_HOLDOUT_COMBOS) are only in split='eval' (or use split='all')"
        )
    return allowed


def sample_spec(
    generator: GeneratorLike,
    config: WorldConfig = DEFAULT_CONFIG,
    *,
    split: str = "train",
    combos: Iterable[Combo] | None = None,
    scene: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    tempo: str | None = None,
    pitch: str | None = None,
) -> ClipSpec:
    """A random clip spec.

    The (scene, colour, tempo) triple is drawn uniformly from ``combos`` (default: the split's
    combinations: "train" excludes EVAL_HOLDOUT_COMBOS, "eval" is exactly them, "all" is every one),
    restricted to any attribute given explicitly; background and pitch are drawn unless given.
    """
    rng = numpy_rng(generator)
    fixed = {"scene": scene, "colour": colour, "tempo": tempo}
    allowed = _allowed_combos(split, combos, fixed)
    chosen_scene, chosen_colour, chosen_tempo = allowed[int(rng.integers(len(allowed)))]
    chosen_background = background if background is not None else str(rng.choice(list(BACKGROUNDS)))
    chosen_pitch = pitch if pitch is not None else str(rng.choice(PITCHES))
    return make_spec(
        rng,
        config,
        scene=chosen_scene,
        colour=chosen_colour,
        background=chosen_background,
        tempo=chosen_tempo,
        pitch=chosen_pitch,
    )
