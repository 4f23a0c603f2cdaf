"""Audio-video sync nodes: score any IMAGE + AUDIO pair with CAM-Sync, move the audio by an offset,
and keep the best of N seeds. The measures live in ``mmg_core.sync``; these nodes only adapt types.

Classifier files live in ComfyUI's ``models/mmg_sync`` folder (plus the pack's own ``models/sync``,
where the shipped audio event classifier is kept). Offsets follow ``OFFSET_CONVENTION``:
positive = the audio is late.
"""

from __future__ import annotations

import contextlib
import math
import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..mmg_core.conditioning import Conditioning, Guidance
from ..mmg_core.pipeline import GenerationSettings, preview_frames
from ..mmg_core.sampling import sampler_names
from ..mmg_core.sync.backbones import DEFAULT_AUDIO_CLASSIFIER, TRAIN_AUDIO_COMMAND, SyncModels, load_sync_models
from ..mmg_core.sync.best_of_n import MAX_CANDIDATES, RANK_KEYS, best_of_n
from ..mmg_core.sync.camsync import DEFAULT_MAX_LAG_S, OFFSET_CONVENTION
from ..mmg_core.sync.evaluate import score_clip
from ..mmg_core.sync.shift import correction_s, seconds_to_samples, shift_audio
from ..mmg_core.sync.views import cam_overlay, check_clip, sync_figure, sync_report
from . import adapters
from .models import PACK_MODELS_DIR, MMGModel
from .sampler_nodes import MAX_SEED, ConditioningType, MMGModelType, sampling_inputs

SYNC_FOLDER = "mmg_sync"
SYNC_SUFFIXES = {".safetensors", ".pt", ".pth"}
PACK_SYNC_DIR = os.path.join(PACK_MODELS_DIR, "sync")
BUILTIN_FRAME_CLASSIFIER = "efficientnet-lite0 (ImageNet, built in)"
DEFAULT_AUDIO_FILE = DEFAULT_AUDIO_CLASSIFIER.name
MAX_SHIFT_S = 30.0


# ----------------------------------------------------------------------------------------------
# Classifier files


def register_sync_folder() -> None:
    """``models/mmg_sync`` (keeping any extra paths a user configured) and the pack's ``models/sync``."""
    default = os.path.join(folder_paths.models_dir, SYNC_FOLDER)
    paths, known = folder_paths.folder_names_and_paths.get(SYNC_FOLDER, ([default], set()))
    paths = list(paths) + ([PACK_SYNC_DIR] if PACK_SYNC_DIR not in paths else [])
    folder_paths.folder_names_and_paths[SYNC_FOLDER] = (paths, set(known) | SYNC_SUFFIXES)


def classifier_files() -> list[str]:
    register_sync_folder()
    return sorted(folder_paths.get_filename_list(SYNC_FOLDER), key=str.lower)


def audio_classifier_options() -> list[str]:
    """The shipped default first (listed even while it is missing, so workflows keep their value)."""
    return [DEFAULT_AUDIO_FILE] + [name for name in classifier_files() if name != DEFAULT_AUDIO_FILE]


def frame_classifier_options() -> list[str]:
    return [BUILTIN_FRAME_CLASSIFIER] + classifier_files()


def resolve_classifier(name: str, kind: str) -> str:
    register_sync_folder()
    path = folder_paths.get_full_path(SYNC_FOLDER, name) if name else None
    if path is not None:
        return path
    folders = ", ".join(folder_paths.get_folder_paths(SYNC_FOLDER))
    available = ", ".join(classifier_files()) or "none"
    default_hint = ""
    if kind == "audio" and name == DEFAULT_AUDIO_FILE:
        default_hint = (f"The pack's default audio classifier is trained with `{TRAIN_AUDIO_COMMAND}`, which writes "
                        f"models/sync/{DEFAULT_AUDIO_FILE} inside the pack. ")
    what = ("an audio classifier written by mmg_core.sync.save_audio_classifier" if kind == "audio"
            else f"an EfficientNet-Lite0 state dict, or choose '{BUILTIN_FRAME_CLASSIFIER}'")
    raise FileNotFoundError(
        f"{kind} classifier file {name!r} not found in {folders}. {default_hint}Put {what} in one of those folders "
        f"and refresh (R) the node list. Available: {available}"
    )


