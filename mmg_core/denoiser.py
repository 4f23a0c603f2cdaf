"""The training noise schedule, and the one place where a model's prediction type becomes epsilon.

Samplers in ``mmg_core.sampling`` only ever see epsilon. Whatever a model predicts (epsilon, v or x0)
is converted here, with the same noise schedule the schedulers use, so no sampler needs to know the
prediction type.

Conventions (variance-preserving, DDPM): ``x_t = sqrt(a) * x0 + sqrt(1 - a) * eps`` with
``a = alphas_cumprod[t]``; ``v = sqrt(a) * eps - sqrt(1 - a) * x0`` (Salimans & Ho 2022, "Progressive
Distillation"; the same v as diffusers' ``prediction_type="v_prediction"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from diffusers import DDPMScheduler
from einops import rearrange

from .av import AV

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

ModelFn = Callable[[AV, torch.Tensor], AV]  # model_fn(x: AV, t: (B,)) -> AV, same shapes as x


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward (training) noise process of a model: a beta schedule over ``num_train_timesteps``.

    Field names and meanings are diffusers' scheduler config keys, so a schedule can be written into
    checkpoint metadata (``to_dict``) and every scheduler is built from exactly these values.
    ``beta_start``/``beta_end`` are ignored by diffusers for ``"squaredcos_cap_v2"``.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        steps = self.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {steps!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}"
            )
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                "betas must satisfy 0 < beta_start < beta_end < 1, "
                f"got beta_start={self.beta_start!r}, beta_end={self.beta_end!r}"
            )

    @classmethod
    def ddpm_linear(cls, num_train_timesteps: int = 1000) -> "NoiseSchedule":
        """Ho et al.'s linear betas as guided-diffusion / MM-Diffusion define them.

        guided-diffusion (``gaussian_diffusion.get_named_beta_schedule("linear")``) scales the
        T=1000 endpoints 1e-4 and 0.02 by 1000/T so any T gives the same overall noise level.
        """
        scale = 1000 / num_train_timesteps
        return cls(num_train_timesteps, "linear", scale * 0.0001, scale * 0.02)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseSchedule":
        """Rebuild from ``to_dict`` output (e.g. parsed checkpoint metadata); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown NoiseSchedule keys {unknown}; expected only {sorted(names)} "
                "(was this metadata written by a newer version?)"
            )
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"NoiseSchedule metadata is missing {missing}")
        return cls(
            num_train_timesteps=int(data["num_train_timesteps"]),
            beta_schedule=str(data["beta_schedule"]),
            beta_start=float(data["beta_start"]),
            beta_end=float(data["beta_end"]),
        )

    def scheduler_config(self) -> dict[str, Any]:
        """Keyword arguments shared by every diffusers scheduler built from this schedule.

        prediction_type is always epsilon: conversions live in ``EpsDenoiser``, not in schedulers.
        """
        return {**self.to_dict(), "prediction_type": "epsilon"}

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T-1, float64 on CPU, shape (T,) (see ``scheduler_alphas_cumprod``)."""
        return scheduler_alphas_cumprod(self.scheduler_config())


@dataclass(frozen=True)
class TabulatedSchedule:
    """A variance-preserving noise process given by its ᾱ table rather than by a named beta schedule.

    For processes diffusers has no name for, e.g. VideoCrafter2's scaled latents rewritten in
    variance-preserving form (``mmg_sampling.LvdmSchedule.variance_preserving``). It offers the same
    ``num_train_timesteps`` / ``scheduler_config()`` / ``alphas_cumprod()`` as :class:`NoiseSchedule`,
    so every sampler in ``mmg_core.sampling`` accepts it; schedulers get the table as ``trained_betas``.
    """

    table: tuple[float, ...]  # ᾱ_t for t = 0..T-1, strictly decreasing in (0, 1)

    def __post_init__(self) -> None:
        values = torch.tensor(self.table, dtype=torch.float64)
        if values.dim() != 1 or values.numel() < 2:
            raise ValueError(f"a tabulated schedule needs at least 2 values of ᾱ, got {values.numel()}")
        if not bool(((values > 0) & (values < 1)).all()) or not bool((values[1:] < values[:-1]).all()):
            raise ValueError("ᾱ must lie in (0, 1) and strictly decrease with t")

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> "TabulatedSchedule":
        return cls(tuple(float(a) for a in alphas_cumprod.detach().to("cpu", torch.float64)))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.table)

    def betas(self) -> torch.Tensor:
        """β_t = 1 − ᾱ_t / ᾱ_{t−1} (ᾱ_{−1} = 1), float64: the inverse of ᾱ_t = Π (1 − β)."""
        values = torch.tensor(self.table, dtype=torch.float64)
        previous = torch.cat([values.new_ones(1), values[:-1]])
        return 1.0 - values / previous

    def scheduler_config(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.num_train_timesteps, "trained_betas": self.betas().tolist(),
                "prediction_type": "epsilon"}

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t as the schedulers rebuild it from ``trained_betas`` (float32 products), float64 (T,)."""
        return scheduler_alphas_cumprod(self.scheduler_config())


