"""Checkpoint files: released MM-Diffusion ``.pt`` and the pack's own ``.safetensors``.

Released ``.pt`` files are pickles; they are only ever opened with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. Their network settings are not stored in the
file: they come from a JSON file of reference arguments beside it (``Landscape.pt`` + ``Landscape.json``)
or, if there is none, the released configuration shared by Landscape and AIST++.

The pack's format is safetensors with the config dataclass in ``__metadata__`` so a file is
self-describing: ``mmg.family``, ``mmg.config`` (JSON) and ``mmg.format_version``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open

from .compat.mmdiffusion import config_from_reference, config_to_reference
from .models.mmdiffusion import MMDiffusionUNet
from .models.mmdiffusion_config import PRESETS, MMDiffusionConfig
from .weights import WeightsMismatchError, load_state_dict_strict, save_safetensors_atomic, stored_tensors

FORMAT_VERSION = "1"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
# Containers that training scripts wrap a state dict in, tried in order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema", "module")
FAMILY = "mmdiffusion"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says what to fix."""


@dataclass
class LoadedModel:
    model: MMDiffusionUNet
    config: MMDiffusionConfig
    family: str
    path: str
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header's (empty for .pt files)

    @property
    def trained_on_world(self) -> bool:
        """Exported by ``python -m mmg_core export`` from a ``train`` run: it knows only the synthetic world."""
        return "mmg.train_config" in self.metadata


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (state_dict, metadata) of any supported file, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    raise CheckpointError(f"{path.name}: unsupported extension {suffix!r}; use one of {', '.join(CHECKPOINT_SUFFIXES)}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {error}") from error


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path.name} could not be loaded safely with torch.load(weights_only=True): {error}. "
            "Only plain tensor state dicts are accepted; convert other files to .safetensors first."
        ) from error
    return unwrap_state_dict(payload, path.name)


def unwrap_state_dict(payload: Any, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a raw state dict or one wrapped by a training script; strip DDP's ``module.`` prefix."""
    while isinstance(payload, Mapping) and not _is_tensor_dict(payload):
        inner = next((payload[k] for k in WRAPPER_KEYS if k in payload and isinstance(payload[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{name} holds no state dict: top-level keys are {sorted(map(str, payload))[:8]}; "
                f"expected tensors or one of {WRAPPER_KEYS}"
            )
        payload = inner
    if not isinstance(payload, Mapping) or not payload:
        raise CheckpointError(f"{name} holds no state dict")
    state = dict(payload)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_tensor_dict(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def reference_args_beside(path: str | os.PathLike) -> dict[str, Any] | None:
    """Reference arguments from ``<checkpoint>.json`` (either flat, or under a ``"config"`` key)."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{sidecar.name} is not valid JSON: {error}") from error
    return data.get("config", data) if isinstance(data, dict) else None


def config_for(path: str | os.PathLike, metadata: Mapping[str, str]) -> MMDiffusionConfig:
    if "mmg.config" in metadata:
        family = metadata.get("mmg.family", FAMILY)
        if family != FAMILY:
            raise CheckpointError(f"{Path(path).name} is a {family!r} checkpoint; this loader handles {FAMILY!r}")
        return MMDiffusionConfig.from_json(metadata["mmg.config"])
    reference_args = reference_args_beside(path)
    if reference_args is not None:
        return config_from_reference(reference_args)
    return PRESETS["mmdiffusion-released"]


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights strictly."""
    state_dict, metadata = read_state_dict(path)
    config = config_for(path, metadata)
    with torch.device("meta"):
        model = MMDiffusionUNet(config)
    model = model.to_empty(device="cpu")
    try:
        load_state_dict_strict(model, state_dict, source=Path(path).name)
    except WeightsMismatchError as error:
        hint = "" if "mmg.config" in metadata else (
            f" If this is a released MM-Diffusion file with non-default settings, put its reference arguments "
            f"in {Path(path).with_suffix('.json').name} beside it."
        )
        raise CheckpointError(f"{error}.{hint}") from error
    return LoadedModel(model=model.to(device=device, dtype=dtype).eval(), config=config, family=FAMILY, path=str(path),
                       metadata=metadata)


def save_safetensors(
    model: MMDiffusionUNet, path: str | os.PathLike, extra_metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the pack's self-describing format (atomically: temp file, then rename).

    dtype: store floating-point weights in this type (e.g. float16 halves a shipped file; loading
    copies them into the model's own dtype). None keeps the model's.
    """
    metadata = {"mmg.family": FAMILY, "mmg.format_version": FORMAT_VERSION, "mmg.config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    save_safetensors_atomic(stored_tensors(model.state_dict(), dtype), path, metadata)


def convert(source: str | os.PathLike, target: str | os.PathLike) -> MMDiffusionConfig:
    """Turn a released ``.pt`` into the pack's ``.safetensors`` or back (the ``.pt`` gets a JSON sidecar)."""
    loaded = load_model(source)
    target = Path(target)
    if target.suffix.lower() in SAFETENSORS_SUFFIXES:
        save_safetensors(loaded.model, target, {"mmg.source": Path(source).name})
    elif target.suffix.lower() in PICKLE_SUFFIXES:
        sidecar = {"config": config_to_reference(loaded.config)}
        torch.save(loaded.model.state_dict(), str(target))
        target.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    else:
        raise CheckpointError(f"unsupported target extension {target.suffix!r}; use .safetensors or .pt")
    return loaded.config
