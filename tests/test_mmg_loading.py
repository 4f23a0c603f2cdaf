"""Loading MMG from real weight formats: VideoCrafter2 ``model.ckpt``, an Auffusion diffusers folder, the
pack's coupled safetensors, and base weights plus fresh or separately saved couplers.

Every file here is written in its real format by the tools that write it (``torch.save`` of a Lightning-
style dict, diffusers' own ``save_pretrained``, ``safetensors.save_file``) from the tiny reference
fixture (tests/fixtures/mmg/tiny), so forward outputs can be compared with the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmg_core.compat.mmg import config_from_reference, full_size_reference_config, video_config_from_reference
from mmg_core.mmg_loading import (
    MMGLoadError,
    find_auffusion_folder,
    load_mmg,
    lvdm_schedule_from_buffers,
    read_videocrafter_checkpoint,
    resolve_video_config,
    save_mmg,
    track_peak_rss,
)
from mmg_core.mmg_sampling import VIDEOCRAFTER2_SCHEDULE, LvdmSchedule
from mmg_core.models.mmg_coupled import CrossModalConfig, MMGCoupledUNet
from mmg_core.vocoder import HiFiGAN, HiFiGANConfig, WeightFileError
from mmg_core.weights import WeightsMismatchError

TINY = Path(__file__).parent / "fixtures" / "mmg" / "tiny"
REPO = Path(__file__).resolve().parent.parent
FORWARD_TOL = dict(atol=1e-4, rtol=1e-4)
TINY_VOCODER = HiFiGANConfig(num_mels=16, upsample_initial_channel=32, resblock_kernel_sizes=(3, 5),
                             resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)))
VAE_AND_CLIP = {  # a few entries of what model.ckpt also holds, with their real names
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
    "first_stage_model.decoder.conv_out.bias": (3,),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "cond_stage_model.model.token_embedding.weight": (64, 16),
    "cond_stage_model.model.positional_embedding": (77, 16),
}

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


# ----- writing files in the real formats -------------------------------------------------------
def lvdm_buffers(steps=1000, linear_start=0.00085, linear_end=0.012, scale_b=0.7, mid_step=400, betas=None):
    """The schedule buffers as lvdm's DDPM.register_schedule and LatentDiffusion (use_scale, the
    unfixed scale bug) compute them: float64 numpy, stored float32."""
    if betas is None:
        betas = np.linspace(linear_start**0.5, linear_end**0.5, steps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas)
    prev = np.append(1.0, cumprod[:-1])
    posterior = betas * (1.0 - prev) / (1.0 - cumprod)
    arrays = {
        "betas": betas, "alphas_cumprod": cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1), "posterior_variance": posterior,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod),
        "scale_arr": np.concatenate([np.linspace(1.0, scale_b, mid_step), np.full(len(betas), scale_b)]),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def videocrafter_state(video_unet, buffers=None):
    generator = torch.Generator().manual_seed(7)
    state = {f"model.diffusion_model.{k}": v for k, v in video_unet.items()}
    state.update({k: torch.randn(shape, generator=generator) for k, shape in VAE_AND_CLIP.items()})
    state.update(lvdm_buffers() if buffers is None else buffers)
    return state


def write_ckpt(path, state, **save_kwargs):
    torch.save({"state_dict": state}, path, **save_kwargs)
    return path


def weight_normed_vocoder_state(config, seed=0):
    """A HiFi-GAN state dict as the published files hold it: torch's own weight_norm on every conv."""
    generator = torch.Generator().manual_seed(seed)
    model = HiFiGAN(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.weight_norm(module)
    return model.state_dict()


def write_auffusion_folder(root, audio_unet_config, audio_unet_state, *, safe=True):
    """unet/ by diffusers' own save_pretrained; vocoder/ as Auffusion ships it (config.json + vocoder.pt)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**audio_unet_config)
    unet.load_state_dict(audio_unet_state, assign=True)
    unet.save_pretrained(root / "unet", safe_serialization=safe)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "AuffusionPipeline"}))
    (root / "vocoder").mkdir()
    vocoder_config = {**TINY_VOCODER.to_dict(), "hop_size": 160, "n_fft": 2048, "win_size": 1024, "batch_size": 16,
                      "fmin": 0, "fmax": None, "dist_config": {"world_size": 1}}
    (root / "vocoder" / "config.json").write_text(json.dumps(vocoder_config))
    torch.save({"generator": weight_normed_vocoder_state(TINY_VOCODER)}, root / "vocoder" / "vocoder.pt")
    return root


def write_coupled(path, state, config_json, **metadata):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"mmg.family": "mmg", "mmg.format_version": "1", "mmg.config": config_json, **metadata})
    return path


def parts_of(state, *prefixes):
    return {k.partition(".")[2]: v for k, v in state.items() if k.partition(".")[0] in prefixes}


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    config = json.loads((TINY / "config.json").read_text())
    inputs = {k: v[:1] for k, v in load_file(TINY / "inputs.safetensors").items()}
    outputs = {k: v[:1] for k, v in load_file(TINY / "outputs.safetensors").items()
               if k in ("audio_out", "video_out", "decoupled.audio_out", "decoupled.video_out")}
    return config, load_file(TINY / "state_dict.safetensors"), inputs, outputs


@pytest.fixture(scope="module")
def tiny_options(tiny):
    config = tiny[0]
    cross = config["cross_modal_config"]
    return dict(video_config=config["video_unet"],
                cross_modal=CrossModalConfig(tuple(cross["layer_channels"]), cross["d_head"]))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """The tiny model in each real format: model.ckpt, an Auffusion folder, a coupled safetensors."""
    config, state, _, _ = tiny
    root = tmp_path_factory.mktemp("mmg_files")
    ckpt = write_ckpt(root / "model.ckpt", videocrafter_state(parts_of(state, "video_unet")))
    folder = write_auffusion_folder(root / "auffusion", config["audio_unet"], parts_of(state, "audio_unet"))
    coupled = write_coupled(root / "mmg_tiny.safetensors", state, config_from_reference(config).to_json())
    return {"ckpt": ckpt, "folder": folder, "coupled": coupled, "root": root}


def forward(model, inputs):
    with torch.no_grad():
        return model(inputs["audio_latents"], inputs["audio_timestep"], inputs["audio_encoder_hidden_states"],
                     inputs["video_latents"], inputs["video_timestep"], inputs["video_context"], inputs["video_fps"])


# ----- the four ways to load -------------------------------------------------------------------
def test_base_formats_with_fresh_couplers_equal_the_two_unets(files, tiny, tiny_options):
    """model.ckpt + Auffusion folder + fresh couplers: a fresh CMT is the identity, so the coupled forward
    equals the reference's decoupled outputs."""
    _, state, inputs, outputs = tiny
    loaded = load_mmg(files["ckpt"], files["folder"], generator=torch.Generator().manual_seed(0), **tiny_options)
    assert loaded.fresh_couplers and loaded.sources["couplers"].startswith("fresh")
    audio, video = forward(loaded.model, inputs)
    torch.testing.assert_close(audio, outputs["decoupled.audio_out"], **FORWARD_TOL)
    torch.testing.assert_close(video, outputs["decoupled.video_out"], **FORWARD_TOL)
    # The schedule buffers come back for the sampler, and describe VideoCrafter2's schedule exactly.
    assert loaded.video_schedule == VIDEOCRAFTER2_SCHEDULE
    assert len(loaded.video_schedule_buffers["scale_arr"]) == 1400  # lvdm's unfixed scale bug: mid_step + T
    assert set(loaded.video_schedule_buffers) >= {"betas", "alphas_cumprod", "posterior_mean_coef2"}
    # The VAE and OpenCLIP entries were skipped, not loaded anywhere.
    assert not any("first_stage" in k or "cond_stage" in k for k in loaded.model.state_dict())
    assert isinstance(loaded.vocoder, HiFiGAN) and loaded.vocoder.config == TINY_VOCODER


def test_whole_coupled_checkpoint_matches_the_reference(files, tiny):
    _, _, inputs, outputs = tiny
    loaded = load_mmg(coupled=files["coupled"])
    assert not loaded.fresh_couplers and loaded.vocoder is None
    assert loaded.video_schedule == VIDEOCRAFTER2_SCHEDULE and "stores no schedule" in loaded.sources["video_schedule"]
    audio, video = forward(loaded.model, inputs)
    torch.testing.assert_close(audio, outputs["audio_out"], **FORWARD_TOL)
    torch.testing.assert_close(video, outputs["video_out"], **FORWARD_TOL)
    with_vocoder = load_mmg(coupled=files["coupled"], vocoder=files["folder"])  # Auffusion's folder: its vocoder/
    assert with_vocoder.vocoder.config == TINY_VOCODER and with_vocoder.sources["vocoder"] == str(files["folder"])


def test_trained_couplers_file_with_base_weights(files, tiny, tmp_path):
    """save_mmg(couplers_only) + model.ckpt + Auffusion folder = the whole reference state dict."""
    _, state, _, _ = tiny
    whole = load_mmg(coupled=files["coupled"])
    couplers = tmp_path / "couplers.safetensors"
    save_mmg(whole.model, couplers, couplers_only=True)
    with safe_open(str(couplers), framework="pt") as handle:
        assert handle.metadata()["mmg.contents"] == "couplers"
        assert all(k.startswith(("video_cmt.", "audio_cmt.")) for k in handle.keys())
    loaded = load_mmg(files["ckpt"], files["folder"], couplers, video_config=tiny[0]["video_unet"])
    assert not loaded.fresh_couplers and loaded.config == whole.config
    ours = loaded.model.state_dict()
    assert ours.keys() == state.keys()
    assert all(torch.equal(ours[k], state[k]) for k in state)


def test_save_mmg_round_trips_config_schedule_and_dtype(files, tmp_path):
    whole = load_mmg(coupled=files["coupled"])
    schedule = LvdmSchedule(scale_b=0.5, mid_step=300)
    path = tmp_path / "half.safetensors"
    save_mmg(whole.model, path, dtype=torch.float16, video_schedule=schedule)
    assert {v.dtype for v in load_file(path).values()} == {torch.float16}
    again = load_mmg(coupled=path)
    assert again.config == whole.config and again.video_schedule == schedule
    assert again.model.video_unet.out[2].weight.dtype == torch.float32  # loading copies into the requested dtype
    torch.testing.assert_close(again.model.video_unet.out[2].weight,
                               whole.model.video_unet.out[2].weight.half().float())


# ----- fresh couplers --------------------------------------------------------------------------
def test_fresh_couplers_are_seeded_and_use_the_models_own_init(files, tiny_options):
    def couplers(seed):
        loaded = load_mmg(files["ckpt"], files["folder"], generator=torch.Generator().manual_seed(seed), **tiny_options)
        return loaded.model, {k: v for k, v in loaded.model.state_dict().items() if "_cmt." in k}

    model, first = couplers(0)
    _, same = couplers(0)
    _, other = couplers(1)
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if k.endswith("to_q.weight"))
    for cmts in (model.video_cmt, model.audio_cmt):
        for cmt in cmts:
            assert not cmt.proj_out.weight.any() and not cmt.proj_out.bias.any()  # only proj_out is zero
            assert torch.equal(cmt.norm.weight, torch.ones_like(cmt.norm.weight))
            assert torch.equal(cmt.context_norm.bias, torch.zeros_like(cmt.context_norm.bias))
            w = cmt.proj_in.weight  # PyTorch's Linear default: U(±1/√fan_in)
            bound = w.shape[1] ** -0.5
            assert w.abs().max() <= bound and float(w.detach().std()) == pytest.approx(bound / 3**0.5, rel=0.15)
            assert cmt.transformer_blocks[0].attn2.to_k.weight.abs().max() > 0


