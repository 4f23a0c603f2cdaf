"""Best of N: sample one clip per seed, score each with CAM-Sync, keep the best.

Candidates are generated one at a time (batch 1, seeds seed, seed + 1, ...), so candidate i is the
exact clip the plain sampler gives for seed + i, and only the best decoded clip is held in memory.
Ranking is evaluate.rank_by_cam_sync's: by ``score_at_0`` (default; prefers clips already aligned)
or by the peak ``score``; unsynchronizable candidates (NaN) rank last, ties go to the lower seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from einops import rearrange

from ..conditioning import Conditioning
from ..models.mmdiffusion import MMDiffusionUNet
from ..pipeline import DecodedClip, GenerationSettings, decode, generate
from ..sampling import StepInfo
from .backbones import SyncModels
from .camsync import DEFAULT_MAX_LAG_S, SyncResult, cam_sync
from .gradcam import audio_cam, video_cam

RANK_KEYS = ("score_at_0", "score")
SEED_LIMIT = 2**64
MAX_CANDIDATES = 64


@dataclass(frozen=True)
class Candidate:
    index: int
    seed: int
    cam_sync: SyncResult


@dataclass(frozen=True)
class BestOfN:
    clip: DecodedClip  # the best candidate: frames (1, F, H, W, C) in [0, 1], audio (1, C, T)
    best: Candidate
    candidates: tuple[Candidate, ...]  # in seed order
    key: str

    @property
    def ranking(self) -> list[Candidate]:
        return sorted(self.candidates, key=lambda c: rank_key(c.cam_sync, self.key, c.index))

    def table(self) -> str:
        """One line per candidate, best first: rank, seed and CAM-Sync's numbers."""
        def number(value: float, spec: str = "+.3f") -> str:
            return "NaN" if not math.isfinite(value) else format(value, spec)

        lines = [f"ranked by {self.key} (best first); offset + = audio late",
                 "rank  seed                  score_at_0  score   offset_s  confidence"]
        for rank, item in enumerate(self.ranking, 1):
            r = item.cam_sync
            line = (f"{rank:<5} {item.seed:<21} {number(r.score_at_0):>10}  {number(r.score):>6}  "
                    f"{number(r.offset_s):>8}  {number(r.confidence, '.3f'):>10}")
            lines.append(line + (f"  ({r.reason})" if r.reason else ""))
        return "\n".join(lines)


def rank_key(result: SyncResult, key: str, index: int) -> tuple:
    """Sort key, best first: NaN last, then the higher value, then the lower index."""
    value = getattr(result, key)
    return (math.isnan(value), -float(np.nan_to_num(value)), index)


def clip_video(clip: DecodedClip, index: int = 0) -> torch.Tensor:
    """One clip of a decoded batch as CAM-Sync's video layout (F, 3, H, W) in [-1, 1]."""
    return rearrange(clip.frames[index], "f h w c -> f c h w") * 2.0 - 1.0


def score_decoded(models: SyncModels, clip: DecodedClip, *, max_lag_s: float = DEFAULT_MAX_LAG_S) -> SyncResult:
    """CAM-Sync of the first clip of a decoded batch."""
    visual = video_cam(models.frames, clip_video(clip), clip.fps)
    return cam_sync(visual, audio_cam(models.audio, clip.audio[0], clip.sample_rate), max_lag_s=max_lag_s)


def best_of_n(
    model: MMDiffusionUNet,
    settings: GenerationSettings,
    sync_models: SyncModels,
    count: int,
    *,
    conditioning: Conditioning | None = None,
    key: str = "score_at_0",
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    step_callback: Callable[[int, StepInfo], None] | None = None,
    between_candidates: Callable[[int], None] | None = None,
) -> BestOfN:
    """Sample ``count`` clips with seeds settings.seed + i (batch 1 each), score, return the best.

    ``step_callback(i, info)`` runs after every sampler step of candidate i (progress, cancel);
    ``between_candidates(i)`` before candidate i is sampled (a place to stop early).
    """
    if key not in RANK_KEYS:
        raise ValueError(f"rank key must be one of {', '.join(RANK_KEYS)}, got {key!r}")
    if not 1 <= count <= MAX_CANDIDATES:
        raise ValueError(f"the number of candidates must be between 1 and {MAX_CANDIDATES}, got {count}")
    if settings.seed + count > SEED_LIMIT:
        raise ValueError(f"seeds {settings.seed}..{settings.seed + count - 1} pass 2^64 - 1: choose a lower seed")
    config = model.config
    best_clip, best, candidates = None, None, []
    for index in range(count):
        if between_candidates is not None:
            between_candidates(index)
        seed = settings.seed + index
        callback = None if step_callback is None else (lambda info, i=index: step_callback(i, info))
        latent = generate(model, replace(settings, seed=seed, batch_size=1), conditioning=conditioning,
                          callback=callback)
        clip = decode(latent, config)
        candidate = Candidate(index, seed, score_decoded(sync_models, clip, max_lag_s=max_lag_s))
        candidates.append(candidate)
        if best is None or rank_key(candidate.cam_sync, key, index) < rank_key(best.cam_sync, key, best.index):
            best_clip, best = clip, candidate
    return BestOfN(clip=best_clip, best=best, candidates=tuple(candidates), key=key)
