"""Nodes for the MMG family: VideoCrafter2's video U-Net and Auffusion's audio U-Net coupled by
cross-modal transformers (``mmg_core.mmg_loading`` / ``mmg_pipeline``).

ComfyUI's own parts do what they already can: core CLIP loaders and text encoders make the prompt
states (OpenCLIP ViT-H/14 for the video, CLIP ViT-L/14 for the audio), core ``VAE`` objects decode the
latents. This module only converts between those ComfyUI values and ``mmg_core``'s tensors.

Model folders: VideoCrafter2's ``model.ckpt`` in ``models/checkpoints`` or ``models/diffusion_models``;
Auffusion's whole diffusers folder in ``models/auffusion``; HiFi-GAN vocoders in ``models/vocoders``
(or the ``vocoder/`` inside an Auffusion folder); trained couplers in ``models/mmg``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io
from einops import rearrange

from ..mmg_core.auffusion_text import ConditionAdapter, audio_context, find_adapter_folder, load_condition_adapter
from ..mmg_core.mmg_loading import load_mmg
from ..mmg_core.mmg_pipeline import (
    DEFAULT_MEL_BINS,
    LATENT_CHANNELS,
    ClipSize,
    MMGSettings,
    audio_latents_for_vae,
    conditions_from_states,
    frames_per_second,
    generate_mmg,
    read_auffusion_vae,
    read_videocrafter_vae,
    spectrogram_to_waveform,
    video_config_beside,
    video_latents_for_vae,
)
from ..mmg_core.mmg_sampling import SAMPLER_NAMES, LvdmSchedule
from ..mmg_core.models.mmg_coupled import MMGConfig
from ..mmg_core.vocoder import PRESETS, WEIGHT_SUFFIXES, HiFiGAN, find_vocoder_files, load_hifigan
from .models import DTYPES, FOLDER as MMG_FOLDER, choose_dtype

AUFFUSION_FOLDER = "auffusion"
VOCODER_FOLDER = "vocoders"
VIDEO_FOLDERS = ("checkpoints", "diffusion_models")
NO_COUPLERS = "none (fresh couplers)"
AUFFUSION_VOCODER_PREFIX = "auffusion:"  # combo entry for the vocoder/ inside an Auffusion folder
VOCODER_CONFIGS = ["config.json", *PRESETS]
OFFLOAD = {
    "auto": "ComfyUI moves the U-Nets to the GPU to sample and back to CPU RAM when another model needs room",
    "unload_after_sampling": "as auto, and back to CPU RAM right after sampling (room for the VAEs and vocoder)",
    "cpu": "sample on the CPU (no GPU memory; very slow at full size)",
}
TOKEN_COUNT_KEY = "mmg_token_count"  # set by MMG Audio Text Encode: rows of real tokens in the states
CLIP_END_TOKEN = 49407  # "<|endoftext|>" of CLIP's BPE vocabulary
MAX_SEED = 0xFFFFFFFFFFFFFFFF

CoupledModelType = io.Custom("MMG_COUPLED_MODEL")
CoupledLatentType = io.Custom("MMG_COUPLED_LATENT")
VocoderType = io.Custom("MMG_VOCODER")


# ----------------------------------------------------------------------------------------------
# Model folders
# ----------------------------------------------------------------------------------------------
def register_mmg_folders() -> None:
    """``models/auffusion`` (folders) and ``models/vocoders``, keeping paths a user configured."""
    for name in (AUFFUSION_FOLDER, VOCODER_FOLDER):
        default = os.path.join(folder_paths.models_dir, name)
        paths, extensions = folder_paths.folder_names_and_paths.get(name, ([default], set()))
        folder_paths.folder_names_and_paths[name] = (list(paths), set(extensions) | set(WEIGHT_SUFFIXES))


def _subfolders(folder_name: str, accept) -> dict[str, Path]:
    """Folders (up to two levels down) under every path of a model folder that ``accept`` takes."""
    register_mmg_folders()
    found: dict[str, Path] = {}
    for root in folder_paths.get_folder_paths(folder_name):
        root = Path(root)
        if not root.is_dir():
            continue
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            candidates = [child] + sorted(p for p in child.iterdir() if p.is_dir())
            for folder in candidates:
                if accept(folder):
                    found.setdefault(folder.relative_to(root).as_posix(), folder)
    return found


def _is_auffusion(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file()


def auffusion_folders() -> dict[str, Path]:
    return _subfolders(AUFFUSION_FOLDER, _is_auffusion)


def video_checkpoints() -> list[str]:
    names: list[str] = []
    for folder in VIDEO_FOLDERS:
        names += [n for n in folder_paths.get_filename_list(folder) if n not in names]
    return names


def resolve_video_checkpoint(name: str) -> str:
    for folder in VIDEO_FOLDERS:
        path = folder_paths.get_full_path(folder, name) if name else None
        if path is not None:
            return path
    where = ", ".join(p for f in VIDEO_FOLDERS for p in folder_paths.get_folder_paths(f))
    raise FileNotFoundError(f"video checkpoint {name!r} not found. Put VideoCrafter2's model.ckpt in one of: {where}, "
                            "then refresh (R)")


def resolve_auffusion(name: str) -> Path:
    folders = auffusion_folders()
    if name not in folders:
        where = ", ".join(folder_paths.get_folder_paths(AUFFUSION_FOLDER))
        raise FileNotFoundError(
            f"Auffusion folder {name!r} not found. Put the whole Auffusion model folder (with unet/, vae/, vocoder/, "
            f"text_encoder_0/, condition_adapter_0/) in {where}, then refresh (R). Found: {', '.join(folders) or 'none'}"
        )
    return folders[name]


def coupler_files() -> list[str]:
    return [NO_COUPLERS] + [n for n in folder_paths.get_filename_list(MMG_FOLDER) if n.endswith(".safetensors")]


def vocoder_choices() -> list[str]:
    register_mmg_folders()
    files = [n for n in folder_paths.get_filename_list(VOCODER_FOLDER) if not n.endswith(".json")]
    return [AUFFUSION_VOCODER_PREFIX + n for n in auffusion_folders()] + files


def resolve_vocoder(name: str) -> Path:
    if name.startswith(AUFFUSION_VOCODER_PREFIX):
        return resolve_auffusion(name[len(AUFFUSION_VOCODER_PREFIX):]) / "vocoder"
    path = folder_paths.get_full_path(VOCODER_FOLDER, name) if name else None
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(VOCODER_FOLDER))
        raise FileNotFoundError(f"vocoder {name!r} not found: put a HiFi-GAN weight file (with its config.json beside "
                                f"it) in {where}, or pick an Auffusion folder's vocoder ({AUFFUSION_VOCODER_PREFIX}...)")
    return Path(path)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# What the sockets carry
# ----------------------------------------------------------------------------------------------
@dataclass
class CoupledModel:
    """MMG_COUPLED_MODEL: the coupled U-Nets under ComfyUI's model management, plus what sampling needs."""

    patcher: comfy.model_patcher.ModelPatcher
    config: MMGConfig
    schedule: LvdmSchedule
    adapter: ConditionAdapter | None
    mel_bins: int
    video_scale: float  # latent scale factors of the two VAEs
    audio_scale: float
    offload: str
    name: str

    def load(self) -> torch.nn.Module:
        if self.offload != "cpu":
            mm.load_models_gpu([self.patcher])
        return self.patcher.model

    def unload(self) -> None:
        """Back to the offload device (CPU RAM) now, instead of when another model needs the room."""
        for loaded in list(mm.current_loaded_models):
            if loaded.model is self.patcher:
                loaded.model_unload()
                mm.current_loaded_models.remove(loaded)
        mm.soft_empty_cache()