def test_fresh_couplers_need_a_generator(files, tiny_options):
    with pytest.raises(MMGLoadError, match="generator"):
        load_mmg(files["ckpt"], files["folder"], **tiny_options)


# ----- dtype and memory ------------------------------------------------------------------------
def test_dtype_is_applied_while_loading(files, tiny):
    _, state, inputs, outputs = tiny
    half = load_mmg(coupled=files["coupled"], dtype=torch.float16)
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}
    loaded = load_mmg(coupled=files["coupled"], dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.model.audio_unet.conv_in.weight, state["audio_unet.conv_in.weight"].bfloat16())
    inputs = {k: v.bfloat16() if v.is_floating_point() and "timestep" not in k and "fps" not in k else v
              for k, v in inputs.items()}
    audio, video = forward(loaded.model, inputs)
    for ours, reference in ((audio, outputs["audio_out"]), (video, outputs["video_out"])):
        assert ours.dtype == torch.bfloat16
        assert (ours.float() - reference).abs().max() < 0.1 * reference.abs().max()
    with pytest.raises(MMGLoadError, match="dtype"):
        load_mmg(coupled=files["coupled"], dtype=torch.int8)


def test_float32_weights_stay_mapped_and_changes_never_reach_the_file(files, tiny):
    _, state, _, _ = tiny
    loaded = load_mmg(coupled=files["coupled"])
    weight = loaded.model.audio_cmt[0].proj_in.weight
    with torch.no_grad():
        weight.add_(1.0)  # copy-on-write: the mapping is private
    assert torch.equal(load_file(files["coupled"])["audio_cmt.0.proj_in.weight"], state["audio_cmt.0.proj_in.weight"])


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from mmg_core.mmg_loading import current_rss_bytes, load_mmg, track_peak_rss
    from mmg_core.models.mmg_coupled import CrossModalConfig
    args = json.loads(sys.argv[1])
    dtype = getattr(torch, args.pop("dtype"))
    if "cross_modal" in args:
        args["cross_modal"] = CrossModalConfig(**args["cross_modal"])
    with track_peak_rss() as report:
        loaded = load_mmg(dtype=dtype, generator=torch.Generator().manual_seed(0), **args)
        touched = sum(float(p.float().sum()) for p in loaded.model.parameters())  # page every weight in
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    after = current_rss_bytes() - report.start_bytes
    print(json.dumps({"extra": report.extra_bytes, "after": after, "weights": weights, "exact": report.exact}))
