"""Loading, latent creation, joint sampling and decoding nodes."""

from __future__ import annotations

import logging

import torch
import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..mmg_core.av import AV
from ..mmg_core.conditioning import Conditioning, Guidance, encode_prompts, prompt_notes
from ..mmg_core.pipeline import MAX_BATCH_SIZE, GenerationSettings, decode, generate, preview_frames
from ..mmg_core.sampling import sampler_names
from ..mmg_core.text import default_text_encoder
from . import adapters
from .models import DEFAULT_MODEL, DTYPES, MMGModel, list_model_files, load_mmg_model

MMGModelType = io.Custom("MMG_MODEL")
AVLatentType = io.Custom("MMG_AV_LATENT")
ConditioningType = io.Custom("MMG_CONDITIONING")
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
                io.Combo.Input("ckpt_name", options=list_model_files(), default=DEFAULT_MODEL,
                               tooltip=f"Checkpoint in ComfyUI/models/mmg: the pack's .safetensors or a released "
                                       f"MM-Diffusion .pt (optionally with a .json of its reference arguments beside "
                                       f"it). {DEFAULT_MODEL} is the text-to-audio-video model shipped with the pack."),
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


class MMGTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGTextEncode",
            display_name="MMG Text Encode (video + audio prompts)",
            category="MMG/conditioning",
            description="Encode what to see and what to hear with the model's own text encoder "
                        "(all-MiniLM-L6-v2, runs on the CPU, offline).",
            inputs=[
                MMGModelType.Input("model", tooltip="The text-conditioned model the prompts are for."),
                io.String.Input("video_prompt", multiline=True, default="a red ball bouncing fast, a sharp click at every bounce",
                                tooltip="What the clip shows (and, unless an audio prompt is given, sounds like)."),
                io.String.Input("audio_prompt", multiline=True, default="",
                                tooltip="What the clip sounds like; empty = use the video prompt."),
                io.String.Input("negative_video_prompt", multiline=True, default="",
                                tooltip="What to steer the picture away from; empty = the unconditional prediction."),
                io.String.Input("negative_audio_prompt", multiline=True, default="",
                                tooltip="What to steer the sound away from; empty = the negative video prompt."),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: MMGModel, video_prompt: str, audio_prompt: str = "", negative_video_prompt: str = "",
                negative_audio_prompt: str = "") -> io.NodeOutput:
        if not model.config.text_conditioned:
            raise ValueError(f"{model.name} is an unconditional model: it takes no prompt (remove MMG Text Encode)")
        if not video_prompt.strip():
            raise ValueError("video_prompt is empty: describe the clip, e.g. 'a red ball bouncing fast'")
        negative_audio = negative_audio_prompt if negative_audio_prompt.strip() else None
        encoder = default_text_encoder()
        conditioning = encode_prompts(encoder, video_prompt, audio_prompt or None, negative_video_prompt, negative_audio)
        notes = prompt_notes(encoder, conditioning, world_vocabulary=model.trained_on_world)
        for note in notes:  # the server log, the node in the UI, and the node's text in /history
            logging.warning("MMG Text Encode: %s", note)
        # Always show something: the frontend keeps a node's last text, so a fixed prompt must replace the warning.
        all_clear = "no warnings: the prompts fit the text encoder" + (
            " and name a scene, a colour and a tempo the model was trained on" if model.trained_on_world else "")
        adapters.show_text_on_node(cls, "\n".join(notes) or all_clear)
        return io.NodeOutput(conditioning, ui={"text": tuple(notes)} if notes else None)


def _step_callback(total: int, config):
    """Per step: stop if the user pressed cancel, advance the bar, show the predicted middle frame."""
    bar = comfy.utils.ProgressBar(total)

    def callback(info) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = ("JPEG", adapters.preview_image(preview_frames(info.denoised, config)), adapters.PREVIEW_SIZE)
        bar.update_absolute(info.step + 1, total, preview)

    return callback


def sampling_inputs(steps_tooltip: str = "Number of denoising steps.") -> list:
    """The solver and guidance widgets, shared by every node that samples the pack's models."""
    return [
        io.Int.Input("steps", default=25, min=1, max=1000, tooltip=steps_tooltip),
        io.Combo.Input("sampler_name", options=sampler_names(), default=DEFAULT_SAMPLER,
                       tooltip="Solver: ddpm (ancestral), ddim, dpmpp_2m (DPM-Solver++ 2M), unipc, euler."),
        io.Float.Input("video_cfg", default=3.0, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance of the picture toward the video prompt (1 = off)."),
        io.Float.Input("audio_cfg", default=3.0, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance of the sound toward the audio prompt (1 = off)."),
        io.Float.Input("modality_scale", default=0.0, min=0.0, max=10.0, step=0.1,
                       tooltip="Modality guidance: push away from a prediction made with the audio-video "
                               "exchange switched off, for tighter sync (0 = off; costs one extra pass)."),
    ]


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
                *sampling_inputs(),
                ConditioningType.Input("conditioning", optional=True,
                                       tooltip="Prompts from 'MMG Text Encode'; required by text-conditioned models."),
            ],
            outputs=[AVLatentType.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model: MMGModel, latent: dict, seed: int, steps: int, sampler_name: str, video_cfg: float = 3.0,
                audio_cfg: float = 3.0, modality_scale: float = 0.0, conditioning: Conditioning | None = None) -> io.NodeOutput:
        if sampler_name not in sampler_names():
            raise ValueError(f"unknown sampler_name {sampler_name!r}; choose one of {', '.join(sampler_names())}")
        if model.config.text_conditioned and conditioning is None:
            raise ValueError(f"{model.name} is text-conditioned: connect 'MMG Text Encode' to the conditioning input")
        shape = adapters.latent_to_av(latent)
        guidance = Guidance(video_cfg=video_cfg, audio_cfg=audio_cfg, modality=modality_scale)
        settings = GenerationSettings(seed=seed, steps=steps, sampler=sampler_name, batch_size=shape.batch_size,
                                      guidance=guidance)
        config = model.config
        if latent["config"] != config:
            raise ValueError(
                "the latent was made for another model: create it with 'MMG Empty AV Latent' from the model you sample with"
            )
        network = model.load_to_device()
        result = generate(network, settings, conditioning=conditioning, callback=_step_callback(steps, config))
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