def conditioning_states(conditioning: Any, name: str) -> tuple[torch.Tensor, int | None]:
    """Core CONDITIONING ``[[states (1, L, D), {...}]]`` -> (states, token count if known)."""
    if not isinstance(conditioning, list) or not conditioning or not isinstance(conditioning[0], (list, tuple)):
        raise ValueError(f"{name} must be a CONDITIONING (connect CLIP Text Encode)")
    if len(conditioning) != 1:
        raise ValueError(f"{name} holds {len(conditioning)} combined conditionings; MMG takes one prompt per input: "
                         "use one CLIP Text Encode (Conditioning Concat is fine, Combine is not)")
    states, extra = conditioning[0][0], conditioning[0][1] if len(conditioning[0]) > 1 else {}
    if not isinstance(states, torch.Tensor) or states.dim() != 3:
        raise ValueError(f"{name} holds no token states (batch, tokens, width)")
    return states, extra.get(TOKEN_COUNT_KEY)


def real_token_count(tokens: dict) -> int:
    """Rows of real tokens (start, words, end) in the first 77-token chunk of a CLIP tokenizer's output."""
    chunk = next(iter(tokens.values()))[0]
    ids = [item[0] for item in chunk]
    for index, token in enumerate(ids[1:], start=1):
        if isinstance(token, int) and token == CLIP_END_TOKEN:
            return index + 1
    return len(ids)


