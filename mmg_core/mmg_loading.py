"""Load MMG from real weight files: VideoCrafter2's ``model.ckpt``, an Auffusion diffusers folder, the
pack's coupled ``.safetensors``, or the two base models plus fresh (or separately trained) couplers.

One entry point, :func:`load_mmg`. Sources it understands:
  * ``video=``: VideoCrafter2 ``model.ckpt``, a torch pickle ``{"state_dict": {...}}`` (or DeepSpeed's
    ``{"module": {"_forward_module." + key}}``, as VideoCrafter's own ``load_model_checkpoint`` accepts),
    or a ``.safetensors`` with the same keys. ``model.diffusion_model.*`` is the video U-Net; the noise
    schedule buffers (``betas``, ``alphas_cumprod``, ..., ``scale_arr``) are returned for the sampler;
    ``first_stage_model.*`` (the VAE) and ``cond_stage_model.*`` (OpenCLIP) are skipped: ComfyUI's own
    VAE and CLIP loaders read them. The file carries no network settings: ``video_config`` gives them
    (default VideoCrafter2's ``configs/inference_t2v_512_v2.0.yaml``).
  * ``audio=``: an Auffusion folder (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``
    or ``.bin``; ``vocoder/`` with HiFi-GAN ``config.json`` + ``vocoder.pt``); ``vae/``, ``text_encoder/``,
    ``tokenizer/`` are left to other loaders.
  * ``coupled=``: the pack's ``.safetensors`` with the :class:`MMGConfig` JSON in its metadata
    (``mmg.family = "mmg"``): every key (``video_unet.*``, ``audio_unet.*``, ``video_cmt.*``,
    ``audio_cmt.*``), or only the couplers, to be combined with ``video=`` and ``audio=``.
Without a coupler file the couplers are initialised fresh from an injected ``torch.Generator`` with the
model's own initialisation (only ``proj_out`` zero, so the coupled model starts equal to the two U-Nets).

Memory: the model is built on the meta device (no storage), files are memory-mapped (safetensors'
``safe_open``, ``torch.load(mmap=True)``) and each tensor is assigned into the model
(``load_state_dict(assign=True)``). In float32 on CPU the parameters *are* the file's mapped pages
(private copy-on-write: changing them never writes the file), so peak RSS is one copy of the weights;
with ``dtype=float16/bfloat16`` each tensor is converted as it is assigned (peak: the source pages
read + the converted copy). Skipped parts of a file (VAE, CLIP) are never read. ``track_peak_rss``
measures it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open
from torch import nn

from .compat.mmg import VIDEO_UNET_CLASS, audio_config_from_reference, video_config_from_reference
from .mmg_sampling import VIDEOCRAFTER2_SCHEDULE, LvdmSchedule
from .models.lvdm_unet import LvdmUNetConfig
from .models.mmg_coupled import AudioUNetConfig, CrossModalConfig, MMGConfig, MMGCoupledUNet
from .vocoder import HiFiGAN, load_hifigan, load_torch_weights
from .weights import check_state_dict, save_safetensors_atomic, stored_tensors

PathLike = str | os.PathLike
FAMILY = "mmg"
FORMAT_VERSION = "1"
UNET_PARTS = ("video_unet", "audio_unet")
COUPLER_PARTS = ("audio_cmt", "video_cmt")  # the model's registration order: fresh init draws in this order
PARTS = UNET_PARTS + COUPLER_PARTS
LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# VideoCrafter2 model.ckpt (lvdm/models/ddpm3d.py, LatentDiffusion).
VIDEO_UNET_PREFIX = "model.diffusion_model."
VIDEO_IGNORED_PREFIXES = ("first_stage_model.", "cond_stage_model.")  # VAE and OpenCLIP: ComfyUI's loaders
DEEPSPEED_PREFIX = "_forward_module."  # stripped by VideoCrafter's load_model_checkpoint (key[16:])
# DDPM.register_schedule's persistent buffers, LatentDiffusion's scale_arr (use_scale), and the two
# entries a checkpoint has only with scale_by_std (scale_factor) or learn_logvar (logvar).
LVDM_SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr", "scale_factor", "logvar",
)
# Auffusion / diffusers folder layout.
UNET_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
)


class MMGLoadError(ValueError):
    """A file or an argument of :func:`load_mmg` cannot be used; the message says what to fix."""


@dataclass
class LoadedMMG:
    model: MMGCoupledUNet
    config: MMGConfig
    video_schedule: LvdmSchedule  # for mmg_sampling.sample_mmg_ddim(video_schedule=...)
    video_schedule_buffers: dict[str, torch.Tensor]  # as stored in model.ckpt (float32); {} when it had none
    vocoder: HiFiGAN | None  # Auffusion's HiFi-GAN (float32), when a vocoder was found or given
    sources: dict[str, str]  # part -> where it came from: video_unet, audio_unet, couplers, video_schedule, vocoder
    fresh_couplers: bool


# ----------------------------------------------------------------------------------------------
# Reading files (lazily: tensors stay memory-mapped until touched)
# ----------------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise MMGLoadError(f"{path.name} is not a readable safetensors file: {error}") from error


def _existing_file(path: PathLike, role: str, hint: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise MMGLoadError(f"{role} expects a file, but {path} is a folder; {hint}")
    if not path.is_file():
        raise MMGLoadError(f"{role} file not found: {path}")
    return path


# ----------------------------------------------------------------------------------------------
# VideoCrafter2 model.ckpt
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoCheckpoint:
    unet: dict[str, torch.Tensor]  # lvdm U-Net keys, prefix removed
    schedule_buffers: dict[str, torch.Tensor]
    ignored_keys: int  # VAE and text-encoder entries skipped


def read_videocrafter_checkpoint(path: PathLike) -> VideoCheckpoint:
    path = _existing_file(path, "video=", "pass VideoCrafter2's model.ckpt (an Auffusion folder goes to audio=)")
    if path.suffix.lower() == ".safetensors":
        state, metadata = read_safetensors(path)
        if "mmg.family" in metadata:
            raise MMGLoadError(f"{path.name} is one of this pack's checkpoints: pass it as coupled=, not video=")
    else:
        state = unwrap_lightning(load_torch_weights(path), path.name)
    return split_videocrafter_state(state, path.name)


def unwrap_lightning(payload: Any, name: str) -> dict[str, torch.Tensor]:
    """Lightning's ``{"state_dict": ...}``, DeepSpeed's ``{"module": ...}`` or a bare state dict."""
    if isinstance(payload, Mapping) and isinstance(payload.get("module"), Mapping):
        module = payload["module"]
        return {k[len(DEEPSPEED_PREFIX):] if k.startswith(DEEPSPEED_PREFIX) else k: v for k, v in module.items()}
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        top = sorted(map(str, payload))[:8] if isinstance(payload, Mapping) else type(payload).__name__
        raise MMGLoadError(f"{name} holds no state dict (top level: {top}); expected VideoCrafter2's model.ckpt")
    return dict(payload)


def split_videocrafter_state(state: Mapping[str, torch.Tensor], name: str) -> VideoCheckpoint:
    unet, schedule, ignored, unknown = {}, {}, 0, []
    for key, value in state.items():
        if key.startswith(VIDEO_UNET_PREFIX):
            unet[key[len(VIDEO_UNET_PREFIX):]] = value
        elif key in LVDM_SCHEDULE_KEYS:
            schedule[key] = value
        elif key.startswith(VIDEO_IGNORED_PREFIXES):
            ignored += 1
        else:
            unknown.append(key)
    if not unet:
        hint = _guess_kind(state)
        raise MMGLoadError(f"{name} has no {VIDEO_UNET_PREFIX!r} keys: not a VideoCrafter2 model.ckpt{hint}")
    if unknown:
        raise MMGLoadError(
            f"{name} has key {unknown[0]!r} ({len(unknown)} unknown) that a VideoCrafter2 model.ckpt does not have; "
            f"understood: {VIDEO_UNET_PREFIX}*, {', '.join(p + '*' for p in VIDEO_IGNORED_PREFIXES)} and the "
            "noise-schedule buffers. An EMA or LoRA checkpoint must be merged into plain weights first"
        )
    return VideoCheckpoint(unet, schedule, ignored)


def _guess_kind(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)
    if any(k.startswith(("video_unet.", "audio_cmt.")) for k in keys):
        return " (it looks like a coupled MMG state dict: save it with save_mmg and pass it as coupled=)"
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return " (it looks like a diffusers UNet: pass its model folder as audio=)"
    return f" (first keys: {keys[:3]})"


def _round_float32(value: torch.Tensor) -> float:
    """A float32-stored constant back to the decimal it was written as (0.00085, 0.7)."""
    return float(f"{float(value):.7g}")


def lvdm_schedule_from_buffers(buffers: Mapping[str, torch.Tensor], source: str) -> LvdmSchedule:
    """The :class:`LvdmSchedule` that reproduces a checkpoint's buffers; raises if none does.

    lvdm's "linear" schedule has ``betas[0] = linear_start`` and ``betas[-1] = linear_end``;
    ``scale_arr`` ramps from ``scale_a`` to ``scale_b`` over ``mid_step`` steps. VideoCrafter2's is
    ``mid_step + T`` long (``fix_scale_bug: False`` in ddpm3d.py); only the first T entries are used."""
    for key in ("betas", "alphas_cumprod"):
        if key not in buffers:
            raise MMGLoadError(f"{source} has schedule buffers but not {key!r}; the file is incomplete")
    betas = buffers["betas"].double()
    kwargs: dict[str, Any] = dict(num_train_timesteps=len(betas), linear_start=_round_float32(betas[0]),
                                  linear_end=_round_float32(betas[-1]), use_scale="scale_arr" in buffers)
    if "scale_arr" in buffers:
        scale = buffers["scale_arr"].double()
        if len(scale) < len(betas):
            raise MMGLoadError(f"{source}: scale_arr has {len(scale)} entries for {len(betas)} timesteps")
        scale_a, scale_b = _round_float32(scale[0]), _round_float32(scale[-1])
        reached = torch.nonzero((scale - scale_b).abs() < 1e-6)
        mid_step = int(reached[0]) + 1 if scale_a != scale_b else VIDEOCRAFTER2_SCHEDULE.mid_step
        kwargs.update(scale_a=scale_a, scale_b=scale_b, mid_step=mid_step)
    schedule = LvdmSchedule(**kwargs)
    _check_schedule(schedule, buffers, source)
    return schedule


def _check_schedule(schedule: LvdmSchedule, buffers: Mapping[str, torch.Tensor], source: str) -> None:
    steps = schedule.num_train_timesteps
    checks = [("alphas_cumprod", schedule.alphas_cumprod())]
    if schedule.use_scale:
        checks.append(("scale_arr", schedule.scale_arr()))
    for key, ours in checks:
        stored = buffers[key].float()[:steps]
        if not torch.allclose(stored, ours, atol=1e-6, rtol=0):
            raise MMGLoadError(
                f"{source}: buffer {key!r} is not lvdm's linear schedule ({schedule}); the MMG sampler implements "
                "only that schedule, so this checkpoint cannot be sampled correctly"
            )


# ----------------------------------------------------------------------------------------------
# Auffusion folder
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuffusionFolder:
    unet_config: Path
    unet_weights: Path
    vocoder: Path | None  # the vocoder/ folder, when present


def find_auffusion_folder(path: PathLike) -> AuffusionFolder:
    """Accepts the model folder (with ``unet/``) or its ``unet/`` folder itself."""
    path = Path(path)
    if path.is_file():
        hint = "; a .ckpt is VideoCrafter2's: pass it as video=" if path.suffix.lower() == ".ckpt" else ""
        raise MMGLoadError(
            "audio= expects Auffusion's folder (with unet/config.json and unet/diffusion_pytorch_model.safetensors), "
            f"got the file {path.name}{hint}"
        )
    if not path.is_dir():
        raise MMGLoadError(f"audio folder not found: {path}")
    unet = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if unet == path and not _describes_a_unet(path / "config.json"):
        raise MMGLoadError(
            f"{path} is not an Auffusion diffusers folder: unet/config.json is missing. Download the whole "
            "model repository folder (unet/, vae/, vocoder/, text_encoder/, tokenizer/), not single files"
        )
    if any((unet / f"{name}.index.json").is_file() for name in UNET_WEIGHT_NAMES):
        raise MMGLoadError(f"{unet} holds sharded weights (*.index.json), which are not supported: merge the shards")
    weights = next((unet / name for name in UNET_WEIGHT_NAMES if (unet / name).is_file()), None)
    if weights is None:
        raise MMGLoadError(f"{unet} has config.json but no weights: expected one of {list(UNET_WEIGHT_NAMES)}")
    vocoder = unet.parent / "vocoder" if unet.name == "unet" else path / "vocoder"
    return AuffusionFolder(unet / "config.json", weights, vocoder if vocoder.is_dir() else None)


def _describes_a_unet(config: Path) -> bool:
    try:
        return json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_auffusion_unet(folder: AuffusionFolder) -> tuple[AudioUNetConfig, dict[str, torch.Tensor]]:
    try:
        raw = json.loads(folder.unet_config.read_text())
    except json.JSONDecodeError as error:
        raise MMGLoadError(f"{folder.unet_config} is not valid JSON: {error}") from error
    if raw.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise MMGLoadError(f"{folder.unet_config} describes a {raw['_class_name']}, not a UNet2DConditionModel")
    try:
        config = audio_config_from_reference(raw)
    except ValueError as error:
        raise MMGLoadError(f"{folder.unet_config}: {error}") from error
    if folder.unet_weights.suffix == ".safetensors":
        state, _ = read_safetensors(folder.unet_weights)
    else:
        state = unwrap_lightning(load_torch_weights(folder.unet_weights), folder.unet_weights.name)
    return config, state


# ----------------------------------------------------------------------------------------------
# The pack's coupled checkpoint
# ----------------------------------------------------------------------------------------------
def read_coupled_checkpoint(path: PathLike) -> tuple[MMGConfig, dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """-> (config, {part: state without the part prefix}, metadata)."""
    path = _existing_file(path, "coupled=", "pass the pack's MMG .safetensors file")
    if path.suffix.lower() != ".safetensors":
        hint = " (VideoCrafter2's model.ckpt goes to video=)" if path.suffix.lower() == ".ckpt" else ""
        raise MMGLoadError(f"coupled= takes the pack's .safetensors checkpoints, got {path.name}{hint}")
    state, metadata = read_safetensors(path)
    family = metadata.get("mmg.family")
    if family is None or "mmg.config" not in metadata:
        raise MMGLoadError(f"{path.name} has no mmg.family / mmg.config metadata: not an MMG checkpoint of this pack")
    if family != FAMILY:
        raise MMGLoadError(f"{path.name} is a {family!r} checkpoint, not an MMG one: load it with that family's loader")
    try:
        config = MMGConfig.from_json(metadata["mmg.config"])
    except (ValueError, TypeError) as error:
        raise MMGLoadError(f"{path.name}: its mmg.config metadata is not a valid MMG config: {error}") from error
    return config, split_parts(state, path.name), metadata


def split_parts(state: Mapping[str, torch.Tensor], name: str) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part not in PARTS or not rest:
            raise MMGLoadError(f"{name} has key {key!r} outside the MMG parts {list(PARTS)}")
        parts.setdefault(part, {})[rest] = value
    return parts


def save_mmg(
    model: MMGCoupledUNet,
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    couplers_only: bool = False,
    video_schedule: LvdmSchedule | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the pack's self-describing checkpoint (atomically: temp file, then rename).

    ``couplers_only`` stores just ``video_cmt.*`` / ``audio_cmt.*`` (for use with the base weights);
    ``dtype`` stores floating-point weights in that type (None keeps the model's)."""
    metadata = {"mmg.family": FAMILY, "mmg.format_version": FORMAT_VERSION, "mmg.config": model.config.to_json(),
                "mmg.contents": "couplers" if couplers_only else "full"}
    if video_schedule is not None:
        metadata["mmg.video_schedule"] = json.dumps(asdict(video_schedule), sort_keys=True)
    metadata.update(extra_metadata or {})

    keep = COUPLER_PARTS if couplers_only else PARTS
    tensors = {k: v for k, v in model.state_dict().items() if k.partition(".")[0] in keep}
    save_safetensors_atomic(stored_tensors(tensors, dtype), path, metadata)


