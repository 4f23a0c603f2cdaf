"""The shipped MMG workflow (VideoCrafter2 + Auffusion) on a real ComfyUI 0.3.75 server, through HTTP.

Every file the workflow names is written at test time in the format its release ships, with random
weights, under the workflow's own file names:
  * ``checkpoints/model.ckpt``: VideoCrafter2's Lightning pickle ``{"state_dict": ...}`` with
    ``model.diffusion_model.*`` (a tiny lvdm U-Net; ``model.json`` beside it gives its settings),
    ``first_stage_model.*`` (a full-size Stable Diffusion VAE in ldm names), ``cond_stage_model.*``
    entries and lvdm's schedule buffers incl. ``scale_arr``;
  * ``auffusion/auffusion-full/``: a diffusers folder (tiny ``unet/``, full-size ``vae/``, HiFi-GAN
    ``vocoder/``, ``condition_config.json`` + ``condition_adapter_0/``);
  * ``text_encoders/``: OpenCLIP ViT-H/14 (open_clip names, as ``open_clip_pytorch_model.bin``) and CLIP
    ViT-L/14 (transformers names). ComfyUI's loaders build their models at full size from the key names,
    so these two are full size (fp16, about 1 GB together), made here and never committed.
The clip is shrunk through the workflow's own inputs (64x64 pixels, 8 frames, 3 steps).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from comfy_harness import ComfyServer, assert_no_import_failures, execution_error, output_files

from mmg_core.compat.mmg import video_config_from_reference
from mmg_core.models.lvdm_unet import LvdmUNetConfig
from mmg_core.models.mmg_coupled import AudioUNetConfig, CrossModalConfig, MMGConfig, MMGCoupledUNet
from mmg_core.vocoder import HiFiGANConfig
from test_mmg_loading import lvdm_buffers, weight_normed_vocoder_state

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "api" / "mmg_videocrafter2_auffusion.json"
NODES = ("MMGCoupledLoader", "MMGAudioTextEncode", "MMGCoupledSampler", "MMGVocoderLoader", "MMGCoupledDecode")
# Real widths of the text encoders (the U-Nets' context) with tiny U-Nets behind them; the widths are
# multiples of 64 because fresh couplers get MMG's 64-d heads.
TINY_VIDEO_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 64, "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 1, "channel_mult": [1, 2, 2, 2], "num_head_channels": 32, "transformer_depth": 1,
    "context_dim": 1024, "use_linear": True, "use_checkpoint": True, "temporal_conv": True,
    "temporal_attention": True, "temporal_selfatt_only": True, "use_relative_position": False,
    "use_causal_attention": False, "temporal_length": 16, "addition_attention": True, "fps_cond": True,
}
TINY_AUDIO_UNET = AudioUNetConfig(sample_size=8, layers_per_block=1, block_out_channels=(64, 128, 128, 128),
                                  cross_attention_dim=64)
TINY_VOCODER = HiFiGANConfig(num_mels=64, upsample_initial_channel=32, resblock_kernel_sizes=(3, 5),
                             resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)))
CLIP_H_LAYERS, CLIP_H_WIDTH = 24, 1024
CLIP_L_LAYERS, CLIP_L_WIDTH = 12, 768
SIZE = {"width": 64, "height": 64, "frames": 8, "steps": 3}


# ----- files in their released formats ---------------------------------------------------------
def random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (zero-initialised output layers would hide wiring mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module


def tiny_mmg() -> MMGCoupledUNet:
    video = video_config_from_reference(TINY_VIDEO_UNET)
    config = MMGConfig(video=video, audio=TINY_AUDIO_UNET, cross_modal=CrossModalConfig((64, 128, 128, 128, 128, 128)))
    return random_(MMGCoupledUNet(config), seed=0)


def sd_vae() -> AutoencoderKL:
    """Stable Diffusion's VAE architecture (VideoCrafter2's first stage and Auffusion's vae/), random."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4).half()


