"""Joint samplers for coupled audio-video diffusion models.

The two streams are one state for the solver: every step evaluates the denoiser once on both,
at one shared timestep, then advances each stream with its own scheduler. Schedulers are
diffusers' (stateful: multistep history, step counters), so every run builds one fresh scheduler
per stream; nothing is reused across runs.

A denoiser is any ``denoiser(x: AV, t: Tensor[B]) -> AV`` returning epsilon for both streams
(``mmg_core.denoiser.EpsDenoiser`` converts v / x0 models). ``x`` is the variance-preserving model
input; ``t`` is int64 except for Euler, whose timesteps are float.

Layouts: video (B, F, C, H, W), audio (B, C, T); see ``mmg_core.av``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Protocol

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .av import AV
from .denoiser import NoiseSchedule, TabulatedSchedule, x0_from_eps

__all__ = [
    "NoiseSchedule",  # defined in mmg_core.denoiser; re-exported because every sampler takes one
    "SAMPLERS",
    "StepInfo",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_unipc",
    "sampler_names",
    "sampler_timesteps",
]

Denoiser = Callable[[AV, torch.Tensor], AV]
# A named beta schedule or an ᾱ table: what a scheduler plan is built from.
Schedule = NoiseSchedule | TabulatedSchedule


@dataclass(frozen=True)
class StepInfo:
    """What a per-step callback receives, after the step has been taken.

    ``x`` is the solver state (float32; for Euler it is the sigma-scaled state x_t / sqrt(ᾱ)).
    ``denoised`` is the x0 predicted at this step's model call, in data scale: use it for previews.
    Both are the sampler's own tensors: read them, don't modify them in place.
    """

    step: int  # 0-based index of the step just taken
    total_steps: int
    timestep: float  # the model timestep of this step
    x: AV
    denoised: AV


class StepCallback(Protocol):
    def __call__(self, info: StepInfo) -> None: ...


# Scheduler factories: each returns a fresh scheduler and the timesteps to loop over.
SchedulerPlan = tuple[object, torch.Tensor]


def _trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """"Trailing" spacing (Lin et al. 2024, Table 2): starts at T-1, so 1 step starts from noise.

    The values diffusers' ``timestep_spacing="trailing"`` aims for, computed exactly: diffusers
    0.42.1 uses a float ``np.arange`` that yields steps+1 values ending in -1 for 62 step counts in
    1..1000 (e.g. 61, 103, 998), and lets float error pick the side of exact .5 ties.
    Fraction + round() rounds ties to even, as ``np.round`` does.
    """
    total = num_train_timesteps
    return [round(Fraction(total * (steps - k), steps)) - 1 for k in range(steps)]


def _ddpm_plan(schedule: Schedule, steps: int) -> SchedulerPlan:
    scheduler = DDPMScheduler(**schedule.scheduler_config(), variance_type="fixed_small", clip_sample=False)
    # Custom timesteps make DDPM step to the true next timestep (diffusers#9261 for the strided case).
    scheduler.set_timesteps(timesteps=_trailing_timesteps(schedule.num_train_timesteps, steps))
    return scheduler, scheduler.timesteps


def _ddim_plan(schedule: Schedule, steps: int) -> SchedulerPlan:
    scheduler = DDIMScheduler(
        **schedule.scheduler_config(),
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        steps_offset=0,
    )
    scheduler.set_timesteps(steps)
    # DDIMScheduler.step targets t - T // steps whatever its timestep list says, so the list only
    # decides where the model is evaluated: use the exact one. When steps does not divide T the
    # target can sit 1 timestep above the next model call, and the last step can stop at t=0
    # instead of ᾱ=1; _advance returns the x0 prediction on the last step for that reason.
    timesteps = torch.tensor(_trailing_timesteps(schedule.num_train_timesteps, steps), dtype=torch.int64)
    return scheduler, timesteps


def _dpmpp_2m_plan(schedule: Schedule, steps: int) -> SchedulerPlan:
    scheduler = DPMSolverMultistepScheduler(
        **schedule.scheduler_config(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        # A second-order step into sigma=0 divides by zero (h is infinite); first order lands on x0.
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(timesteps=_trailing_timesteps(schedule.num_train_timesteps, steps))
    return scheduler, scheduler.timesteps


def _unipc_plan(schedule: Schedule, steps: int) -> SchedulerPlan:
    # UniPC takes no custom timesteps. Its "trailing" list is wrong for 62 step counts (see
    # _trailing_timesteps) and its "linspace" list repeats timesteps when steps == T; linspace is
    # exact for steps < T (stride >= 1) and trailing is exact for steps == T (stride exactly 1).
    spacing = "linspace" if steps < schedule.num_train_timesteps else "trailing"
    scheduler = UniPCMultistepScheduler(
        **schedule.scheduler_config(),
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing=spacing,
    )
    scheduler.set_timesteps(steps)
    return scheduler, scheduler.timesteps


def _euler_plan(schedule: Schedule, steps: int) -> SchedulerPlan:
    scheduler = EulerDiscreteScheduler(
        **schedule.scheduler_config(),
        interpolation_type="linear",
        final_sigmas_type="zero",
        timestep_spacing="trailing",  # also makes init_noise_sigma = sigma_max
    )
    scheduler.set_timesteps(timesteps=_trailing_timesteps(schedule.num_train_timesteps, steps))
    return scheduler, scheduler.timesteps


def _check_steps(steps: int, schedule: Schedule) -> int:
    limit = schedule.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer between 1 and {limit}, got {steps!r}")
    if not 1 <= steps <= limit:
        raise ValueError(f"steps must be between 1 and {limit}, got {steps}")
    return steps


def _check_inputs(noise: AV, generator: torch.Generator) -> None:
    if not isinstance(noise, AV):
        raise ValueError(f"noise must be an AV(video=..., audio=...), got {type(noise).__name__}")
    video, audio = noise.video, noise.audio
    if video.shape[0] != audio.shape[0]:
        raise ValueError(f"video batch {video.shape[0]} != audio batch {audio.shape[0]}; they must match")
    if video.device != audio.device or video.dtype != audio.dtype:
        raise ValueError(
            f"video ({video.device}, {video.dtype}) and audio ({audio.device}, {audio.dtype}) noise "
            "must share one device and dtype"
        )
    if not video.is_floating_point():
        raise ValueError(f"noise must be floating point, got {video.dtype}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (seeded by the caller), got {generator!r}")


def _advance(scheduler, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, step_kwargs, is_last: bool):
    out = scheduler.step(eps, t, x, **step_kwargs)
    # DDPM, DDIM and Euler report x0; on the last step it is where their final step to ᾱ=1 lands
    # (exactly for DDPM/Euler; DDIM may otherwise stop at t=0, see _ddim_plan).
    x0 = getattr(out, "pred_original_sample", None)
    return x0 if is_last and x0 is not None else out.prev_sample


def _shared_timesteps(video_ts: torch.Tensor, audio_ts: torch.Tensor, steps: int) -> None:
    # One model call per step evaluates both streams at one timestep, so their plans must agree.
    # They do whenever both schedules have the same T: every plan's timesteps depend on T and steps only.
    if len(video_ts) != steps or not torch.equal(video_ts, audio_ts):
        raise ValueError("the video and audio schedules give different timesteps; they need the same "
                         "num_train_timesteps to be sampled together")


def _run(
    make_plan: Callable[[Schedule, int], SchedulerPlan],
    denoiser: Denoiser,
    noise: AV,
    schedule: Schedule,
    steps: int,
    generator: torch.Generator,
    callback: StepCallback | None,
    audio_schedule: Schedule | None = None,
) -> AV:
    """The one sampling loop. Returns a new AV in the noise's dtype; ``noise`` is never modified.

    ``schedule`` is the video stream's noise process and, unless ``audio_schedule`` is given, the
    audio stream's too (models whose two branches were trained on different processes, e.g. MMG).
    """
    audio_schedule = schedule if audio_schedule is None else audio_schedule
    _check_steps(steps, schedule)
    _check_steps(steps, audio_schedule)
    _check_inputs(noise, generator)
    (video_sched, timesteps), (audio_sched, audio_ts) = make_plan(schedule, steps), make_plan(audio_schedule, steps)
    _shared_timesteps(timesteps, audio_ts, steps)

    model_dtype, device, batch = noise.video.dtype, noise.video.device, noise.batch_size
    work_dtype = torch.promote_types(model_dtype, torch.float32)  # scheduler math in >= float32
    # Every scheduler whose step accepts a generator gets ours (only ancestral steps draw with it),
    # so no draw ever falls back to the global RNG. UniPC's step takes none and draws nothing.
    takes_generator = "generator" in inspect.signature(video_sched.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}
    alphas_cumprod = (AV(video=schedule.alphas_cumprod(), audio=audio_schedule.alphas_cumprod())
                      if callback is not None else None)

    # New tensors: the input stays untouched. (Euler starts at sigma_max, which differs per schedule.)
    x = AV(video=noise.video.to(work_dtype) * float(video_sched.init_noise_sigma),
           audio=noise.audio.to(work_dtype) * float(audio_sched.init_noise_sigma))
    for i, t in enumerate(timesteps):
        model_in = AV(
            video=video_sched.scale_model_input(x.video, t), audio=audio_sched.scale_model_input(x.audio, t)
        )
        t_batch = torch.full((batch,), t.item(), dtype=t.dtype, device=device)
        eps = denoiser(model_in.map(lambda v: v.to(model_dtype)), t_batch).map(lambda e: e.to(work_dtype))
        is_last = i == steps - 1
        # Video before audio: a fixed order of generator draws for ancestral samplers.
        x = AV(
            video=_advance(video_sched, eps.video, t, x.video, step_kwargs, is_last),
            audio=_advance(audio_sched, eps.audio, t, x.audio, step_kwargs, is_last),
        )
        if callback is not None:
            denoised = x0_from_eps(model_in, eps, t_batch, alphas_cumprod)
            callback(StepInfo(step=i, total_steps=steps, timestep=t.item(), x=x, denoised=denoised))
    return x.map(lambda v: v.to(model_dtype))


def sample_ddpm(denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
                generator: torch.Generator, callback: StepCallback | None = None,
                audio_schedule: Schedule | None = None) -> AV:
    """Ancestral DDPM (Ho et al. 2020, Algorithm 2) over a strided subset of the training timesteps."""
    return _run(_ddpm_plan, denoiser, noise, schedule, steps, generator, callback, audio_schedule)


def sample_ddim(denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
                generator: torch.Generator, callback: StepCallback | None = None,
                audio_schedule: Schedule | None = None) -> AV:
    """Deterministic DDIM, eta = 0 (Song et al. 2021, eq. 12)."""
    return _run(_ddim_plan, denoiser, noise, schedule, steps, generator, callback, audio_schedule)


def sample_dpmpp_2m(denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
                    generator: torch.Generator, callback: StepCallback | None = None,
                    audio_schedule: Schedule | None = None) -> AV:
    """DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022, Algorithm 2)."""
    return _run(_dpmpp_2m_plan, denoiser, noise, schedule, steps, generator, callback, audio_schedule)


def sample_unipc(denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
                 generator: torch.Generator, callback: StepCallback | None = None,
                 audio_schedule: Schedule | None = None) -> AV:
    """UniPC, order-2 predictor-corrector, bh2 (Zhao et al. 2023, Algorithms 1-2)."""
    return _run(_unipc_plan, denoiser, noise, schedule, steps, generator, callback, audio_schedule)


def sample_euler(denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
                 generator: torch.Generator, callback: StepCallback | None = None,
                 audio_schedule: Schedule | None = None) -> AV:
    """Euler on the probability-flow ODE in sigma (Karras et al. 2022, Algorithm 1 without churn)."""
    return _run(_euler_plan, denoiser, noise, schedule, steps, generator, callback, audio_schedule)


SAMPLERS: dict[str, Callable[..., AV]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "unipc": sample_unipc,
    "euler": sample_euler,
}

_PLANS: dict[str, Callable[[Schedule, int], SchedulerPlan]] = {
    "ddpm": _ddpm_plan,
    "ddim": _ddim_plan,
    "dpmpp_2m": _dpmpp_2m_plan,
    "unipc": _unipc_plan,
    "euler": _euler_plan,
}


def sampler_names() -> list[str]:
    """Valid sampler names, in display order (for a UI combo)."""
    return list(SAMPLERS)


def _check_name(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return name


def sampler_timesteps(name: str, schedule: Schedule, steps: int) -> torch.Tensor:
    """The model timesteps sampler ``name`` evaluates at, in order, shape (steps,)."""
    _check_name(name)
    _check_steps(steps, schedule)
    return _PLANS[name](schedule, steps)[1]


def sample(name: str, denoiser: Denoiser, noise: AV, schedule: Schedule, *, steps: int,
           generator: torch.Generator, callback: StepCallback | None = None,
           audio_schedule: Schedule | None = None) -> AV:
    """Run sampler ``name`` (one of ``sampler_names()``) from ``noise`` (unit Gaussian, both streams).

    ``schedule`` is the noise process of both streams, or of the video only when ``audio_schedule``
    is given (the streams must have the same number of training timesteps).

    Returns a new AV with the noise's shapes, device and dtype. Exceptions raised by ``callback``
    (e.g. a user interrupt) propagate unchanged. Runs in the caller's grad mode (gradient guidance
    needs autograd); wrap plain generation in ``torch.inference_mode()``.
    """
    sampler = SAMPLERS[_check_name(name)]
    return sampler(denoiser, noise, schedule, steps=steps, generator=generator, callback=callback,
                   audio_schedule=audio_schedule)
