"""Audio-video file I/O without a system ffmpeg.

MP4 goes through PyAV, whose wheel bundles its own FFmpeg libraries (libx264 and the native AAC
encoder included); WAV goes through soundfile. This module knows nothing about models: it speaks
in media layouts, and the adapter that owns model tensors converts to them.

Layouts at this boundary:
  frames: (F, H, W, 3) RGB, uint8 (float in [0, 1] is accepted on write)
  audio:  (C, T) float32 in [-1, 1], C = 1 (mono) or 2 (stereo)

Both writers go through a temporary file in the destination folder that is renamed over the final
name only once the file is complete, so a crash never leaves a half-written file under that name.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Mapping, Union

import av
import numpy as np
import soundfile
import torch
from einops import rearrange

ArrayLike = Union[np.ndarray, torch.Tensor]
FpsLike = Union[int, float, Fraction]

# A float fps is snapped to the fraction with the smallest denominator (tried in this order) that lies
# within a relative 1e-7 of it: 29.97 becomes 2997/100 and a float of 30000/1001 becomes 30000/1001
# (the two differ by 1e-6), even from float32, while the time base stays small for the MP4 boxes.
_FPS_DENOMINATORS = (1, 10, 100, 1001, 10_000, 100_000)
_FPS_TOLERANCE = 1e-7
_AUDIO_CHANNELS = {1: "mono", 2: "stereo"}
_WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


@dataclass(frozen=True)
class MediaClip:
    """A decoded media file."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    audio: np.ndarray | None  # (C, T) float32, None when the file has no audio stream
    fps: Fraction
    sample_rate: int | None  # None exactly when audio is None
    metadata: dict[str, str]  # container-level tags, e.g. ComfyUI's "prompt" / "workflow" JSON

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Video duration in seconds (frames / fps)."""
        return float(self.num_frames / self.fps)


# ----------------------------------------------------------------------------------------------
# Timing


def _snap(value: Fraction) -> Fraction:
    candidates = [value.limit_denominator(bound) for bound in _FPS_DENOMINATORS]
    return next((c for c in candidates if abs(c - value) <= _FPS_TOLERANCE * value), candidates[-1])


def fps_to_fraction(fps: FpsLike) -> Fraction:
    """An exact rational frame rate; floats are snapped to a small-denominator fraction (see above)."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise ValueError(f"fps must be a number (int, float or Fraction), got {type(fps).__name__}")
    if isinstance(fps, numbers.Rational):
        # Plain Python ints: numpy integers inside a Fraction overflow in limit_denominator().
        exact = Fraction(int(fps.numerator), int(fps.denominator))
    elif math.isfinite(fps):
        exact = Fraction(float(fps))  # Fraction() takes Python floats, not e.g. numpy.float32
    else:
        raise ValueError(f"fps must be a finite number, got {fps}")
    if exact <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rate = _snap(exact)
    if rate == 0:
        raise ValueError(f"fps must be at least 1e-5, got {fps}")
    return rate