def schedule_from_metadata(metadata: Mapping[str, str], name: str) -> tuple[LvdmSchedule, str]:
    if "mmg.video_schedule" not in metadata:
        return VIDEOCRAFTER2_SCHEDULE, "VideoCrafter2 inference config (the checkpoint stores no schedule)"
    try:
        return LvdmSchedule(**json.loads(metadata["mmg.video_schedule"])), name
    except (TypeError, ValueError) as error:
        raise MMGLoadError(f"{name}: mmg.video_schedule metadata is not a valid schedule: {error}") from error


# ----------------------------------------------------------------------------------------------
# Assembling the model
# ----------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What :func:`load_mmg` will load, gathered before anything is built."""

    config: MMGConfig
    parts: dict[str, tuple[dict[str, torch.Tensor], str, str]]  # part -> (state, source name, key prefix in file)
    schedule: LvdmSchedule
    schedule_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    vocoder_dir: Path | None = None


def resolve_video_config(video_config: LvdmUNetConfig | Mapping[str, Any] | None) -> LvdmUNetConfig:
    """None = VideoCrafter2; a mapping = lvdm ``UNetModel`` arguments: the yaml's ``unet_config.params``,
    or ``unet_config`` itself (``{"target": ..., "params": {...}}``)."""
    if video_config is None or isinstance(video_config, LvdmUNetConfig):
        return video_config or LvdmUNetConfig()
    if "params" in video_config and "target" in video_config:
        if video_config["target"] != VIDEO_UNET_CLASS:
            raise MMGLoadError(f"video_config target {video_config['target']!r} is not {VIDEO_UNET_CLASS!r}")
        video_config = video_config["params"]
    try:
        return video_config_from_reference(video_config)
    except ValueError as error:
        raise MMGLoadError(f"video_config: {error}") from error


