"""Guided joint sampling for MMG: audio and video denoised together, each with its own schedule and CFG.

Follows the reference inference (``chaksseu/MMG_AV`` @ 6a67cf3, ``MMG_multi_gpu_inference_mmg_0606.py``,
``run_inference``):
  * every step evaluates the coupled model twice, on the conditional and on the unconditional
    prompts of *both* modalities (the CMTs couple the two passes' streams, so the unconditional
    audio depends on the unconditional video and vice versa); here both passes run as one batch;
  * guidance per modality: ``eps = eps_u + s · (eps_c − eps_u)`` (audio 7.5, video 12);
  * optional modality guidance (not in the reference; LTX-2's term, as the pack's other samplers):
    ``+ m · (eps_c − eps_c without the CMTs)``, one more pass with the couplers switched off;
  * audio: diffusers ``DDIMScheduler`` with Auffusion's scheduler config, eta 0;
  * video: lvdm's DDIM (Song et al. 2021, eq. 12, eta 0) with VideoCrafter2's ``scale_arr``: the x0
    prediction is divided by the signal scale of step t and multiplied by that of the previous step.
Both streams are deterministic (eta 0): the only randomness is the initial noise, which the caller
draws with its own generator.

The pack's other joint samplers (``mmg_core.sampling``: ddpm, dpmpp_2m, unipc, euler) run MMG too
(:func:`sample_mmg`). They need a variance-preserving process per stream. Auffusion's is one. VideoCrafter2
trains on x_t = √ᾱ·s·x0 + √(1−ᾱ)·ε (s = scale_arr); dividing by c = √(1 − ᾱ + ᾱs²) gives
x_t / c = √ᾱ'·x0 + √(1−ᾱ')·ε with ᾱ' = ᾱs² / c² — a VP process with the *same* ε. So the solvers step
x' = x_t / c on the ᾱ' table and the U-Net is fed c·x' (:class:`ScaledVideoDenoiser`).

Layouts: audio latents (b, 4, mel, time), video latents (b, 4, frames, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from diffusers import DDIMScheduler
from einops import rearrange

from . import sampling
from .av import AV
from .denoiser import NoiseSchedule, TabulatedSchedule
from .models.mmg_coupled import MMG_FPS

# Auffusion's scheduler/scheduler_config.json (Stable Diffusion 1.5's).
AUFFUSION_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


# ----------------------------------------------------------------------------------------------
# Video: lvdm DDIM with scale_arr
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LvdmDDIMPlan:
    """Per-step coefficients; index i is the i-th timestep in ascending order (lvdm's indexing)."""

    timesteps: torch.Tensor  # (steps,) int64, ascending
    alphas: torch.Tensor  # ᾱ at each timestep (float32)
    alphas_prev: torch.Tensor  # ᾱ at the previous (smaller) timestep; ᾱ_0 for the first
    scale: torch.Tensor  # scale_arr at each timestep
    scale_prev: torch.Tensor


@dataclass(frozen=True)
class LvdmSchedule:
    """VideoCrafter2's noise schedule (``configs/inference_t2v_512_v2.0.yaml``, ``lvdm/models/ddpm3d.py``).

    ``scale_arr`` runs linearly from ``scale_a`` to ``scale_b`` over the first ``mid_step`` timesteps and
    stays at ``scale_b`` after: VideoCrafter2 trains on latents scaled by it (``use_scale``)."""

    num_train_timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    use_scale: bool = True
    scale_a: float = 1.0
    scale_b: float = 0.7
    mid_step: int = 400

    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float32; betas are lvdm's "linear" schedule: linspace of √β, squared (in float64)."""
        betas = torch.linspace(self.linear_start**0.5, self.linear_end**0.5, self.num_train_timesteps,
                               dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0).float()

    def scale_arr(self) -> torch.Tensor:
        """(T,) float32 signal scale per timestep (all ones without ``use_scale``)."""
        if not self.use_scale:
            return torch.ones(self.num_train_timesteps)
        ramp = torch.linspace(self.scale_a, self.scale_b, self.mid_step, dtype=torch.float64)
        tail = torch.full((max(self.num_train_timesteps - self.mid_step, 0),), self.scale_b, dtype=torch.float64)
        return torch.cat([ramp, tail])[: self.num_train_timesteps].float()

    def ddim(self, steps: int) -> LvdmDDIMPlan:
        """lvdm's "uniform" DDIM timesteps ``c·i + 1`` (c = T // steps), i < steps.

        lvdm itself lists ``range(0, T, c)``, one entry more than ``steps`` when c does not divide T;
        the reference then zips it with the audio's ``steps`` timesteps and never takes the final
        step. Taking the first ``steps`` entries keeps both streams on the same timesteps."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_train_timesteps}, got {steps}")
        c = self.num_train_timesteps // steps
        timesteps = torch.arange(steps, dtype=torch.int64) * c + 1
        previous = torch.cat([torch.zeros(1, dtype=torch.int64), timesteps[:-1]])
        alphas, scale = self.alphas_cumprod(), self.scale_arr()
        return LvdmDDIMPlan(timesteps, alphas[timesteps], alphas[previous], scale[timesteps], scale[previous])

    def signal_scale(self) -> torch.Tensor:
        """(T,) float64 c_t = √(1 − ᾱ_t + ᾱ_t s_t²): lvdm's x_t divided by it is variance-preserving."""
        alphas, scale = self.alphas_cumprod().double(), self.scale_arr().double()
        return (1.0 - alphas + alphas * scale.square()).sqrt()

    def variance_preserving(self) -> TabulatedSchedule:
        """The same noise process for x_t / c_t: ᾱ'_t = ᾱ_t s_t² / c_t² (see the module docstring)."""
        alphas, scale = self.alphas_cumprod().double(), self.scale_arr().double()
        return TabulatedSchedule.from_alphas_cumprod(alphas * scale.square() / self.signal_scale().square())


VIDEOCRAFTER2_SCHEDULE = LvdmSchedule()
# Auffusion's process (AUFFUSION_SCHEDULER_CONFIG's betas) for the pack's joint samplers.
AUFFUSION_SCHEDULE = NoiseSchedule(**{key: AUFFUSION_SCHEDULER_CONFIG[key]
                                      for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")})


def lvdm_ddim_step(x: torch.Tensor, eps: torch.Tensor, plan: LvdmDDIMPlan, index: int) -> torch.Tensor:
    """One eta=0 DDIM step from ``plan.timesteps[index]`` to the previous timestep. x, eps (b, c, f, h, w)."""
    a_t, a_prev = plan.alphas[index].item(), plan.alphas_prev[index].item()
    x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
    x0 = x0 / plan.scale[index].item()  # back to unscaled latents, then to the previous step's scale
    return a_prev**0.5 * plan.scale_prev[index].item() * x0 + (1.0 - a_prev) ** 0.5 * eps


# ----------------------------------------------------------------------------------------------
# Guidance
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMGConditions:
    """Prompt states for both modalities (batch b).

    ``audio_negative`` None means zeros, the reference's unconditional audio input. ``video_negative``
    is the empty prompt's OpenCLIP states (VideoCrafter2's ``uncond_type: empty_seq``); it is needed
    whenever any guidance scale differs from 1. ``fps`` conditions the video U-Net (the reference
    inference passes ``int(12.5) = 12``)."""

    audio_text: torch.Tensor  # (b, L, D_audio)
    video_text: torch.Tensor  # (b, L, D_video)
    audio_negative: torch.Tensor | None = None
    video_negative: torch.Tensor | None = None
    fps: float | torch.Tensor = MMG_FPS


@dataclass(frozen=True)
class GuidedEps:
    """Epsilon of one step: guided, conditional and unconditional (None when no guidance ran)."""

    audio: torch.Tensor
    video: torch.Tensor
    audio_cond: torch.Tensor
    video_cond: torch.Tensor
    audio_uncond: torch.Tensor | None = None
    video_uncond: torch.Tensor | None = None
    audio_uncoupled: torch.Tensor | None = None  # conditional, couplers off (modality guidance only)
    video_uncoupled: torch.Tensor | None = None


def _guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return cond if scale == 1.0 else uncond + scale * (cond - uncond)


def _batched(value, copies: int):
    """Repeat a per-sample tensor along the batch; numbers and 0-d tensors pass through."""
    return value.repeat(copies, *[1] * (value.dim() - 1)) if torch.is_tensor(value) and value.dim() else value


def guided_eps(model, audio: torch.Tensor, video: torch.Tensor, audio_t, video_t: torch.Tensor,
               conditions: MMGConditions, audio_guidance: float, video_guidance: float,
               modality_guidance: float = 0.0) -> GuidedEps:
    """Classifier-free guidance per modality; the unconditional and conditional passes run as one batch.

    ``modality_guidance`` m != 0 adds ``m · (eps_c − eps_c(coupled=False))`` to both streams: a push
    away from what the two U-Nets predict without exchanging features (one extra pass)."""
    eps = _cfg_eps(model, audio, video, audio_t, video_t, conditions, audio_guidance, video_guidance)
    if modality_guidance == 0.0:
        return eps
    a_d, v_d = model(audio, audio_t, conditions.audio_text, video, video_t, conditions.video_text, conditions.fps,
                     coupled=False)
    return replace(eps, audio=eps.audio + modality_guidance * (eps.audio_cond - a_d),
                   video=eps.video + modality_guidance * (eps.video_cond - v_d), audio_uncoupled=a_d, video_uncoupled=v_d)


def _cfg_eps(model, audio, video, audio_t, video_t, conditions: MMGConditions, audio_guidance: float,
             video_guidance: float) -> GuidedEps:
    b = audio.shape[0]
    if audio_guidance == 1.0 and video_guidance == 1.0:
        a, v = model(audio, audio_t, conditions.audio_text, video, video_t, conditions.video_text, conditions.fps)
        return GuidedEps(a, v, a, v)
    if conditions.video_negative is None:
        raise ValueError("guidance needs conditions.video_negative: the empty prompt's video text states")
    audio_negative = conditions.audio_negative
    if audio_negative is None:
        audio_negative = torch.zeros_like(conditions.audio_text)
    a, v = model(  # batch = [unconditional, conditional]
        torch.cat([audio, audio]), _batched(audio_t, 2), torch.cat([audio_negative, conditions.audio_text]),
        torch.cat([video, video]), _batched(video_t, 2),
        torch.cat([conditions.video_negative, conditions.video_text]), _batched(conditions.fps, 2),
    )
    (a_u, a_c), (v_u, v_c) = a.split(b), v.split(b)
    return GuidedEps(_guide(a_c, a_u, audio_guidance), _guide(v_c, v_u, video_guidance), a_c, v_c, a_u, v_u)


# ----------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MMGStep:
    """What the per-step callback receives, after the step. Read the tensors, don't modify them."""

    step: int
    total_steps: int
    audio_t: int
    video_t: int
    audio_latents: torch.Tensor
    video_latents: torch.Tensor
    eps: GuidedEps


def sample_mmg_ddim(
    model,
    audio_noise: torch.Tensor,
    video_noise: torch.Tensor,
    conditions: MMGConditions,
    *,
    steps: int = 25,
    audio_guidance: float = 7.5,
    video_guidance: float = 12.0,
    video_schedule: LvdmSchedule = VIDEOCRAFTER2_SCHEDULE,
    audio_scheduler_config: dict | None = None,
    callback: Callable[[MMGStep], None] | None = None,
    modality_guidance: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint DDIM (eta 0) from noise. audio_noise (b, 4, mel, time), video_noise (b, 4, f, h, w) ->
    (audio latents, video latents). ``model`` is an ``MMGCoupledUNet`` (or any callable with its signature)."""
    scheduler = DDIMScheduler.from_config(audio_scheduler_config or AUFFUSION_SCHEDULER_CONFIG)  # fresh per run
    scheduler.set_timesteps(steps, device=audio_noise.device)
    plan = video_schedule.ddim(steps)
    audio, video = audio_noise * scheduler.init_noise_sigma, video_noise
    for step, audio_t in enumerate(scheduler.timesteps):
        index = steps - 1 - step  # the video plan is ascending
        video_t = torch.full((video.shape[0],), float(plan.timesteps[index]), device=video.device)
        eps = guided_eps(model, scheduler.scale_model_input(audio, audio_t), video, audio_t, video_t,
                         conditions, audio_guidance, video_guidance, modality_guidance)
        audio = scheduler.step(eps.audio, audio_t, audio, eta=0.0, return_dict=False)[0]
        video = lvdm_ddim_step(video, eps.video, plan, index)
        if callback is not None:
            callback(MMGStep(step, steps, int(audio_t), int(plan.timesteps[index]), audio, video, eps))
    return audio, video


# ----------------------------------------------------------------------------------------------
# The pack's joint samplers
# ----------------------------------------------------------------------------------------------
SAMPLER_NAMES = ("ddim", *(name for name in sampling.sampler_names() if name != "ddim"))


def check_sampler(name: str) -> str:
    """``name`` if MMG can be sampled with it; otherwise a ValueError that lists the choices."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown MMG sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}")
    return name


class ScaledVideoDenoiser:
    """The guided coupled model as a ``sampling`` denoiser over (x'_video, audio) at a shared timestep.

    The video state x' is VideoCrafter2's latent divided by c_t (variance-preserving); the U-Net is
    fed c_t·x', as it was trained. ε is the same in both forms, so it is returned unchanged."""

    def __init__(self, model, conditions: MMGConditions, video_schedule: LvdmSchedule, audio_guidance: float,
                 video_guidance: float, modality_guidance: float):
        self.model, self.conditions = model, conditions
        self.guidance = (audio_guidance, video_guidance, modality_guidance)
        self.signal_scale = video_schedule.signal_scale()

    def video_input_scale(self, t: torch.Tensor) -> torch.Tensor:
        """c at per-sample timesteps t (b,), linear between integers (Euler's timesteps are float)."""
        t = t.detach().to("cpu", torch.float64).clamp(0, len(self.signal_scale) - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=len(self.signal_scale) - 1)
        return torch.lerp(self.signal_scale[low], self.signal_scale[high], t - low)

    def __call__(self, x: AV, t: torch.Tensor) -> AV:
        scale = rearrange(self.video_input_scale(t), "b -> b 1 1 1 1").to(x.video)
        audio_guidance, video_guidance, modality_guidance = self.guidance
        eps = guided_eps(self.model, x.audio, x.video * scale, t, t.float(), self.conditions,
                         audio_guidance, video_guidance, modality_guidance)
        return AV(video=eps.video, audio=eps.audio)


def sample_mmg(
    sampler_name: str,
    model,
    audio_noise: torch.Tensor,
    video_noise: torch.Tensor,
    conditions: MMGConditions,
    *,
    generator: torch.Generator,
    steps: int = 25,
    audio_guidance: float = 7.5,
    video_guidance: float = 12.0,
    modality_guidance: float = 0.0,
    video_schedule: LvdmSchedule = VIDEOCRAFTER2_SCHEDULE,
    callback: Callable[[MMGStep | sampling.StepInfo], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample MMG with any of ``SAMPLER_NAMES`` -> (audio latents, video latents), as :func:`sample_mmg_ddim`.

    "ddim" is the reference's joint DDIM (:func:`sample_mmg_ddim`, parity-tested); the others run the
    pack's joint samplers on Auffusion's process for the audio and VideoCrafter2's in variance-preserving
    form for the video. ``generator`` feeds the ancestral draws (ddpm); the callback gets an
    :class:`MMGStep` (ddim) or a ``sampling.StepInfo`` (the others): both have ``step`` and ``total_steps``."""
    check_sampler(sampler_name)
    guidance = dict(audio_guidance=audio_guidance, video_guidance=video_guidance, modality_guidance=modality_guidance)
    if sampler_name == "ddim":
        return sample_mmg_ddim(model, audio_noise, video_noise, conditions, steps=steps, video_schedule=video_schedule,
                               callback=callback, **guidance)
    denoiser = ScaledVideoDenoiser(model, conditions, video_schedule, **guidance)
    # The solvers start from x' = noise, so the U-Net first sees c_T·noise: the forward process's spread at
    # T for unit-variance latents (lvdm's own DDIM starts from the noise itself; c_T = 0.9988).
    result = sampling.sample(sampler_name, denoiser, AV(video=video_noise, audio=audio_noise),
                             video_schedule.variance_preserving(), audio_schedule=AUFFUSION_SCHEDULE, steps=steps,
                             generator=generator, callback=callback)
    # Every solver ends at ᾱ' = 1 (t = 0 stepped through), where c = 1 and x' is the clean latent.
    return result.audio, result.video
