"""Load MMG models described the way the reference code describes them.

``config`` has the reference's sections (the schema of ``tests/fixtures/mmg/tiny/config.json``):
``video_unet`` = the lvdm ``UNetModel`` constructor arguments (VideoCrafter2's yaml ``unet_config``),
``audio_unet`` = the diffusers ``UNet2DConditionModel`` config (Auffusion's ``unet/config.json``),
``cross_modal_config`` = ``{"layer_channels": [...], "d_head": 64}``. Other top-level keys (fixture
notes, sampler settings) are ignored. The state dict uses the reference's key names.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from diffusers import UNet2DConditionModel

from ..models.lvdm_unet import LvdmUNetConfig
from ..models.mmg_coupled import AudioUNetConfig, CrossModalConfig, MMGConfig, MMGCoupledUNet
from ..weights import load_state_dict_strict

VIDEO_UNET_CLASS = "lvdm.modules.networks.openaimodel3d.UNetModel"
AUDIO_UNET_CLASS = "diffusers.UNet2DConditionModel"

# lvdm UNetModel constructor defaults (VideoCrafter @ 11bcd76); a config that omits a key gets these.
LVDM_DEFAULTS: dict[str, Any] = {
    "dropout": 0.0, "channel_mult": (1, 2, 4, 8), "conv_resample": True, "dims": 2, "context_dim": None,
    "use_scale_shift_norm": False, "resblock_updown": False, "num_heads": -1, "num_head_channels": -1,
    "transformer_depth": 1, "use_linear": False, "use_checkpoint": False, "temporal_conv": False,
    "tempspatial_aware": False, "temporal_attention": True, "temporal_selfatt_only": True,
    "use_relative_position": True, "use_causal_attention": False, "temporal_length": None, "use_fp16": False,
    "addition_attention": False, "use_image_attention": False, "temporal_transformer_depth": 1, "fps_cond": False,
}
LVDM_REQUIRED = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions")
# Arguments that do not change the function: gradient checkpointing, the dtype (chosen with .to()),
# and the clip length (used only by relative-position and causal attention, both rejected below).
LVDM_IGNORED = ("use_checkpoint", "use_fp16", "temporal_length")
# Arguments whose other values build layers this port does not implement; VideoCrafter2 uses these.
LVDM_FIXED = {
    "dims": 2, "resblock_updown": False, "temporal_selfatt_only": True, "use_relative_position": False,
    "use_causal_attention": False, "use_image_attention": False,
}


def video_config_from_reference(args: Mapping[str, Any]) -> LvdmUNetConfig:
    """lvdm ``UNetModel`` arguments -> :class:`LvdmUNetConfig` (reference defaults for omitted keys)."""
    missing = [key for key in LVDM_REQUIRED if key not in args]
    if missing:
        raise ValueError(f"video_unet config lacks required argument(s) {missing}")
    values = {**LVDM_DEFAULTS, **args}
    for key, expected in LVDM_FIXED.items():
        if values.pop(key) != expected:
            raise ValueError(f"video_unet {key}={args.get(key, LVDM_DEFAULTS[key])!r} is not supported "
                             f"(VideoCrafter2 uses {expected!r}); set it explicitly")
    for key in LVDM_IGNORED:
        values.pop(key)
    if values["context_dim"] is None:
        raise ValueError("video_unet context_dim is required: MMG's video U-Net is text-conditioned (1024)")
    known = set(LvdmUNetConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown lvdm UNetModel argument(s) {unknown}")
    return LvdmUNetConfig.from_dict(values)


def _diffusers_defaults() -> dict[str, Any]:
    params = inspect.signature(UNet2DConditionModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return as_tuple(a) == as_tuple(b)


def audio_config_from_reference(config: Mapping[str, Any]) -> AudioUNetConfig:
    """A diffusers ``UNet2DConditionModel`` config (Auffusion's ``unet/config.json``) -> ``AudioUNetConfig``.

    Keys MMG's layout does not use must be absent or at diffusers' defaults; ``_``-prefixed metadata
    (``_class_name``, ``_diffusers_version``) is ignored."""
    known = set(AudioUNetConfig.__dataclass_fields__)
    defaults = _diffusers_defaults()
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in known:
            values[key] = tuple(value) if isinstance(value, list) else value
        elif key not in defaults:
            raise ValueError(f"unknown UNet2DConditionModel argument {key!r} in audio_unet")
        elif not _same(value, defaults[key]):
            raise ValueError(
                f"audio_unet {key}={value!r} is not supported (MMG's audio U-Net keeps diffusers' default "
                f"{defaults[key]!r})"
            )
    # Omitted keys take diffusers' defaults, not Auffusion's (what the reference would build).
    for key in known - set(values):
        values[key] = defaults[key] if not isinstance(defaults[key], list) else tuple(defaults[key])
    return AudioUNetConfig(**values)


def config_from_reference(config: Mapping[str, Any]) -> MMGConfig:
    """Translate a reference-style MMG config into an :class:`MMGConfig`."""
    for key, expected in (("video_unet_class", VIDEO_UNET_CLASS), ("audio_unet_class", AUDIO_UNET_CLASS)):
        if config.get(key, expected) != expected:
            raise ValueError(f"{key} {config[key]!r} is not supported (expected {expected!r})")
    for section in ("video_unet", "audio_unet", "cross_modal_config"):
        if section not in config:
            raise ValueError(f"MMG reference config lacks the {section!r} section")
    cross = dict(config["cross_modal_config"])
    unknown = sorted(set(cross) - {"layer_channels", "d_head"})
    if unknown:
        raise ValueError(f"unknown cross_modal_config key(s) {unknown}")
    return MMGConfig(
        video=video_config_from_reference(config["video_unet"]),
        audio=audio_config_from_reference(config["audio_unet"]),
        # The reference's CrossModalCoupledUNet defaults d_head to 64.
        cross_modal=CrossModalConfig(tuple(cross["layer_channels"]), d_head=int(cross.get("d_head", 64))),
    )


def from_reference(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> MMGCoupledUNet:
    """Build the coupled model from a reference config and load a reference state dict (strict)."""
    model = MMGCoupledUNet(config_from_reference(config))
    load_state_dict_strict(model, state_dict, source="MMG state dict")
    return model.eval()


def full_size_reference_config() -> dict[str, Any]:
    """The released sizes in the reference schema: VideoCrafter2 (``configs/inference_t2v_512_v2.0.yaml``),
    Auffusion (Stable Diffusion 1.5 layout, CLIP-L 768-d text) and MMG's six CMT pairs (64-d heads)."""
    return {
        "video_unet_class": VIDEO_UNET_CLASS,
        "video_unet": {
            "in_channels": 4, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
            "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "transformer_depth": 1,
            "context_dim": 1024, "use_linear": True, "use_checkpoint": True, "temporal_conv": True,
            "temporal_attention": True, "temporal_selfatt_only": True, "use_relative_position": False,
            "use_causal_attention": False, "temporal_length": 16, "addition_attention": True, "fps_cond": True,
        },
        "audio_unet_class": AUDIO_UNET_CLASS,
        "audio_unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": [*["CrossAttnDownBlock2D"] * 3, "DownBlock2D"],
            "up_block_types": ["UpBlock2D", *["CrossAttnUpBlock2D"] * 3],
            "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
        },
        "cross_modal_config": {"layer_channels": [320, 640, 1280, 1280, 1280, 640], "d_head": 64},
    }
