"""MM-Diffusion coupled U-Net: reference parity, structure of the released config, RS-MMA shifts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmg_core.compat.mmdiffusion import config_from_reference, config_to_reference, from_reference
from mmg_core.models.mmdiffusion import MMDiffusionUNet, rs_window_index
from mmg_core.models.mmdiffusion_config import PRESETS, MMDiffusionConfig

FIXTURES = Path(__file__).parent / "fixtures" / "mmdiffusion"


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((FIXTURES / "config.json").read_text())
    state = load_file(FIXTURES / "state_dict.safetensors")
    io = load_file(FIXTURES / "io.safetensors")
    return meta, state, io


@pytest.fixture(scope="module")
def reference_model(fixture):
    meta, state, _ = fixture
    return from_reference(meta["config"], state)


@pytest.mark.parametrize("case", ["noshift", "scripted"])
def test_parity_with_reference_fixture(fixture, reference_model, case):
    meta, _, io = fixture
    with torch.no_grad():
        video, audio = reference_model(io["video"], io["audio"], io["t"], shifts=meta["cases"][case]["shifts"])
    torch.testing.assert_close(video, io[f"{case}.video_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(audio, io[f"{case}.audio_out"], atol=1e-4, rtol=1e-4)


def test_shifting_windows_follow_reference_call_order(fixture, reference_model):
    meta, _, _ = fixture
    assert reference_model.shifting_windows == meta["windows_in_call_order"]


def test_shift_changes_output(fixture, reference_model):
    """The scripted shifts give a different function than no shift: the shifts are really applied."""
    meta, _, io = fixture
    with torch.no_grad():
        a, _ = reference_model(io["video"], io["audio"], io["t"], shifts=meta["cases"]["noshift"]["shifts"])
        b, _ = reference_model(io["video"], io["audio"], io["t"], shifts=meta["cases"]["scripted"]["shifts"])
    assert (a - b).abs().max() > 1e-3


def test_released_config_has_reference_keys_and_parameter_count():
    with torch.device("meta"):
        model = MMDiffusionUNet(PRESETS["mmdiffusion-released"])
    assert len(model.state_dict()) == 1046
    assert sum(p.numel() for p in model.parameters()) == 133_675_524


def test_reference_config_round_trip():
    config = PRESETS["mmdiffusion-released"]
    assert config_from_reference(config_to_reference(config)) == config
    assert MMDiffusionConfig.from_json(config.to_json()) == config


def test_random_shifts_come_from_the_generator(reference_model, fixture):
    _, _, io = fixture
    draws = [reference_model.resolve_shifts(None, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    other = reference_model.resolve_shifts(None, torch.Generator().manual_seed(8))
    assert other != draws[0]
    for shift, window in zip(draws[0], reference_model.shifting_windows):
        assert 0 <= shift <= 16 - window
    with torch.no_grad():
        out1 = reference_model(io["video"], io["audio"], io["t"], generator=torch.Generator().manual_seed(3))
        out2 = reference_model(io["video"], io["audio"], io["t"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])


def test_shift_source_is_required_and_validated(reference_model, fixture):
    _, _, io = fixture
    with pytest.raises(ValueError, match="generator"):
        reference_model(io["video"], io["audio"], io["t"])
    with pytest.raises(ValueError, match="needs 9 values"):
        reference_model(io["video"], io["audio"], io["t"], shifts=[0, 0])
    with pytest.raises(ValueError, match=r"outside \[0, 8\]"):
        reference_model(io["video"], io["audio"], io["t"], shifts=[0, 0, 9, 0, 0, 0, 0, 0, 0])


def test_window_index_wraps_around():
    index = rs_window_index(num_frames=4, window=2, shift=3, device=torch.device("cpu"))
    assert index.tolist() == [[3, 0], [0, 1], [1, 2], [2, 3]]


def test_batch_one_new_shapes_and_dtypes_on_one_instance(reference_model, fixture):
    """No stale caches: batch 1, then other spatial/audio sizes, then bfloat16, on the same instance."""
    meta, _, io = fixture
    shifts = meta["cases"]["scripted"]["shifts"]
    with torch.no_grad():
        video, audio = reference_model(io["video"][:1], io["audio"][:1], io["t"][:1], shifts=shifts)
        torch.testing.assert_close(video, io["scripted.video_out"][:1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(audio, io["scripted.audio_out"][:1], atol=1e-4, rtol=1e-4)
        big_video = torch.randn(1, 16, 3, 32, 24)
        big_audio = torch.randn(1, 1, 8192)
        out_v, out_a = reference_model(big_video, big_audio, torch.tensor([10]), shifts=shifts)
        assert out_v.shape == big_video.shape and out_a.shape == big_audio.shape
        model_bf16 = MMDiffusionUNet(reference_model.config).to(torch.bfloat16)
        out_v, out_a = model_bf16(io["video"].bfloat16(), io["audio"].bfloat16(), io["t"], shifts=shifts)
        assert out_v.dtype == torch.bfloat16 and torch.isfinite(out_v.float()).all()


def test_bad_inputs_name_what_to_fix(reference_model, fixture):
    _, _, io = fixture
    with pytest.raises(ValueError, match="video must be"):
        reference_model(io["video"][:, :8], io["audio"], io["t"], shifts=[0] * 9)
    with pytest.raises(ValueError, match="divisible"):
        reference_model(io["video"], io["audio"][..., :4000], io["t"], shifts=[0] * 9)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by"):
        MMDiffusionConfig(audio_length=25000)
    with pytest.raises(ValueError, match="one window per entry"):
        MMDiffusionConfig(cross_attention_windows=(1, 4))
    with pytest.raises(ValueError, match="unknown MM-Diffusion reference argument"):
        config_from_reference({"num_channels": 32, "bogus_flag": 1})
    with pytest.raises(ValueError, match="resblock_updown"):
        config_from_reference({"resblock_updown": False})


def test_fresh_model_starts_with_zero_output_and_trains():
    """Zero-initialised output layers (as the reference) still receive gradients."""
    config = PRESETS["tiny"]
    model = MMDiffusionUNet(config)
    video = torch.randn(1, *config.video_shape)
    audio = torch.randn(1, *config.audio_shape)
    out_v, out_a = model(video, audio, torch.tensor([5]), generator=torch.Generator().manual_seed(0))
    assert out_v.abs().max() == 0 and out_a.abs().max() == 0
    (out_v.square().mean() + out_a.square().mean() + out_v.sum() + out_a.sum()).backward()
    assert model.video_out[2].video_conv.weight.grad.abs().sum() > 0
    assert model.audio_out[2].audio_conv.weight.grad.abs().sum() > 0