def scheduler_alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 of a diffusers scheduler config, float64 on CPU, shape (T,).

    Taken from a diffusers scheduler (float32 betas, as diffusers computes them) so the
    conversions here use bit-for-bit the table the samplers step with.
    """
    return DDPMScheduler(**scheduler_config).alphas_cumprod.to(torch.float64)


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ᾱ at per-sample timesteps ``t`` (B,); returns float64 on CPU, shape (B,).

    Integer t indexes the table. Float t (Euler's timesteps) is interpolated the way diffusers'
    ``EulerDiscreteScheduler(interpolation_type="linear")`` does: sigma = sqrt((1-ᾱ)/ᾱ) linear in
    t, then ᾱ = 1 / (1 + sigma²), so the model sees the same noise level the solver assumed.
    The lookup runs on CPU in float64 (also where MPS has no float64); it is one tiny op per step.
    """
    table = alphas_cumprod.detach().to("cpu", torch.float64)
    t = t.detach().to("cpu")
    if not t.is_floating_point():
        return table[t.long()]
    last = table.shape[0] - 1
    sigmas = ((1.0 - table) / table).sqrt()
    t = t.to(torch.float64).clamp(0, last)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=last)
    sigma = torch.lerp(sigmas[lo], sigmas[hi], t - lo)
    return 1.0 / (1.0 + sigma.square())


def _per_sample(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) float64 CPU coefficient -> broadcastable against ``like`` (B, ...), on its device."""
    trailing = " ".join("1" * (like.ndim - 1))
    coef = rearrange(coef, f"b -> b {trailing}")
    return coef.to(device=like.device, dtype=torch.float32)


def _eps_from_v(x: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # eps = sqrt(a) * v + sqrt(1 - a) * x_t (invert v = sqrt(a) eps - sqrt(1-a) x0 with the x_t eq.)
    return _per_sample(a.sqrt(), x) * v.float() + _per_sample((1 - a).sqrt(), x) * x.float()


def _eps_from_x0(x: torch.Tensor, x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # eps = (x_t - sqrt(a) x0) / sqrt(1 - a); 1 - a >= beta_0 > 0, so this never divides by zero.
    return (x.float() - _per_sample(a.sqrt(), x) * x0.float()) / _per_sample((1 - a).sqrt(), x)


def eps_from_prediction(prediction_type: str, x: torch.Tensor, pred: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What a model predicted (epsilon, v or x0) at noisy input ``x`` → epsilon; ``alpha_bar`` (B,).

    Shared by sampling (``EpsDenoiser``) and training, so a model is trained on exactly the epsilon
    its sampler will use. Differentiable.
    """
    if prediction_type == "epsilon":
        return pred
    convert = _eps_from_v if prediction_type == "v_prediction" else _eps_from_x0
    return convert(x, pred, alpha_bar)


def x0_from_eps(x: AV, eps: AV, t: torch.Tensor, alphas_cumprod: torch.Tensor | AV) -> AV:
    """Predicted clean sample from a model input ``x`` at timesteps ``t`` (B,) and its epsilon.

    ``alphas_cumprod`` is one ᾱ table for both streams, or an AV of one table per stream.
    Computed in float32. Near t = T-1, sqrt(ᾱ) is ~6e-3, so x0 is a noisy preview there.
    """
    tables = alphas_cumprod if isinstance(alphas_cumprod, AV) else AV(video=alphas_cumprod, audio=alphas_cumprod)

    def one(xs: torch.Tensor, es: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        a = alpha_bar_at(table, t)
        return (xs.float() - _per_sample((1 - a).sqrt(), xs) * es.float()) / _per_sample(a.sqrt(), xs)

    return AV(video=one(x.video, eps.video, tables.video), audio=one(x.audio, eps.audio, tables.audio))


class EpsDenoiser:
    """Wraps ``model_fn(x: AV, t: (B,)) -> AV`` so it always returns epsilon for both streams.

    ``prediction_type`` is what the model outputs: "epsilon" (returned unchanged), "v_prediction"
    or "sample" (x0); the latter two are converted in float32 with ᾱ at ``t`` (see ``alpha_bar_at``
    for float t). ``x`` is the model input, i.e. the variance-preserving x_t the model was trained on.
    """

    def __init__(self, model_fn: ModelFn, prediction_type: str, schedule: NoiseSchedule):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
            )
        self.model_fn = model_fn
        self.prediction_type = prediction_type
        self.schedule = schedule
        self._alphas_cumprod = schedule.alphas_cumprod()

    def __call__(self, x: AV, t: torch.Tensor) -> AV:
        out = self.model_fn(x, t)
        for (name, inp), (_, pred) in zip(x.items(), out.items()):
            if pred.shape != inp.shape:
                raise ValueError(
                    f"model returned {name} of shape {tuple(pred.shape)} for input {tuple(inp.shape)}; "
                    "model_fn must predict one value per input element"
                )
        if self.prediction_type == "epsilon":
            return out
        a = alpha_bar_at(self._alphas_cumprod, t)
        return x.zip_map(out, lambda xs, pred: eps_from_prediction(self.prediction_type, xs, pred, a))