def ldm_vae_state(vae: AutoencoderKL, comfy_root: Path) -> dict[str, torch.Tensor]:
    """diffusers -> ldm key names, with ComfyUI's own converter (the layout of model.ckpt's first stage)."""
    spec = importlib.util.spec_from_file_location("comfy_diffusers_convert", comfy_root / "comfy" / "diffusers_convert.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    return convert.convert_vae_state_dict(vae.state_dict())


def write_videocrafter_ckpt(folder: Path, model: MMGCoupledUNet, vae_state: dict) -> Path:
    state = {f"model.diffusion_model.{k}": v for k, v in model.video_unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_state.items()})
    state["cond_stage_model.model.positional_embedding"] = torch.zeros(77, CLIP_H_WIDTH, dtype=torch.float16)
    state.update(lvdm_buffers())
    torch.save({"state_dict": state, "global_step": 0}, folder / "model.ckpt")
    (folder / "model.json").write_text(json.dumps({"target": "lvdm.modules.networks.openaimodel3d.UNetModel",
                                                   "params": TINY_VIDEO_UNET}))
    return folder / "model.ckpt"


def write_auffusion(root: Path, model: MMGCoupledUNet, vae: AutoencoderKL) -> Path:
    model.audio_unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "AuffusionPipeline"}))
    (root / "vocoder").mkdir()
    (root / "vocoder" / "config.json").write_text(json.dumps({**TINY_VOCODER.to_dict(), "hop_size": 160}))
    torch.save({"generator": weight_normed_vocoder_state(TINY_VOCODER)}, root / "vocoder" / "vocoder.pt")
    (root / "condition_config.json").write_text(json.dumps([{
        "text_encoder_name": "text_encoder_0", "condition_adapter_name": "condition_adapter_0",
        "condition_type": "clip-vit-large-patch14_text", "condition_max_length": 77,
        "condition_dim": CLIP_L_WIDTH, "cross_attention_dim": TINY_AUDIO_UNET.cross_attention_dim}]))
    adapter = root / "condition_adapter_0"
    adapter.mkdir()
    (adapter / "config.json").write_text(json.dumps({"condition_dim": CLIP_L_WIDTH, "model_name": "clip-vit-large-patch14",
                                                     "cross_attention_dim": TINY_AUDIO_UNET.cross_attention_dim}))
    generator = torch.Generator().manual_seed(3)
    width = TINY_AUDIO_UNET.cross_attention_dim
    torch.save({"proj.weight": torch.randn(width, CLIP_L_WIDTH, generator=generator) * 0.05,
                "proj.bias": torch.randn(width, generator=generator) * 0.05,
                "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}, adapter / "condition_adapter.pt")
    return root


def clip_layer(prefix: str, width: int, generator: torch.Generator, open_clip: bool) -> dict[str, torch.Tensor]:
    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.02).half()

    def ones():  # a fresh tensor per entry: safetensors refuses entries that share memory
        return torch.ones(width, dtype=torch.float16)

    def zeros():
        return torch.zeros(width, dtype=torch.float16)

    if open_clip:
        return {
            f"{prefix}ln_1.weight": ones(), f"{prefix}ln_1.bias": zeros(), f"{prefix}ln_2.weight": ones(),
            f"{prefix}ln_2.bias": zeros(), f"{prefix}attn.in_proj_weight": rand(3 * width, width),
            f"{prefix}attn.in_proj_bias": rand(3 * width), f"{prefix}attn.out_proj.weight": rand(width, width),
            f"{prefix}attn.out_proj.bias": rand(width), f"{prefix}mlp.c_fc.weight": rand(4 * width, width),
            f"{prefix}mlp.c_fc.bias": rand(4 * width), f"{prefix}mlp.c_proj.weight": rand(width, 4 * width),
            f"{prefix}mlp.c_proj.bias": rand(width),
        }
    state = {f"{prefix}self_attn.{p}_proj.{kind}": rand(width, width) if kind == "weight" else rand(width)
             for p in ("q", "k", "v", "out") for kind in ("weight", "bias")}
    state.update({f"{prefix}layer_norm1.weight": ones(), f"{prefix}layer_norm1.bias": zeros(),
                  f"{prefix}layer_norm2.weight": ones(), f"{prefix}layer_norm2.bias": zeros(),
                  f"{prefix}mlp.fc1.weight": rand(4 * width, width), f"{prefix}mlp.fc1.bias": rand(4 * width),
                  f"{prefix}mlp.fc2.weight": rand(width, 4 * width), f"{prefix}mlp.fc2.bias": rand(width)})
    return state


def write_open_clip_h(path: Path) -> None:
    """OpenCLIP ViT-H/14's text tower in open_clip's names (open_clip_pytorch_model.bin without the visual tower)."""
    generator = torch.Generator().manual_seed(1)
    width = CLIP_H_WIDTH
    state = {"token_embedding.weight": (torch.randn(49408, width, generator=generator) * 0.02).half(),
             "positional_embedding": (torch.randn(77, width, generator=generator) * 0.01).half(),
             "ln_final.weight": torch.ones(width, dtype=torch.float16), "ln_final.bias": torch.zeros(width, dtype=torch.float16),
             "text_projection": (torch.randn(width, width, generator=generator) * 0.02).half(),
             "logit_scale": torch.tensor(4.6052)}
    for layer in range(CLIP_H_LAYERS):
        state.update(clip_layer(f"transformer.resblocks.{layer}.", width, generator, open_clip=True))
    torch.save(state, path)


def write_clip_l(path: Path) -> None:
    """CLIP ViT-L/14's text model in transformers' names (Auffusion's text_encoder_0, ComfyUI's clip_l)."""
    generator = torch.Generator().manual_seed(2)
    width, text = CLIP_L_WIDTH, "text_model."
    state = {f"{text}embeddings.token_embedding.weight": (torch.randn(49408, width, generator=generator) * 0.02).half(),
             f"{text}embeddings.position_embedding.weight": (torch.randn(77, width, generator=generator) * 0.01).half(),
             f"{text}final_layer_norm.weight": torch.ones(width, dtype=torch.float16),
             f"{text}final_layer_norm.bias": torch.zeros(width, dtype=torch.float16),
             "text_projection.weight": (torch.randn(width, width, generator=generator) * 0.02).half()}
    for layer in range(CLIP_L_LAYERS):
        state.update(clip_layer(f"{text}encoder.layers.{layer}.", width, generator, open_clip=False))
    save_file(state, str(path))


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory):
    """A server of this module's own: the full-size text encoders and VAEs it loads (a few GB of RAM) go
    away with it instead of staying in the session's server; boots with a generous timeout, because it
    starts while the random files are written on a possibly busy machine."""
    with ComfyServer(base_dir=tmp_path_factory.mktemp("comfyui-mmg"), boot_timeout=600) as server:
        yield server