def coupled_config(video: LvdmUNetConfig, audio: AudioUNetConfig, cross_modal: CrossModalConfig | None,
                   names: str) -> MMGConfig:
    """Both U-Nets plus CMTs at the coupling widths (MMG's 64-d heads unless ``cross_modal`` says otherwise)."""
    last = video.num_levels - 1
    widths = tuple(video.level_widths[:last] + video.level_widths[::-1][:last])
    try:
        cross = cross_modal or CrossModalConfig(widths)
        return MMGConfig(video=video, audio=audio, cross_modal=cross)
    except ValueError as error:
        raise MMGLoadError(f"cannot couple {names}: {error}") from error


def dataclass_differences(a: Any, b: Any) -> list[str]:
    """``field: a_value vs b_value`` for every field where two config dataclasses differ."""
    da, db = asdict(a), asdict(b)
    return [f"{key}: {da.get(key)!r} vs {db.get(key)!r}"
            for key in sorted(set(da) | set(db)) if da.get(key) != db.get(key)]


def _plan_coupled(coupled: PathLike, video_config, cross_modal) -> _Plan:
    config, parts, metadata = read_coupled_checkpoint(coupled)
    name = Path(coupled).name
    missing = [p for p in PARTS if p not in parts]
    if missing:
        if set(missing) >= set(UNET_PARTS):
            raise MMGLoadError(f"{name} holds only the couplers: pass the base weights too (video=model.ckpt, "
                               "audio=Auffusion folder)")
        raise MMGLoadError(f"{name} lacks every {missing[0]}.* key: the file is incomplete")
    if video_config is not None or cross_modal is not None:
        raise MMGLoadError(f"{name} carries its own config: leave video_config and cross_modal unset")
    schedule, schedule_source = schedule_from_metadata(metadata, name)
    return _Plan(config, {p: (parts[p], name, f"{p}.") for p in PARTS}, schedule,
                 sources={**{p: name for p in UNET_PARTS}, "couplers": name, "video_schedule": schedule_source})


