"""Training of MM-Diffusion-family text-to-audio-video models on the synthetic world.

``python -m mmg_core train --config FILE`` (JSON, fields of :class:`TrainConfig`), or with several
processes: ``torchrun --nproc_per_node 2 -m mmg_core train --config FILE`` (gloo on CPU, NCCL on GPUs).

- Joint epsilon loss: one shared timestep per clip, MSE on video + MSE on audio.
- Condition dropout: each modality's prompt is replaced by "" independently with ``cond_dropout``,
  so the same model is also the unconditional one classifier-free guidance needs.
- EMA of the weights, AdamW with linear warm-up, gradient clipping.
- Resumable: ``<out_dir>/checkpoint.pt`` (atomic, every few minutes and at the end) holds weights, EMA,
  optimiser, step and the data/noise RNG position; rerunning the same command continues. Data are
  indexed by step, so a resumed run sees exactly the clips an uninterrupted one would.
- Logs: ``<out_dir>/loss.csv`` and ``<out_dir>/loss.png``; a progress bar on rank 0.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm import tqdm

from .codec import encode_media
from .conditioning import TextRows, text_context
from .denoiser import NoiseSchedule, eps_from_prediction
from .models.mmdiffusion import MMDiffusionUNet
from .models.mmdiffusion_config import PRESETS, MMDiffusionConfig
from .plotting import line_plot
from .world.config import WorldConfig
from .weights import save_safetensors_atomic, stored_tensors
from .world.dataset import WorldDataset

CHECKPOINT_NAME = "checkpoint"  # a folder, see save_checkpoint
LOSS_WEIGHTINGS = ("none", "v", "min_snr")
CSV_FIELDS = ["step", "loss", "loss_video", "loss_audio", "lr", "elapsed_s", "clips_per_s"]


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str
    model: str | dict = "world"  # a preset name from mmg_core.models.mmdiffusion_config.PRESETS, or fields
    steps: int = 20000
    batch_size: int = 8  # per process
    lr: float = 2e-4
    warmup_steps: int = 250
    # Exponential learning-rate decay, halving every lr_half_life steps from step lr_decay_start on, never
    # below lr_floor x lr (None: constant after warm-up). Why: at a constant rate the loss levels off at
    # the noise floor that rate's gradient steps leave; lowering it later lets the weights settle. A step
    # count, not a fraction of `steps`, so a run resumed over several sessions keeps one schedule.
    lr_decay_start: int | None = None
    lr_half_life: int = 5000
    lr_floor: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    # Per-clip weight of the epsilon loss over timesteps: "none" (plain MSE); "v" = 1/ᾱ, which equals the
    # v loss (eps error = sqrt(ᾱ)·v error); or "min_snr" = min(1, γ/SNR), which equals the x0 loss
    # weighted by min(SNR, γ) (Min-SNR-γ, Hang et al. 2023): the low-noise steps, where an x0 network
    # only polishes detail, stop drowning out the high-noise steps that decide colour, scene and tempo.
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    # Start from the weights of another run (a checkpoint folder or an exported .safetensors) whose
    # network has the same shapes, e.g. after changing only the output parameterisation; the optimiser
    # starts fresh. Ignored when this run's own checkpoint exists (resuming wins).
    init_from: str | None = None
    seed: int = 0
    data_seed: int = 0
    log_every: int = 10
    checkpoint_minutes: float = 5.0
    time_limit_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    threads: int | None = None  # torch threads per process (None: torch's default)
    # Processes that render clips and encode prompts ahead of the training step (0: in the training
    # process). One worker hides most of that work (~20 % of a step on 2 cores) behind the step.
    data_workers: int = 1
    world: dict = field(default_factory=dict)  # WorldConfig fields

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        if "out_dir" not in data:
            raise ValueError(f"{path}: 'out_dir' is required (where checkpoints and logs go)")
        base = Path(path).resolve().parent
        for key in ("out_dir", "init_from"):  # paths are relative to the config file, not the cwd
            if data.get(key) and not os.path.isabs(data[key]):
                data[key] = str(base / data[key])
        return cls(**data)

    def model_config(self) -> MMDiffusionConfig:
        if isinstance(self.model, str):
            if self.model not in PRESETS:
                raise ValueError(f"unknown model preset {self.model!r}; choose one of {sorted(PRESETS)} or give fields")
            return PRESETS[self.model]
        return MMDiffusionConfig.from_dict(self.model)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.data_workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.lr_decay_start is not None and (self.lr_decay_start < 0 or self.lr_half_life < 1):
            raise ValueError(f"lr_decay_start ({self.lr_decay_start}) must be >= 0 and lr_half_life ({self.lr_half_life}) >= 1")
        if not 0 < self.lr_floor <= 1:
            raise ValueError(f"lr_floor must be in (0, 1], got {self.lr_floor}")


# ------------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size())


def all_reduce_mean(value: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value


# ------------------------------------------------------------------------------------------------
# State and checkpoints
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    model: MMDiffusionUNet
    ema: MMDiffusionUNet
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed_s: float = 0.0


def new_state(train: TrainConfig, config: MMDiffusionConfig) -> TrainState:
    torch.manual_seed(train.seed)  # weight init only; every draw during training uses explicit generators
    model = MMDiffusionUNet(config)
    ema = MMDiffusionUNet(config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return TrainState(model=model, ema=ema, optimizer=optimizer)


# A checkpoint is a folder of files that each stay well under 50 MB, so a run can be committed and
# resumed by the next session. It is kept small because every committed copy counts against what a
# session may submit: weights in float32 (exact resume), the EMA in float16 (it keeps averaging in
# float32 after a resume; the rounding is far below what the average moves), and of Adam's state only
# the second moments, in bfloat16. The first moments (momentum, beta1 = 0.9) rebuild within ~20 steps
# of a resume, so they are not worth a third copy of the model. Counters and configs go in JSON.
def save_checkpoint(state: TrainState, train: TrainConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    moments, steps = _optimizer_tensors(state.optimizer)
    meta = {
        "step": state.step, "elapsed_s": state.elapsed_s, "adam_steps": steps,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.state_dict()["param_groups"]],
        "model_config": state.model.config.to_dict(), "train_config": asdict(train),
    }
    _atomic_save_file(_contiguous(state.model.state_dict()), folder / "model.safetensors")
    _atomic_save_file(_contiguous(state.ema.state_dict(), torch.float16), folder / "ema.safetensors")
    _atomic_save_file(moments, folder / "optimizer.safetensors")
    # state.json last: its step names a complete set of files.
    tmp = folder / ".state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "state.json")


def _contiguous(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return stored_tensors(tensors, dtype)


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_safetensors_atomic(tensors, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    moments, steps = {}, {}
    for index, entry in optimizer.state_dict()["state"].items():
        moments[f"{index}.exp_avg_sq"] = entry["exp_avg_sq"].to(torch.bfloat16).contiguous()
        steps[str(index)] = float(entry["step"])
    return moments, steps


def load_checkpoint(state: TrainState, folder: Path) -> None:
    meta = json.loads((folder / "state.json").read_text())
    saved = MMDiffusionConfig.from_dict(meta["model_config"])
    if saved != state.model.config:
        raise ValueError(f"{folder} was trained with another model config; use a new out_dir or the same config")
    state.model.load_state_dict(load_file(str(folder / "model.safetensors")))
    state.ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    moments = load_file(str(folder / "optimizer.safetensors"))
    optimizer_state = {}
    for index, steps in meta["adam_steps"].items():
        second = moments[f"{index}.exp_avg_sq"].float()
        first = moments.get(f"{index}.exp_avg")  # present in checkpoints written before they were dropped
        optimizer_state[int(index)] = {
            "step": torch.tensor(steps), "exp_avg_sq": second,
            "exp_avg": torch.zeros_like(second) if first is None else first.float(),
        }
    groups = state.optimizer.state_dict()["param_groups"]
    for group, saved_group in zip(groups, meta["param_groups"]):
        group.update(saved_group)
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    state.step = int(meta["step"])
    state.elapsed_s = float(meta["elapsed_s"])


def initialise_from(state: TrainState, source: Path) -> None:
    """Weights (and EMA) of another run whose network has the same parameter shapes."""
    if source.is_dir():
        weights = load_file(str(source / "model.safetensors"))
        ema_weights = load_file(str(source / "ema.safetensors"))
    elif source.is_file():
        weights = ema_weights = load_file(str(source))
    else:
        raise FileNotFoundError(f"init_from {source}: no such checkpoint folder or .safetensors file")
    from .weights import load_state_dict_strict

    load_state_dict_strict(state.model, weights, source=str(source))
    load_state_dict_strict(state.ema, ema_weights, source=str(source))


# ------------------------------------------------------------------------------------------------
# One step
# ------------------------------------------------------------------------------------------------
def warmup_rate(lr: float, warmup_steps: int, step: int) -> float:
    """``lr`` ramped linearly over the first ``warmup_steps`` steps (shared with MMG fine-tuning)."""
    return lr * min(1.0, (step + 1) / max(1, warmup_steps))


def learning_rate(train: TrainConfig, step: int) -> float:
    """The warm-up, then (when ``lr_decay_start`` is set) the exponential decay down to the floor."""
    rate = warmup_rate(train.lr, train.warmup_steps, step)
    if train.lr_decay_start is None or step <= train.lr_decay_start:
        return rate
    return rate * max(train.lr_floor, 0.5 ** ((step - train.lr_decay_start) / train.lr_half_life))


def batch_indices(step: int, train: TrainConfig, ctx: Dist) -> range:
    """Clips of this step for this process: disjoint across processes, determined by the step alone."""
    start = (step * ctx.world_size + ctx.rank) * train.batch_size
    return range(start, start + train.batch_size)


def load_batch(dataset: WorldDataset, indices: range) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    items = [dataset[i] for i in indices]
    video = torch.stack([item["video"] for item in items])  # (B, F, C, H, W)
    audio = torch.stack([item["audio"] for item in items])  # (B, 1, T)
    return video, audio, [item["caption"] for item in items]


def drop_prompts(captions: list[str], p: float, generator: torch.Generator) -> tuple[list[str], list[str]]:
    """Independent dropout of the video and audio prompt of each clip (→ the null prompt "")."""
    keep = torch.rand(2, len(captions), generator=generator) >= p
    video = [c if k else "" for c, k in zip(captions, keep[0].tolist())]
    audio = [c if k else "" for c, k in zip(captions, keep[1].tolist())]
    return video, audio


class StepBatches(torch.utils.data.Dataset):
    """Item s = everything step s needs from data on this process, so it can be prepared ahead:
    (video (B, F, C, H, W), audio (B, 1, T), text rows of the video prompts, text rows of the audio
    prompts), prompts after condition dropout. The dropout draw has its own per-(step, rank) generator,
    so the batch is the same whether a worker or the training process makes it, and after a resume."""

    def __init__(self, dataset: WorldDataset, train: TrainConfig, ctx: Dist, text_encoder):
        self.dataset, self.train, self.ctx, self.text_encoder = dataset, train, ctx, text_encoder

    def __len__(self) -> int:
        return self.train.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, TextRows, TextRows]:
        video, audio, captions = load_batch(self.dataset, batch_indices(step, self.train, self.ctx))
        generator = torch.Generator().manual_seed(2 * step_seed(self.train.seed, step, self.ctx.rank) + 1)
        video_prompts, audio_prompts = drop_prompts(captions, self.train.cond_dropout, generator)
        encoded = self.text_encoder.encode(video_prompts + audio_prompts)
        half = len(captions)
        return video, audio, TextRows.of(encoded, 0, half), TextRows.of(encoded, half, 2 * half)


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)  # the training process keeps the cores; the worker fills their idle time
    # A SIGTERM/Ctrl-C sent to the whole process group must reach only the training loop, which then
    # writes its checkpoint; a worker dying first would abort the loop before it could.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def step_batches(dataset: WorldDataset, train: TrainConfig, ctx: Dist, text_encoder, first_step: int):
    """Batches for steps first_step, first_step + 1, ... (prefetched by ``train.data_workers`` processes)."""
    source = StepBatches(dataset, train, ctx, text_encoder)
    return torch.utils.data.DataLoader(
        source, batch_size=None, sampler=range(first_step, train.steps), num_workers=train.data_workers,
        worker_init_fn=_single_thread_worker if train.data_workers else None,
        prefetch_factor=2 if train.data_workers else None, persistent_workers=False,
    )


def training_loss(
    model: torch.nn.Module, config: MMDiffusionConfig, schedule_alphas: torch.Tensor, video: torch.Tensor,
    audio: torch.Tensor, text, generator: torch.Generator, weights: tuple[float, float], loss_weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint epsilon loss at one timestep per clip shared by both streams.

    Whatever the network's output parameterisation (``config.prediction_type``), it is turned into
    epsilon exactly as the sampler does and compared with the true noise.
    """
    clean = encode_media(config, video, audio)
    batch = video.shape[0]
    t = torch.randint(0, config.num_train_timesteps, (batch,), generator=generator)
    noise_v = torch.randn(clean.video.shape, generator=generator)
    noise_a = torch.randn(clean.audio.shape, generator=generator)
    alpha_bar = schedule_alphas[t]
    a = alpha_bar.float()
    noisy_v = a.sqrt().view(-1, 1, 1, 1, 1) * clean.video + (1 - a).sqrt().view(-1, 1, 1, 1, 1) * noise_v
    noisy_a = a.sqrt().view(-1, 1, 1) * clean.audio + (1 - a).sqrt().view(-1, 1, 1) * noise_a
    pred_v, pred_a = model(noisy_v, noisy_a, t, text=text)
    eps_v = eps_from_prediction(config.prediction_type, noisy_v, pred_v, alpha_bar)
    eps_a = eps_from_prediction(config.prediction_type, noisy_a, pred_a, alpha_bar)
    per_clip_v = (eps_v - noise_v).square().flatten(1).mean(1)
    per_clip_a = (eps_a - noise_a).square().flatten(1).mean(1)
    w = timestep_weights(a, loss_weighting, min_snr_gamma)
    loss_v, loss_a = (w * per_clip_v).mean(), (w * per_clip_a).mean()
    return weights[0] * loss_v + weights[1] * loss_a, loss_v.detach(), loss_a.detach()


