"""Train the audio event classifier AudioCAM reads: ``python scripts/train_audio_classifier.py``.

Classes: the synthetic world's sound kinds and pitches (impact / drum / beep / tone x low / high,
``mmg_core.sync.backbones.WORLD_AUDIO_CLASSES``) from ``WorldDataset`` soundtracks, plus two classes
of real recordings that ship in Debian packages (REAL_SOURCES; ``apt-get install REAL_PACKAGES``):
"music" (two games' soundtracks) and "effect" (their sound effects and recorded key clicks). Labels
are multi-hot (one sigmoid per class): half the world clips and effects are mixed over a music crop,
so the net learns to tell an event from the music under it, and "music" is a background class
(AudioNetConfig.background_classes) that AudioCAM never targets: on a film, its top class would
otherwise be the score, and its CAM would mark notes, not the sounds of what is seen.
Everything gets random gain, background noise and circular time shifts so the net keys on the sounds
themselves, not on their level or position. Every random draw comes from one seeded
torch.Generator: the same arguments (and package files) give the same weights. Writes
``models/sync/audio_events.safetensors`` (config and training summary in the safetensors metadata).
A short run proves the script: ``python scripts/train_audio_classifier.py --steps 50 --out /tmp/a.safetensors``
(``--world-only`` trains on the synthetic classes alone, without the packages).
"""

from __future__ import annotations

import argparse
import glob
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
from mmg_core.sync.gradcam import mono, resample_audio  # noqa: E402

# Real recordings per extra class: (Debian package, file pattern). Sound effects shorter than a clip
# are placed at a random time in silence; longer files are cropped.
WESNOTH = "/usr/share/games/wesnoth/1.16/data/core"
REAL_SOURCES = {
    "music": (("colobot-common-sounds", "/usr/share/games/colobot/music/*.ogg"),
              ("wesnoth-1.16-music", f"{WESNOTH}/music/*.ogg")),  # orchestral, like most film scores
    "effect": (("colobot-common-sounds", "/usr/share/games/colobot/sounds/*.wav"),
               ("wesnoth-1.16-data", f"{WESNOTH}/sounds/*.*"),  # hits, blows, bows, steps (not its ambient/)
               ("bucklespring-data", "/usr/share/buckle/wav/*.wav")),
}
BACKGROUND_CLASSES = ("music",)
HELD_OUT_EVERY = 5  # every 5th file of a source (sorted by name) is held out for the accuracy figures
MIX_PROBABILITY = 0.5  # world clips and effects laid over a music crop


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


class RealSounds:
    """The real recordings of one extra class, mono at the classifier's rate, split into train / held out."""

    def __init__(self, name: str, sample_rate: int):
        self.name = name
        self.train: list[torch.Tensor] = []
        self.held_out: list[torch.Tensor] = []
        for package, pattern in REAL_SOURCES[name]:
            files = sorted(glob.glob(pattern))
            if not files:
                raise FileNotFoundError(f"no {pattern} for the {name!r} class: `apt-get install {package}` "
                                        f"(all: {' '.join(real_packages())}), or train with --world-only")
            for index, path in enumerate(files):
                (self.held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else self.train).append(
                    load_sound(path, sample_rate))

    def sample(self, length: int, generator: torch.Generator, held_out: bool = False) -> torch.Tensor:
        """(length,) a random crop, or the whole sound at a random place in silence if it is shorter."""
        sounds = self.held_out if held_out else self.train
        sound = sounds[int(torch.randint(0, len(sounds), (1,), generator=generator))]
        if sound.numel() >= length:
            start = int(torch.randint(0, sound.numel() - length + 1, (1,), generator=generator))
            return sound[start: start + length]
        out = torch.zeros(length)
        start = int(torch.randint(0, length - sound.numel() + 1, (1,), generator=generator))
        out[start: start + sound.numel()] = sound
        return out


def real_packages() -> list[str]:
    return sorted({package for sources in REAL_SOURCES.values() for package, _ in sources})


def load_sound(path: str, sample_rate: int) -> torch.Tensor:
    """(T,) float32 mono at ``sample_rate``, peak-normalised (levels differ by source; gain is augmented)."""
    import soundfile

    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    wave = resample_audio(mono(torch.from_numpy(data.T.copy())), int(rate), sample_rate)[0]
    return wave / wave.abs().max().clamp_min(1e-6)


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt().clamp_min(1e-6)