def _plan_bases(video: PathLike, audio: PathLike, couplers: PathLike | None, video_config, cross_modal) -> _Plan:
    video_ckpt = read_videocrafter_checkpoint(video)
    folder = find_auffusion_folder(audio)
    audio_config, audio_state = read_auffusion_unet(folder)
    video_name, audio_name = Path(video).name, f"{folder.unet_weights.parent.name}/{folder.unet_weights.name}"
    video_unet = resolve_video_config(video_config)
    parts = {"video_unet": (video_ckpt.unet, video_name, VIDEO_UNET_PREFIX),
             "audio_unet": (audio_state, audio_name, "")}
    if couplers is None:
        config = coupled_config(video_unet, audio_config, cross_modal,
                                f"{video_name} (video_config) with {folder.unet_config}")
    else:
        config = _add_couplers(parts, video_unet, audio_config, couplers, cross_modal)
    sources = {"video_unet": str(video), "audio_unet": str(folder.unet_weights),
               "couplers": str(couplers) if couplers is not None else "fresh (from the generator)"}
    if video_ckpt.schedule_buffers:
        schedule = lvdm_schedule_from_buffers(video_ckpt.schedule_buffers, video_name)
        sources["video_schedule"] = str(video)
    else:
        schedule = VIDEOCRAFTER2_SCHEDULE
        sources["video_schedule"] = f"VideoCrafter2 inference config ({video_name} has no schedule buffers)"
    return _Plan(config, parts, schedule, dict(video_ckpt.schedule_buffers), sources, folder.vocoder)


