"""Training MMG's cross-modal couplers: ``python -m mmg_core train --config FILE`` with ``"family": "mmg"``.

One step, per process (the objective of ``chaksseu/MMG_AV`` @ 6a67cf3,
``mmg_training/train_MMG_Model_0729_MMG_RCD.py`` with ``0729_train_final_filtered_mmg_rc.sh``; our code):

- **paired** clips: eps-MSE of both streams at one shared timestep t ~ U{0..999}; audio weight 1, video 2.
- **distillation** on unpaired data: an audio-only batch and a video-only batch are noised at one shared
  timestep drawn with p(t) ∝ t + 1 (the reference's ``linear_biased_timesteps``: mostly noisy steps, where
  the other modality has most to say) and fed to the coupled model *together*, the audio-only clips as
  its audio and the video-only clips as its video. Its audio eps (with the audio-only clip's prompts) is
  matched to the frozen audio teacher's eps, its video eps (with the video-only clip's prompts) to the
  frozen video teacher's; weights 1 and 2. The teachers are the single-modality U-Nets alone, i.e. the
  model with ``coupled=False``: while the base U-Nets are frozen that is the same weights run without
  CMTs; when a base U-Net trains, its teacher is a frozen copy taken before training.
- prompts are dropped together (both modalities of a clip → null) with ``cond_dropout``, as the
  reference, so the couplers also learn the unconditional pass that guidance needs. Null audio = zeros,
  null video = the empty prompt's states.
- Couplers start as identity: only their output projection is zero (``coupler_init="identity"``, the
  pack's :class:`~mmg_core.models.mmg_coupled.CrossModalTransformer`). ``"reference"`` zeroes every CMT
  parameter as the public code does; then only ``proj_out.bias`` ever gets a gradient and audio never
  depends on video. It exists to demonstrate that defect, not to be used.

The paired, audio-distillation and video-distillation rows run as one batch of 3·b clips (rows never
mix: every CMT time group lies inside one clip), so a step is one forward and one backward.

Data come from a pluggable source (``step_data(batch_size, generator) -> StepData``): synthetic latents
in which audio is a function of the video (tests, smoke runs), or folders of pre-encoded latents.
Per step all randomness comes from generators seeded by (seed, step, rank), so a resumed run repeats an
uninterrupted one exactly. ``<out_dir>/checkpoint/`` holds the trainable parameters, their EMA and the
AdamW moments (float32: the trainable set is small and resume must be exact), plus ``state.json``.
Logs: ``<out_dir>/loss.csv``, ``<out_dir>/loss.png``, a progress bar on rank 0. Several processes:
``torchrun --nproc_per_node N -m mmg_core train --config FILE`` (gloo on CPU, NCCL on GPUs).

Layouts: audio latents (b, c, mel, time), video latents (b, c, frames, h, w), text states (b, L, D).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import reduce, repeat
from safetensors.torch import load_file, safe_open
from torch import nn
from tqdm import tqdm

from .compat.mmg import config_from_reference, full_size_reference_config
from .mmg_sampling import VIDEOCRAFTER2_SCHEDULE
from .models.mmg_coupled import MMG_FPS, MMGConfig, MMGCoupledUNet
from .plotting import line_plot
from .training import (
    Dist, _atomic_save_file, _StopFlag, all_reduce_mean, init_distributed, step_seed, update_ema, warmup_rate,
)
from .weights import load_state_dict_strict

FAMILY = "mmg"
CHECKPOINT_NAME = "checkpoint"
TRAINABLE_GROUPS = {"couplers": ("audio_cmt.", "video_cmt."), "audio_unet": ("audio_unet.",),
                    "video_unet": ("video_unet.",)}
COUPLER_INITS = ("identity", "reference")
DISTILL_TIMESTEPS = ("linear_biased", "uniform")
LOSS_NAMES = ("loss", "loss_audio", "loss_video", "distill_audio", "distill_video")
CSV_FIELDS = ["step", *LOSS_NAMES, "lr", "elapsed_s", "clips_per_s"]


def _field_error(name: str, message: str) -> ValueError:
    return ValueError(f"{name}: {message}")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticData:
    """Random latents in which the audio is a function of the video (per time group), so the
    coupling has something to learn. Sizes are latent sizes; defaults = MMG's 3.2 s clip."""

    frames: int = 40
    height: int = 40
    width: int = 64
    mel: int = 32
    columns: int = 40
    text_tokens: int = 77
    audio_noise: float = 0.1  # std of the audio's part that does not come from the video