def load_classifiers(frame_classifier: str, audio_classifier: str) -> SyncModels:
    frame_path = None if frame_classifier == BUILTIN_FRAME_CLASSIFIER else resolve_classifier(frame_classifier, "frame")
    audio_path = resolve_classifier(audio_classifier, "audio")
    return load_sync_models(frame_path, audio_path, device=mm.get_torch_device())


def classifier_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("audio_classifier", options=audio_classifier_options(), default=DEFAULT_AUDIO_FILE,
                       tooltip=f"Audio event classifier whose Grad-CAM gives the audio energy: a file in "
                               f"ComfyUI/models/mmg_sync or the pack's models/sync. {DEFAULT_AUDIO_FILE} is the "
                               f"pack's own (trained with {TRAIN_AUDIO_COMMAND})."),
        io.Combo.Input("frame_classifier", options=frame_classifier_options(), default=BUILTIN_FRAME_CLASSIFIER,
                       tooltip="Frame classifier whose Grad-CAM gives the video energy: the built-in ImageNet "
                               "EfficientNet-Lite0, or a fine-tune with the same keys in ComfyUI/models/mmg_sync."),
    ]


@contextlib.contextmanager
def gradients_allowed():
    """ComfyUI runs every node under ``torch.inference_mode()`` (execution.py), where no gradient can be
    taken, and Grad-CAM needs one (of the classifier head). Classifiers loaded and tensors made in here
    are ordinary tensors that autograd may use."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _check_max_lag(max_lag_s: float) -> None:
    if not (math.isfinite(max_lag_s) and max_lag_s > 0):
        raise ValueError(f"max_lag_s must be > 0 seconds (2 searches +-2 s), got {max_lag_s}")


# ----------------------------------------------------------------------------------------------
# Score


def _headline(result) -> str:
    """One line for the node in the UI: the numbers, or why there are none."""
    if not result.synchronizable:
        return f"unsynchronizable: {result.reason}"
    return (f"CAM-Sync {result.score:.3f}, offset {result.offset_s:+.3f} s, confidence {result.confidence:.3f}, "
            f"at lag 0 {result.score_at_0:.3f}")


class MMGSyncScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSyncScore",
            display_name="MMG Sync Score (CAM-Sync)",
            category="MMG/sync",
            description="Measure how well a video's sound matches its picture: CAM-Sync correlates where a frame "
                        "classifier sees motion with when an audio classifier hears events. Works on any frames + "
                        f"audio. Offset sign: {OFFSET_CONVENTION}.",
            inputs=[
                io.Image.Input("images", tooltip="Video frames (IMAGE batch, one image per frame, in time order)."),
                io.Audio.Input("audio", tooltip="The soundtrack of those frames, starting with the first frame."),
                io.Float.Input("fps", default=10.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Frame rate of the frames; connect the fps output of 'MMG Decode Audio-Video'."),
                *classifier_inputs(),
                io.Float.Input("max_lag_s", default=DEFAULT_MAX_LAG_S, min=0.04, max=10.0, step=0.01,
                               tooltip="Largest offset searched, in seconds (at most half the clip is used)."),
                io.Float.Input("overlay_strength", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the VideoCAM heatmap is blended over the frames."),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip="Peak normalised cross-correlation (-1..1); NaN when "
                                                              "the clip cannot be synchronised (see the report)."),
                io.Float.Output(display_name="offset_s", tooltip=f"Lag of the peak in seconds: {OFFSET_CONVENTION}."),
                io.Float.Output(display_name="confidence", tooltip="Peak minus the median correlation over all lags."),
                io.Float.Output(display_name="score_at_0", tooltip="Correlation at lag 0: how synchronised the clip "
                                                                   "is as it stands."),
                io.String.Output(display_name="report", tooltip="The numbers, what they mean, and why NaN if so."),
                io.Image.Output(display_name="cam_overlay", tooltip="The frames with the VideoCAM heatmap on top."),
                io.Image.Output(display_name="plot", tooltip="Energy curves over time and correlation over lag."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, audio, fps: float, audio_classifier: str = DEFAULT_AUDIO_FILE,
                frame_classifier: str = BUILTIN_FRAME_CLASSIFIER, max_lag_s: float = DEFAULT_MAX_LAG_S,
                overlay_strength: float = 0.6) -> io.NodeOutput:
        video = adapters.images_to_video(images)
        sound = adapters.comfy_audio_to_array(audio)
        check_clip(video.shape[0], fps, sound.samples.shape[-1], sound.sample_rate)
        _check_max_lag(max_lag_s)
        if not 0.0 <= overlay_strength <= 1.0:
            raise ValueError(f"overlay_strength must be between 0 and 1, got {overlay_strength}")
        with gradients_allowed():
            models = load_classifiers(frame_classifier, audio_classifier)
            scores = score_clip(models, video.clone(), sound.samples, fps, sound.sample_rate, max_lag_s=max_lag_s)
        report = sync_report(scores, sample_rate=sound.sample_rate,
                             audio_seconds=sound.samples.shape[-1] / sound.sample_rate,
                             notes={"frame_classifier": frame_classifier, "audio_classifier": audio_classifier})
        overlay = cam_overlay(adapters.rgb_images(images), scores.video.heatmaps, overlay_strength)
        plot = adapters.array_to_image(sync_figure(scores))
        result = scores.cam_sync
        shown = {"text": (report,), **ui.PreviewImage(plot).as_dict()}
        adapters.show_text_on_node(cls, _headline(result))
        return io.NodeOutput(result.score, result.offset_s, result.confidence, result.score_at_0, report, overlay,
                             plot, ui=shown)


# ----------------------------------------------------------------------------------------------
# Apply offset


class MMGSyncApplyOffset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSyncApplyOffset",
            display_name="MMG Sync Apply Offset",
            category="MMG/sync",
            description="Move the audio in time against the picture, keeping its length: the gap opened at one end "
                        "is silence and what is pushed past the other end is dropped. Connect 'offset_s' of MMG Sync "
                        "Score to estimated_offset_s to put late (or early) audio back in sync.",
            inputs=[
                io.Audio.Input("audio", tooltip="The soundtrack to move."),
                io.Float.Input("delay_s", default=0.0, min=-MAX_SHIFT_S, max=MAX_SHIFT_S, step=0.01,
                               tooltip="Move the audio later by this many seconds (negative = earlier)."),
                io.Float.Input("estimated_offset_s", optional=True, force_input=True,
                               tooltip=f"A measured offset ({OFFSET_CONVENTION}), e.g. offset_s of MMG Sync Score. "
                                       "When connected the audio is also moved by minus this much, which undoes "
                                       "it. NaN (unsynchronizable clip) moves nothing."),
            ],
            outputs=[
                io.Audio.Output(display_name="audio"),
                io.Float.Output(display_name="applied_delay_s",
                                tooltip="How much later the audio now plays, rounded to whole samples."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, audio, delay_s: float = 0.0, estimated_offset_s: float | None = None) -> io.NodeOutput:
        waveform, sample_rate = adapters.comfy_audio_waveform(audio)
        if not (math.isfinite(delay_s) and abs(delay_s) <= MAX_SHIFT_S):
            raise ValueError(f"delay_s must be a number of seconds between -{MAX_SHIFT_S:g} and {MAX_SHIFT_S:g}, "
                             f"got {delay_s}")
        total, note = float(delay_s), f"delay {delay_s:+.3f} s"
        if estimated_offset_s is not None:
            if math.isfinite(estimated_offset_s):
                total += correction_s(float(estimated_offset_s))
                note += f", minus the estimated offset {estimated_offset_s:+.3f} s"
            else:
                note += ", estimated offset is NaN (clip unsynchronizable): not applied"
        samples = seconds_to_samples(total, sample_rate)
        if abs(samples) >= waveform.shape[-1]:
            raise ValueError(f"moving the audio by {total:+.3f} s would push all {waveform.shape[-1] / sample_rate:.3f} s "
                             "of it out of the clip: use a smaller delay_s (or check the connected offset)")
        moved = shift_audio(waveform, samples)
        applied = samples / sample_rate
        text = f"audio moved {applied:+.4f} s ({note}); {OFFSET_CONVENTION}"
        adapters.show_text_on_node(cls, text)
        return io.NodeOutput({"waveform": moved, "sample_rate": sample_rate}, applied, ui={"text": (text,)})


# ----------------------------------------------------------------------------------------------
# Best of N


def _candidate_progress(steps: int, count: int, config):
    """Per sampler step: stop on cancel, advance one bar over all candidates, preview the middle frame."""
    total = steps * count
    bar = comfy.utils.ProgressBar(total)

    def on_step(index: int, info) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = ("JPEG", adapters.preview_image(preview_frames(info.denoised, config)), adapters.PREVIEW_SIZE)
        bar.update_absolute(index * steps + info.step + 1, total, preview)

    def between(index: int) -> None:
        mm.throw_exception_if_processing_interrupted()

    return on_step, between


class MMGSyncBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMGSyncBestOfN",
            display_name="MMG Sync Best of N",
            category="MMG/sync",
            description="Sample one clip for each of N seeds (seed, seed + 1, ...), score every clip with CAM-Sync "
                        "and return the best synchronised one, with all scores. Candidate i is exactly the clip "
                        "'MMG Sampler' gives for seed + i.",
            inputs=[
                MMGModelType.Input("model", tooltip="The coupled audio-video model (e.g. the shipped world model)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the first candidate; candidate i uses seed + i."),
                io.Int.Input("candidates", default=4, min=1, max=MAX_CANDIDATES,
                             tooltip="How many clips to sample and score (time grows linearly)."),
                *sampling_inputs("Denoising steps per candidate."),
                io.Combo.Input("rank_by", options=list(RANK_KEYS), default=RANK_KEYS[0],
                               tooltip="score_at_0: prefer clips already in sync (correlation at lag 0). score: the "
                                       "peak correlation at any lag (a clip with late sound can win)."),
                *classifier_inputs(),
                ConditioningType.Input("conditioning", optional=True,
                                       tooltip="Prompts from 'MMG Text Encode'; required by text-conditioned models."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Audio.Output(display_name="audio"),
                io.Float.Output(display_name="fps"),
                io.Int.Output(display_name="seed", tooltip="Seed of the best candidate."),
                io.Float.Output(display_name="score", tooltip="The best candidate's rank_by value (NaN if none could "
                                                              "be synchronised)."),
                io.String.Output(display_name="scores", tooltip="Every candidate's seed and CAM-Sync numbers, best first."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: MMGModel, seed: int, candidates: int, steps: int, sampler_name: str,
                video_cfg: float = 3.0, audio_cfg: float = 3.0, modality_scale: float = 0.0,
                rank_by: str = RANK_KEYS[0], audio_classifier: str = DEFAULT_AUDIO_FILE,
                frame_classifier: str = BUILTIN_FRAME_CLASSIFIER,
                conditioning: Conditioning | None = None) -> io.NodeOutput:
        if sampler_name not in sampler_names():
            raise ValueError(f"unknown sampler_name {sampler_name!r}; choose one of {', '.join(sampler_names())}")
        if rank_by not in RANK_KEYS:
            raise ValueError(f"rank_by must be one of {', '.join(RANK_KEYS)}, got {rank_by!r}")
        if not 1 <= candidates <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {candidates}")
        if not 1 <= steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {steps}")
        if model.config.text_conditioned and conditioning is None:
            raise ValueError(f"{model.name} is text-conditioned: connect 'MMG Text Encode' to the conditioning input")
        with gradients_allowed():
            sync_models = load_classifiers(frame_classifier, audio_classifier)  # a missing file fails before sampling
        settings = GenerationSettings(seed=seed, steps=steps, sampler=sampler_name,
                                      guidance=Guidance(video_cfg=video_cfg, audio_cfg=audio_cfg,
                                                        modality=modality_scale))
        on_step, between = _candidate_progress(steps, candidates, model.config)
        network = model.load_to_device()
        with gradients_allowed():  # sampling itself runs in inference mode (pipeline.generate)
            result = best_of_n(network, settings, sync_models, candidates, conditioning=conditioning, key=rank_by,
                               step_callback=on_step, between_candidates=between)
        images, audio, fps = adapters.clip_to_comfy(result.clip)
        table = result.table()
        best = getattr(result.best.cam_sync, rank_by)
        adapters.show_text_on_node(cls, table)
        return io.NodeOutput(images, audio, fps, result.best.seed, best, table, ui={"text": (table,)})


SYNC_NODES: list[type[io.ComfyNode]] = [MMGSyncScore, MMGSyncApplyOffset, MMGSyncBestOfN]
