"""Nodes that write MP4 and WAV files into ComfyUI's output folder."""

from __future__ import annotations

import os

import folder_paths
from comfy.cli_args import args
from comfy_api.input_impl import VideoFromFile
from comfy_api.latest import io, ui

from ..mmg_core import media
from . import adapters


def _output_path(prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[str, str, str]:
    """(full path, file name, subfolder) for the next free ``<prefix>_NNNNN_.<ext>`` in the output folder."""
    if not prefix.strip():
        raise ValueError("filename_prefix is empty: give a name such as 'mmg/clip'")
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_output_directory(), width, height
    )
    os.makedirs(folder, exist_ok=True)
    file = f"{name}_{counter:05}_.{extension}"
    return os.path.join(folder, file), file, subfolder


def _workflow_metadata(hidden) -> dict:
    """Prompt and workflow as ComfyUI's own SaveVideo stores them, so dropping the file rebuilds the graph."""
    if args.disable_metadata:
        return {}
    metadata = dict(hidden.extra_pnginfo or {})
    if hidden.prompt is not None:
        metadata["prompt"] = hidden.prompt
    return metadata


class MMGSaveMP4(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSaveMP4",
            display_name="MMG Save MP4",
            category="MMG/output",
            description="Write frames and audio as an MP4 (H.264 + AAC). The audio is padded with silence or "
                        "trimmed to exactly frames / fps seconds so picture and sound end together.",
            inputs=[
                io.Image.Input("images", tooltip="Video frames (IMAGE batch, one image per frame)."),
                io.Float.Input("fps", default=10.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frame rate of the frames; connect the fps output of 'MMG Decode Audio-Video'."),
                io.String.Input("filename_prefix", default="mmg/clip",
                                tooltip="Name of the file in the output folder; may contain subfolders."),
                io.Audio.Input("audio", optional=True, tooltip="Soundtrack; leave empty for a silent video."),
                io.Int.Input("crf", default=18, min=0, max=51, tooltip="H.264 quality: lower is better and larger."),
            ],
            outputs=[io.Video.Output(display_name="video")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, fps: float, filename_prefix: str, audio=None, crf: int = 18) -> io.NodeOutput:
        frames = adapters.images_to_uint8(images)
        sound = adapters.comfy_audio_to_array(audio) if audio is not None else None
        path, file, subfolder = _output_path(filename_prefix, "mp4", frames.shape[2], frames.shape[1])
        media.write_mp4(
            path, frames, sound.samples if sound else None, fps=fps,
            sample_rate=sound.sample_rate if sound else None, metadata=_workflow_metadata(cls.hidden), crf=crf,
        )
        saved = ui.SavedResult(file, subfolder, io.FolderType.output)
        return io.NodeOutput(VideoFromFile(path), ui=ui.PreviewVideo([saved]))


class MMGSaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSaveAudio",
            display_name="MMG Save Audio (WAV)",
            category="MMG/output",
            description="Write audio as a 16-bit PCM WAV file in the output folder.",
            inputs=[
                io.Audio.Input("audio", tooltip="The audio to save."),
                io.String.Input("filename_prefix", default="mmg/audio",
                                tooltip="Name of the file in the output folder; may contain subfolders."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, filename_prefix: str) -> io.NodeOutput:
        sound = adapters.comfy_audio_to_array(audio)
        path, file, subfolder = _output_path(filename_prefix, "wav")
        media.write_wav(path, sound.samples, sound.sample_rate)
        return io.NodeOutput(ui=ui.SavedAudios([ui.SavedResult(file, subfolder, io.FolderType.output)]))