def _vae_decode(vae, latents: torch.Tensor, name: str) -> torch.Tensor:
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS:
        raise ValueError(f"{name} has {vae.latent_channels} latent channels; MMG needs a Stable Diffusion-type VAE (4): "
                         "use the VAE output of 'MMG Load VideoCrafter2 + Auffusion'")
    return vae.decode(latents)  # (N, H, W, C) in [0, 1]


# ----------------------------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------------------------
class MMGCoupledLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGCoupledLoader",
            display_name="MMG Load VideoCrafter2 + Auffusion",
            category="MMG/loaders",
            description="Couple VideoCrafter2's video U-Net and Auffusion's audio U-Net with cross-modal transformers. "
                        "Also gives both VAEs (from model.ckpt and from the Auffusion folder) as core VAEs.",
            inputs=[
                io.Combo.Input("video_ckpt", options=video_checkpoints(),
                               tooltip="VideoCrafter2's model.ckpt, in models/checkpoints or models/diffusion_models. "
                                       "A <name>.json beside it may give other lvdm U-Net settings."),
                io.Combo.Input("auffusion_folder", options=list(auffusion_folders()),
                               tooltip="Auffusion's whole diffusers folder (unet/, vae/, vocoder/, text_encoder_0/, "
                                       "condition_adapter_0/) inside models/auffusion."),
                io.Combo.Input("couplers", options=coupler_files(), default=NO_COUPLERS,
                               tooltip="Trained cross-modal transformers (a couplers-only .safetensors of this pack in "
                                       "models/mmg). 'none' starts fresh couplers, which pass features through "
                                       "unchanged until trained."),
                io.Int.Input("coupler_seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Seed of the fresh couplers' random initialisation (unused with a coupler file)."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the U-Nets: fp16/bf16 need about 9.2 GB of GPU memory to sample, "
                                       "fp32 about 18.4 GB. auto: fp32 on CPU, ComfyUI's choice on a GPU."),
                io.Combo.Input("offload", options=list(OFFLOAD), default="auto",
                               tooltip="; ".join(f"{k}: {v}" for k, v in OFFLOAD.items()) + "."),
            ],
            outputs=[
                CoupledModelType.Output(display_name="model"),
                io.Vae.Output(display_name="video_vae"),
                io.Vae.Output(display_name="audio_vae"),
            ],
        )

    @classmethod
    def execute(cls, video_ckpt: str, auffusion_folder: str, couplers: str = NO_COUPLERS, coupler_seed: int = 0,
                weight_dtype: str = "auto", offload: str = "auto") -> io.NodeOutput:
        _check_choice("offload", offload, list(OFFLOAD))
        video_path = resolve_video_checkpoint(video_ckpt)
        folder = resolve_auffusion(auffusion_folder)
        coupled = None if couplers == NO_COUPLERS else folder_paths.get_full_path_or_raise(MMG_FOLDER, couplers)
        device = torch.device("cpu") if offload == "cpu" else mm.get_torch_device()
        loaded = load_mmg(video_path, folder, coupled, video_config=video_config_beside(video_path),
                          dtype=choose_dtype(weight_dtype, device), generator=torch.Generator().manual_seed(coupler_seed))
        adapter_folder = find_adapter_folder(folder)
        video_vae, audio_vae = read_videocrafter_vae(video_path), read_auffusion_vae(folder)
        offload_device = torch.device("cpu") if offload == "cpu" else mm.unet_offload_device()
        model = CoupledModel(
            patcher=comfy.model_patcher.ModelPatcher(loaded.model, load_device=device, offload_device=offload_device),
            config=loaded.config, schedule=loaded.video_schedule,
            adapter=load_condition_adapter(adapter_folder) if adapter_folder is not None else None,
            mel_bins=loaded.vocoder.config.num_mels if loaded.vocoder is not None else DEFAULT_MEL_BINS,
            video_scale=video_vae.scale_factor, audio_scale=audio_vae.scale_factor, offload=offload,
            name=f"{video_ckpt} + {auffusion_folder}",
        )
        logging.info("MMG: %s (couplers: %s)", model.name, loaded.sources["couplers"])
        return io.NodeOutput(model, _core_vae(video_vae.state), _core_vae(audio_vae.state))


