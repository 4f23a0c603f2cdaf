"""Command line: ``python -m mmg_core {generate,convert,info,train,export,eval-world,read-world,evaluate,calibrate-sync} ...``.

``generate`` runs the same pipeline as the shipped ComfyUI workflow, without ComfyUI; ``train`` trains a
world model (or MMG's couplers, for an MMG config); ``eval-world`` judges a world model on held-out
prompts; ``read-world`` reads one world clip (scene, colour, tempo, ..., sync) against its prompt;
``evaluate`` scores the audio-video sync of any clips (CAM-Sync, AV-Align).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, media
from .conditioning import Guidance
from .pipeline import GenerationSettings, decode, generate
from .sampling import sampler_names


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# The text-to-audio-video model that ships with the pack (trained by `python -m mmg_core train`).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "mmg-world-v1.safetensors"


def _conditioning(args: argparse.Namespace, loaded):
    config = loaded.config
    if not config.text_conditioned:
        if args.prompt:
            raise ValueError(f"{args.model} is an unconditional model: drop --prompt")
        return None
    if not args.prompt:
        raise ValueError(f"{args.model} is text-conditioned: give --prompt 'what to see and hear'")
    from .conditioning import encode_prompts, prompt_notes
    from .text import default_text_encoder

    encoder = default_text_encoder()
    conditioning = encode_prompts(encoder, args.prompt, args.audio_prompt, args.negative_prompt)
    for note in prompt_notes(encoder, conditioning, world_vocabulary=loaded.trained_on_world):
        print(f"warning: {note}", file=sys.stderr)
    return conditioning


def cmd_generate(args: argparse.Namespace) -> int:
    args.model = args.model or str(SHIPPED_MODEL)
    loaded = checkpoint.load_model(args.model, device=_device(args.device))
    conditioning = _conditioning(args, loaded)
    guidance = Guidance(video_cfg=args.video_cfg, audio_cfg=args.audio_cfg, modality=args.modality)
    settings = GenerationSettings(seed=args.seed, steps=args.steps, sampler=args.sampler, batch_size=args.batch_size,
                                  guidance=guidance)
    started = time.perf_counter()
    with tqdm(total=settings.steps, desc=f"{settings.sampler} {settings.steps} steps", unit="step") as bar:
        result = generate(loaded.model, settings, conditioning=conditioning, callback=lambda info: bar.update(1))
    clip = decode(result, loaded.config)
    out = Path(args.out)
    prompts = {"prompt": args.prompt, "audio_prompt": args.audio_prompt} if conditioning else {}
    metadata = {"mmg": json.dumps({"model": Path(args.model).name, **prompts, **asdict(settings)})}
    written = []
    for index in range(settings.batch_size):
        path = out if settings.batch_size == 1 else out.with_name(f"{out.stem}_{index}{out.suffix}")
        frames = (clip.frames[index] * 255).round().to(torch.uint8).numpy()
        written.append(media.write_mp4(
            path, frames, clip.audio[index].numpy(), fps=clip.fps, sample_rate=clip.sample_rate, metadata=metadata
        ))
    elapsed = time.perf_counter() - started
    for path in written:
        print(path)
    print(f"done in {elapsed:.1f} s", file=sys.stderr)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    config = checkpoint.convert(args.source, args.target)
    print(f"wrote {args.target} ({config.video_frames} frames {config.video_height}x{config.video_width}, "
          f"{config.audio_length} audio samples)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    loaded = checkpoint.load_model(args.model)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(json.dumps({"family": loaded.family, "parameters": params, "config": loaded.config.to_dict()}, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .mmg_training import is_mmg_config, main_train

    if is_mmg_config(args.config):  # "family": "mmg": couplers of the MMG model (mmg_core/mmg_training.py)
        return main_train(args.config)
    from .training import TrainConfig, train

    state = train(TrainConfig.from_file(args.config))
    print(f"stopped at step {state.step} after {state.elapsed_s / 60:.1f} min of training", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .training import export_weights

    export_weights(args.checkpoint, args.out, use_ema=not args.raw, dtype=getattr(torch, args.dtype))
    print(args.out)
    return 0


def cmd_eval_world(args: argparse.Namespace) -> int:
    from .conditioning import Guidance
    from .world_eval import DEFAULT_GUIDANCE, evaluate_reference, evaluate_world_model, format_summary

    if args.codec_of and not args.reference:
        raise ValueError("--codec-of goes with --reference (it judges the world's renders through a model's codec)")
    if args.reference:
        codec = _codec_config(args.codec_of) if args.codec_of else None
        report = evaluate_reference(args.prompts, args.out, limit=args.limit, codec=codec)
    else:
        scales = {name: getattr(DEFAULT_GUIDANCE, name) if getattr(args, name) is None else getattr(args, name)
                  for name in ("video_cfg", "audio_cfg", "modality")}
        report = evaluate_world_model(args.model, args.prompts, args.out, steps=args.steps, sampler=args.sampler,
                                      guidance=Guidance(**scales), limit=args.limit, batch_size=args.batch_size,
                                      device=_device(args.device))
    print(format_summary(report))
    print(Path(args.out) / "report.md")
    return 0


def cmd_read_world(args: argparse.Namespace) -> int:
    from .world_eval import json_safe, format_world_reading, read_world_clip

    reading = read_world_clip(args.clip, args.prompt)
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(reading), indent=1, allow_nan=False) + "\n")
    print(format_world_reading(reading))
    timing = reading["sync"] if "sync" in reading else reading["slider"]  # event scenes vs the slider
    if args.check and (reading.get("differs") or not timing["passed"]):
        return 1
    return 0


def _codec_config(name_or_path: str):
    """A model preset's name, or a checkpoint whose config (metadata) names the codec."""
    from .models.mmdiffusion_config import PRESETS

    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not Path(name_or_path).is_file():
        raise FileNotFoundError(f"--codec-of {name_or_path!r}: neither a preset ({', '.join(PRESETS)}) nor a file")
    _, metadata = checkpoint.read_state_dict(name_or_path)
    return checkpoint.config_for(name_or_path, metadata)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample an audio-video clip and write it as MP4")
    gen.add_argument("--model", help=f"checkpoint (.safetensors, or released .pt); default: the shipped {SHIPPED_MODEL.name}")
    gen.add_argument("--prompt", help="what to see (and hear); required by text-conditioned models")
    gen.add_argument("--audio-prompt", help="what to hear, if different from --prompt")
    gen.add_argument("--negative-prompt", default="", help="what to steer away from (default: nothing)")
    gen.add_argument("--video-cfg", type=float, default=3.0, help="guidance toward the prompt for the picture (1 = off)")
    gen.add_argument("--audio-cfg", type=float, default=3.0, help="guidance toward the prompt for the sound (1 = off)")
    gen.add_argument("--modality", type=float, default=1.0, help="modality guidance for sync (0 = off)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--sampler", default="dpmpp_2m", choices=sampler_names())
    gen.add_argument("--batch-size", type=int, default=1, help="clips to sample at once (files OUT_0.mp4, ...)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    gen.add_argument("--out", required=True, help="output .mp4 path")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert between a released .pt and the pack's .safetensors")
    conv.add_argument("source")
    conv.add_argument("target")
    conv.set_defaults(func=cmd_convert)

    tr = sub.add_parser("train", help="train (or resume) a text-to-audio-video model; see mmg_core/training.py")
    tr.add_argument("--config", required=True, help="JSON file of TrainConfig fields")
    tr.set_defaults(func=cmd_train)

    ex = sub.add_parser("export", help="write a training checkpoint's EMA weights as .safetensors")
    ex.add_argument("--checkpoint", required=True, help="<out_dir>/checkpoint folder of a training run")
    ex.add_argument("--out", required=True, help="target .safetensors")
    ex.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    ex.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                    help="stored weight type (default float16: half the size; loading computes in float32)")
    ex.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="print a checkpoint's family, size and config")
    info.add_argument("model")
    info.set_defaults(func=cmd_info)
    ev = sub.add_parser("eval-world", help="evaluate a world model on held-out prompts (clips, report.json, report.md)")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="text-conditioned world model (.safetensors, e.g. from export)")
    source.add_argument("--reference", action="store_true",
                        help="judge the world's own renders of the prompts instead (what perfect clips score)")
    ev.add_argument("--codec-of", metavar="PRESET_OR_FILE",
                    help="with --reference: pass each render through this model's codec first (e.g. 'world')")
    ev.add_argument("--prompts", default=None, help="prompts JSON (default: mmg_core/world/eval_prompts.json)")
    ev.add_argument("--out", required=True, help="output folder: clips/*.mp4, report.json, report.md")
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--sampler", default="dpmpp_2m", choices=sampler_names())
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts")
    ev.add_argument("--batch-size", type=int, default=1, help="clips sampled at once")
    ev.add_argument("--video-cfg", type=float, default=None, help="video CFG scale (default 3, as the sampler node)")
    ev.add_argument("--audio-cfg", type=float, default=None, help="audio CFG scale (default 3, as the sampler node)")
    ev.add_argument("--modality", type=float, default=None, help="modality guidance (default 1, as the sampler node)")
    ev.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    ev.set_defaults(func=cmd_eval_world)
    rw = sub.add_parser("read-world", help="read one world clip's scene, colour, tempo, pitch, background and sync")
    rw.add_argument("clip", help="an MP4 of the world (e.g. the main job's output)")
    rw.add_argument("--prompt", default=None, help="the clip's prompt: compare what it names with what is read")
    rw.add_argument("--json", default=None, metavar="OUT.json", help="also write the reading as JSON")
    rw.add_argument("--check", action="store_true",
                    help="exit 1 if an attribute the prompt names reads differently, or sync / slider fails")
    rw.set_defaults(func=cmd_read_world)
    from .sync.evaluate import add_evaluate_command  # sync metrics: `evaluate FILE_OR_DIR... --json OUT`

    add_evaluate_command(sub)
    from .sync.calibration import add_calibrate_command  # `calibrate-sync`: CAM-Sync against known shifts

    add_calibrate_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
