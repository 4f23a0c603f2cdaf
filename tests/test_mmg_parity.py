"""MMG coupled U-Net (lvdm video U-Net + diffusers audio U-Net + cross-modal transformers):
parity with the reference fixtures, full-size structure, strict loading, config round trip.

Fixtures (tests/fixtures/mmg, see its README upstream): the reference ``CrossModalCoupledUNet`` run on
CPU with small random weights; tolerances 1e-4 for forward outputs, 1e-3 for sampler latents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmg_core.compat.mmg import config_from_reference, from_reference, full_size_reference_config
from mmg_core.mmg_sampling import VIDEOCRAFTER2_SCHEDULE, MMGConditions, sample_mmg_ddim
from mmg_core.models.mmg_coupled import CrossModalTransformer, MMGConfig, MMGCoupledUNet, time_groups
from mmg_core.weights import WeightsMismatchError, load_state_dict_strict

FIXTURES = Path(__file__).parent / "fixtures" / "mmg"
TINY = FIXTURES / "tiny"
FORWARD_TOL = dict(atol=1e-4, rtol=1e-4)
SAMPLER_TOL = dict(atol=1e-3, rtol=1e-3)
CMT_POINTS = range(6)

# diffusers 0.42 calls np.array() on a torch tensor in set_timesteps; harmless, and not ours.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture(scope="module")
def tiny():
    """(reference config, state dict, inputs, outputs) of the tiny fixture."""
    config = json.loads((TINY / "config.json").read_text())
    return (config, load_file(TINY / "state_dict.safetensors"), load_file(TINY / "inputs.safetensors"),
            load_file(TINY / "outputs.safetensors"))


@pytest.fixture(scope="module")
def model(tiny):
    config, state, _, _ = tiny
    return from_reference(config, state)


def run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(
            inputs["audio_latents"], inputs["audio_timestep"], inputs["audio_encoder_hidden_states"],
            inputs["video_latents"], inputs["video_timestep"], inputs["video_context"], inputs["video_fps"],
            **kwargs,
        )


@pytest.fixture(scope="module")
def coupled_run(model, tiny):
    """Outputs of one coupled forward and every CMT's (x, context, out), keyed "cmt{i}.{direction}"."""
    captured = {}

    def probe(point, direction, x, context, out):
        captured[f"cmt{point}.{direction}"] = (x, context, out)

    audio, video = run(model, tiny[2], probe=probe)
    return audio, video, captured


# ----- forward parity --------------------------------------------------------------------------
def test_full_forward_matches_reference(coupled_run, tiny):
    audio, video, _ = coupled_run
    outputs = tiny[3]
    torch.testing.assert_close(video, outputs["video_out"], **FORWARD_TOL)
    torch.testing.assert_close(audio, outputs["audio_out"], **FORWARD_TOL)


@pytest.mark.parametrize("direction", ["video", "audio"])
@pytest.mark.parametrize("point", CMT_POINTS)
def test_each_cmt_block_matches_reference(model, tiny, point, direction):
    """Each CMT alone, fed the reference's recorded tokens."""
    outputs = tiny[3]
    cmt = (model.video_cmt if direction == "video" else model.audio_cmt)[point]
    with torch.no_grad():
        out = cmt(outputs[f"cmt{point}.{direction}.x"], outputs[f"cmt{point}.{direction}.context"])
    torch.testing.assert_close(out, outputs[f"cmt{point}.{direction}.out"], **FORWARD_TOL)


@pytest.mark.parametrize("direction", ["video", "audio"])
@pytest.mark.parametrize("point", CMT_POINTS)
def test_forward_groups_tokens_like_reference(coupled_run, tiny, point, direction):
    """Inside the forward, every CMT sees the reference's time-grouped tokens and gives its output."""
    x, context, out = coupled_run[2][f"cmt{point}.{direction}"]
    outputs = tiny[3]
    torch.testing.assert_close(x, outputs[f"cmt{point}.{direction}.x"], **FORWARD_TOL)
    torch.testing.assert_close(context, outputs[f"cmt{point}.{direction}.context"], **FORWARD_TOL)
    torch.testing.assert_close(out, outputs[f"cmt{point}.{direction}.out"], **FORWARD_TOL)


def test_decoupled_outputs_match_reference(model, tiny):
    _, _, inputs, outputs = tiny
    audio, video = run(model, inputs, coupled=False)
    torch.testing.assert_close(video, outputs["decoupled.video_out"], **FORWARD_TOL)
    torch.testing.assert_close(audio, outputs["decoupled.audio_out"], **FORWARD_TOL)
    # Decoupled = each U-Net's own forward (diffusers' for audio, the lvdm U-Net's for video).
    with torch.no_grad():
        own_audio = model.audio_unet(inputs["audio_latents"], inputs["audio_timestep"],
                                     inputs["audio_encoder_hidden_states"]).sample
        own_video = model.video_unet(inputs["video_latents"], inputs["video_timestep"], inputs["video_context"],
                                     inputs["video_fps"])
    torch.testing.assert_close(own_audio, outputs["decoupled.audio_out"], **FORWARD_TOL)
    torch.testing.assert_close(own_video, outputs["decoupled.video_out"], **FORWARD_TOL)


