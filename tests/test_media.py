"""Media I/O: MP4 (H.264 + AAC through PyAV's bundled FFmpeg) and WAV (soundfile)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch

from mmg_core.media import (
    MediaClip,
    audio_length_for_video,
    fit_audio_to_video,
    fps_to_fraction,
    read_mp4,
    video_to_uint8,
    write_mp4,
    write_wav,
)

# MM-Diffusion's clip: 16 frames of 64x64 at 10 fps with 25600 samples (1.6 s) of 16 kHz mono audio.
FRAMES, SIZE, FPS, RATE, SAMPLES = 16, 64, 10, 16000, 25600
PROMPT = {"1": {"class_type": "MMGSampler", "inputs": {"seed": 7}}}
WORKFLOW = {"last_node_id": 1, "nodes": [{"id": 1, "type": "MMGSampler"}], "links": [], "version": 0.4}


def smooth_frames(count: int = FRAMES, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """(F, H, W, 3) uint8: smooth colour waves (H.264-friendly) whose brightness rises with the frame."""
    t = np.arange(count)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    wave = 60 * np.sin(x / 9 + c) * np.cos(y / 7 + t / 5)
    return np.clip(40 + 10 * t + wave + 60, 0, 255).astype(np.uint8)


def sine(hz: float, samples: int = SAMPLES, rate: int = RATE, channels: int = 1) -> np.ndarray:
    wave = 0.5 * np.sin(2 * np.pi * hz * np.arange(samples) / rate).astype(np.float32)
    return np.stack([wave * (1 - 0.3 * c) for c in range(channels)])


@pytest.fixture
def mmdiffusion_mp4(tmp_path):
    path = tmp_path / "clip.mp4"
    metadata = {"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW)}
    write_mp4(path, smooth_frames(), sine(440), fps=FPS, sample_rate=RATE, metadata=metadata)
    return path


def stream_seconds(stream) -> float:
    return float(stream.duration * stream.time_base)


# ------------------------------------------------------------------------------------------------
# Container structure


def test_mmdiffusion_clip_has_one_h264_and_one_aac_stream_of_equal_duration(mmdiffusion_mp4):
    with av.open(str(mmdiffusion_mp4)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (video.width, video.height) == (SIZE, SIZE)
        assert video.frames == FRAMES
        assert audio.codec_context.name == "aac"
        assert audio.sample_rate == RATE and audio.channels == 1
        one_frame = 1 / FPS
        assert abs(stream_seconds(video) - stream_seconds(audio)) < one_frame
        assert abs(stream_seconds(video) - FRAMES / FPS) < 1e-9
        assert abs(stream_seconds(audio) - SAMPLES / RATE) < 1e-9


def test_moov_box_precedes_mdat_for_faststart(mmdiffusion_mp4):
    data = mmdiffusion_mp4.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_metadata_round_trips_through_pyav_and_read_mp4(mmdiffusion_mp4):
    with av.open(str(mmdiffusion_mp4)) as container:
        tags = dict(container.metadata)
    assert json.loads(tags["prompt"]) == PROMPT
    assert json.loads(tags["workflow"]) == WORKFLOW
    clip = read_mp4(mmdiffusion_mp4)
    assert json.loads(clip.metadata["workflow"]) == WORKFLOW


def test_non_string_metadata_is_json_encoded_like_comfyui(tmp_path):
    path = write_mp4(
        tmp_path / "a.mp4", smooth_frames(2), None, fps=FPS, sample_rate=None,
        metadata={"prompt": PROMPT, "comment": "a quiet lake"},
    )
    tags = read_mp4(path).metadata
    assert json.loads(tags["prompt"]) == PROMPT
    assert tags["comment"] == "a quiet lake"


def _boxes(data: bytes, start: int, end: int):
    """(type, content_start, box_end) of the ISO-BMFF boxes laid end to end in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        if size < 8:
            return
        yield kind, start + 8, start + size
        start += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    found = [(s, e) for k, s, e in _boxes(data, start, end) if k == kind]
    assert found, f"no {kind!r} box"
    return found[0]