def _check_sample_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral):
        raise ValueError(f"sample_rate must be an int (samples per second), got {sample_rate!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    return int(sample_rate)


def audio_length_for_video(num_frames: int, fps: FpsLike, sample_rate: int) -> int:
    """Samples that cover ``num_frames`` frames: round(num_frames / fps * sample_rate).

    Computed in exact rational arithmetic, so 16 frames at 10 fps and 16 kHz is exactly 25600.
    Python's round() rounds an exact half to the even neighbour; every length in this module
    goes through this one function so the rule is the same everywhere.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    rate = fps_to_fraction(fps)
    return round(Fraction(num_frames) * _check_sample_rate(sample_rate) / rate)


def fit_audio_to_video(audio: ArrayLike, num_frames: int, fps: FpsLike, sample_rate: int) -> ArrayLike:
    """Pad with zeros or trim the last axis of ``audio`` (..., T) to exactly cover the video.

    The target length is ``audio_length_for_video(num_frames, fps, sample_rate)``. This is done on
    purpose, not as a silent fix-up: ComfyUI-MMAudio's most reported bug was audio shorter than the
    video whenever fps != 25, because one frame rate was hard-coded. Deriving the length from the
    actual fps and frame count here makes both streams of every file we write equally long.
    Trailing samples are dropped when too long; zeros (silence) are appended when too short.
    Returns the same type (numpy or torch) as given; the input is never modified in place.
    """
    target = audio_length_for_video(num_frames, fps, sample_rate)
    length = audio.shape[-1]
    if length >= target:
        return audio[..., :target]
    if isinstance(audio, torch.Tensor):
        return torch.nn.functional.pad(audio, (0, target - length))
    widths = [(0, 0)] * (audio.ndim - 1) + [(0, target - length)]
    return np.pad(audio, widths)


# ----------------------------------------------------------------------------------------------
# Conversions and validation


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        # float() first: numpy has no bfloat16, and half precision gains nothing here.
        return (x.detach().float() if x.is_floating_point() else x.detach()).cpu().numpy()
    return np.asarray(x)


def video_to_uint8(video: torch.Tensor, layout: str = "auto") -> np.ndarray:
    """(F, C, H, W) or (F, H, W, C) float in [-1, 1] -> (F, H, W, 3) uint8 RGB (values clipped).

    ``layout`` is "fchw", "fhwc" or "auto"; auto reads the layout from where the size-3 axis is
    and refuses to guess when both axis 1 and the last axis are 3.
    """
    if video.ndim != 4:
        raise ValueError(f"video must be 4-D (F, C, H, W) or (F, H, W, C), got shape {tuple(video.shape)}")
    if layout == "auto":
        first, last = video.shape[1] == 3, video.shape[-1] == 3
        if first == last:
            raise ValueError(
                f"cannot tell the channel axis of video shape {tuple(video.shape)}: "
                "pass layout='fchw' or layout='fhwc'"
            )
        layout = "fchw" if first else "fhwc"
    if layout == "fchw":
        video = rearrange(video, "f c h w -> f h w c")
    elif layout != "fhwc":
        raise ValueError(f"layout must be 'auto', 'fchw' or 'fhwc', got {layout!r}")
    if video.shape[-1] != 3:
        raise ValueError(f"video must have 3 (RGB) channels, got shape {tuple(video.shape)} as {layout}")
    pixels = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).cpu().numpy()


def _is_float(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return bool(np.issubdtype(dtype, np.floating))


def _check_frames(frames: ArrayLike) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    if min(frames.shape[:3]) == 0:
        raise ValueError(f"frames must be non-empty (F, H, W all > 0), got shape {tuple(frames.shape)}")
    is_uint8 = frames.dtype == (torch.uint8 if isinstance(frames, torch.Tensor) else np.uint8)
    if not is_uint8 and not _is_float(frames.dtype):
        raise ValueError(f"frames must be uint8, or float in [0, 1], got dtype {frames.dtype}")


def _frame_to_uint8(frame: ArrayLike) -> np.ndarray:
    """One (H, W, 3) frame as uint8; floats in [0, 1] are clipped and rounded."""
    pixels = _to_numpy(frame)
    if pixels.dtype == np.uint8:
        return pixels
    if not np.isfinite(pixels).all():
        raise ValueError("frames contain NaN or inf values, which cannot be encoded: fix them upstream")
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Replicate the last row/column when H or W is odd.

    yuv420p stores chroma at half resolution and libx264 refuses odd sizes. Padding (rather than
    cropping) keeps every source pixel; the file is then at most one pixel taller/wider than the
    input, which the edge replication makes invisible.
    """
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h == 0 and pad_w == 0:
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_audio(audio: ArrayLike) -> np.ndarray:
    """(C, T) float32 numpy with C in {1, 2}, clipped to [-1, 1]; raises on anything else."""
    samples = _to_numpy(audio)
    if samples.ndim != 2 or samples.shape[0] not in _AUDIO_CHANNELS:
        raise ValueError(
            f"audio must be (C, T) with C = 1 (mono) or 2 (stereo), got shape {samples.shape}; "
            "for a 1-D waveform pass audio[None]"
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio must be float in [-1, 1], got dtype {samples.dtype}")
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or inf values, which cannot be encoded: fix them upstream")
    # Out-of-range floats would wrap around in integer PCM, and clipping is what any player does.
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def _metadata_strings(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """Tag values as strings; non-strings become JSON, as ComfyUI's own video saving does."""
    tags = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata keys must be non-empty strings, got {key!r}")
        tags[key] = value if isinstance(value, str) else json.dumps(value)
    return tags


# ----------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the body succeeds."""
    final = Path(path)
    if not final.parent.is_dir():
        raise FileNotFoundError(
            f"output folder does not exist: {final.parent} (create it before writing {final.name})"
        )
    # Leading dot: hidden from ComfyUI's output listing while it is being written.
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    try:
        yield temp
        os.replace(temp, final)  # atomic on POSIX and Windows within one folder
    finally:
        temp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# MP4


def _aac_rate(sample_rate: int) -> int:
    """A rate the AAC encoder takes: ``sample_rate`` itself, else the next higher (or the highest) one."""
    supported = sorted(av.codec.Codec("aac", "w").audio_rates or ())
    if not supported or sample_rate in supported:
        return sample_rate
    higher = [rate for rate in supported if rate >= sample_rate]
    return higher[0] if higher else supported[-1]


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(C, T) float32 resampled with FFmpeg's swresample."""
    layout = _AUDIO_CHANNELS[audio.shape[0]]
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate_out)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
    frame.sample_rate = rate_in
    chunks = [out.to_ndarray() for out in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((audio.shape[0], 0), np.float32)


X264_PARAMS = "mbtree=0"


def _add_video_stream(container, size: tuple[int, int], fps: Fraction, crf: int):
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    # Time base 1/fps makes frame i's timestamp exactly i / fps for any rational rate.
    stream.codec_context.time_base = 1 / fps
    # mbtree off: with it, this x264 build (core 165) made a different bitstream, and so different decoded
    # pixels, for the same frames from one run to the next, even on one thread (its result depends on memory
    # left over from earlier work). The same frames must always make the same file; the cost is a slightly
    # larger file at the same CRF.
    stream.options = {"crf": str(crf), "x264-params": X264_PARAMS}
    return stream


def _add_audio_stream(container, channels: int, sample_rate: int):
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = _AUDIO_CHANNELS[channels]
    return stream


def _video_frame(pixels: ArrayLike, index: int, fps: Fraction) -> av.VideoFrame:
    # One frame converted at a time: a float clip is never held twice in memory.
    rgb = np.ascontiguousarray(_pad_to_even(_frame_to_uint8(pixels)))
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    frame.pts = index
    frame.time_base = 1 / fps
    return frame


def _audio_frame(samples: np.ndarray, start: int, stream) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=stream.layout)
    frame.sample_rate = stream.sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, stream.sample_rate)
    return frame


def _encode(container, video_stream, frames: ArrayLike, fps: Fraction, audio_stream, audio) -> None:
    """Encode frame i together with the audio samples it covers, so the file stays interleaved."""
    for index in range(frames.shape[0]):
        container.mux(video_stream.encode(_video_frame(frames[index], index, fps)))
        if audio_stream is None:
            continue
        start = audio_length_for_video(index, fps, audio_stream.sample_rate)
        stop = audio_length_for_video(index + 1, fps, audio_stream.sample_rate)
        if stop > start:  # PyAV regroups these slices into the encoder's 1024-sample frames
            container.mux(audio_stream.encode(_audio_frame(audio[:, start:stop], start, audio_stream)))
    container.mux(video_stream.encode(None))
    if audio_stream is not None:
        container.mux(audio_stream.encode(None))


def _prepare_audio(
    audio: ArrayLike, num_frames: int, fps: Fraction, sample_rate: int
) -> tuple[np.ndarray, int]:
    """Validated, length-fitted audio at a rate the AAC encoder accepts, and that rate."""
    samples = fit_audio_to_video(_check_audio(audio), num_frames, fps, sample_rate)
    rate = _aac_rate(sample_rate)
    if rate != sample_rate:
        # The native AAC encoder only takes the MPEG-4 rates (8 k ... 96 k); resample explicitly
        # rather than let the encoder fail, then re-fit since resampling may shift the length.
        samples = fit_audio_to_video(_resample(samples, sample_rate, rate), num_frames, fps, rate)
    return samples, rate


def write_mp4(
    path: str | os.PathLike,
    frames: ArrayLike,
    audio: ArrayLike | None,
    *,
    fps: FpsLike,
    sample_rate: int | None,
    metadata: Mapping[str, object] | None = None,
    crf: int = 18,
) -> Path:
    """Write an H.264 (yuv420p) + AAC MP4 with the moov box first (faststart) and return its path.

    frames: (F, H, W, 3) uint8, or float in [0, 1], numpy or torch. Odd H or W is padded by one
        replicated row/column (yuv420p needs even sizes).
    audio: (C, T) float in [-1, 1], C = 1 or 2, or None for a silent file. It is padded/trimmed to
        exactly F / fps seconds (see ``fit_audio_to_video``) and clipped to [-1, 1]. Rates the AAC
        encoder does not support (e.g. 10000) are resampled to the next higher one it does (11025).
    fps: int, float or Fraction; floats are snapped to an exact fraction (``fps_to_fraction``).
    sample_rate: samples per second of ``audio``; ignored when audio is None.
    metadata: container tags, e.g. {"prompt": ..., "workflow": ...} as ComfyUI's SaveVideo writes
        them (JSON strings; non-string values are JSON-encoded here) so that dropping the file
        into ComfyUI rebuilds the graph.
    crf: libx264 constant rate factor, 0-51, lower is better quality (18 is visually lossless).
    """
    rate = fps_to_fraction(fps)
    if not isinstance(frames, torch.Tensor):
        frames = np.asarray(frames)
    _check_frames(frames)
    if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an int in 0..51 (lower = better quality), got {crf!r}")
    crf = int(crf)
    tags = _metadata_strings(metadata)
    samples, audio_rate = None, None
    if audio is not None:
        samples, audio_rate = _prepare_audio(audio, frames.shape[0], rate, _check_sample_rate(sample_rate))
    # use_metadata_tags keeps custom keys such as "workflow"; movie_timescale = audio rate lets the
    # edit lists state the exact sample count instead of rounding durations to milliseconds.
    options = {"movflags": "+faststart+use_metadata_tags"}
    if audio_rate is not None:
        options["movie_timescale"] = str(audio_rate)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    with _atomic_path(path) as temp:
        container = av.open(str(temp), mode="w", format="mp4", options=options)
        try:
            container.metadata.update(tags)
            # Every stream must exist before the first packet is muxed (that writes the header).
            video_stream = _add_video_stream(container, (height, width), rate, crf)
            audio_stream = None
            if samples is not None:
                audio_stream = _add_audio_stream(container, samples.shape[0], audio_rate)
            _encode(container, video_stream, frames, rate, audio_stream, samples)
        finally:
            container.close()
    return Path(path)


def _decode_video(container) -> tuple[np.ndarray, Fraction]:
    stream = container.streams.video[0]
    fps = stream.average_rate or stream.guessed_rate
    if not fps:
        raise ValueError("the video stream has no frame rate")
    frames, count = None, 0
    for frame in container.decode(stream):
        pixels = frame.to_ndarray(format="rgb24")  # (H, W, 3)
        # Filled in place (sized by the declared frame count, doubled if that was short) rather
        # than stacked from a list, so a long clip is not held twice in memory.
        if frames is None:
            frames = np.empty((max(stream.frames, 1),) + pixels.shape, np.uint8)
        elif count == len(frames):
            frames = np.concatenate([frames, np.empty_like(frames)])
        frames[count] = pixels
        count += 1
    if frames is None:
        raise ValueError("the video stream has no frames")
    return frames[:count], Fraction(fps)


def _decode_audio(container) -> tuple[np.ndarray, int] | tuple[None, None]:
    if not container.streams.audio:
        return None, None
    stream = container.streams.audio[0]
    # Normalise whatever the decoder gives (s16, packed, ...) to planar float at the native rate.
    resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.sample_rate)
    chunks = []
    for frame in container.decode(stream):
        chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if not chunks:
        return None, None
    audio = np.concatenate(chunks, axis=1).astype(np.float32)
    if stream.duration is not None and stream.time_base is not None:
        # The decoder drops AAC's leading priming samples but keeps the padding of the last
        # 1024-sample frame; the stream's declared duration says where the real audio ends.
        declared = round(stream.duration * stream.time_base * stream.sample_rate)
        audio = audio[:, :declared]
    return audio, int(stream.sample_rate)


