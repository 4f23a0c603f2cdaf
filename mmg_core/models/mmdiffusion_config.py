"""Configuration of the MM-Diffusion coupled U-Net (Ruan et al., CVPR 2023).

Field names follow the reference constructor where one exists, so a released checkpoint's
settings map one to one; derived sizes are properties, never magic numbers elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The video branch resamples space by 2 per level; the audio branch by `audio_resample_factor` (4 in
# the reference).
VIDEO_RESAMPLE_FACTOR = 2
# Reference: audio conv dilation is 2 ** (block counter mod 10).
MAX_DILATION_EXPONENT = 10
AUDIO_CODECS = ("waveform", "stft", "stft_mag")


@dataclass(frozen=True)
class MMDiffusionConfig:
    # Data shapes (reference `video_size` = [F, C, H, W], `audio_size` = [C, L]).
    video_frames: int = 16
    video_channels: int = 3
    video_height: int = 64
    video_width: int = 64
    audio_channels: int = 1
    audio_length: int = 25600
    fps: float = 10.0
    sample_rate: int = 16000
    # Network (reference names).
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    num_heads: int = 4
    num_head_channels: int = 64
    cross_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    cross_attention_windows: tuple[int, ...] = (1, 4, 8)
    cross_attention_shift: bool = True
    # Not in the reference: without random shifts, centre each window on its own frame (R = -(S-1)//2)
    # instead of starting it there, so frame i hears audio around i.
    cross_attention_centered: bool = False
    video_attention_resolutions: tuple[int, ...] = (2, 4, 8)
    audio_attention_resolutions: tuple[int, ...] = (-1,)
    use_scale_shift_norm: bool = True
    learn_sigma: bool = False
    dropout: float = 0.0
    audio_resample_factor: int = 4
    # None follows the reference rule (a full-window middle RS-MMA block only for windows 1,4,8).
    middle_cross_attention: bool | None = None
    # Diffusion the weights were trained with.
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    # Analytic codec between media and the space the U-Net denoises (defaults = the reference: raw
    # pixels and raw waveform). video_patch > 1 folds p×p pixel blocks into channels; audio_codec
    # "stft" denoises a magnitude-compressed complex STFT (|X|^c · e^{iφ} · scale, real and imaginary
    # parts as channels, one frame per hop) that inverts exactly, with no vocoder; "stft_mag" denoises
    # only the compressed magnitude, mapped affinely to about [-1, 1] (|X|^c · scale − 1), which is far
    # easier to learn for a small network (a steady tone is a constant row, not a rotating phasor), and
    # recovers a consistent phase with Griffin-Lim when decoding.
    video_patch: int = 1
    audio_codec: str = "waveform"
    stft_n_fft: int = 400
    stft_hop: int = 100
    stft_compression: float = 0.3
    stft_scale: float = 2.0
    # "stft_mag" only: phase is not modelled; decoding recovers it with this many Griffin-Lim iterations.
    griffin_lim_iters: int = 48
    # Text conditioning (None = unconditional, as the released checkpoints): cross-attention from each
    # branch to its own prompt's token states at these downsampling rates and in the middle block,
    # plus the pooled prompt embeddings added to the timestep embedding.
    text_dim: int | None = None
    text_attention_resolutions: tuple[int, ...] = ()
    text_heads: int = 4
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    # ----- derived sizes -------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(F, C, H, W) of one sample."""
        return (self.video_frames, self.video_channels, self.video_height, self.video_width)

    @property
    def audio_shape(self) -> tuple[int, int]:
        """(C, L) of one sample."""
        return (self.audio_channels, self.audio_length)

    @property
    def latent_video_shape(self) -> tuple[int, int, int, int]:
        """(F, C, H, W) the U-Net sees: pixels with p×p blocks folded into channels."""
        p = self.video_patch
        return (self.video_frames, self.video_channels * p * p, self.video_height // p, self.video_width // p)

    @property
    def latent_audio_shape(self) -> tuple[int, int]:
        """(C, L) the U-Net sees: the waveform, or STFT (real+imag per bin) frames, one per hop."""
        if self.audio_codec in ("stft", "stft_mag"):
            bins = self.stft_n_fft // 2 + 1
            parts = 2 if self.audio_codec == "stft" else 1  # real+imag, or magnitude alone
            return (parts * bins * self.audio_channels, self.audio_length // self.stft_hop)
        return (self.audio_channels, self.audio_length)

    @property
    def duration_s(self) -> float:
        return self.video_frames / self.fps

    @property
    def video_out_channels(self) -> int:
        return self.latent_video_shape[1] * (2 if self.learn_sigma else 1)

    @property
    def audio_out_channels(self) -> int:
        return self.latent_audio_shape[0] * (2 if self.learn_sigma else 1)

    @property
    def has_middle_cross_attention(self) -> bool:
        if self.middle_cross_attention is not None:
            return self.middle_cross_attention
        # Reference quirk: the full-window middle RS-MMA block exists only for windows [1, 4, 8].
        return tuple(self.cross_attention_windows) == (1, 4, 8)

    @property
    def text_conditioned(self) -> bool:
        return self.text_dim is not None

    @property
    def audio_divisor(self) -> int:
        """Audio lengths must be multiples of this: every frame owns whole segments at every level."""
        return self.audio_resample_factor ** (self.num_levels - 1) * self.video_frames

    def shifting_windows_in_call_order(self) -> list[int]:
        """Window S of every shifting RS-MMA block, input blocks first, then output blocks."""
        if not self.cross_attention_shift:
            return []
        windows: list[int] = []
        ds = 1
        for level in range(self.num_levels):
            windows += [self._window_at(ds)] * self.num_res_blocks if ds in self.cross_attention_resolutions else []
            ds *= VIDEO_RESAMPLE_FACTOR if level != self.num_levels - 1 else 1
        for level in reversed(range(self.num_levels)):
            windows += [self._window_at(ds)] * (self.num_res_blocks + 1) if ds in self.cross_attention_resolutions else []
            ds //= VIDEO_RESAMPLE_FACTOR if level else 1
        return windows

    def _window_at(self, ds: int) -> int:
        return self.cross_attention_windows[self.cross_attention_resolutions.index(ds)]

    # ----- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        if len(self.cross_attention_windows) != len(self.cross_attention_resolutions):
            raise ValueError(
                f"cross_attention_windows {self.cross_attention_windows} needs one window per entry of "
                f"cross_attention_resolutions {self.cross_attention_resolutions}"
            )
        for window in self.cross_attention_windows:
            if not 1 <= window <= self.video_frames:
                raise ValueError(f"cross-attention window {window} must be between 1 and video_frames={self.video_frames}")
        self._validate_codec()
        spatial_div = VIDEO_RESAMPLE_FACTOR ** (self.num_levels - 1) * self.video_patch
        if self.video_height % spatial_div or self.video_width % spatial_div:
            raise ValueError(
                f"video size {self.video_height}x{self.video_width} must be divisible by {spatial_div} "
                f"for {self.num_levels} U-Net levels with video_patch {self.video_patch}"
            )
        if self.audio_resample_factor < 1:
            raise ValueError(f"audio_resample_factor must be >= 1, got {self.audio_resample_factor}")
        if self.latent_audio_shape[1] % self.audio_divisor:
            raise ValueError(
                f"audio length in the model ({self.latent_audio_shape[1]}) must be divisible by {self.audio_divisor} "
                f"(audio_resample_factor^(levels-1) x video_frames) so every frame owns a whole audio "
                f"segment at every level"
            )
        if self.text_dim is not None and self.text_dim <= 0:
            raise ValueError(f"text_dim must be positive or None, got {self.text_dim}")
        for width in self.channel_widths:
            if width % 32:
                raise ValueError(f"channel width {width} must be a multiple of 32 (GroupNorm with 32 groups)")
            if self.num_head_channels != -1 and width % self.num_head_channels:
                raise ValueError(f"channel width {width} is not divisible by num_head_channels={self.num_head_channels}")
            if width % self.num_heads:
                raise ValueError(f"channel width {width} is not divisible by num_heads={self.num_heads}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {self.prediction_type!r}")
        if self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError(f"fps ({self.fps}) and sample_rate ({self.sample_rate}) must be positive")

    def _validate_codec(self) -> None:
        if self.video_patch < 1:
            raise ValueError(f"video_patch must be >= 1, got {self.video_patch}")
        if self.audio_codec not in AUDIO_CODECS:
            raise ValueError(f"audio_codec must be one of {AUDIO_CODECS}, got {self.audio_codec!r}")
        if self.griffin_lim_iters < 1:
            raise ValueError(f"griffin_lim_iters must be >= 1, got {self.griffin_lim_iters}")
        if self.audio_codec != "waveform":
            if self.audio_length % self.stft_hop:
                raise ValueError(f"audio_length {self.audio_length} must be a multiple of stft_hop {self.stft_hop}")
            if self.stft_n_fft < self.stft_hop or (self.stft_n_fft - self.stft_hop) % 2:
                raise ValueError("stft_n_fft must be >= stft_hop and differ from it by an even number of samples")

    @property
    def channel_widths(self) -> list[int]:
        return [int(mult * self.model_channels) for mult in self.channel_mult]

    # ----- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MMDiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MM-Diffusion config field(s) {unknown}; known fields: {sorted(known)}")
        tuple_fields = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        values = {k: tuple(v) if k in tuple_fields else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "MMDiffusionConfig":
        return cls.from_dict(json.loads(text))


# The pack's own default text-to-audio-video model (trained on the synthetic world, see mmg_core.world):
# 8×8 pixel patches (8×8 tokens per frame: a 2-core CPU trains it ~2.5x faster than 4×4 patches, and the
# world's objects span several patches) and the compressed STFT magnitude for audio (16 STFT frames per
# video frame; phase by Griffin-Lim), with exact, unshifted windows centred on each frame so sound and
# picture align frame by frame. Round-tripping the world's own clips through this codec scores 100 % on
# every eval-world criterion, so the codec costs no accuracy.
# x0 ("sample") prediction: the network's last layer maps 64 features to 192 patch / 201 STFT channels
# per position, so it cannot reproduce per-channel noise. Epsilon and v targets both contain the noise
# (v ≈ epsilon at low noise), and such a network leaves most of it in the clip (seen: run 2's first 700
# steps, v-parameterised, sampled as noise). The clean clip is low-dimensional, so predicting it is
# representable; the loss is still the joint epsilon loss, weighted Min-SNR (training config).
WORLD_MODEL = MMDiffusionConfig(
    prediction_type="sample",
    video_patch=8,
    audio_codec="stft_mag",
    stft_scale=2 / 3,  # hiss floor → about -0.8, a loud tone's peak → about +1
    model_channels=64,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    num_heads=4,
    num_head_channels=32,
    cross_attention_resolutions=(1, 2, 4),
    cross_attention_windows=(1, 3, 5),
    cross_attention_shift=False,
    cross_attention_centered=True,
    video_attention_resolutions=(2, 4),
    audio_attention_resolutions=(2, 4),
    middle_cross_attention=True,
    dropout=0.0,
    text_dim=384,
    text_attention_resolutions=(2, 4),
    text_heads=4,
)

# Presets: the released Landscape / AIST++ configuration, and tiny ones for tests.
PRESETS: dict[str, MMDiffusionConfig] = {
    "mmdiffusion-released": MMDiffusionConfig(),
    "world": WORLD_MODEL,
    "tiny": MMDiffusionConfig(
        video_height=16,
        video_width=16,
        audio_length=4096,
        model_channels=32,
        num_res_blocks=1,
        num_head_channels=32,
    ),
}
