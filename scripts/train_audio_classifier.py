"""Train the audio event classifier AudioCAM reads: ``python scripts/train_audio_classifier.py``.

Classes are the synthetic world's sound kinds and pitches (impact / drum / beep / tone x low / high,
``mmg_core.sync.backbones.WORLD_AUDIO_CLASSES``), learned from ``WorldDataset`` soundtracks with
random gain, background noise and circular time shifts so the net keys on the sounds themselves,
not on their level or position. Every random draw comes from one seeded torch.Generator: the same
arguments give the same weights. Writes ``models/sync/audio_events.safetensors`` (config and
training summary in the safetensors metadata; ~1.2 MB). A short run proves the script:
``python scripts/train_audio_classifier.py --steps 50 --out /tmp/audio_events.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.sync.backbones import (  # noqa: E402
    DEFAULT_AUDIO_CLASSIFIER, SOUND_KINDS, WORLD_AUDIO_CLASSES, AudioEventNet, AudioNetConfig, save_audio_classifier,
)
from mmg_core.world import DEFAULT_CONFIG, WorldDataset  # noqa: E402
from mmg_core.world.render_audio import render_audio  # noqa: E402
from mmg_core.world.timeline import build_timeline  # noqa: E402


def world_label(scene: str, pitch: str) -> int:
    return WORLD_AUDIO_CLASSES.index(f"{SOUND_KINDS[scene]}-{pitch}")


def world_batch(dataset: WorldDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, T) soundtracks and (B,) labels; only the audio is rendered (the frames are not needed)."""
    waves, labels = [], []
    for index in indices:
        spec = dataset.spec(index)
        audio = render_audio(spec, build_timeline(spec, dataset.config), dataset.config)
        waves.append(torch.from_numpy(audio))
        labels.append(world_label(spec.scene, spec.pitch))
    return torch.stack(waves)[:, None], torch.tensor(labels)


def augment(waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gain (-24..+3 dB), white noise (-70..-30 dBFS) and a circular shift per clip."""
    batch, _, length = waves.shape
    gain_db = torch.empty(batch, 1, 1).uniform_(-24.0, 3.0, generator=generator)
    noise_db = torch.empty(batch, 1, 1).uniform_(-70.0, -30.0, generator=generator)
    noise = torch.randn(waves.shape, generator=generator) * 10.0 ** (noise_db / 20.0)
    shifts = torch.randint(0, length, (batch,), generator=generator)
    positions = (torch.arange(length)[None] - shifts[:, None]) % length  # (B, T) source sample per target
    shifted = torch.gather(waves, 2, positions[:, None])
    return (shifted * 10.0 ** (gain_db / 20.0) + noise).clamp(-1.0, 1.0)


@torch.no_grad()
def accuracy(model: AudioEventNet, waves: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(chunk).argmax(-1) for chunk in waves.split(64)])
    model.train()
    return float((predicted == labels).float().mean())


def learning_rate(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> tuple[AudioEventNet, dict[str, str]]:
    torch.manual_seed(args.seed)  # weight initialisation; the data draws use `generator` below
    generator = torch.Generator().manual_seed(args.seed)
    model = AudioEventNet(AudioNetConfig())
    train_set = WorldDataset(DEFAULT_CONFIG, seed=args.seed, split="train")
    held_out = WorldDataset(DEFAULT_CONFIG, seed=args.seed, split="eval", length=args.eval_clips)
    eval_waves, eval_labels = world_batch(held_out, list(range(len(held_out))))
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    started, history = time.perf_counter(), []
    for step in range(args.steps):
        indices = torch.randint(0, len(train_set), (args.batch_size,), generator=generator).tolist()
        waves, labels = world_batch(train_set, indices)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = F.cross_entropy(model(augment(waves, generator)), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            held_out_accuracy = accuracy(model, eval_waves, eval_labels)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "eval_accuracy": held_out_accuracy})
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} held-out accuracy {held_out_accuracy:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    summary = {"steps": str(args.steps), "seed": str(args.seed), "batch_size": str(args.batch_size),
               "trained_on": "mmg_core.world soundtracks (split train), evaluated on split eval",
               "eval_accuracy": str(history[-1]["eval_accuracy"]), "history": json.dumps(history)}
    return model.eval(), summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (the shipped file: 1500; 50 proves the script)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the clips and the augmentation")
    parser.add_argument("--eval-clips", type=int, default=256, help="held-out clips scored at every log line")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default=str(DEFAULT_AUDIO_CLASSIFIER), help="target .safetensors")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_clips < 1 or args.log_every < 1:
        parser.error("--steps, --batch-size, --eval-clips and --log-every must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, summary = train(args)
    path = save_audio_classifier(model, args.out, extra={f"mmg.train.{k}": v for k, v in summary.items()})
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB, held-out accuracy {summary['eval_accuracy']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
