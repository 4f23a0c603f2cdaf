"""Load MM-Diffusion models described the way the reference code describes them.

``config`` uses the reference's own argument names (``py_scripts/multimodal_*.py`` flags, e.g.
``video_size="16,3,64,64"``, ``num_channels=128``, ``cross_attention_windows="1,4,8"``) and the state
dict uses the released checkpoints' key names.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..models.mmdiffusion import MMDiffusionUNet
from ..models.mmdiffusion_config import MMDiffusionConfig
from ..weights import load_state_dict_strict

# Reference arguments that do not change the network we build (training / sampling / precision flags).
IGNORED_REFERENCE_ARGS = {
    "use_checkpoint", "use_fp16", "num_heads_upsample", "class_cond", "diffusion_steps_sampling",
    "timestep_respacing", "use_kl", "rescale_timesteps", "rescale_learned_sigmas", "sample_fn",
}

# Released checkpoints come from ImageNet-64 style image sizes; the reference picks channel_mult by size.
REFERENCE_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


def _int_list(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(part) for part in value.split(",") if part.strip())
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _channel_mult(value: Any, image_size: int) -> tuple[int, ...]:
    if value in (None, "", ()):
        # Sizes the reference does not list (e.g. the 16x16 parity config) use the 64x64 multipliers.
        return REFERENCE_CHANNEL_MULT.get(image_size, (1, 2, 3, 4))
    mult = _int_list(value)
    if any(m <= 0 for m in mult):
        raise ValueError(f"channel_mult must hold positive integers, got {value!r}")
    return mult


def config_from_reference(args: Mapping[str, Any]) -> MMDiffusionConfig:
    """Translate reference constructor/script arguments into an :class:`MMDiffusionConfig`."""
    args = dict(args)
    _reject_unsupported(args)
    frames, channels, height, width = _int_list(args.pop("video_size", (16, 3, 64, 64)))
    audio_channels, audio_length = _int_list(args.pop("audio_size", (1, 25600)))
    fields = dict(
        video_frames=frames, video_channels=channels, video_height=height, video_width=width,
        audio_channels=audio_channels, audio_length=audio_length,
        model_channels=int(args.pop("num_channels", 128)),
        channel_mult=_channel_mult(args.pop("channel_mult", ""), width),
        num_res_blocks=int(args.pop("num_res_blocks", 2)),
        num_heads=int(args.pop("num_heads", 4)),
        num_head_channels=int(args.pop("num_head_channels", -1)),
        cross_attention_resolutions=_int_list(args.pop("cross_attention_resolutions", "2,4,8")),
        cross_attention_windows=_int_list(args.pop("cross_attention_windows", "1,4,8")),
        cross_attention_shift=_bool(args.pop("cross_attention_shift", True)),
        video_attention_resolutions=_int_list(args.pop("video_attention_resolutions", "2,4,8")),
        audio_attention_resolutions=_int_list(args.pop("audio_attention_resolutions", "-1")),
        use_scale_shift_norm=_bool(args.pop("use_scale_shift_norm", True)),
        learn_sigma=_bool(args.pop("learn_sigma", False)),
        dropout=float(args.pop("dropout", 0.0)),
        prediction_type="sample" if _bool(args.pop("predict_xstart", False)) else "epsilon",
        num_train_timesteps=int(args.pop("diffusion_steps", 1000)),
    )
    for key in IGNORED_REFERENCE_ARGS:
        args.pop(key, None)
    if args:
        raise ValueError(f"unknown MM-Diffusion reference argument(s): {sorted(args)}")
    return MMDiffusionConfig(**fields)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _reject_unsupported(args: dict[str, Any]) -> None:
    if not _bool(args.pop("resblock_updown", True)):
        raise ValueError("resblock_updown=False is not supported: the reference decoder then never upsamples")
    for key, expected in (("video_type", "2d+1d"), ("audio_type", "1d"), ("noise_schedule", "linear")):
        value = args.pop(key, expected)
        if value != expected:
            raise ValueError(f"{key}={value!r} is not supported (released checkpoints use {expected!r})")


def config_to_reference(config: MMDiffusionConfig) -> dict[str, Any]:
    """The reference arguments that rebuild ``config`` (for ``.pt`` files with a JSON sidecar)."""
    if config.text_dim is not None or config.fps != 10.0 or config.sample_rate != 16000 or config.prediction_type == "v_prediction":
        raise ValueError(
            "this model has settings the reference format cannot express (text conditioning, fps or sample "
            "rate); keep it as .safetensors"
        )
    join = lambda values: ",".join(str(v) for v in values)  # noqa: E731
    return {
        "video_size": join(config.video_shape), "audio_size": join(config.audio_shape),
        "num_channels": config.model_channels, "channel_mult": join(config.channel_mult),
        "num_res_blocks": config.num_res_blocks, "num_heads": config.num_heads,
        "num_head_channels": config.num_head_channels,
        "cross_attention_resolutions": join(config.cross_attention_resolutions),
        "cross_attention_windows": join(config.cross_attention_windows),
        "cross_attention_shift": config.cross_attention_shift,
        "video_attention_resolutions": join(config.video_attention_resolutions),
        "audio_attention_resolutions": join(config.audio_attention_resolutions),
        "use_scale_shift_norm": config.use_scale_shift_norm, "resblock_updown": True,
        "learn_sigma": config.learn_sigma, "dropout": config.dropout,
        "predict_xstart": config.prediction_type == "sample", "diffusion_steps": config.num_train_timesteps,
    }


def from_reference(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> MMDiffusionUNet:
    """Build the model from reference arguments and load a reference state dict (strict)."""
    model = MMDiffusionUNet(config_from_reference(config))
    load_state_dict_strict(model, state_dict)
    return model.eval()