def _add_couplers(parts: dict, video: LvdmUNetConfig, audio: AudioUNetConfig, couplers: PathLike,
                  cross_modal) -> MMGConfig:
    """Put a couplers-only file's CMTs into ``parts``; its config must describe the same U-Nets."""
    file_config, file_parts, _ = read_coupled_checkpoint(couplers)
    name = Path(couplers).name
    if set(file_parts) & set(UNET_PARTS):
        raise MMGLoadError(f"{name} holds U-Net weights too: pass it alone as coupled=, without video= / audio=")
    if cross_modal is not None:
        raise MMGLoadError(f"{name} carries its own coupler config: leave cross_modal unset")
    differences = [f"video.{d}" for d in dataclass_differences(file_config.video, video)]
    differences += [f"audio.{d}" for d in dataclass_differences(file_config.audio, audio)]
    if differences:
        raise MMGLoadError(
            f"config mismatch: the couplers in {name} were made for other U-Nets than the base weights "
            f"(couplers' vs base: {'; '.join(differences)}); pass the video_config / Auffusion folder they belong to"
        )
    for part in COUPLER_PARTS:
        if part not in file_parts:
            raise MMGLoadError(f"{name} lacks every {part}.* key: the file is incomplete")
        parts[part] = (file_parts[part], name, f"{part}.")
    return file_config