@pytest.fixture(scope="module")
def server(comfy_server):
    """The server with every file of the shipped MMG workflow in place."""
    prompt = json.loads(WORKFLOW.read_text())
    loader = next(node["inputs"] for node in prompt.values() if node["class_type"] == "MMGCoupledLoader")
    clips = [node["inputs"]["clip_name"] for node in prompt.values() if node["class_type"] == "CLIPLoader"]
    model, vae = tiny_mmg(), sd_vae()
    checkpoints = comfy_server.models_dir("checkpoints")
    assert write_videocrafter_ckpt(checkpoints, model, ldm_vae_state(vae, comfy_server.root)).name == loader["video_ckpt"]
    write_auffusion(comfy_server.models_dir("auffusion") / loader["auffusion_folder"], model, vae)
    text_encoders = comfy_server.models_dir("text_encoders")
    write_open_clip_h(text_encoders / clips[0])
    write_clip_l(text_encoders / clips[1])
    return comfy_server


def small_prompt(**sampler_inputs) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    sampler = next(node for node in prompt.values() if node["class_type"] == "MMGCoupledSampler")
    sampler["inputs"].update(SIZE, **sampler_inputs)
    return prompt


def ffprobe(path: Path) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout)["streams"]


# ----- tests -----------------------------------------------------------------------------------
def test_nodes_are_registered_with_tooltips(server):
    assert_no_import_failures(server.log_text(), required=("ComfyUI-MMG",))
    info = server.object_info()
    for node in NODES:
        assert node in info, f"{node} not registered"
        for section in ("required", "optional"):
            for name, spec in info[node]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
    loader = info["MMGCoupledLoader"]["input"]["required"]
    assert "model.ckpt" in loader["video_ckpt"][1]["options"]
    assert "auffusion-full" in loader["auffusion_folder"][1]["options"]
    vocoders = info["MMGVocoderLoader"]["input"]["required"]["vocoder_name"][1]["options"]
    assert "auffusion:auffusion-full" in vocoders


