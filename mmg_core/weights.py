"""Safe, strict weight loading shared by every model family."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model built from its config."""


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    ignored_keys: Iterable[str] = (),
    source: str = "checkpoint",
) -> None:
    """Load with an explicit list of ignored keys, then strict: every key and shape must match.

    The error names the first offending key so a user can tell a wrong file from a wrong config.
    """
    ignored = set(ignored_keys)
    incoming = {k: v for k, v in state_dict.items() if k not in ignored}
    expected = model.state_dict()
    missing = [k for k in expected if k not in incoming]
    unexpected = [k for k in incoming if k not in expected]
    if unexpected:
        raise WeightsMismatchError(
            f"{source} has key {unexpected[0]!r} that this model does not have "
            f"({len(unexpected)} unexpected, {len(missing)} missing); is the file for another model or config?"
        )
    if missing:
        raise WeightsMismatchError(
            f"{source} lacks key {missing[0]!r} ({len(missing)} missing); the file is incomplete or for another config"
        )
    for key, value in incoming.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsMismatchError(
                f"{source} key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(incoming, strict=True)
