"""A torch Dataset over the synthetic world: every item is rendered on the fly from (seed, split, index)."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import DEFAULT_CONFIG, WorldConfig
from .render import Clip, render_clip
from .spec import ClipSpec, sample_spec

# split -> (which (scene, colour, tempo) combinations, which caption wording)
DATASET_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train", "train"),  # combinations outside EVAL_HOLDOUT_COMBOS, training captions
    "eval": ("eval", "eval"),  # only the held-out combinations, held-out captions
    "eval_seen": ("train", "eval"),  # training combinations, held-out captions
}
_SPLIT_STREAM = {"train": 0, "eval": 1, "eval_seen": 2}  # keeps the splits' random streams apart


class WorldDataset(Dataset):
    """Map-style dataset of rendered clips, deterministic per (seed, split, index).

    Items are dicts:
      video (F, C, H, W) float32 in [-1, 1]; audio (1, T) float32 in [-1, 1]; caption str;
      scene, colour, background, tempo, pitch: str; index: int;
      event_times (F,) float32: ground-truth event times in seconds, padded with -1 after
      num_events (int) entries, so that the default collate can batch them.
    Rendering takes a few milliseconds, so DataLoader workers are optional; every worker computes
    the same item for the same index because nothing depends on worker state.
    """

    def __init__(
        self, config: WorldConfig = DEFAULT_CONFIG, seed: int = 0, split: str = "train", length: int = 100_000
    ):
        if split not in DATASET_SPLITS:
            raise ValueError(f"split must be one of {list(DATASET_SPLITS)}, got {split!r}")
        for name, value in (("seed", seed), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.config, self.seed, self.split, self.length = config, int(seed), split, int(length)

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a WorldDataset of length {self.length}")
        return index % self.length

    def spec(self, index: int) -> ClipSpec:
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], self._check_index(index)])
        return sample_spec(rng, self.config, split=DATASET_SPLITS[self.split][0])

    def clip(self, index: int) -> Clip:
        return render_clip(self.spec(index), self.config, caption_split=DATASET_SPLITS[self.split][1])

    def __getitem__(self, index: int) -> dict:
        clip = self.clip(index)
        event_times = torch.full((self.config.frames,), -1.0)
        event_times[: len(clip.events)] = torch.tensor(clip.events, dtype=torch.float32)
        return {
            "video": clip.video,
            "audio": clip.audio,
            "caption": clip.caption,
            **clip.spec.attributes,
            "index": self._check_index(index),
            "event_times": event_times,
            "num_events": len(clip.events),
        }