def _comfyui_frontend_tags(data: bytes) -> dict[str, object]:
    """What ComfyUI's frontend (src/scripts/metadata/isobmff.ts) reads when an MP4 is dropped on it:
    moov/udta/meta with a 'keys' box (1-based key names) and an 'ilst' of data boxes; like the
    frontend, only "prompt" and "workflow" are parsed as JSON."""
    moov = _child(data, 0, len(data), b"moov")
    udta = _child(data, *moov, b"udta")
    meta_start, meta_end = _child(data, *udta, b"meta")
    meta_start += 4  # version and flags
    keys_start, keys_end = _child(data, meta_start, meta_end, b"keys")
    count = struct.unpack(">I", data[keys_start + 4:keys_start + 8])[0]
    names = {}
    for index, (_, name_start, name_end) in enumerate(_boxes(data, keys_start + 8, keys_end), start=1):
        names[index] = data[name_start:name_end].decode()  # box "type" is the namespace, mdta
    assert len(names) == count
    tags = {}
    for kind, item_start, item_end in _boxes(data, *_child(data, meta_start, meta_end, b"ilst")):
        value_start, value_end = _child(data, item_start, item_end, b"data")
        name = names[struct.unpack(">I", kind)[0]]  # the item's box "type" is its 1-based key index
        value = data[value_start + 8:value_end].decode()  # after type indicator and locale
        tags[name] = json.loads(value) if name in ("prompt", "workflow") else value
    return tags


def test_comfyui_frontend_finds_prompt_and_workflow(mmdiffusion_mp4):
    tags = _comfyui_frontend_tags(mmdiffusion_mp4.read_bytes())
    assert tags["prompt"] == PROMPT
    assert tags["workflow"] == WORKFLOW


# ------------------------------------------------------------------------------------------------
# Decoding back