def test_coupling_changes_both_outputs(coupled_run, tiny):
    audio, video, _ = coupled_run
    outputs = tiny[3]
    assert (audio - outputs["decoupled.audio_out"]).abs().max() > 1e-2
    assert (video - outputs["decoupled.video_out"]).abs().max() > 1e-2


def test_full_width_cmt_block_matches_reference():
    meta = json.loads((FIXTURES / "cmt320" / "config.json").read_text())["kwargs"]
    io = load_file(FIXTURES / "cmt320" / "io.safetensors")
    cmt = CrossModalTransformer(meta["in_channels"], meta["d_head"], depth=meta["depth"])
    load_state_dict_strict(cmt, load_file(FIXTURES / "cmt320" / "state_dict.safetensors"))
    assert len(cmt.transformer_blocks[0].attn1.to_q.weight) // meta["d_head"] == meta["n_heads"]
    with torch.no_grad():
        torch.testing.assert_close(cmt(io["x"], io["context"]), io["out"], **FORWARD_TOL)


# ----- time groups -----------------------------------------------------------------------------
def test_time_groups_pair_each_audio_column_with_its_frames():
    """Clip b, audio column j covers frames j·k … j·k+k-1 of the same clip (k = frames / columns)."""
    b, frames, columns, k = 2, 8, 4, 2
    video = torch.arange(b * frames, dtype=torch.float32).view(b * frames, 1, 1, 1).expand(-1, 32, 3, 5)
    audio = torch.arange(b * columns, dtype=torch.float32).view(b, 1, 1, columns).expand(-1, 32, 6, -1)
    video_tokens, audio_tokens = time_groups(video, audio)
    assert video_tokens.shape == (b * columns, 32, k * 3 * 5) and audio_tokens.shape == (b * columns, 32, 6)
    for group in range(b * columns):
        clip, column = divmod(group, columns)
        frames_seen = video_tokens[group, 0].unique().tolist()
        assert frames_seen == [clip * frames + column * k + i for i in range(k)]
        assert audio_tokens[group, 0].unique().tolist() == [clip * columns + column]


def test_misaligned_shapes_are_rejected(model, tiny):
    inputs = dict(tiny[2])
    inputs["video_latents"] = inputs["video_latents"][:, :, :6]
    with pytest.raises(ValueError, match="multiple of the column count"):
        run(model, inputs)
    inputs = dict(tiny[2], video_context=None)
    with pytest.raises(ValueError, match="empty prompt"):
        run(model, inputs)


# ----- sampler ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampler_fixture():
    return load_file(TINY / "sampler.safetensors")


def test_video_ddim_schedule_matches_reference(tiny):
    recorded = tiny[0]["sampler"]["schedule"]
    plan = VIDEOCRAFTER2_SCHEDULE.ddim(tiny[0]["sampler"]["steps"])
    assert plan.timesteps.tolist() == recorded["ddim_timesteps"]
    for name, values in (("ddim_alphas", plan.alphas), ("ddim_alphas_prev", plan.alphas_prev),
                         ("ddim_scale_arr", plan.scale), ("ddim_scale_arr_prev", plan.scale_prev)):
        torch.testing.assert_close(values, torch.tensor(recorded[name]), atol=1e-7, rtol=0, msg=name)


def test_guided_sampler_matches_reference(model, tiny, sampler_fixture):
    settings, s = tiny[0]["sampler"], sampler_fixture
    conditions = MMGConditions(s["in.a_cond"], s["in.v_cond"], s["in.a_uncond"], s["in.v_uncond"], s["in.fps"])
    steps = []
    with torch.no_grad():
        audio, video = sample_mmg_ddim(
            model, s["in.audio_latents"], s["in.video_latents"], conditions, steps=settings["steps"],
            audio_guidance=settings["audio_guidance"], video_guidance=settings["video_guidance"],
            audio_scheduler_config=settings["audio_scheduler_config"], callback=steps.append,
        )
    assert [step.audio_t for step in steps] == settings["schedule"]["audio_timesteps"]
    for step in steps:
        k = step.step
        assert step.audio_t == s[f"step{k}.audio_t"].item() and step.video_t == s[f"step{k}.video_t"].item()
        for name, ours in (("audio_eps_cond", step.eps.audio_cond), ("audio_eps_uncond", step.eps.audio_uncond),
                           ("video_eps_cond", step.eps.video_cond), ("video_eps_uncond", step.eps.video_uncond),
                           ("audio_latents", step.audio_latents), ("video_latents", step.video_latents)):
            torch.testing.assert_close(ours, s[f"step{k}.{name}"], **SAMPLER_TOL, msg=f"step{k}.{name}")
    torch.testing.assert_close(audio, s["final.audio_latents"], **SAMPLER_TOL)
    torch.testing.assert_close(video, s["final.video_latents"], **SAMPLER_TOL)


