"""Safe, strict weight loading shared by every model family."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors.torch import save_file
from torch import nn


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model built from its config."""


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    incoming: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    *,
    key_prefix: str = "",
    shape_hint: str = "",
    unexpected_hint: str = "is the file for another model or config?",
) -> None:
    """Every key of ``incoming`` must be in ``expected`` and vice versa, with equal shapes.

    The error names the first offending key as the file spells it (``key_prefix`` + key), so a user
    can tell a wrong file from a wrong config; ``shape_hint`` ends a shape error (which config to check)
    and ``unexpected_hint`` a foreign-key error (what the file may be instead).
    """
    missing = [k for k in expected if k not in incoming]
    unexpected = [k for k in incoming if k not in expected]
    if unexpected:
        raise WeightsMismatchError(
            f"{source} has key {key_prefix + unexpected[0]!r} that this model does not have "
            f"({len(unexpected)} unexpected, {len(missing)} missing); {unexpected_hint}"
        )
    if missing:
        raise WeightsMismatchError(
            f"{source} lacks key {key_prefix + missing[0]!r} ({len(missing)} missing); the file is incomplete or "
            "for another config"
        )
    for key, value in incoming.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsMismatchError(
                f"{source} key {key_prefix + key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[key].shape)}{shape_hint}"
            )


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    ignored_keys: Iterable[str] = (),
    source: str = "checkpoint",
) -> None:
    """Load with an explicit list of ignored keys, then strict: every key and shape must match
    (see check_state_dict)."""
    ignored = set(ignored_keys)
    incoming = {k: v for k, v in state_dict.items() if k not in ignored}
    check_state_dict(model.state_dict(), incoming, source)
    model.load_state_dict(incoming, strict=True)


def stored_tensors(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies for a file; floating-point ones cast to ``dtype`` if given."""

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to("cpu")
        return (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).contiguous()

    return {key: stored(value) for key, value in tensors.items()}


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a .safetensors file through a temporary file and a rename, so a crash or a full disk
    never leaves a half-written file under the real name (a later resume or load would trust it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