def timestep_weights(alpha_bar: torch.Tensor, loss_weighting: str, min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Weight of each clip's epsilon loss (see ``TrainConfig.loss_weighting``); alpha_bar (B,) float."""
    if loss_weighting == "v":
        return 1 / alpha_bar
    if loss_weighting == "min_snr":
        snr = alpha_bar / (1 - alpha_bar)
        return (min_snr_gamma / snr).clamp(max=1.0)
    return torch.ones_like(alpha_bar)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # short warm-up: early EMA follows the model
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


# ------------------------------------------------------------------------------------------------
# Logs
# ------------------------------------------------------------------------------------------------
def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_losses(csv_path: Path, png_path: Path, smooth: int = 20) -> None:
    if not csv_path.exists():
        return
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    steps = [float(r["step"]) for r in rows]

    def smoothed(key: str) -> list[float]:
        values = [float(r[key]) for r in rows]
        return [sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1]) for i in range(len(values))]

    line_plot(png_path, {k: (steps, smoothed(k)) for k in ("loss", "loss_video", "loss_audio")},
              title=f"training loss (moving average over {smooth} logs)")


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop can write a checkpoint before exiting."""

    def __init__(self) -> None:
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.stop = True


def train(train_config: TrainConfig, text_encoder=None) -> TrainState:
    """Run (or resume) training; returns the final state. Rank 0 writes checkpoints and logs."""
    train_config.validate()
    ctx = init_distributed()
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    # Zero-initialised output layers pass through tiny values early on; denormal floats make CPU
    # arithmetic many times slower, and flushing them changes nothing measurable in training.
    torch.set_flush_denormal(True)
    out = Path(train_config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = train_config.model_config()
    if not config.text_conditioned:
        raise ValueError("training here is text-to-audio-video: the model config needs text_dim")
    state = new_state(train_config, config)
    checkpoint = out / CHECKPOINT_NAME
    if (checkpoint / "state.json").exists():
        load_checkpoint(state, checkpoint)
    elif train_config.init_from:
        initialise_from(state, Path(train_config.init_from))
    if text_encoder is None:
        from .text import default_text_encoder

        text_encoder = default_text_encoder()
    model = state.model
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    dataset = WorldDataset(WorldConfig(**train_config.world), seed=train_config.data_seed, split="train",
                           length=2**31 - 1)
    alphas = NoiseSchedule.ddpm_linear(config.num_train_timesteps).alphas_cumprod()
    stop = _StopFlag()
    _run_loop(train_config, ctx, state, model, dataset, text_encoder, alphas, out, stop)
    if ctx.world_size > 1:
        dist.barrier()
    return state


def _run_loop(train_config, ctx, state, model, dataset, text_encoder, alphas, out, stop) -> None:
    config = state.model.config
    session_start = time.monotonic()
    last_save = time.monotonic()
    elapsed_at_start = state.elapsed_s
    bar = tqdm(total=train_config.steps, initial=state.step, desc="train", unit="step", disable=not ctx.is_main)
    log = LossLog(out / "loss.csv", train_config.batch_size * ctx.world_size)
    batches = iter(step_batches(dataset, train_config, ctx, text_encoder, state.step))
    while state.step < train_config.steps and not stop.stop:
        # One generator per (step, rank): resuming reproduces the same timesteps and noise.
        generator = torch.Generator().manual_seed(2 * step_seed(train_config.seed, state.step, ctx.rank))
        lr = learning_rate(train_config, state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        video, audio, video_text, audio_text = next(batches)
        text = text_context(video_text, audio_text)
        model.train()
        loss, loss_v, loss_a = training_loss(model, config, alphas, video, audio, text, generator,
                                             (train_config.video_loss_weight, train_config.audio_loss_weight),
                                             train_config.loss_weighting, train_config.min_snr_gamma)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), train_config.grad_clip)
        state.optimizer.step()
        update_ema(state.ema, state.model, train_config.ema_decay, state.step)
        state.step += 1
        state.elapsed_s = elapsed_at_start + time.monotonic() - session_start
        log.add(tuple(all_reduce_mean(torch.stack([loss.detach(), loss_v, loss_a]), ctx).tolist()))
        bar.update(1)
        if state.step % train_config.log_every == 0 and ctx.is_main:
            bar.set_postfix(loss=f"{log.flush(state.step, lr, state.elapsed_s):.4f}")
        out_of_time = (train_config.time_limit_minutes is not None
                       and time.monotonic() - session_start > 60 * train_config.time_limit_minutes)
        if time.monotonic() - last_save > 60 * train_config.checkpoint_minutes or out_of_time:
            _save(out, state, train_config, ctx)
            last_save = time.monotonic()
        if out_of_time:
            break
    _save(out, state, train_config, ctx)
    bar.close()


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1024 + rank


class LossLog:
    """Averages the losses since the last log line and appends them to loss.csv."""

    def __init__(self, path: Path, clips_per_step: int):
        self.path, self.clips_per_step = path, clips_per_step
        self.window: list[tuple[float, float, float]] = []
        self.since = time.monotonic()

    def add(self, losses: tuple[float, float, float]) -> None:
        self.window.append(losses)

    def flush(self, step: int, lr: float, elapsed_s: float) -> float:
        mean = [sum(v[i] for v in self.window) / len(self.window) for i in range(3)]
        now = time.monotonic()
        append_csv(self.path, {
            "step": step, "loss": f"{mean[0]:.6f}", "loss_video": f"{mean[1]:.6f}", "loss_audio": f"{mean[2]:.6f}",
            "lr": f"{lr:.3g}", "elapsed_s": f"{elapsed_s:.1f}",
            "clips_per_s": f"{len(self.window) * self.clips_per_step / max(1e-9, now - self.since):.2f}",
        })
        self.window.clear()
        self.since = now
        return mean[0]


def _save(out: Path, state: TrainState, train_config: TrainConfig, ctx: Dist) -> None:
    if not ctx.is_main:
        return
    save_checkpoint(state, train_config, out / CHECKPOINT_NAME)
    plot_losses(out / "loss.csv", out / "loss.png")


def export_weights(
    checkpoint: str | os.PathLike, target: str | os.PathLike, use_ema: bool = True,
    dtype: torch.dtype = torch.float16,
) -> MMDiffusionConfig:
    """Write the (EMA) weights of a training checkpoint folder as the pack's self-describing safetensors.

    Stored as float16 by default: half the size to ship, and inference runs in float32 after loading
    (the rounding moves sampled clips by far less than a seed does).
    """
    from .checkpoint import save_safetensors

    folder = Path(checkpoint)
    meta = json.loads((folder / "state.json").read_text())
    config = MMDiffusionConfig.from_dict(meta["model_config"])
    model = MMDiffusionUNet(config)
    model.load_state_dict(load_file(str(folder / ("ema.safetensors" if use_ema else "model.safetensors"))))
    provenance = {
        "steps": int(meta["step"]), "wall_time_s": round(float(meta["elapsed_s"]), 1),
        "weights": "ema" if use_ema else "raw", "batch_size_per_process": meta["train_config"]["batch_size"],
        "exported_on": platform.platform(), "torch": torch.__version__, "stored_dtype": str(dtype).removeprefix("torch."),
    }
    save_safetensors(model, target, {"mmg.training": json.dumps(provenance),
                                     "mmg.train_config": json.dumps(meta["train_config"])}, dtype=dtype)
    return config