class MixedSource:
    """Batches of (waves (B, 1, T), multi-hot labels (B, K)): world clips, real effects and music alone,
    half the world clips and effects mixed over music at -24..0 dB relative to the event."""

    def __init__(self, classes: tuple[str, ...], world: WorldDataset, real: dict[str, RealSounds], length: int):
        self.classes, self.world, self.real, self.length = classes, world, real, length

    def draw(self, batch_size: int, generator: torch.Generator, held_out: bool = False):
        waves, labels = [], torch.zeros(batch_size, len(self.classes))
        for row in range(batch_size):
            kind = float(torch.rand((), generator=generator)) if self.real else 0.0
            if kind < 0.5:  # a world clip
                index = int(torch.randint(0, len(self.world), (1,), generator=generator))
                wave, label = world_batch(self.world, [index])
                wave, names = wave[0, 0], [WORLD_AUDIO_CLASSES[int(label)]]
            elif kind < 0.75:
                wave, names = self.real["effect"].sample(self.length, generator, held_out), ["effect"]
            else:
                wave, names = self.real["music"].sample(self.length, generator, held_out), ["music"]
            if names != ["music"] and self.real and float(torch.rand((), generator=generator)) < MIX_PROBABILITY:
                music = self.real["music"].sample(self.length, generator, held_out)
                relative_db = float(torch.empty(()).uniform_(-24.0, 0.0, generator=generator))
                wave = wave + music * (rms(wave) / rms(music)) * 10.0 ** (relative_db / 20.0)
                names = names + ["music"]
            waves.append(wave / wave.abs().max().clamp_min(1.0))
            labels[row, [self.classes.index(name) for name in names]] = 1.0
        return torch.stack(waves)[:, None], labels


@torch.no_grad()
def held_out_figures(model: AudioEventNet, waves: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """World clips: top world class right; every class: presence read right (sigmoid > 0.5)."""
    model.eval()
    logits = torch.cat([model(chunk) for chunk in waves.split(64)])
    model.train()
    world = len(WORLD_AUDIO_CLASSES)
    is_world = labels[:, :world].sum(-1) > 0
    figures = {"world_class_accuracy": float((logits[is_world, :world].argmax(-1) == labels[is_world, :world].argmax(-1)).float().mean())}
    for index, name in enumerate(model.config.classes[world:], start=world):
        figures[f"{name}_accuracy"] = float(((logits[:, index] > 0) == (labels[:, index] > 0.5)).float().mean())
    return {k: round(v, 4) for k, v in figures.items()}


def learning_rate(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_source(args: argparse.Namespace, config: AudioNetConfig, split: str, length: int | None = None) -> MixedSource:
    world = WorldDataset(DEFAULT_CONFIG, seed=args.seed, split=split, **({} if length is None else {"length": length}))
    real = {} if args.world_only else {name: RealSounds(name, config.sample_rate) for name in REAL_SOURCES}
    return MixedSource(config.classes, world, real, DEFAULT_CONFIG.frame_sample(DEFAULT_CONFIG.frames))


def train(args: argparse.Namespace) -> tuple[AudioEventNet, dict[str, str]]:
    torch.manual_seed(args.seed)  # weight initialisation; the data draws use `generator` below
    generator = torch.Generator().manual_seed(args.seed)
    extra = () if args.world_only else tuple(REAL_SOURCES)
    config = AudioNetConfig(classes=WORLD_AUDIO_CLASSES + extra, background_classes=BACKGROUND_CLASSES if extra else ())
    model = AudioEventNet(config)
    train_source = build_source(args, config, "train")
    eval_waves, eval_labels = build_source(args, config, "eval", args.eval_clips).draw(
        args.eval_clips, torch.Generator().manual_seed(args.seed + 1), held_out=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    started, history = time.perf_counter(), []
    for step in range(args.steps):
        waves, labels = train_source.draw(args.batch_size, generator)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        loss = F.binary_cross_entropy_with_logits(model(augment(waves, generator)), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            figures = held_out_figures(model, eval_waves, eval_labels)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), **figures})
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f} held out {figures} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    trained_on = "mmg_core.world soundtracks (split train)" + (
        "" if args.world_only else f" and the real recordings of Debian's {', '.join(real_packages())} "
        f"(every {HELD_OUT_EVERY}th file held out)")
    summary = {"steps": str(args.steps), "seed": str(args.seed), "batch_size": str(args.batch_size),
               "trained_on": trained_on, "held_out": json.dumps(history[-1]), "history": json.dumps(history)}
    return model.eval(), summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps (the shipped file: 600; 50 proves the script)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the clips and the augmentation")
    parser.add_argument("--eval-clips", type=int, default=256, help="held-out clips scored at every log line")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default=str(DEFAULT_AUDIO_CLASSIFIER), help="target .safetensors")
    parser.add_argument("--world-only", action="store_true", help="only the synthetic classes (no Debian packages needed)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_clips < 1 or args.log_every < 1:
        parser.error("--steps, --batch-size, --eval-clips and --log-every must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, summary = train(args)
    path = save_audio_classifier(model, args.out, extra={f"mmg.train.{k}": v for k, v in summary.items()})
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB, held out: {summary['held_out']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