""")


@pytest.fixture(scope="module")
def medium_files(tmp_path_factory, tiny):
    """A ~100 M-parameter model (400 MB in float32) in the coupled and the base formats: big enough that
    a second copy could not hide in allocator noise."""

    reference = json.loads(json.dumps(tiny[0]))
    reference["video_unet"].update(model_channels=64, channel_mult=[1, 2, 4, 4], num_head_channels=32, context_dim=64)
    reference["audio_unet"].update(block_out_channels=[64, 128, 256, 256], cross_attention_dim=64)
    reference["cross_modal_config"] = {"layer_channels": [64, 128, 256, 256, 256, 128], "d_head": 32}
    config = config_from_reference(reference)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in MMGCoupledUNet(config).state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}
    root = tmp_path_factory.mktemp("mmg_medium")
    write_coupled(root / "medium.safetensors", state, config.to_json())
    write_ckpt(root / "model.ckpt", videocrafter_state(parts_of(state, "video_unet")))
    write_auffusion_folder(root / "auffusion", reference["audio_unet"], parts_of(state, "audio_unet"))
    return root, reference


def peak_of_load(args: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"load {sorted(args)} {args['dtype']}: peak +{result['extra'] / 2**20:.0f} MiB, "
          f"after +{result['after'] / 2**20:.0f} MiB, "
          f"weights {result['weights'] / 2**20:.0f} MiB")  # shown with pytest -s
    return result


@pytest.mark.parametrize("source", ["coupled", "base formats"])
def test_peak_memory_is_one_copy_of_the_weights(medium_files, source):
    """Meta construction + memory-mapped files + assign: loading and then reading every weight costs
    about one copy. Building the model normally and then loading a state dict would cost two."""
    root, reference = medium_files
    if source == "coupled":
        args = {"coupled": str(root / "medium.safetensors")}
    else:
        args = {"video": str(root / "model.ckpt"), "audio": str(root / "auffusion"),
                "video_config": reference["video_unet"], "cross_modal": reference["cross_modal_config"]}
    result = peak_of_load(dict(args, dtype="float32"))
    assert result["weights"] > 350e6
    if not result["exact"]:
        pytest.skip("this OS cannot reset the peak RSS of a process")
    assert result["extra"] < 1.25 * result["weights"], result


def test_peak_memory_converting_to_bfloat16(medium_files):
    """float32 file -> bfloat16 model: at the peak, the float32 pages read (clean file-backed memory the OS
    may drop) plus the bfloat16 copy, ≈ 3x the bfloat16 weights; building in float32 and then loading a
    state dict would be 5x. Once loaded, only the bfloat16 copy stays."""
    root, _ = medium_files
    result = peak_of_load({"coupled": str(root / "medium.safetensors"), "dtype": "bfloat16"})
    if not result["exact"]:
        pytest.skip("this OS cannot reset the peak RSS of a process")
    assert result["extra"] < 3.5 * result["weights"], result
    assert result["after"] < 1.3 * result["weights"], result


def test_track_peak_rss_sees_an_allocation():
    import mmap

    with track_peak_rss() as report:
        # A fresh anonymous mapping, every page written: new resident memory whatever the allocator holds.
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        block.close()
    assert report.peak_bytes >= report.start_bytes
    if report.exact:
        assert report.extra_bytes > 60e6


# ----- strict errors that name what to fix ----------------------------------------------------
def rewrite_ckpt(tmp_path, files, change):
    state = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    change(state)
    return write_ckpt(tmp_path / "model.ckpt", state)


@pytest.mark.parametrize("change, error, message", [
    (lambda s: s.pop("model.diffusion_model.out.2.weight"), WeightsMismatchError,
     r"model\.ckpt lacks key 'model\.diffusion_model\.out\.2\.weight'"),
    (lambda s: s.update({"model.diffusion_model.input_blocks.1.0.lora_A.weight": torch.zeros(1)}),
     WeightsMismatchError, r"'model\.diffusion_model\.input_blocks\.1\.0\.lora_A\.weight' that this model does not"),
    (lambda s: s.update({"model.diffusion_model.out.2.bias": torch.zeros(7)}), WeightsMismatchError,
     r"'model\.diffusion_model\.out\.2\.bias' has shape \(7,\)"),
    (lambda s: s.update({"model_ema.decay": torch.tensor(0.999)}), MMGLoadError, r"'model_ema\.decay'.*EMA"),
    (lambda s: s.update({"betas": s["betas"].flip(0)}), MMGLoadError, r"'alphas_cumprod' is not lvdm's linear"),
])
def test_videocrafter_checkpoint_errors_name_the_key(tmp_path, files, tiny_options, change, error, message):
    ckpt = rewrite_ckpt(tmp_path, files, change)
    with pytest.raises(error, match=message):
        load_mmg(ckpt, files["folder"], generator=torch.Generator(), **tiny_options)


def test_auffusion_missing_key_is_named(tmp_path, files, tiny_options):
    folder = Path(shutil.copytree(files["folder"], tmp_path / "auffusion"))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, str(weights))
    message = r"unet/diffusion_pytorch_model\.safetensors lacks key 'conv_out\.weight'"
    with pytest.raises(WeightsMismatchError, match=message):
        load_mmg(files["ckpt"], folder, generator=torch.Generator(), **tiny_options)


def test_coupled_missing_key_is_named(tmp_path, tiny):
    config, state, _, _ = tiny
    incomplete = {k: v for k, v in state.items() if k != "video_cmt.3.proj_in.weight"}
    path = write_coupled(tmp_path / "broken.safetensors", incomplete, config_from_reference(config).to_json())
    with pytest.raises(WeightsMismatchError, match=r"broken\.safetensors lacks key 'video_cmt\.3\.proj_in\.weight'"):
        load_mmg(coupled=path)


def test_config_mismatch_between_couplers_and_base_weights_is_named(tmp_path, files, tiny):
    couplers = tmp_path / "couplers.safetensors"
    save_mmg(load_mmg(coupled=files["coupled"]).model, couplers, couplers_only=True)
    other = dict(tiny[0]["video_unet"], fps_cond=False)
    with pytest.raises(MMGLoadError, match=r"config mismatch.*video\.fps_cond: True vs False"):
        load_mmg(files["ckpt"], files["folder"], couplers, video_config=other)


def test_a_wrong_video_config_names_the_shape(files, tiny_options):
    wrong = dict(tiny_options, video_config=dict(tiny_options["video_config"], context_dim=48))
    with pytest.raises(WeightsMismatchError, match=r"model\.ckpt key 'model\.diffusion_model\..*has shape"):
        load_mmg(files["ckpt"], files["folder"], generator=torch.Generator(), **wrong)


def test_wrong_files_and_arguments_say_what_to_pass(tmp_path, files, tiny_options):
    ckpt, folder, coupled = files["ckpt"], files["folder"], files["coupled"]
    cases = [
        (dict(video=folder, audio=folder), "video= expects a file"),
        (dict(video=ckpt, audio=ckpt), "pass it as video="),
        (dict(coupled=ckpt), "video="),
        (dict(video=coupled, audio=folder), "pass it as coupled="),
        (dict(video=ckpt), "needs both base models"),
        ({}, "nothing to load"),
        (dict(coupled=coupled, video_config=tiny_options["video_config"]), "carries its own config"),
        (dict(video=ckpt, audio=tmp_path), "unet/config.json is missing"),
        (dict(video=ckpt, audio=folder / "vocoder"), "unet/config.json is missing"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MMGLoadError, match=message):
            load_mmg(**kwargs)
    other_family = tmp_path / "mmdiffusion.safetensors"
    save_file({"x": torch.zeros(1)}, str(other_family), metadata={"mmg.family": "mmdiffusion", "mmg.config": "{}"})
    with pytest.raises(MMGLoadError, match="'mmdiffusion' checkpoint"):
        load_mmg(coupled=other_family)
    diffusers_weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(MMGLoadError, match="looks like a diffusers UNet: pass its model folder as audio="):
        read_videocrafter_checkpoint(diffusers_weights)


def test_pickles_with_objects_are_refused_not_unpickled(tmp_path, files):
    state = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(WeightFileError, match=r"(?s)never arbitrary pickles.*weights_only=True.*argparse.Namespace"):
        read_videocrafter_checkpoint(path)


# ----- format variants -------------------------------------------------------------------------
def test_videocrafter_checkpoint_variants(tmp_path, files, tiny):
    state = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    unet_keys = {k for k in state if k.startswith("model.diffusion_model.")}
    deepspeed = tmp_path / "deepspeed.ckpt"
    torch.save({"module": {f"_forward_module.{k}": v for k, v in state.items()}}, deepspeed)
    bare, legacy, safetensors_file = tmp_path / "bare.ckpt", tmp_path / "legacy.ckpt", tmp_path / "v.safetensors"
    torch.save(state, bare)
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    save_file(state, str(safetensors_file))
    for path in (deepspeed, bare, legacy, safetensors_file):
        read = read_videocrafter_checkpoint(path)
        assert {f"model.diffusion_model.{k}" for k in read.unet} == unet_keys, path.name
        assert read.ignored_keys == len(VAE_AND_CLIP) and len(read.schedule_buffers) == 13


def test_schedules_are_read_from_the_buffers():
    assert lvdm_schedule_from_buffers(lvdm_buffers(), "model.ckpt") == VIDEOCRAFTER2_SCHEDULE
    other = lvdm_schedule_from_buffers(lvdm_buffers(steps=500, linear_end=0.02, scale_b=0.5, mid_step=100), "x")
    assert other == LvdmSchedule(num_train_timesteps=500, linear_end=0.02, scale_b=0.5, mid_step=100)
    no_scale = {k: v for k, v in lvdm_buffers().items() if k != "scale_arr"}
    assert lvdm_schedule_from_buffers(no_scale, "x") == LvdmSchedule(use_scale=False)
    cosine_like = lvdm_buffers(betas=np.clip(np.linspace(1e-4, 0.02, 1000) ** 1.5 * 8, 1e-5, 0.5))
    with pytest.raises(MMGLoadError, match="not lvdm's linear schedule"):
        lvdm_schedule_from_buffers(cosine_like, "x")


def test_a_checkpoint_without_schedule_buffers_uses_videocrafter2s_and_says_so(tmp_path, files, tiny_options):
    state = torch.load(files["ckpt"], weights_only=True)["state_dict"]
    unet_only = write_ckpt(tmp_path / "unet_only.ckpt", {k: v for k, v in state.items() if k.startswith("model.")})
    loaded = load_mmg(unet_only, files["folder"], generator=torch.Generator(), **tiny_options)
    assert loaded.video_schedule == VIDEOCRAFTER2_SCHEDULE and loaded.video_schedule_buffers == {}
    assert "has no schedule buffers" in loaded.sources["video_schedule"]


def test_auffusion_folder_variants(tmp_path, files, tiny, tiny_options):
    config, state, _, _ = tiny
    folder = write_auffusion_folder(tmp_path / "bin_folder", config["audio_unet"], parts_of(state, "audio_unet"),
                                    safe=False)
    found = find_auffusion_folder(folder)
    assert found.unet_weights.name == "diffusion_pytorch_model.bin" and found.vocoder == folder / "vocoder"
    assert find_auffusion_folder(folder / "unet") == found  # the unet/ folder itself is accepted too
    loaded = load_mmg(files["ckpt"], folder / "unet", generator=torch.Generator(), **tiny_options)
    assert torch.equal(loaded.model.audio_unet.conv_out.weight, state["audio_unet.conv_out.weight"])
    (folder / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(MMGLoadError, match="no weights"):
        find_auffusion_folder(folder)


def test_default_video_config_is_videocrafter2s():
    reference = full_size_reference_config()["video_unet"]
    assert resolve_video_config(None) == video_config_from_reference(reference)
    yaml_style = {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": reference}
    assert resolve_video_config(yaml_style) == resolve_video_config(None)
    with pytest.raises(MMGLoadError, match="target"):
        resolve_video_config(dict(yaml_style, target="lvdm.modules.networks.openaimodel.UNetModel"))
