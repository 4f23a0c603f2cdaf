"""Command line: ``python -m mmg_core {generate,convert,info} ...``.

``generate`` runs the same pipeline as the shipped ComfyUI workflow, without ComfyUI.
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
from .pipeline import GenerationSettings, decode, generate
from .sampling import sampler_names


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_generate(args: argparse.Namespace) -> int:
    loaded = checkpoint.load_model(args.model, device=_device(args.device))
    settings = GenerationSettings(seed=args.seed, steps=args.steps, sampler=args.sampler, batch_size=args.batch_size)
    started = time.perf_counter()
    with tqdm(total=settings.steps, desc=f"{settings.sampler} {settings.steps} steps", unit="step") as bar:
        result = generate(loaded.model, settings, callback=lambda info: bar.update(1))
    clip = decode(result, loaded.config)
    out = Path(args.out)
    metadata = {"mmg": json.dumps({"model": Path(args.model).name, **asdict(settings)})}
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
    from .training import TrainConfig, train

    state = train(TrainConfig.from_file(args.config))
    print(f"stopped at step {state.step} after {state.elapsed_s / 60:.1f} min of training", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .training import export_weights

    export_weights(args.checkpoint, args.out, use_ema=not args.raw)
    print(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="sample an audio-video clip and write it as MP4")
    gen.add_argument("--model", required=True, help="checkpoint (.safetensors, or released .pt)")
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
    ex.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="print a checkpoint's family, size and config")
    info.add_argument("model")
    info.set_defaults(func=cmd_info)
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