def test_guidance_needs_the_empty_video_prompt(model, sampler_fixture):
    s = sampler_fixture
    with pytest.raises(ValueError, match="video_negative"):
        sample_mmg_ddim(model, s["in.audio_latents"], s["in.video_latents"],
                        MMGConditions(s["in.a_cond"], s["in.v_cond"]), steps=1)


# ----- structure, loading, config --------------------------------------------------------------
def test_full_size_model_on_meta_has_reference_keys_and_shapes():
    reference = json.loads((FIXTURES / "full_keys.json").read_text())
    with torch.device("meta"):
        model = MMGCoupledUNet(config_from_reference(full_size_reference_config()))
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == reference["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference["n_params"] == 2_529_874_824


def test_strict_loading_names_the_missing_key(tiny):
    config, state, _, _ = tiny
    incomplete = {k: v for k, v in state.items() if k != "video_cmt.3.proj_in.weight"}
    with pytest.raises(WeightsMismatchError, match=r"lacks key 'video_cmt\.3\.proj_in\.weight'"):
        from_reference(config, incomplete)


def test_strict_loading_names_the_unexpected_key(tiny):
    config, state, _, _ = tiny
    extra = dict(state, **{"video_unet.input_blocks.1.0.lora_A.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"'video_unet\.input_blocks\.1\.0\.lora_A\.weight'"):
        from_reference(config, extra)


def test_strict_loading_names_a_wrong_shape(tiny):
    config, state, _, _ = tiny
    wrong = dict(state, **{"audio_cmt.0.proj_out.bias": torch.zeros(7)})
    with pytest.raises(WeightsMismatchError, match=r"'audio_cmt\.0\.proj_out\.bias' has shape \(7,\)"):
        from_reference(config, wrong)


@pytest.mark.parametrize("which", ["tiny", "full"])
def test_config_round_trips_through_json(tiny, which):
    reference = tiny[0] if which == "tiny" else full_size_reference_config()
    config = config_from_reference(reference)
    text = config.to_json()
    assert MMGConfig.from_json(text) == config
    assert json.loads(text)["cross_modal"]["layer_channels"] == reference["cross_modal_config"]["layer_channels"]
    assert config.video.model_channels == reference["video_unet"]["model_channels"]
    assert list(config.audio.block_out_channels) == reference["audio_unet"]["block_out_channels"]


def test_reference_configs_the_port_cannot_build_are_rejected(tiny):
    reference = tiny[0]
    with pytest.raises(ValueError, match="use_relative_position"):
        config_from_reference(dict(reference, video_unet=dict(reference["video_unet"], use_relative_position=True)))
    with pytest.raises(ValueError, match="class_embed_type"):
        config_from_reference(dict(reference, audio_unet=dict(reference["audio_unet"], class_embed_type="timestep")))
    with pytest.raises(ValueError, match="layer_channels"):
        mismatched = {"layer_channels": [32, 64, 64, 64, 64, 32], "d_head": 16}
        config_from_reference(dict(reference, cross_modal_config=mismatched))
    with pytest.raises(ValueError, match="unknown MMG config section"):
        MMGConfig.from_dict({"video": {}, "bogus": {}})


def test_fresh_cmts_start_as_identity_and_train(tiny):
    """Only proj_out is zero-initialised: coupled == decoupled at first, and the CMTs get gradients."""
    config, state, inputs, outputs = tiny
    model = from_reference(config, state)
    for cmts in (model.video_cmt, model.audio_cmt):
        for i, cmt in enumerate(cmts):
            cmts[i] = CrossModalTransformer(cmt.norm.num_channels, config["cross_modal_config"]["d_head"])
    audio, video = model(
        inputs["audio_latents"], inputs["audio_timestep"], inputs["audio_encoder_hidden_states"],
        inputs["video_latents"], inputs["video_timestep"], inputs["video_context"], inputs["video_fps"],
    )
    torch.testing.assert_close(audio, outputs["decoupled.audio_out"], **FORWARD_TOL)
    torch.testing.assert_close(video, outputs["decoupled.video_out"], **FORWARD_TOL)
    (audio.square().mean() + video.square().mean()).backward()
    for cmts in (model.video_cmt, model.audio_cmt):
        assert all(cmt.proj_out.weight.grad.abs().sum() > 0 for cmt in cmts)
        assert all(cmt.norm.weight.requires_grad and cmt.norm.weight.abs().min() == 1 for cmt in cmts)