def test_read_mp4_returns_the_written_clip(mmdiffusion_mp4):
    clip = read_mp4(mmdiffusion_mp4)
    assert isinstance(clip, MediaClip)
    assert clip.frames.shape == (FRAMES, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == Fraction(FPS) and clip.sample_rate == RATE
    assert clip.audio.shape == (1, SAMPLES) and clip.audio.dtype == np.float32
    assert clip.duration == pytest.approx(1.6)
    # Lossy codecs: close, and in the right order (brightness rises by 10 per frame).
    expected = smooth_frames()
    assert np.abs(clip.frames.astype(int) - expected).mean() < 6
    assert np.all(np.diff(clip.frames.reshape(FRAMES, -1).mean(axis=1)) > 5)
    reference = sine(440)
    snr = 10 * np.log10((reference ** 2).mean() / ((clip.audio - reference) ** 2).mean())
    assert snr > 20


@pytest.mark.parametrize("fps", [10, 12.5, 24, 29.97, Fraction(30000, 1001)])
def test_frame_timestamps_are_exact_and_streams_end_together(tmp_path, fps):
    count, rate = 7, 16000
    frames, audio = smooth_frames(count, 32, 32), sine(300, 500, rate)
    path = write_mp4(tmp_path / "a.mp4", frames, audio, fps=fps, sample_rate=rate)
    exact = fps_to_fraction(fps)
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        times = [frame.pts * video.time_base for frame in container.decode(video)]
        assert times == [Fraction(i) / exact for i in range(count)]
        assert abs(stream_seconds(video) - stream_seconds(audio)) < 1 / float(exact)
    clip = read_mp4(path)
    assert clip.fps == exact
    assert clip.audio.shape == (1, audio_length_for_video(count, fps, rate))


def test_stereo_audio_and_silent_video(tmp_path):
    audio = sine(500, 6400, channels=2)
    stereo = write_mp4(tmp_path / "s.mp4", smooth_frames(4), audio, fps=10, sample_rate=RATE)
    assert read_mp4(stereo).audio.shape == (2, 6400)
    silent = read_mp4(write_mp4(tmp_path / "v.mp4", smooth_frames(4), None, fps=10, sample_rate=None))
    assert silent.audio is None and silent.sample_rate is None and silent.frames.shape[0] == 4


def test_unsupported_aac_rate_is_resampled_not_rejected(tmp_path):
    # 10 kHz is not an MPEG-4 AAC rate; the next one up, 11025 Hz, is used.
    path = write_mp4(tmp_path / "a.mp4", smooth_frames(8), sine(440, 8000, 10000), fps=10, sample_rate=10000)
    clip = read_mp4(path)
    assert clip.sample_rate == 11025
    assert clip.audio.shape == (1, audio_length_for_video(8, 10, 11025))
    spectrum = np.abs(np.fft.rfft(clip.audio[0]))
    peak_hz = np.argmax(spectrum) * clip.sample_rate / clip.audio.shape[1]
    assert abs(peak_hz - 440) < 2


# ------------------------------------------------------------------------------------------------
# Audio length


@pytest.mark.parametrize(
    "fps, target",
    [(10, 25600), (12.5, 20480), (24, 10667), (29.97, 8542), (Fraction(30000, 1001), 8542)],
)
def test_fit_audio_to_video_pads_and_trims_to_exact_length(fps, target):
    # 16 frames at 16 kHz: 16 / fps * 16000 samples, rounded (24 fps: 10666.67, 29.97: 8541.87).
    assert audio_length_for_video(16, fps, 16000) == target
    short = np.full((2, target - 123), 0.25, np.float32)
    padded = fit_audio_to_video(short, 16, fps, 16000)
    assert padded.shape == (2, target)
    assert np.all(padded[:, : target - 123] == 0.25) and np.all(padded[:, target - 123:] == 0)
    long = torch.arange(target + 50, dtype=torch.float32).expand(1, 2, -1)
    trimmed = fit_audio_to_video(long, 16, fps, 16000)
    assert isinstance(trimmed, torch.Tensor) and trimmed.shape == (1, 2, target)
    assert torch.equal(trimmed, long[..., :target])
    assert long.shape[-1] == target + 50  # the input is left alone


@pytest.mark.parametrize(
    "fps, exact",
    [
        (29.97, Fraction(2997, 100)),
        (np.float32(29.97), Fraction(2997, 100)),
        (30000 / 1001, Fraction(30000, 1001)),
        (np.float32(30000 / 1001), Fraction(30000, 1001)),
        (12.5, Fraction(25, 2)),
        (np.int64(24), Fraction(24)),
        (Fraction(24000, 1001), Fraction(24000, 1001)),
    ],
)
def test_fps_floats_snap_to_the_intended_fraction(fps, exact):
    assert fps_to_fraction(fps) == exact


def test_audio_length_rounds_exact_halves_to_even():
    # 1 frame at 2 fps and 11025 Hz is 5512.5 samples; Python's round() gives 5512.
    assert audio_length_for_video(1, 2, 11025) == 5512
    assert audio_length_for_video(3, 2, 11025) == 16538  # 16537.5 -> even neighbour


def test_write_mp4_fits_short_audio_to_the_video(tmp_path):
    # The MMAudio bug: audio shorter than the video at fps != 25. Here 1000 samples for 12 frames at 24 fps.
    audio = sine(440, 1000)
    clip = read_mp4(write_mp4(tmp_path / "a.mp4", smooth_frames(12), audio, fps=24, sample_rate=RATE))
    assert clip.audio.shape == (1, 8000)
    assert np.abs(clip.audio[0, 2000:]).max() < 0.02  # the padding is silence


# ------------------------------------------------------------------------------------------------
# Frames in other forms


def test_odd_sizes_are_padded_by_edge_replication(tmp_path):
    frames = smooth_frames(3, 33, 31)
    clip = read_mp4(write_mp4(tmp_path / "odd.mp4", frames, None, fps=10, sample_rate=None, crf=0))
    assert clip.frames.shape == (3, 34, 32, 3)
    decoded = clip.frames.astype(int)
    assert np.abs(decoded[:, :33, :31] - frames).mean() < 6
    assert np.abs(decoded[:, 33] - decoded[:, 32]).mean() < 3  # replicated row
    assert np.abs(decoded[:, :, 31] - decoded[:, :, 30]).mean() < 3  # replicated column


def _h264_payload(path) -> bytes:
    with av.open(str(path)) as container:
        return b"".join(bytes(packet) for packet in container.demux(container.streams.video[0]))


def test_same_frames_always_make_the_same_file(tmp_path):
    """Encoding is deterministic whatever memory earlier work left behind (x264's mbtree was not)."""
    from repo_scripts import load_script

    churn_heap = load_script("encoder_determinism").churn_heap
    frames = smooth_frames(16)
    rng = np.random.default_rng(0)
    payloads = set()
    for index in range(6):
        # Random bytes left in freed heap memory, as unrelated work between two runs would leave them: with
        # mbtree on, six such encodes gave more than one bitstream in each of 3 tries out of 3.
        churn_heap(rng)
        payloads.add(_h264_payload(write_mp4(tmp_path / f"{index}.mp4", frames, None, fps=10, sample_rate=None)))
    assert len(payloads) == 1


def test_float_tensor_frames_match_uint8_frames(tmp_path):
    frames = smooth_frames(3)
    as_float = torch.from_numpy(frames).float() / 255
    from_uint8 = read_mp4(write_mp4(tmp_path / "u.mp4", frames, None, fps=10, sample_rate=None)).frames
    from_float = read_mp4(write_mp4(tmp_path / "f.mp4", as_float, None, fps=10, sample_rate=None)).frames
    assert np.array_equal(from_uint8, from_float)


def test_video_to_uint8_maps_range_and_layouts():
    video = torch.tensor([-1.5, -1.0, 0.0, 1.0]).reshape(1, 1, 1, 4).expand(2, 3, 5, 4)  # (F, C, H, W)
    fhwc = video_to_uint8(video)
    assert fhwc.shape == (2, 5, 4, 3) and fhwc.dtype == np.uint8
    assert fhwc[0, 0, :, 0].tolist() == [0, 0, 128, 255]
    assert np.array_equal(video_to_uint8(video.permute(0, 2, 3, 1)), fhwc)
    with pytest.raises(ValueError, match="layout='fchw'"):
        video_to_uint8(torch.zeros(2, 3, 5, 3))


# ------------------------------------------------------------------------------------------------
# WAV


def test_wav_round_trip_pcm16_and_float(tmp_path):
    audio = sine(440, 4000, channels=2)
    audio[0, :10] = 1.7  # out of range must clip, not wrap around
    pcm = write_wav(tmp_path / "a.wav", audio, RATE)
    data, rate = soundfile.read(pcm, dtype="float32", always_2d=True)
    assert rate == RATE and soundfile.info(pcm).subtype == "PCM_16"
    assert data.shape == (4000, 2)
    assert np.abs(data.T - np.clip(audio, -1, 1)).max() <= 1 / 32768 + 1e-6
    exact = write_wav(tmp_path / "f.wav", audio, RATE, subtype="FLOAT")
    data, _ = soundfile.read(exact, dtype="float32", always_2d=True)
    assert np.array_equal(data.T, np.clip(audio, -1, 1))


# ------------------------------------------------------------------------------------------------
# Errors and atomic writes


def test_read_mp4_of_missing_or_garbage_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        read_mp4(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_mp4(garbage)


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    write_mp4(tmp_path / "a.mp4", smooth_frames(2), sine(440, 3200), fps=10, sample_rate=RATE)
    write_wav(tmp_path / "a.wav", sine(440, 3200), RATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.wav"]


def test_failed_write_keeps_old_file_and_leaves_no_temp_file(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", smooth_frames(2), None, fps=10, sample_rate=None)
    before = path.read_bytes()
    frames = torch.rand(4, 16, 16, 3)
    frames[3] = float("nan")  # found only after three frames have been encoded into the temp file
    with pytest.raises(ValueError, match="NaN"):
        write_mp4(path, frames, None, fps=10, sample_rate=None)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=np.zeros((4, 8, 8), np.uint8)), r"\(F, H, W, 3\)"),
        (dict(frames=np.zeros((0, 8, 8, 3), np.uint8)), "non-empty"),
        (dict(frames=np.zeros((2, 8, 8, 3), np.int32)), "uint8"),
        (dict(fps=0), "fps must be > 0"),
        (dict(fps=-12.5), "fps must be > 0"),
        (dict(fps=float("nan")), "finite"),
        (dict(sample_rate=0), "sample_rate must be > 0"),
        (dict(sample_rate=16000.0), "sample_rate must be an int"),
        (dict(audio=np.zeros(3200, np.float32)), r"audio\[None\]"),
        (dict(audio=np.zeros((3, 3200), np.float32)), "mono"),
        (dict(audio=np.zeros((1, 3200), np.int16)), "float"),
        (dict(crf=60), "crf"),
        (dict(metadata={"": "x"}), "metadata keys"),
    ],
)
def test_write_mp4_rejects_bad_input_with_a_fix(tmp_path, kwargs, message):
    args = dict(frames=smooth_frames(2, 8, 8), audio=sine(440, 3200), fps=10, sample_rate=RATE)
    args.update(kwargs)
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match=message):
        write_mp4(path, args.pop("frames"), args.pop("audio"), **args)
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        write_wav(tmp_path / "missing" / "a.wav", sine(440, 100), RATE)


# ------------------------------------------------------------------------------------------------
# Independent check with the ffprobe tool (CI installs Debian's ffmpeg for it)


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed (apt-get install ffmpeg)")
def test_ffprobe_sees_h264_aac_of_equal_duration_and_the_tags(mmdiffusion_mp4):
    command = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(mmdiffusion_mp4)]
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    streams = {s["codec_type"]: s for s in report["streams"]}
    assert len(report["streams"]) == 2
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac" and int(streams["audio"]["sample_rate"]) == RATE
    video_s, audio_s = float(streams["video"]["duration"]), float(streams["audio"]["duration"])
    assert abs(video_s - audio_s) < 1 / FPS and abs(video_s - 1.6) < 1e-3
    assert json.loads(report["format"]["tags"]["workflow"]) == WORKFLOW


def test_encoder_determinism_script_finds_one_bitstream_for_the_pack_setting(capsys):
    from repo_scripts import load_script

    module = load_script("encoder_determinism")
    assert module.wave_clip().shape == (16, 64, 64, 3)
    assert module.main(["--encodes", "4", "--params", "pack"]) == 0
    assert "pack (mbtree=0): 1 distinct bitstream(s)" in capsys.readouterr().out