@dataclass(frozen=True)
class LatentFolderData:
    """Folders of pre-encoded clips, one ``.safetensors`` per clip (layouts without the batch axis):

    - ``paired``: ``audio`` (c, mel, time), ``video`` (c, f, h, w), ``audio_text`` (L, D_a),
      ``video_text`` (L, D_v), each latent already multiplied by its VAE's scaling factor;
    - ``audio_only``: ``audio``, ``audio_text`` and ``video_text`` (a video caption of the sound, as the
      reference's text-audio set carries); ``video_only``: ``video``, ``video_text``, ``audio_text``;
    - ``null_video_text``: a file whose ``video_text`` (L, D_v) is the empty prompt's states."""

    paired: str
    audio_only: str
    video_only: str
    null_video_text: str


DATA_KINDS = {"synthetic": SyntheticData, "latents": LatentFolderData}


@dataclass(frozen=True)
class MMGTrainConfig:
    """An MMG training run (JSON: these fields, paths relative to the config file). Validated on load;
    every error starts with the name of the field to fix."""

    out_dir: str
    family: str = FAMILY  # marks an MMG config for `python -m mmg_core train`
    # "full" (VideoCrafter2 + Auffusion sizes), a reference-style or pack-style config dict, or a path
    # to such a JSON file (e.g. tests/fixtures/mmg/tiny/config.json).
    model: str | dict = "full"
    # Safetensors with the coupled model's keys (video_unet.*, audio_unet.*; *_cmt.* optional, else the
    # couplers start fresh). None: random base weights from `seed` (tests and smoke runs only).
    base_weights: str | None = None
    coupler_init: str = "identity"  # or "reference": the public code's all-zero CMTs (they never learn)
    trainable: tuple[str, ...] = ("couplers",)  # groups of TRAINABLE_GROUPS; the rest stays frozen
    data: dict = field(default_factory=lambda: {"kind": "synthetic"})  # kind + fields of DATA_KINDS[kind]
    steps: int = 10000
    batch_size: int = 1  # clips per kind (paired, audio-only, video-only) per process and step
    lr: float = 1e-4  # the reference's 0729 run
    warmup_steps: int = 100
    weight_decay: float = 0.01  # torch AdamW's default, what the reference uses
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    audio_loss_weight: float = 1.0
    video_loss_weight: float = 2.0
    distill_audio_weight: float = 1.0
    distill_video_weight: float = 2.0
    distill_timesteps: str = "linear_biased"  # or "uniform"
    fps: float = MMG_FPS
    seed: int = 0
    log_every: int = 10
    checkpoint_minutes: float = 10.0
    time_limit_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    threads: int | None = None
    device: str = "auto"  # "auto" = cuda when available
    mixed_precision: str = "no"  # or "bf16" (autocast; weights and optimiser stay float32)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike = ".") -> "MMGTrainConfig":
        """Paths in the config are relative to ``base_dir`` (the config file's folder)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _field_error(unknown[0], f"unknown MMG training setting(s) {unknown}; known: {sorted(known)}")
        if "out_dir" not in data:
            raise _field_error("out_dir", "required (where checkpoints and logs go)")
        values = dict(data)
        base = Path(base_dir).resolve()
        resolve = lambda p: p if p is None or os.path.isabs(p) else str(base / p)  # noqa: E731
        values["out_dir"] = resolve(values["out_dir"])
        values["base_weights"] = resolve(values.get("base_weights"))
        if isinstance(values.get("model"), str) and values["model"] != "full":
            values["model"] = resolve(values["model"])
        if isinstance(values.get("data"), dict) and values["data"].get("kind") == "latents":
            values["data"] = {k: resolve(v) if k != "kind" else v for k, v in values["data"].items()}
        if "trainable" in values:
            values["trainable"] = tuple(values["trainable"])
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "MMGTrainConfig":
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an MMG training config is a JSON object")
        return cls.from_dict(data, Path(path).resolve().parent)

    def validate(self) -> None:
        """Raise ValueError naming the field to fix."""
        if self.family != FAMILY:
            raise _field_error("family", f"must be {FAMILY!r} for the MMG trainer, got {self.family!r}")
        bad = [g for g in self.trainable if g not in TRAINABLE_GROUPS]
        if bad or not self.trainable:
            raise _field_error("trainable",
                               f"choose one or more of {sorted(TRAINABLE_GROUPS)}, got {list(self.trainable)}")
        for name, allowed in (("coupler_init", COUPLER_INITS), ("distill_timesteps", DISTILL_TIMESTEPS),
                              ("mixed_precision", ("no", "bf16"))):
            if getattr(self, name) not in allowed:
                raise _field_error(name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise _field_error(name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cond_dropout < 1:
            raise _field_error("cond_dropout", f"must be in [0, 1), got {self.cond_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise _field_error("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise _field_error("lr", f"must be > 0, got {self.lr}")
        weights = ("audio_loss_weight", "video_loss_weight", "distill_audio_weight", "distill_video_weight")
        if any(getattr(self, name) < 0 for name in weights):
            raise _field_error(next(n for n in weights if getattr(self, n) < 0), "loss weights must be >= 0")
        if self.base_weights is not None and not Path(self.base_weights).is_file():
            raise _field_error("base_weights", f"file not found: {self.base_weights}")
        data, model = self.data_config(), self.model_config()
        if isinstance(data, SyntheticData):
            check_latent_shapes(model, data)

    def data_config(self) -> SyntheticData | LatentFolderData:
        if not isinstance(self.data, dict) or self.data.get("kind") not in DATA_KINDS:
            kind = self.data.get("kind") if isinstance(self.data, dict) else self.data
            raise _field_error("data.kind", f"must be one of {sorted(DATA_KINDS)}, got {kind!r}")
        cls = DATA_KINDS[self.data["kind"]]
        values = {k: v for k, v in self.data.items() if k != "kind"}
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise _field_error(f"data.{key}", f"unknown for kind {self.data['kind']!r}; known: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING]
        if missing:
            raise _field_error(f"data.{missing[0]}", f"required for kind {self.data['kind']!r}")
        return cls(**values)

    def model_config(self) -> MMGConfig:
        if isinstance(self.model, dict):
            source = self.model
        elif self.model == "full":
            source = full_size_reference_config()
        elif Path(self.model).is_file():
            source = json.loads(Path(self.model).read_text())
        else:
            raise _field_error("model", f"'full', a config object, or a JSON file; {self.model!r} is none of these")
        try:  # the reference's schema (video_unet / audio_unet / cross_modal_config) or the pack's own
            return config_from_reference(source) if "video_unet" in source else MMGConfig.from_dict(source)
        except ValueError as error:
            raise _field_error("model", str(error)) from error


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AVBatch:
    """b clips; ``audio`` (b, c, mel, time) is None for video-only data, ``video`` (b, c, f, h, w) None for
    audio-only data. Both prompts are always present (the counterpart caption of unpaired clips)."""

    audio: torch.Tensor | None
    video: torch.Tensor | None
    audio_text: torch.Tensor  # (b, L, D_a)
    video_text: torch.Tensor  # (b, L, D_v)


@dataclass(frozen=True)
class StepData:
    paired: AVBatch
    audio_only: AVBatch
    video_only: AVBatch


class DataSource(Protocol):
    null_video_text: torch.Tensor  # (L, D_v) the empty prompt's states (prompt dropout)

    def step_data(self, batch_size: int, generator: torch.Generator) -> StepData: ...


class SyntheticLatents:
    """Video latents ~ N(0, 1); the audio at column j is the mean "energy" of the frames grouped with
    that column (MMG's time groups), spread over the mel bins with a falling profile, plus a little
    independent noise. Prompts are random states; the null video prompt is zeros."""

    def __init__(self, shape: SyntheticData, model: MMGConfig):
        check_latent_shapes(model, shape)
        self.shape = shape
        self.audio_text_dim, self.video_text_dim = model.audio.cross_attention_dim, model.video.context_dim
        self.channels = (model.audio.in_channels, model.video.in_channels)
        self.null_video_text = torch.zeros(shape.text_tokens, self.video_text_dim)

    def _clips(self, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shape
        video = torch.randn(b, self.channels[1], s.frames, s.height, s.width, generator=g)
        k = s.frames // s.columns
        # per-frame mean, rescaled to unit variance, then per time group (k frames per audio column)
        energy = reduce(video, "b c f h w -> b f", "mean") * math.sqrt(video[0, :, 0].numel())
        column = reduce(energy, "b (t k) -> b t", "mean", k=k) * math.sqrt(k)
        profile = torch.linspace(1.0, 0.2, s.mel)
        audio = repeat(column, "b t -> b c m t", c=self.channels[0], m=s.mel) * profile[:, None]
        audio = audio + s.audio_noise * torch.randn(audio.shape, generator=g)
        return audio, video

    def _texts(self, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.shape.text_tokens
        return (torch.randn(b, length, self.audio_text_dim, generator=g),
                torch.randn(b, length, self.video_text_dim, generator=g))

    def step_data(self, batch_size: int, generator: torch.Generator) -> StepData:
        audio, video = self._clips(batch_size, generator)
        paired = AVBatch(audio, video, *self._texts(batch_size, generator))
        audio_only = AVBatch(self._clips(batch_size, generator)[0], None, *self._texts(batch_size, generator))
        video_only = AVBatch(None, self._clips(batch_size, generator)[1], *self._texts(batch_size, generator))
        return StepData(paired, audio_only, video_only)


def check_latent_shapes(model: MMGConfig, shape: SyntheticData) -> None:
    divisor = 2 ** (model.num_levels - 1)
    for name in ("mel", "columns"):
        if getattr(shape, name) % divisor:
            raise _field_error(f"data.{name}", f"must be a multiple of {divisor} (one halving per U-Net level)")
    for name in ("height", "width"):
        if getattr(shape, name) % model.video.spatial_divisor:
            raise _field_error(f"data.{name}", f"must be a multiple of {model.video.spatial_divisor}")
    if shape.frames % shape.columns:
        raise _field_error("data.frames", f"must be a multiple of data.columns={shape.columns} (MMG: 40 and 40)")


PAIRED_KEYS, AUDIO_ONLY_KEYS = ("audio", "video", "audio_text", "video_text"), ("audio", "audio_text", "video_text")
VIDEO_ONLY_KEYS = ("video", "video_text", "audio_text")


class LatentFolders:
    """Pre-encoded clips from three folders (see :class:`LatentFolderData`); each step draws its clips
    with the step's generator, so resuming sees the same clips."""

    def __init__(self, data: LatentFolderData):
        self.files = {}
        for name in ("paired", "audio_only", "video_only"):
            folder = Path(getattr(data, name))
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise _field_error(f"data.{name}", f"no .safetensors clips in {folder}")
            self.files[name] = files
        self.null_video_text = _read_clip(Path(data.null_video_text), ("video_text",))["video_text"]

    def _batch(self, name: str, keys: tuple[str, ...], batch_size: int, g: torch.Generator) -> AVBatch:
        files = self.files[name]
        picks = torch.randint(len(files), (batch_size,), generator=g).tolist()
        clips = [_read_clip(files[i], keys) for i in picks]
        stacked = {key: torch.stack([clip[key] for clip in clips]).float() for key in keys}
        return AVBatch(stacked.get("audio"), stacked.get("video"), stacked["audio_text"], stacked["video_text"])

    def step_data(self, batch_size: int, generator: torch.Generator) -> StepData:
        return StepData(self._batch("paired", PAIRED_KEYS, batch_size, generator),
                        self._batch("audio_only", AUDIO_ONLY_KEYS, batch_size, generator),
                        self._batch("video_only", VIDEO_ONLY_KEYS, batch_size, generator))


def _read_clip(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        missing = [key for key in keys if key not in handle.keys()]
        if missing:
            raise ValueError(f"{path} lacks tensor(s) {missing}; a clip of this folder needs {list(keys)}")
        return {key: handle.get_tensor(key) for key in keys}


def data_source(train: MMGTrainConfig, model: MMGConfig) -> DataSource:
    data = train.data_config()
    return SyntheticLatents(data, model) if isinstance(data, SyntheticData) else LatentFolders(data)


# ----------------------------------------------------------------------------------------------
# Model, teachers, state
# ----------------------------------------------------------------------------------------------
def zero_all_couplers(model: MMGCoupledUNet) -> None:
    """The public MMG code's initialisation (every CMT parameter zero): kept to show why we differ."""
    with torch.no_grad():
        for param in [*model.audio_cmt.parameters(), *model.video_cmt.parameters()]:
            param.zero_()


def build_model(train: MMGTrainConfig, config: MMGConfig) -> MMGCoupledUNet:
    """The coupled model with base weights loaded (or random from ``seed``) and ``trainable`` set."""
    with torch.random.fork_rng(devices=[]):  # weight init only; training draws use explicit generators
        torch.manual_seed(train.seed)
        model = MMGCoupledUNet(config)
        if train.base_weights is None:
            randomize_zero_layers(model)
    if train.coupler_init == "reference":
        zero_all_couplers(model)
    if train.base_weights is not None:
        load_base_weights(model, train.base_weights)
    prefixes = tuple(p for group in train.trainable for p in TRAINABLE_GROUPS[group])
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    return model


def randomize_zero_layers(model: MMGCoupledUNet) -> None:
    """Random base U-Nets only: lvdm zero-initialises its output convolutions, which would make the
    untrained video U-Net answer 0 whatever its input; give every all-zero base weight matrix random
    values (std 1/√fan_in) so both base U-Nets behave like trained ones do: they respond to the input."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("audio_unet.", "video_unet.")) and param.dim() > 1 and not param.any():
                param.normal_(0.0, param[0].numel() ** -0.5)


def load_base_weights(model: MMGCoupledUNet, path: str) -> None:
    """Strict load; a file without any ``*_cmt.*`` key keeps the freshly initialised couplers."""
    state = load_file(path)
    if not any(key.startswith(TRAINABLE_GROUPS["couplers"]) for key in state):
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith(TRAINABLE_GROUPS["couplers"])}
        state = {**state, **fresh}
    load_state_dict_strict(model, state, source=f"base_weights {path}")


@dataclass
class Teachers:
    """Frozen single-modality U-Nets (the model with ``coupled=False``)."""

    audio: nn.Module
    video: nn.Module

    @classmethod
    def of(cls, model: MMGCoupledUNet, trainable: tuple[str, ...]) -> "Teachers":
        def frozen(unet: nn.Module, group: str) -> nn.Module:
            return copy.deepcopy(unet).requires_grad_(False).eval() if group in trainable else unet

        return cls(frozen(model.audio_unet, "audio_unet"), frozen(model.video_unet, "video_unet"))


@dataclass
class MMGTrainState:
    model: MMGCoupledUNet
    names: list[str]  # trainable parameter names, in optimiser order
    params: nn.ParameterList  # the model's trainable parameters (same objects)
    ema: nn.ParameterList
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed_s: float = 0.0

    def trainable_state(self, ema: bool = False) -> dict[str, torch.Tensor]:
        values = self.ema if ema else self.params
        return {name: value.detach().cpu().contiguous() for name, value in zip(self.names, values)}


def new_state(train: MMGTrainConfig, model: MMGCoupledUNet) -> MMGTrainState:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = nn.ParameterList([p for _, p in named])
    ema = nn.ParameterList([nn.Parameter(p.detach().clone(), requires_grad=False) for _, p in named])
    optimizer = torch.optim.AdamW(list(params), lr=train.lr, weight_decay=train.weight_decay)
    return MMGTrainState(model, [n for n, _ in named], params, ema, optimizer)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(state: MMGTrainState, train: MMGTrainConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    moments, adam_steps = {}, {}
    for index, entry in state.optimizer.state_dict()["state"].items():
        name = state.names[index]
        moments[f"{name}.exp_avg"] = entry["exp_avg"].detach().cpu().contiguous()
        moments[f"{name}.exp_avg_sq"] = entry["exp_avg_sq"].detach().cpu().contiguous()
        adam_steps[name] = float(entry["step"])
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.state_dict()["param_groups"]]
    meta = {"step": state.step, "elapsed_s": state.elapsed_s, "trainable_names": state.names,
            "adam_steps": adam_steps, "param_groups": groups, "model_config": state.model.config.to_dict(),
            "train_config": asdict(train)}
    _atomic_save_file(state.trainable_state(), folder / "trainable.safetensors")
    _atomic_save_file(state.trainable_state(ema=True), folder / "ema.safetensors")
    _atomic_save_file(moments, folder / "optimizer.safetensors")
    tmp = folder / ".state.json.tmp"  # written last: its step names a complete set of files
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "state.json")


def load_checkpoint(state: MMGTrainState, folder: Path) -> None:
    meta = json.loads((folder / "state.json").read_text())
    if MMGConfig.from_dict(meta["model_config"]) != state.model.config:
        raise _field_error("model", f"{folder} was trained with another model config; use a new out_dir")
    if meta["trainable_names"] != state.names:
        raise _field_error("trainable", f"{folder} trained other parameters; use its setting or a new out_dir")
    device = state.params[0].device
    trained, ema = load_file(str(folder / "trainable.safetensors")), load_file(str(folder / "ema.safetensors"))
    moments = load_file(str(folder / "optimizer.safetensors"))
    with torch.no_grad():
        for name, param, average in zip(state.names, state.params, state.ema):
            param.copy_(trained[name])
            average.copy_(ema[name])
    optimizer_state = {
        index: {"step": torch.tensor(meta["adam_steps"][name]),
                "exp_avg": moments[f"{name}.exp_avg"].to(device),
                "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(device)}
        for index, name in enumerate(state.names) if name in meta["adam_steps"]
    }
    groups = state.optimizer.state_dict()["param_groups"]
    for group, saved in zip(groups, meta["param_groups"]):
        group.update(saved)
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    state.step, state.elapsed_s = int(meta["step"]), float(meta["elapsed_s"])


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseSchedules:
    """ᾱ (T,) shared by both streams (Auffusion's scaled_linear 0.00085..0.012 = lvdm's "linear": the
    same betas) and VideoCrafter2's signal scale (T,) applied to video only (lvdm ``q_sample`` with
    ``use_scale``: x_t = √ᾱ·scale·x0 + √(1-ᾱ)·ε; Auffusion's ``add_noise`` has no scale)."""

    alphas: torch.Tensor
    video_scale: torch.Tensor

    @classmethod
    def videocrafter2_auffusion(cls) -> "NoiseSchedules":
        return cls(VIDEOCRAFTER2_SCHEDULE.alphas_cumprod(), VIDEOCRAFTER2_SCHEDULE.scale_arr())

    @property
    def num_timesteps(self) -> int:
        return self.alphas.shape[0]

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, video: bool) -> torch.Tensor:
        shape = (-1,) + (1,) * (clean.dim() - 1)
        a = self.alphas.to(clean.device)[t].view(shape)
        signal = a.sqrt() * (self.video_scale.to(clean.device)[t].view(shape) if video else 1.0)
        return signal * clean + (1 - a).sqrt() * noise


def distill_timesteps(kind: str, batch: int, num_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """(batch,) int64. "linear_biased": p(t) ∝ t + 1 (the reference's choice for distillation)."""
    if kind == "uniform":
        return torch.randint(0, num_timesteps, (batch,), generator=generator)
    weights = torch.arange(1, num_timesteps + 1, dtype=torch.float32)
    return torch.multinomial(weights, batch, replacement=True, generator=generator)


@dataclass(frozen=True)
class LossWeights:
    audio: float = 1.0
    video: float = 2.0
    distill_audio: float = 1.0
    distill_video: float = 2.0
    cond_dropout: float = 0.1
    distill_timesteps: str = "linear_biased"

    @classmethod
    def of(cls, train: MMGTrainConfig) -> "LossWeights":
        return cls(train.audio_loss_weight, train.video_loss_weight, train.distill_audio_weight,
                   train.distill_video_weight, train.cond_dropout, train.distill_timesteps)


def drop_prompts(batch: AVBatch, null_video_text: torch.Tensor, p: float, g: torch.Generator) -> AVBatch:
    """Both prompts of a clip → null together with probability p (null audio = zeros, as the reference)."""
    drop = torch.rand(batch.audio_text.shape[0], generator=g) < p
    if not drop.any():
        return batch
    mask = drop.view(-1, 1, 1)
    audio_text = torch.where(mask, torch.zeros_like(batch.audio_text), batch.audio_text)
    video_text = torch.where(mask, null_video_text.to(batch.video_text).expand_as(batch.video_text), batch.video_text)
    return AVBatch(batch.audio, batch.video, audio_text, video_text)


def mmg_loss(model: nn.Module, teachers: Teachers, data: StepData, null_video_text: torch.Tensor,
             schedules: NoiseSchedules, weights: LossWeights, generator: torch.Generator,
             fps: float = MMG_FPS) -> dict[str, torch.Tensor]:
    """Weighted total ("loss") and the four parts (detached). Rows: [paired | audio-distill | video-distill]."""
    paired, audio_only, video_only = (drop_prompts(batch, null_video_text, weights.cond_dropout, generator)
                                      for batch in (data.paired, data.audio_only, data.video_only))
    b, T = paired.audio.shape[0], schedules.num_timesteps
    t = torch.randint(0, T, (b,), generator=generator)
    t_rc = distill_timesteps(weights.distill_timesteps, b, T, generator)
    noise = {name: torch.randn(x.shape, generator=generator).to(x.device) for name, x in (
        ("audio", paired.audio), ("video", paired.video), ("ta", audio_only.audio), ("tv", video_only.video))}
    t, t_rc = t.to(paired.audio.device), t_rc.to(paired.audio.device)
    noisy_audio = schedules.noised(paired.audio, noise["audio"], t, video=False)
    noisy_video = schedules.noised(paired.video, noise["video"], t, video=True)
    noisy_ta = schedules.noised(audio_only.audio, noise["ta"], t_rc, video=False)
    noisy_tv = schedules.noised(video_only.video, noise["tv"], t_rc, video=True)
    # The audio-only clips' sound is heard beside the video-only clips' pictures (the reference's pairing).
    timesteps = torch.cat([t, t_rc, t_rc])
    eps_audio, eps_video = model(
        torch.cat([noisy_audio, noisy_ta, noisy_ta]), timesteps,
        torch.cat([paired.audio_text, audio_only.audio_text, video_only.audio_text]),
        torch.cat([noisy_video, noisy_tv, noisy_tv]), timesteps,
        torch.cat([paired.video_text, audio_only.video_text, video_only.video_text]),
        torch.full((3 * b,), float(fps), device=timesteps.device),
    )
    with torch.no_grad():
        teacher_audio = teachers.audio(noisy_ta, t_rc, encoder_hidden_states=audio_only.audio_text).sample
        fps_b = torch.full((b,), float(fps), device=t_rc.device)
        teacher_video = teachers.video(noisy_tv, t_rc, video_only.video_text, fps_b)
    (eps_a, student_a, _), (eps_v, _, student_v) = eps_audio.split(b), eps_video.split(b)
    parts = {"loss_audio": F.mse_loss(eps_a.float(), noise["audio"]),
             "loss_video": F.mse_loss(eps_v.float(), noise["video"]),
             "distill_audio": F.mse_loss(student_a.float(), teacher_audio.float()),
             "distill_video": F.mse_loss(student_v.float(), teacher_video.float())}
    total = (weights.audio * parts["loss_audio"] + weights.video * parts["loss_video"]
             + weights.distill_audio * parts["distill_audio"] + weights.distill_video * parts["distill_video"])
    return {"loss": total, **{k: v.detach() for k, v in parts.items()}}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a training session needs beside the resumable state."""

    train: MMGTrainConfig
    ctx: Dist
    model: nn.Module  # the coupled model, DDP-wrapped with several processes
    teachers: Teachers
    source: DataSource
    schedules: NoiseSchedules
    device: torch.device
    out: Path


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def train_mmg(train: MMGTrainConfig, source: DataSource | None = None) -> MMGTrainState:
    """Run (or resume) coupler training; returns the final state. Rank 0 writes checkpoints and logs."""
    train.validate()
    ctx = init_distributed()
    if train.threads:
        torch.set_num_threads(train.threads)
    # Zero-initialised projections pass tiny values early on; denormals make CPU arithmetic far slower.
    torch.set_flush_denormal(True)
    config, device = train.model_config(), _device(train.device)
    source = source if source is not None else data_source(train, config)
    model = build_model(train, config)
    teachers = Teachers.of(model, train.trainable)
    model.to(device)
    teachers.audio.to(device), teachers.video.to(device)
    state = new_state(train, model)
    out = Path(train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / CHECKPOINT_NAME / "state.json").exists():
        load_checkpoint(state, out / CHECKPOINT_NAME)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ctx.world_size > 1 else model
    run = Run(train, ctx, wrapped, teachers, source, NoiseSchedules.videocrafter2_auffusion(), device, out)
    _run_loop(run, state, _StopFlag())
    if ctx.world_size > 1:
        dist.barrier()
    return state


def train_step(run: Run, state: MMGTrainState) -> dict[str, float]:
    """One optimiser step at ``state.step``; returns the (process-averaged) losses."""
    train, ctx = run.train, run.ctx
    seed = step_seed(train.seed, state.step, ctx.rank)
    data = run.source.step_data(train.batch_size, torch.Generator().manual_seed(2 * seed + 1))
    data = StepData(*(_to(batch, run.device) for batch in (data.paired, data.audio_only, data.video_only)))
    lr = warmup_rate(train.lr, train.warmup_steps, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    # Eval mode while training: the only train/eval difference is dropout (lvdm's temporal convolutions
    # hard-code 0.1), which would draw from the global RNG (a resumed run would differ) and make the
    # student disagree with its teacher at step 0. The reference keeps it on in the frozen U-Nets.
    run.model.eval()
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=train.mixed_precision == "bf16"):
        losses = mmg_loss(run.model, run.teachers, data, run.source.null_video_text.to(run.device), run.schedules,
                          LossWeights.of(train), torch.Generator().manual_seed(2 * seed), train.fps)
    state.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(list(state.params), train.grad_clip)
    state.optimizer.step()
    update_ema(state.ema, state.params, train.ema_decay, state.step)
    state.step += 1
    values = all_reduce_mean(torch.stack([losses[name].detach().float() for name in LOSS_NAMES]), ctx)
    return {"lr": lr, **dict(zip(LOSS_NAMES, values.tolist()))}


def _to(batch: AVBatch, device: torch.device) -> AVBatch:
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return AVBatch(move(batch.audio), move(batch.video), move(batch.audio_text), move(batch.video_text))


def _run_loop(run: Run, state: MMGTrainState, stop: _StopFlag) -> None:
    train = run.train
    session_start = last_save = time.monotonic()
    elapsed_at_start = state.elapsed_s
    bar = tqdm(total=train.steps, initial=state.step, desc="train mmg", unit="step", disable=not run.ctx.is_main)
    log = MMGLossLog(run.out / "loss.csv", 3 * train.batch_size * run.ctx.world_size)
    while state.step < train.steps and not stop.stop:
        losses = train_step(run, state)
        state.elapsed_s = elapsed_at_start + time.monotonic() - session_start
        log.add(losses)
        bar.update(1)
        if state.step % train.log_every == 0 and run.ctx.is_main:
            bar.set_postfix(loss=f"{log.flush(state.step, state.elapsed_s):.4f}")
        out_of_time = (train.time_limit_minutes is not None
                       and time.monotonic() - session_start > 60 * train.time_limit_minutes)
        if time.monotonic() - last_save > 60 * train.checkpoint_minutes or out_of_time:
            _save(run, state)
            last_save = time.monotonic()
        if out_of_time:
            break
    if log.window and run.ctx.is_main:
        log.flush(state.step, state.elapsed_s)
    _save(run, state)
    bar.close()


class MMGLossLog:
    """Averages the losses since the last log line and appends them to loss.csv."""

    def __init__(self, path: Path, clips_per_step: int):
        self.path, self.clips_per_step = path, clips_per_step
        self.window: list[dict[str, float]] = []
        self.since = time.monotonic()

    def add(self, losses: dict[str, float]) -> None:
        self.window.append(losses)

    def flush(self, step: int, elapsed_s: float) -> float:
        mean = {name: sum(w[name] for w in self.window) / len(self.window) for name in LOSS_NAMES}
        now = time.monotonic()
        row = {"step": step, **{k: f"{v:.6g}" for k, v in mean.items()}, "lr": f"{self.window[-1]['lr']:.3g}",
               "elapsed_s": f"{elapsed_s:.1f}",
               "clips_per_s": f"{len(self.window) * self.clips_per_step / max(1e-9, now - self.since):.3f}"}
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.window.clear()
        self.since = now
        return mean["loss"]


def _save(run: Run, state: MMGTrainState) -> None:
    if not run.ctx.is_main:
        return
    save_checkpoint(state, run.train, run.out / CHECKPOINT_NAME)
    csv_path = run.out / "loss.csv"
    if csv_path.exists():
        with csv_path.open() as handle:
            rows = list(csv.DictReader(handle))
        steps = [float(r["step"]) for r in rows]
        line_plot(run.out / "loss.png", {k: (steps, [float(r[k]) for r in rows]) for k in LOSS_NAMES},
                  title="MMG coupler training loss (mean per log line)")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def is_mmg_config(path: str | os.PathLike) -> bool:
    """Whether a training config file is for this trainer (top-level ``"family": "mmg"``)."""
    data = json.loads(Path(path).read_text())
    return isinstance(data, dict) and data.get("family") == FAMILY


def main_train(path: str | os.PathLike) -> int:
    """``python -m mmg_core train --config FILE`` for an MMG config."""
    state = train_mmg(MMGTrainConfig.from_file(path))
    print(f"stopped at step {state.step} after {state.elapsed_s / 60:.1f} min of training; "
          f"{sum(p.numel() for p in state.params):,} trainable parameters", flush=True)
    return 0
