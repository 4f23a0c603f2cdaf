"""mmg_core's MMG front-end pieces: Auffusion's condition adapter and prompt padding, clip sizes, the VAE
weights inside the released files, modality guidance and the sampler wrapper (tiny configs, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmg_core.auffusion_text import (
    AdapterConfig,
    AuffusionTextError,
    ConditionAdapter,
    audio_context,
    find_adapter_folder,
    load_condition_adapter,
)
from mmg_core.mmg_loading import MMGLoadError
from mmg_core.mmg_pipeline import (
    ClipSize,
    MMGSettings,
    PrecisionCast,
    audio_latents_for_vae,
    frames_per_second,
    generate_mmg,
    read_auffusion_vae,
    read_videocrafter_vae,
    video_config_beside,
    video_latents_for_vae,
)
from mmg_core.mmg_sampling import MMGConditions, guided_eps
from mmg_core.models.mmg_coupled import MMGCoupledUNet
from mmg_core.vocoder import WeightFileError
from mmg_tiny import tiny_conditions, tiny_coupled_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_coupled_model()


# ----- Auffusion's adapter and prompt padding ----------------------------------------------------
def write_adapter_folder(root: Path, state: dict, config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "condition_config.json").write_text(json.dumps([{"text_encoder_name": "text_encoder_0",
                                                             "condition_adapter_name": "condition_adapter_0"}]))
    folder = root / "condition_adapter_0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or {"condition_dim": 12, "cross_attention_dim": 8}))
    torch.save(state, folder / "condition_adapter.pt")
    return folder


def test_adapter_loads_from_an_auffusion_folder(tmp_path):
    reference = ConditionAdapter(AdapterConfig(12, 8))
    write_adapter_folder(tmp_path, reference.state_dict())
    adapter = load_condition_adapter(find_adapter_folder(tmp_path))
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(adapter(x), reference(x))
    assert find_adapter_folder(tmp_path / "condition_adapter_0") is None  # no condition_config.json: no adapter


def test_adapter_errors_name_the_problem(tmp_path):
    write_adapter_folder(tmp_path / "a", ConditionAdapter(AdapterConfig(12, 8)).state_dict(),
                         {"condition_dim": 768, "cross_attention_dim": 8})
    with pytest.raises(AuffusionTextError, match="condition_dim=768 but the weights have 12"):
        load_condition_adapter(tmp_path / "a" / "condition_adapter_0")
    write_adapter_folder(tmp_path / "b", {"proj.weight": torch.zeros(8, 12), "payload": object()})
    with pytest.raises(WeightFileError, match="could not be read safely"):
        load_condition_adapter(tmp_path / "b" / "condition_adapter_0")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "condition_config.json").write_text(json.dumps([{}, {}]))
    with pytest.raises(AuffusionTextError, match="2 condition encoders"):
        find_adapter_folder(tmp_path / "c")


def test_audio_context_pads_like_auffusion():
    """Auffusion encodes the unpadded prompt, zero-pads to 77 rows, then applies the adapter: rows
    after the prompt's end token become adapter(0) = LayerNorm(proj.bias)."""
    torch.manual_seed(0)
    adapter = ConditionAdapter(AdapterConfig(12, 8))
    states = torch.randn(1, 77, 12)
    out = audio_context(states, adapter, token_count=5)
    with torch.no_grad():
        torch.testing.assert_close(out[:, :5], adapter(states[:, :5]))
        torch.testing.assert_close(out[:, 5:], adapter(torch.zeros(1, 72, 12)))
        torch.testing.assert_close(audio_context(states, adapter), adapter(states))  # no count: every row kept
    short = audio_context(states[:, :5], adapter)  # fewer rows than 77: zero rows appended, as the reference
    torch.testing.assert_close(short, out)
    assert audio_context(torch.randn(1, 154, 12), adapter).shape == (1, 77, 8)  # long prompts are cut at 77
    assert audio_context(states, None, 5)[:, 5:].abs().sum() == 0
    with pytest.raises(ValueError, match="CLIP-L"):
        audio_context(torch.randn(1, 77, 10), adapter)


# ----- sizes and files ---------------------------------------------------------------------------
def test_clip_size_of_mmg_and_its_checks():
    size = ClipSize()
    assert size.video_latent_shape == (4, 40, 40, 64) and size.audio_latent_shape == (4, 32, 40)
    assert size.seconds == pytest.approx(3.2)
    size.check(levels=4)
    with pytest.raises(ValueError, match="width must be a positive multiple of 64"):
        ClipSize(width=100).check(levels=4)
    with pytest.raises(ValueError, match="frames must be a positive multiple of 8"):
        ClipSize(frames=12).check(levels=4)
    assert frames_per_second(40, 51200, 16000) == pytest.approx(12.5)