def check_part(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, prefix: str) -> None:
    """Keys and shapes of one part against the (meta) module; the error names the key as the file spells it."""
    check_state_dict(module.state_dict(), state, source, key_prefix=prefix,
                     shape_hint="; the config (video_config / unet/config.json) does not match the file")


def init_couplers_(module: nn.Module, generator: torch.Generator) -> None:
    """The CMTs' own initialisation, drawn from ``generator``: PyTorch's Linear default
    (kaiming-uniform a=√5, bias U(±1/√fan_in)), norms at 1/0, then ``proj_out`` zero."""
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            bound = layer.in_features ** -0.5
            nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5, generator=generator)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        elif isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
            layer.reset_parameters()
        elif next(layer.parameters(recurse=False), None) is not None:
            raise TypeError(f"init_couplers_ does not know how to initialise {name} ({type(layer).__name__})")
        if name.endswith("proj_out"):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def _convert(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """No copy when nothing changes (a float32 file on CPU stays memory-mapped)."""
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _assemble(plan: _Plan, dtype: torch.dtype, device, generator: torch.Generator | None) -> MMGCoupledUNet:
    with torch.device("meta"):
        model = MMGCoupledUNet(plan.config)
    for part, (state, source, prefix) in plan.parts.items():
        check_part(getattr(model, part), state, source, prefix)
    fresh = [part for part in COUPLER_PARTS if part not in plan.parts]
    if fresh and generator is None:
        raise MMGLoadError("fresh couplers need a generator: pass generator=torch.Generator().manual_seed(seed), "
                           "or a trained coupler checkpoint as coupled=")
    state = {f"{part}.{key}": _convert(value, dtype, device)
             for part, (part_state, _, _) in plan.parts.items() for key, value in part_state.items()}
    for part in fresh:
        module = getattr(model, part).to_empty(device="cpu")
        init_couplers_(module, generator)
        state.update({f"{part}.{k}": _convert(v, dtype, device) for k, v in module.state_dict().items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_mmg(
    video: PathLike | None = None,
    audio: PathLike | None = None,
    coupled: PathLike | None = None,
    *,
    vocoder: PathLike | None = None,
    video_config: LvdmUNetConfig | Mapping[str, Any] | None = None,
    cross_modal: CrossModalConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> LoadedMMG:
    """Load MMG from ``coupled`` alone, or from ``video`` + ``audio`` (+ ``coupled`` couplers-only file,
    else fresh couplers from ``generator``). ``vocoder``: a HiFi-GAN folder or weight file; by default
    the Auffusion folder's ``vocoder/`` when there is one. The vocoder stays float32 (14 M parameters;
    half-precision CPU kernels for its transposed convolutions are not a given)."""
    if dtype not in LOADABLE_DTYPES:
        raise MMGLoadError(f"dtype must be one of {[str(d) for d in LOADABLE_DTYPES]}, got {dtype}")
    if video is None and audio is None:
        if coupled is None:
            raise MMGLoadError("nothing to load: pass coupled= (the pack's MMG .safetensors), or video= "
                               "(VideoCrafter2 model.ckpt) and audio= (Auffusion folder)")
        plan = _plan_coupled(coupled, video_config, cross_modal)
    elif video is None or audio is None:
        raise MMGLoadError("MMG needs both base models: pass video= (VideoCrafter2 model.ckpt) and audio= (Auffusion "
                           "folder), or one coupled= checkpoint holding both")
    else:
        plan = _plan_bases(video, audio, coupled, video_config, cross_modal)
    model = _assemble(plan, dtype, device, generator)
    vocoder_path = vocoder if vocoder is not None else plan.vocoder_dir
    loaded_vocoder = None if vocoder_path is None else load_hifigan(vocoder_path, device=device)
    sources = dict(plan.sources, vocoder=str(vocoder_path) if vocoder_path is not None else "none")
    return LoadedMMG(model, plan.config, plan.schedule, plan.schedule_buffers, loaded_vocoder, sources,
                     fresh_couplers=not set(COUPLER_PARTS) <= set(plan.parts))


# ----------------------------------------------------------------------------------------------
# Memory measurement (for benchmarks: how much a load really costs)
# ----------------------------------------------------------------------------------------------
@dataclass
class RSSReport:
    start_bytes: int  # resident set size when tracking began
    peak_bytes: int = 0  # highest resident set size while tracking (filled in at exit)
    exact: bool = True  # False: the OS could not reset the peak, so it is the process's lifetime peak

    @property
    def extra_bytes(self) -> int:
        """How far the peak rose above the starting point."""
        return max(self.peak_bytes - self.start_bytes, 0)


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    value = _proc_status_bytes("VmRSS")
    return value if value is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux VmHWM; elsewhere ``ru_maxrss``)."""
    value = _proc_status_bytes("VmHWM")
    if value is not None:
        return value
    import resource
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux kB


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@contextmanager
def track_peak_rss() -> Iterator[RSSReport]:
    """``with track_peak_rss() as report: load_mmg(...)`` then ``report.extra_bytes``."""
    exact = reset_peak_rss()
    report = RSSReport(start_bytes=current_rss_bytes(), exact=exact)
    try:
        yield report
    finally:
        report.peak_bytes = peak_rss_bytes()