def read_mp4(path: str | os.PathLike) -> MediaClip:
    """Decode a video file (MP4 or anything FFmpeg reads) into frames, audio, fps and tags.

    Only the first video and first audio stream are read. Audio comes back at the file's own
    sample rate as (C, T) float32, trimmed to the length the container declares.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"media file not found: {source}")
    try:
        container = av.open(str(source), mode="r")
    except av.FFmpegError as error:
        raise ValueError(f"cannot read media file {source}: {error}") from error
    try:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        frames, fps = _decode_video(container)
        container.seek(0)
        audio, sample_rate = _decode_audio(container)
        metadata = dict(container.metadata)
    except (av.FFmpegError, ValueError) as error:
        raise ValueError(f"cannot decode media file {source}: {error}") from error
    finally:
        container.close()
    return MediaClip(frames=frames, audio=audio, fps=fps, sample_rate=sample_rate, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# WAV


def write_wav(
    path: str | os.PathLike, audio: ArrayLike, sample_rate: int, *, subtype: str = "PCM_16"
) -> Path:
    """Write (C, T) float audio in [-1, 1] as a WAV file and return its path.

    PCM_16 is the default because every player and editor reads it and 16 bits exceed what the
    generators produce; pass subtype="FLOAT" (or "PCM_24") to keep more precision. Values are
    clipped to [-1, 1] first so integer PCM never wraps around.
    """
    samples = _check_audio(audio)
    rate = _check_sample_rate(sample_rate)
    if subtype not in _WAV_SUBTYPES:
        raise ValueError(f"subtype must be one of {_WAV_SUBTYPES}, got {subtype!r}")
    with _atomic_path(path) as temp:
        # soundfile wants (T, C); the temp name has no .wav suffix, so name the format explicitly.
        soundfile.write(str(temp), rearrange(samples, "c t -> t c"), rate, subtype=subtype, format="WAV")
    return Path(path)
