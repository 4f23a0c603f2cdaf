"""Loading, latent creation, joint sampling and decoding nodes."""

from __future__ import annotations

import torch
import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..mmg_core.pipeline import MAX_BATCH_SIZE, GenerationSettings, decode, generate, preview_frames
from ..mmg_core.sampling import sampler_names
from ..mmg_core.av import AV
from . import adapters
from .models import DTYPES, MMGModel, list_model_files, load_mmg_model

MMGModelType = io.Custom("MMG_MODEL")
AVLatentType = io.Custom("MMG_AV_LATENT")
DEFAULT_SAMPLER = "dpmpp_2m"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class MMGLoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGLoadModel",
            display_name="MMG Load Model",
            category="MMG/loaders",
            description="Load an audio-video diffusion checkpoint from models/mmg.",
            inputs=[
                io.Combo.Input("ckpt_name", options=list_model_files(),
                               tooltip="Checkpoint in ComfyUI/models/mmg: the pack's .safetensors or a released "
                                       "MM-Diffusion .pt (optionally with a .json of its reference arguments beside it)."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the weights. auto: fp32 on CPU, ComfyUI's choice on a GPU."),
            ],
            outputs=[MMGModelType.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, ckpt_name: str, weight_dtype: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(load_mmg_model(ckpt_name, weight_dtype))


class MMGEmptyAVLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGEmptyAVLatent",
            display_name="MMG Empty AV Latent",
            category="MMG/latent",
            description="A blank audio-video canvas with the clip size, frame rate and sample rate of the model.",
            inputs=[
                MMGModelType.Input("model", tooltip="The model whose clip size to use."),
                io.Int.Input("batch_size", default=1, min=1, max=MAX_BATCH_SIZE,
                             tooltip="Number of clips sampled together."),
            ],
            outputs=[AVLatentType.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model: MMGModel, batch_size: int = 1) -> io.NodeOutput:
        config = model.config
        empty = AV(
            video=torch.zeros(batch_size, *config.latent_video_shape), audio=torch.zeros(batch_size, *config.latent_audio_shape)
        )
        return io.NodeOutput(adapters.make_latent(empty, config))


def _step_callback(total: int, config):
    """Per step: stop if the user pressed cancel, advance the bar, show the predicted middle frame."""
    bar = comfy.utils.ProgressBar(total)

    def callback(info) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = ("JPEG", adapters.preview_image(preview_frames(info.denoised, config)), adapters.PREVIEW_SIZE)
        bar.update_absolute(info.step + 1, total, preview)

    return callback


class MMGSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSampler",
            display_name="MMG Sampler",
            category="MMG/sampling",
            description="Denoise video and audio together as one state (shared timestep every step).",
            inputs=[
                MMGModelType.Input("model", tooltip="The coupled audio-video model."),
                AVLatentType.Input("latent", tooltip="Clip size and batch, from 'MMG Empty AV Latent'."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the initial noise, the random attention shifts and ancestral noise."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Number of denoising steps."),
                io.Combo.Input("sampler_name", options=sampler_names(), default=DEFAULT_SAMPLER,
                               tooltip="Solver: ddpm (ancestral), ddim, dpmpp_2m (DPM-Solver++ 2M), unipc, euler."),
            ],
            outputs=[AVLatentType.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model: MMGModel, latent: dict, seed: int, steps: int, sampler_name: str) -> io.NodeOutput:
        if sampler_name not in sampler_names():
            raise ValueError(f"unknown sampler_name {sampler_name!r}; choose one of {', '.join(sampler_names())}")
        shape = adapters.latent_to_av(latent)
        settings = GenerationSettings(seed=seed, steps=steps, sampler=sampler_name, batch_size=shape.batch_size)
        config = model.config
        if latent["config"] != config:
            raise ValueError(
                "the latent was made for another model: create it with 'MMG Empty AV Latent' from the model you sample with"
            )
        network = model.load_to_device()
        result = generate(network, settings, callback=_step_callback(steps, config))
        return io.NodeOutput(adapters.make_latent(result, config))


class MMGDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGDecode",
            display_name="MMG Decode Audio-Video",
            category="MMG/latent",
            description="Turn a sampled audio-video latent into IMAGE frames, AUDIO and the frame rate. "
                        "Clips of a batch follow one another.",
            inputs=[AVLatentType.Input("latent", tooltip="Output of 'MMG Sampler'.")],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Audio.Output(display_name="audio"),
                io.Float.Output(display_name="fps"),
            ],
        )

    @classmethod
    def execute(cls, latent: dict) -> io.NodeOutput:
        clip = decode(adapters.latent_to_av(latent), latent["config"])
        return io.NodeOutput(*adapters.clip_to_comfy(clip))