def test_video_config_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    assert video_config_beside(ckpt) is None
    params = {"model_channels": 32, "context_dim": 1024}
    for stored in (params, {"target": "x", "params": params}, {"model": {"params": {"unet_config": params}}}):
        (tmp_path / "model.json").write_text(json.dumps(stored))
        got = video_config_beside(ckpt)
        assert got == params or got == {"target": "x", "params": params}
    (tmp_path / "model.json").write_text("{nope")
    with pytest.raises(MMGLoadError, match="not valid JSON"):
        video_config_beside(ckpt)


def test_vae_weights_come_out_of_the_released_files(tmp_path):
    vae = {"decoder.conv_in.weight": torch.randn(4, 4, 3, 3), "post_quant_conv.weight": torch.randn(4, 4, 1, 1)}
    state = {f"first_stage_model.{k}": v for k, v in vae.items()}
    state.update({"model.diffusion_model.out.2.bias": torch.zeros(4), "betas": torch.zeros(3)})
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    read = read_videocrafter_vae(tmp_path / "model.ckpt")
    assert set(read.state) == set(vae) and read.scale_factor == pytest.approx(0.18215)
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}}, tmp_path / "bare.ckpt")
    with pytest.raises(MMGLoadError, match="no first_stage_model"):
        read_videocrafter_vae(tmp_path / "bare.ckpt")

    folder = tmp_path / "auffusion"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    save_file({"x": torch.zeros(1)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps({"scaling_factor": 0.2}))
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    read = read_auffusion_vae(folder)
    assert list(read.state) == ["decoder.conv_in.weight"] and read.scale_factor == pytest.approx(0.2)


def test_latents_for_the_vaes_divide_the_scale_out():
    video = torch.randn(2, 4, 3, 5, 6)
    frames = video_latents_for_vae(video, 0.5)
    assert frames.shape == (6, 4, 5, 6)
    torch.testing.assert_close(frames[4], video[1, :, 1] / 0.5)  # clip 1, frame 1
    torch.testing.assert_close(audio_latents_for_vae(video[:, :, 0], 0.5), video[:, :, 0] * 2)


# ----- guidance and sampling ---------------------------------------------------------------------
def test_modality_guidance_pushes_away_from_the_uncoupled_prediction(tiny_model):
    g = torch.Generator().manual_seed(1)
    conditions = tiny_conditions(tiny_model)
    audio, video = torch.randn(1, 4, 16, 8, generator=g), torch.randn(1, 4, 8, 16, 24, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = guided_eps(tiny_model, audio, video, 500, t, conditions, 7.5, 12.0)
        pushed = guided_eps(tiny_model, audio, video, 500, t, conditions, 7.5, 12.0, modality_guidance=2.0)
        a_d, v_d = tiny_model(audio, 500, conditions.audio_text, video, t, conditions.video_text, conditions.fps,
                              coupled=False)
    torch.testing.assert_close(pushed.audio, plain.audio + 2.0 * (plain.audio_cond - a_d))
    torch.testing.assert_close(pushed.video, plain.video + 2.0 * (plain.video_cond - v_d))
    assert not torch.allclose(pushed.audio, plain.audio)


def test_generate_is_deterministic_and_sized(tiny_model):
    size = ClipSize(frames=8, height=128, width=128, mel_bins=128)
    settings = MMGSettings(steps=2)
    conditions = tiny_conditions(tiny_model, batch=2)
    runs = [generate_mmg(tiny_model, conditions, size, settings, generator=torch.Generator().manual_seed(seed))
            for seed in (5, 5, 6)]
    audio, video = runs[0]
    assert audio.shape == (2, 4, 16, 8) and video.shape == (2, 4, 8, 16, 16)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_generate_checks_prompt_widths(tiny_model):
    conditions = tiny_conditions(tiny_model)
    wrong = MMGConditions(conditions.audio_text, torch.randn(1, 77, 1024), video_negative=conditions.video_negative)
    with pytest.raises(ValueError, match="CLIP-H"):
        generate_mmg(tiny_model, wrong, ClipSize(8, 128, 128, 128), MMGSettings(steps=1),
                     generator=torch.Generator().manual_seed(0))


def test_half_precision_weights_get_float32_epsilons(tiny_model):
    half = MMGCoupledUNet(tiny_model.config).eval()
    half.load_state_dict(tiny_model.state_dict())
    runner = PrecisionCast(half.to(torch.bfloat16))
    conditions = tiny_conditions(tiny_model)
    a, v = runner(torch.randn(1, 4, 16, 8), 751, conditions.audio_text, torch.randn(1, 4, 8, 16, 24),
                  torch.tensor([751.0]), conditions.video_text, torch.tensor([12]))
    assert a.dtype == v.dtype == torch.float32 and torch.isfinite(v).all()