def test_shipped_workflow_writes_an_mp4_with_video_and_audio(server, tmp_path):
    entry = server.run(small_prompt(seed=7), timeout=600)
    mp4s = [item for item in output_files(entry) if item.filename.endswith(".mp4")]
    assert mp4s, entry["outputs"]
    path = tmp_path / "clip.mp4"
    path.write_bytes(server.view_bytes(**mp4s[0].view_args()))
    streams = ffprobe(path)
    video = [s for s in streams if s["codec_type"] == "video"]
    audio = [s for s in streams if s["codec_type"] == "audio"]
    assert [s["codec_name"] for s in video] == ["h264"] and [s["codec_name"] for s in audio] == ["aac"], streams
    assert (int(video[0]["width"]), int(video[0]["height"])) == (SIZE["width"], SIZE["height"])
    seconds = SIZE["frames"] / 12.5  # 8 frames at MMG's 12.5 fps, and as long a soundtrack
    assert abs(float(video[0]["duration"]) - seconds) <= 1 / 12.5
    assert abs(float(audio[0]["duration"]) - seconds) <= 0.05
    assert int(audio[0]["sample_rate"]) == 16000


def test_bad_size_is_a_clear_execution_error(server):
    error = execution_error(server.wait(server.queue(small_prompt(width=100)), timeout=300))
    assert error is not None and "width must be a positive multiple of 64" in error["exception_message"]


def loader_inputs(prompt: dict) -> dict:
    return next(node["inputs"] for node in prompt.values() if node["class_type"] == "MMGCoupledLoader")


def test_a_joint_solver_samples_through_the_shipped_graph(server, tmp_path):
    """dpmpp_2m instead of MMG's DDIM: the pack's joint solvers on VideoCrafter2's scaled process."""
    entry = server.run(small_prompt(seed=8, sampler_name="dpmpp_2m", steps=3), timeout=600)
    assert [item for item in output_files(entry) if item.filename.endswith(".mp4")], entry["outputs"]


@pytest.mark.parametrize("offload", ["unload_after_sampling", "cpu"])
def test_offload_modes_sample_without_errors(server, offload):
    prompt = small_prompt(seed=9, steps=2)
    loader_inputs(prompt)["offload"] = offload
    log_before = len(server.log_text())
    entry = server.run(prompt, timeout=600)
    assert [item for item in output_files(entry) if item.filename.endswith(".mp4")], entry["outputs"]
    assert "Traceback" not in server.log_text()[log_before:]


def test_unknown_sampler_is_a_clear_execution_error(server):
    error = execution_error(server.wait(server.queue(small_prompt(sampler_name="heun")), timeout=300))
    assert error is not None and "dpmpp_2m" in error["exception_message"]
