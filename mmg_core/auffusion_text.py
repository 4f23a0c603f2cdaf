"""Auffusion's text conditioning: CLIP-L token states -> its condition adapter -> the audio U-Net's context.

What Auffusion (``happylittlecat2333/Auffusion`` @ f44233d, ``auffusion_pipeline.py``: ``ConditionAdapter``,
``_encode_prompt``) and MMG's inference (``chaksseu/MMG_AV`` @ 6a67cf3, ``encode_audio_prompt``) do:
  1. tokenize the prompt *without* padding and run CLIP-L's text model: ``last_hidden_state`` (final
     layer norm applied), one row per real token (start, words, end);
  2. zero-pad those rows to 77 (or cut to 77);
  3. the condition adapter: ``LayerNorm(Linear(x))``, so a padded row becomes the constant
     ``LayerNorm(bias)``, not a CLIP state of a padding token.
The unconditional input for guidance is all zeros (not the adapter of anything).

A model folder describes its encoders in ``condition_config.json`` (a list; Auffusion ships one entry,
``text_encoder_0`` + ``condition_adapter_0``); an adapter folder holds ``config.json``
(``condition_dim``, ``cross_attention_dim``) and ``condition_adapter.pt`` (``proj.weight``, ``proj.bias``,
``norm.weight``, ``norm.bias``).

Layouts: token states (b, L, D_text) -> context (b, 77, D_unet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .vocoder import load_torch_weights
from .weights import load_state_dict_strict

MAX_TOKENS = 77  # CLIP's context length; Auffusion's condition_max_length
CONDITION_CONFIG = "condition_config.json"
ADAPTER_WEIGHTS = "condition_adapter.pt"


class AuffusionTextError(ValueError):
    """An Auffusion folder's text-conditioning files cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class AdapterConfig:
    condition_dim: int = 768  # CLIP-L's width
    cross_attention_dim: int = 768  # the audio U-Net's


class ConditionAdapter(nn.Module):
    """``norm(proj(x))``: x (b, L, condition_dim) -> (b, L, cross_attention_dim)."""

    def __init__(self, config: AdapterConfig = AdapterConfig()):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.condition_dim, config.cross_attention_dim)
        self.norm = nn.LayerNorm(config.cross_attention_dim)  # torch defaults, as the reference

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(states))


def find_adapter_folder(model_folder: str | Path) -> Path | None:
    """The adapter folder an Auffusion model folder names in condition_config.json; None when the
    folder has no condition_config.json (a model without an adapter, e.g. auffusion-full-no-adapter)."""
    model_folder = Path(model_folder)
    config_path = model_folder / CONDITION_CONFIG
    if not config_path.is_file():
        return None
    try:
        entries = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise AuffusionTextError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        count = len(entries) if isinstance(entries, list) else "no list of"
        raise AuffusionTextError(
            f"{config_path} describes {count} condition encoders; only Auffusion's single CLIP-L encoder is "
            "supported (one entry with text_encoder_name and condition_adapter_name)"
        )
    name = entries[0].get("condition_adapter_name")
    if not name:
        raise AuffusionTextError(f"{config_path} has no condition_adapter_name")
    folder = model_folder / name
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise AuffusionTextError(
            f"{config_path} names the adapter folder {name!r}, but {folder / ADAPTER_WEIGHTS} is missing: download "
            "the whole Auffusion model folder"
        )
    return folder


def load_condition_adapter(folder: str | Path, *, dtype: torch.dtype = torch.float32) -> ConditionAdapter:
    """Read an adapter folder (config.json + condition_adapter.pt, opened with weights_only=True)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    raw = json.loads(config_path.read_text()) if config_path.is_file() else {}
    state = load_torch_weights(folder / ADAPTER_WEIGHTS)
    if not isinstance(state, dict) or "proj.weight" not in state:
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise AuffusionTextError(f"{folder / ADAPTER_WEIGHTS} is not a condition adapter state dict (keys: {keys})")
    # The weights decide the sizes; config.json, when present, must agree with them.
    out_dim, in_dim = state["proj.weight"].shape
    config = AdapterConfig(condition_dim=in_dim, cross_attention_dim=out_dim)
    for key in ("condition_dim", "cross_attention_dim"):
        if key in raw and raw[key] != getattr(config, key):
            raise AuffusionTextError(f"{config_path}: {key}={raw[key]} but the weights have {getattr(config, key)}")
    adapter = ConditionAdapter(config)
    load_state_dict_strict(adapter, state, source=str(folder / ADAPTER_WEIGHTS))
    return adapter.to(dtype).eval()


def audio_context(states: torch.Tensor, adapter: ConditionAdapter | None, token_count: int | None = None) -> torch.Tensor:
    """CLIP-L token states (b, L, D) -> the audio U-Net's context (b, 77, D_unet).

    ``token_count``: how many rows are real tokens (start + words + end). Rows after them are zeroed
    before the adapter, which is what Auffusion's unpadded encoding followed by zero padding gives
    (CLIP's attention is causal, so the real rows do not depend on the padding). None: every row is
    kept as given (states of a prompt padded by the tokenizer)."""
    if states.dim() != 3:
        raise ValueError(f"audio text states must be (batch, tokens, width), got {tuple(states.shape)}")
    states = states[:, :MAX_TOKENS]
    if states.shape[1] < MAX_TOKENS:
        states = torch.nn.functional.pad(states, (0, 0, 0, MAX_TOKENS - states.shape[1]))
    if token_count is not None:
        if token_count < 1:
            raise ValueError(f"token_count must be >= 1, got {token_count}")
        keep = (torch.arange(MAX_TOKENS, device=states.device) < token_count).to(states.dtype)
        states = states * keep[None, :, None]
    if adapter is None:
        return states
    if states.shape[-1] != adapter.config.condition_dim:
        raise ValueError(
            f"the audio prompt has {states.shape[-1]}-d token states but Auffusion's adapter takes "
            f"{adapter.config.condition_dim} (CLIP ViT-L/14): encode it with the CLIP-L text encoder"
        )
    weight = adapter.proj.weight
    with torch.no_grad():
        return adapter(states.to(device=weight.device, dtype=weight.dtype)).to(states.dtype)
