"""The tiny MMG coupled model of the parity fixtures, with couplers that do something, and prompt states
for it: shared by the MMG unit tests (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmg_core.compat.mmg import config_from_reference
from mmg_core.mmg_pipeline import conditions_from_states
from mmg_core.mmg_sampling import MMGConditions
from mmg_core.models.mmg_coupled import MMGCoupledUNet

TINY = Path(__file__).parent / "fixtures" / "mmg" / "tiny"


def tiny_coupled_model() -> MMGCoupledUNet:
    torch.manual_seed(0)
    model = MMGCoupledUNet(config_from_reference(json.loads((TINY / "config.json").read_text()))).eval()
    with torch.no_grad():  # fresh couplers are the identity: make them do something
        for cmt in (*model.audio_cmt, *model.video_cmt):
            cmt.proj_out.weight.normal_(0, 0.05)
    return model


def tiny_conditions(model: MMGCoupledUNet, batch: int = 1, seed: int = 0) -> MMGConditions:
    g = torch.Generator().manual_seed(seed)
    video_width, audio_width = model.config.video.context_dim, model.config.audio.cross_attention_dim
    return conditions_from_states(torch.randn(1, 77, video_width, generator=g), torch.randn(1, 77, video_width, generator=g),
                                  torch.randn(1, 77, audio_width, generator=g), None, batch)