def _core_vae(state: dict):
    """ComfyUI's own VAE (it recognises both the ldm and the diffusers key layouts)."""
    vae = comfy.sd.VAE(sd=state)
    vae.throw_exception_if_invalid()
    return vae


class MMGAudioTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGAudioTextEncode",
            display_name="MMG Audio Text Encode (Auffusion)",
            category="MMG/conditioning",
            description="CLIP Text Encode for Auffusion's audio prompt: the same encoding, and it records how many "
                        "tokens the prompt has so the sampler pads exactly as Auffusion does.",
            inputs=[
                io.Clip.Input("clip", tooltip="CLIP ViT-L/14 text encoder (Auffusion's text_encoder_0, via Load CLIP)."),
                io.String.Input("text", multiline=True, default="", dynamic_prompts=True,
                                tooltip="What the clip sounds like."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, clip, text: str) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip is not connected: load CLIP ViT-L/14 with Load CLIP")
        tokens = clip.tokenize(text)
        count = real_token_count(tokens)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        return io.NodeOutput([[states, {**extra, TOKEN_COUNT_KEY: count}] for states, extra in conditioning])


def _progress(total: int):
    bar = comfy.utils.ProgressBar(total)

    def callback(step) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step.step + 1, total)

    return callback


class MMGCoupledSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGCoupledSampler",
            display_name="MMG Sampler (VideoCrafter2 + Auffusion)",
            category="MMG/sampling",
            description="Joint sampling of video and audio (VideoCrafter2's schedule with its scale_arr for the video, "
                        "Auffusion's for the audio), with classifier-free guidance per modality.",
            inputs=[
                CoupledModelType.Input("model", tooltip="From 'MMG Load VideoCrafter2 + Auffusion'."),
                io.Conditioning.Input("video_positive", tooltip="Video prompt: CLIP Text Encode with OpenCLIP ViT-H/14."),
                io.Conditioning.Input("video_negative",
                                      tooltip="Negative video prompt: CLIP Text Encode with OpenCLIP ViT-H/14; an "
                                              "empty text is VideoCrafter2's unconditional input."),
                io.Conditioning.Input("audio_positive",
                                      tooltip="Audio prompt: 'MMG Audio Text Encode' (or CLIP Text Encode) with CLIP ViT-L/14."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the initial video and audio noise."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="DDIM steps (MMG: 25)."),
                io.Float.Input("video_cfg", default=12.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the picture (MMG: 12; 1 = off)."),
                io.Float.Input("audio_cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the sound (MMG: 7.5; 1 = off)."),
                io.Float.Input("modality_scale", default=0.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Push away from the prediction without the cross-modal transformers, for "
                                       "tighter sync (0 = off, as MMG; costs one extra pass per step)."),
                io.Int.Input("width", default=512, min=64, max=2048, step=64, tooltip="Video width in pixels (MMG: 512)."),
                io.Int.Input("height", default=320, min=64, max=2048, step=64, tooltip="Video height in pixels (MMG: 320)."),
                io.Int.Input("frames", default=40, min=8, max=400, step=8,
                             tooltip="Frames at 12.5 fps; the audio lasts as long (40 frames = 3.2 s, MMG's clip)."),
                io.Int.Input("fps", default=12, min=1, max=60,
                             tooltip="Frame rate the video U-Net is conditioned on. MMG's clips play at 12.5 fps and "
                                     "its inference passes int(12.5) = 12."),
                io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Clips sampled together."),
                # Last of the widgets, so workflows saved before it existed keep their widget values.
                io.Combo.Input("sampler_name", options=list(SAMPLER_NAMES), default="ddim",
                               tooltip="ddim: MMG's own sampler (VideoCrafter2's DDIM with its scale_arr). The others are "
                                       "the pack's joint solvers on the same noise processes (ddpm is ancestral: "
                                       "it draws fresh noise from the seed every step)."),
                io.Conditioning.Input("audio_negative", optional=True,
                                      tooltip="Negative audio prompt; leave empty for zeros, MMG's and Auffusion's "
                                              "unconditional audio input."),
            ],
            outputs=[CoupledLatentType.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model: CoupledModel, video_positive, video_negative, audio_positive, seed: int, steps: int,
                video_cfg: float, audio_cfg: float, modality_scale: float, width: int, height: int, frames: int,
                fps: int, batch_size: int, sampler_name: str = "ddim", audio_negative=None) -> io.NodeOutput:
        if not isinstance(model, CoupledModel):
            raise ValueError("model must come from 'MMG Load VideoCrafter2 + Auffusion'")
        for name, value, low, high in (("steps", steps, 1, 1000), ("batch_size", batch_size, 1, 16),
                                       ("video_cfg", video_cfg, 0, 30), ("audio_cfg", audio_cfg, 0, 30),
                                       ("modality_scale", modality_scale, 0, 10), ("fps", fps, 1, 60)):
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        size = ClipSize(frames=frames, height=height, width=width, mel_bins=model.mel_bins)
        size.check(model.config.num_levels)
        audio = [conditioning_states(c, n) for c, n in ((audio_positive, "audio_positive"), (audio_negative, "audio_negative"))
                 if c is not None]
        audio_states = [audio_context(states, model.adapter, count) for states, count in audio]
        conditions = conditions_from_states(
            conditioning_states(video_positive, "video_positive")[0], conditioning_states(video_negative, "video_negative")[0],
            audio_states[0], audio_states[1] if len(audio_states) > 1 else None, batch_size,
        )
        settings = MMGSettings(steps=steps, audio_cfg=audio_cfg, video_cfg=video_cfg, modality=modality_scale, fps=fps,
                               sampler=sampler_name)
        mm.throw_exception_if_processing_interrupted()
        network = model.load()
        audio_latents, video_latents = generate_mmg(network, conditions, size, settings, video_schedule=model.schedule,
                                                    generator=torch.Generator().manual_seed(seed), callback=_progress(steps))
        if model.offload == "unload_after_sampling":
            model.unload()
        return io.NodeOutput({"audio": audio_latents.cpu(), "video": video_latents.cpu(),
                              "video_scale": model.video_scale, "audio_scale": model.audio_scale})


class MMGVocoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGVocoderLoader",
            display_name="MMG Load Vocoder (HiFi-GAN)",
            category="MMG/loaders",
            description="A HiFi-GAN vocoder that turns mel spectrograms into sound: the vocoder/ of an Auffusion folder, "
                        "or a weight file in models/vocoders.",
            inputs=[
                io.Combo.Input("vocoder_name", options=vocoder_choices(),
                               tooltip=f"'{AUFFUSION_VOCODER_PREFIX}<folder>' = the vocoder/ inside that Auffusion folder "
                                       "(16 kHz, 256 mels: what MMG needs); other entries are files in models/vocoders."),
                io.Combo.Input("config", options=VOCODER_CONFIGS, default="config.json",
                               tooltip="config.json: the generator settings in the file beside the weights; or a "
                                       "preset (auffusion: 16 kHz, 256 mels; universal_v1: 22.05 kHz, 80 mels)."),
            ],
            outputs=[VocoderType.Output(display_name="vocoder")],
        )

    @classmethod
    def execute(cls, vocoder_name: str, config: str = "config.json") -> io.NodeOutput:
        _check_choice("config", config, VOCODER_CONFIGS)
        path = resolve_vocoder(vocoder_name)
        find_vocoder_files(path)  # a clear error for a folder without weights, before anything is built
        return io.NodeOutput(load_hifigan(path, None if config == "config.json" else PRESETS[config]))


class MMGCoupledDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGCoupledDecode",
            display_name="MMG Decode (VideoCrafter2 + Auffusion)",
            category="MMG/latent",
            description="Video latents -> frames with the video VAE; audio latents -> spectrogram with the audio VAE -> "
                        "waveform with the vocoder. Clips of a batch follow one another.",
            inputs=[
                CoupledLatentType.Input("latent", tooltip="From 'MMG Sampler (VideoCrafter2 + Auffusion)'."),
                io.Vae.Input("video_vae", tooltip="VideoCrafter2's VAE (Stable Diffusion's), e.g. from the loader."),
                io.Vae.Input("audio_vae", tooltip="Auffusion's VAE, e.g. from the loader."),
                VocoderType.Input("vocoder", tooltip="Auffusion's HiFi-GAN, from 'MMG Load Vocoder'."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Audio.Output(display_name="audio"),
                io.Float.Output(display_name="fps"),
            ],
        )

    @classmethod
    def execute(cls, latent: dict, video_vae, audio_vae, vocoder: HiFiGAN) -> io.NodeOutput:
        if not isinstance(latent, dict) or not {"audio", "video"} <= set(latent):
            raise ValueError("latent must come from 'MMG Sampler (VideoCrafter2 + Auffusion)'")
        frames = _vae_decode(video_vae, video_latents_for_vae(latent["video"], latent["video_scale"]), "video_vae")
        image = _vae_decode(audio_vae, audio_latents_for_vae(latent["audio"], latent["audio_scale"]), "audio_vae")
        mm.throw_exception_if_processing_interrupted()
        wave = spectrogram_to_waveform(rearrange(image, "b h w c -> b c h w"), vocoder)  # (b, 1, t)
        sample_rate = vocoder.config.sampling_rate
        fps = frames_per_second(latent["video"].shape[2], wave.shape[-1], sample_rate)
        audio = {"waveform": rearrange(wave, "b c t -> c (b t)")[None].contiguous(), "sample_rate": sample_rate}
        return io.NodeOutput(frames.float().contiguous(), audio, fps)


MMG_COUPLED_NODES: list[type[io.ComfyNode]] = [
    MMGCoupledLoader, MMGAudioTextEncode, MMGCoupledSampler, MMGVocoderLoader, MMGCoupledDecode,
]
