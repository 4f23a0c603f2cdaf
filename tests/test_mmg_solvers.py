"""MMG through the pack's joint samplers (mmg_sampling.sample_mmg): VideoCrafter2's scaled process in
variance-preserving form, Auffusion's process for the audio, guidance at batch > 1, determinism.

The analytic checks use stand-in models whose epsilon is exact for a known data distribution, so the
right answer is known without any trained weights:
  * a point mass x0: every sampler must land on x0 (its x0 prediction is x0 at every step);
  * Gaussian data N(0, σ²): the probability-flow ODE keeps x_t / std(x_t) constant, so a deterministic
    solver must map the noise z to σ·z·(c_T / std_T) up to its discretisation error.
"""

from __future__ import annotations

import pytest
import torch

from mmg_core import sampling
from mmg_core.av import AV
from mmg_core.denoiser import TabulatedSchedule
from mmg_core.mmg_pipeline import ClipSize, MMGSettings, generate_mmg
from mmg_core.mmg_sampling import (
    AUFFUSION_SCHEDULE,
    SAMPLER_NAMES,
    VIDEOCRAFTER2_SCHEDULE,
    LvdmSchedule,
    MMGConditions,
    ScaledVideoDenoiser,
    check_sampler,
    lvdm_ddim_step,
    sample_mmg,
)
from mmg_tiny import tiny_conditions, tiny_coupled_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

AUDIO_SHAPE, VIDEO_SHAPE = (4, 6, 5), (4, 3, 4, 5)  # (c, mel, time), (c, f, h, w) per sample


def at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """table[t] for per-sample timesteps (integer-valued, possibly float), float64."""
    return table.double()[t.detach().round().long().cpu()]


def per_sample(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.reshape(-1, *[1] * (like.dim() - 1)).to(like)


class ExactModel:
    """Stands in for MMGCoupledUNet: epsilon that is exact for a given data law of each stream.

    ``video_x0`` / ``audio_x0`` (one sample, broadcast over the batch) make a point mass; with
    ``gaussian_std`` the data is N(0, std²) per element instead. The video process is lvdm's
    (x_t = √ᾱ·s·x0 + √(1−ᾱ)·ε), the audio's Auffusion's. Records the audio timesteps' batch sizes."""

    def __init__(self, video_x0=None, audio_x0=None, gaussian_std=None, video_schedule=VIDEOCRAFTER2_SCHEDULE):
        self.video_x0, self.audio_x0, self.std = video_x0, audio_x0, gaussian_std
        self.video_alphas = video_schedule.alphas_cumprod()
        self.video_scale = video_schedule.scale_arr()
        self.audio_alphas = AUFFUSION_SCHEDULE.alphas_cumprod()
        self.calls = []

    def eps(self, x, signal, noise, x0):
        signal, noise = per_sample(signal, x), per_sample(noise, x)
        if self.std is not None:  # E[ε | x_t] for Gaussian data: noise·x_t / Var(x_t)
            return noise * x / (signal.square() * self.std**2 + noise.square())
        return (x - signal * x0) / noise

    def __call__(self, audio, audio_t, audio_text, video, video_t, video_text, fps, coupled=True):
        b = audio.shape[0]
        audio_t = audio_t.expand(b) if torch.is_tensor(audio_t) else torch.full((b,), float(audio_t))
        assert audio_t.shape == (b,) and video_t.shape == (b,), "one timestep per sample"
        self.calls.append(b)
        a_audio, a_video, s = at(self.audio_alphas, audio_t), at(self.video_alphas, video_t), at(self.video_scale, video_t)
        audio_eps = self.eps(audio, a_audio.sqrt(), (1 - a_audio).sqrt(), self.audio_x0)
        video_eps = self.eps(video, a_video.sqrt() * s, (1 - a_video).sqrt(), self.video_x0)
        return audio_eps, video_eps


def fake_conditions(batch: int) -> MMGConditions:
    return MMGConditions(torch.zeros(batch, 3, 2), torch.zeros(batch, 3, 2), video_negative=torch.ones(batch, 3, 2))


def noise(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *AUDIO_SHAPE, generator=g), torch.randn(batch, *VIDEO_SHAPE, generator=g)


# ----- the variance-preserving form of VideoCrafter2's process ----------------------------------
def test_vp_table_is_lvdm_process_divided_by_its_signal_scale():
    schedule = VIDEOCRAFTER2_SCHEDULE
    a, s, c = schedule.alphas_cumprod().double(), schedule.scale_arr().double(), schedule.signal_scale()
    vp = schedule.variance_preserving().alphas_cumprod()
    torch.testing.assert_close(vp.sqrt(), a.sqrt() * s / c, rtol=1e-5, atol=0)  # signal coefficient / c
    torch.testing.assert_close((1 - vp).sqrt(), (1 - a).sqrt() / c, rtol=1e-5, atol=0)  # same ε, noise / c
    assert c[0] == pytest.approx(1.0, abs=1e-6) and c[-1] < 1.0  # scale_arr starts at 1 and falls to 0.7


def test_without_scale_arr_the_vp_table_is_lvdm_own():
    plain = LvdmSchedule(use_scale=False)
    torch.testing.assert_close(plain.variance_preserving().alphas_cumprod(), plain.alphas_cumprod().double(),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(plain.signal_scale(), torch.ones(1000, dtype=torch.float64))


@pytest.mark.parametrize("index", [0, 1, 12, 24])
def test_a_vp_ddim_step_equals_lvdm_scale_arr_step(index):
    schedule = VIDEOCRAFTER2_SCHEDULE
    plan = schedule.ddim(25)
    vp, c = schedule.variance_preserving().alphas_cumprod(), schedule.signal_scale()
    t, t_prev = int(plan.timesteps[index]), int(plan.timesteps[index - 1]) if index else 0
    x_t, eps = torch.randn(2, *VIDEO_SHAPE, dtype=torch.float64), torch.randn(2, *VIDEO_SHAPE, dtype=torch.float64)
    expected = lvdm_ddim_step(x_t, eps, plan, index) / c[t_prev]
    x0 = (x_t / c[t] - (1 - vp[t]).sqrt() * eps) / vp[t].sqrt()  # eta-0 DDIM on x' = x_t / c
    stepped = vp[t_prev].sqrt() * x0 + (1 - vp[t_prev]).sqrt() * eps
    torch.testing.assert_close(stepped, expected, rtol=2e-4, atol=2e-4)


def test_tabulated_schedule_rejects_a_table_that_is_not_a_noise_process():
    with pytest.raises(ValueError, match="decrease"):
        TabulatedSchedule((0.9, 0.95, 0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        TabulatedSchedule((1.0, 0.5, 0.1))


def test_streams_with_different_lengths_are_refused():
    short = TabulatedSchedule.from_alphas_cumprod(VIDEOCRAFTER2_SCHEDULE.alphas_cumprod()[:500])
    with pytest.raises(ValueError, match="num_train_timesteps"):
        sampling.sample("ddim", lambda x, t: x, AV(video=torch.zeros(1, 2), audio=torch.zeros(1, 2)), short,
                        audio_schedule=AUFFUSION_SCHEDULE, steps=5, generator=torch.Generator())


# ----- analytic targets through sample_mmg ---------------------------------------------------------
JOINT_SOLVERS = [name for name in SAMPLER_NAMES if name != "ddim"]


# "ddim" is the reference's DDIM, parity-tested in test_mmg_parity.py: it stops at ᾱ_0 < 1 (Auffusion's
# set_alpha_to_one=False, lvdm's alphas_prev[0]), a σ of 0.03 short of x0, so it cannot land exactly.
@pytest.mark.parametrize("sampler", JOINT_SOLVERS)
def test_every_sampler_lands_on_a_point_mass(sampler):
    g = torch.Generator().manual_seed(3)
    video_x0, audio_x0 = torch.randn(*VIDEO_SHAPE, generator=g), torch.randn(*AUDIO_SHAPE, generator=g)
    model = ExactModel(video_x0=video_x0, audio_x0=audio_x0)
    audio_noise, video_noise = noise(2)
    audio, video = sample_mmg(sampler, model, audio_noise, video_noise, fake_conditions(2), steps=10,
                              audio_guidance=7.5, video_guidance=12.0, modality_guidance=1.0,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(video, video_x0.expand_as(video), rtol=0, atol=2e-3)
    torch.testing.assert_close(audio, audio_x0.expand_as(audio), rtol=0, atol=2e-3)
    assert 4 in model.calls  # guided: unconditional + conditional of a batch of 2 in one call


@pytest.mark.parametrize("sampler", JOINT_SOLVERS)
def test_ignoring_scale_arr_misses_the_point_mass(sampler):
    """Control: the same solver on lvdm's ᾱ with the latent fed as is (no VP form) does not land on x0,
    so the point-mass test above really checks the scale_arr handling."""
    g = torch.Generator().manual_seed(3)
    video_x0, audio_x0 = torch.randn(*VIDEO_SHAPE, generator=g), torch.randn(*AUDIO_SHAPE, generator=g)
    model = ExactModel(video_x0=video_x0, audio_x0=audio_x0)
    audio_noise, video_noise = noise(1)

    def naive(x: AV, t: torch.Tensor) -> AV:
        a, v = model(x.audio, t, None, x.video, t.float(), None, None)
        return AV(video=v, audio=a)

    lvdm_as_vp = TabulatedSchedule.from_alphas_cumprod(VIDEOCRAFTER2_SCHEDULE.alphas_cumprod())
    result = sampling.sample(sampler, naive, AV(video=video_noise, audio=audio_noise), lvdm_as_vp,
                             audio_schedule=AUFFUSION_SCHEDULE, steps=10, generator=torch.Generator().manual_seed(0))
    assert (result.video - video_x0).abs().max() > 0.05


# Discretisation error at 100 steps (it shrinks with more steps: dpmpp_2m is 0.6 % short at 200).
@pytest.mark.parametrize("sampler, tolerance", [("dpmpp_2m", 0.03), ("unipc", 0.03), ("euler", 0.06)])
def test_deterministic_solvers_follow_the_flow_of_gaussian_data(sampler, tolerance):
    std = 0.5
    model = ExactModel(gaussian_std=std)
    audio_noise, video_noise = noise(2, seed=7)
    audio, video = sample_mmg(sampler, model, audio_noise, video_noise, fake_conditions(2), steps=100,
                              audio_guidance=1.0, video_guidance=1.0, generator=torch.Generator().manual_seed(0))
    # The flow keeps x / std(x) constant. Start (t = 999 for all three): lvdm's x_T = c_T·z for the video,
    # z for the audio; std_T from ᾱ_T (and scale_arr for the video).
    t = 999
    a_v, s_v = VIDEOCRAFTER2_SCHEDULE.alphas_cumprod().double()[t], VIDEOCRAFTER2_SCHEDULE.scale_arr().double()[t]
    c_v, a_a = VIDEOCRAFTER2_SCHEDULE.signal_scale()[t], AUFFUSION_SCHEDULE.alphas_cumprod()[t]
    expected_video = std * video_noise.double() * c_v / (a_v * s_v**2 * std**2 + 1 - a_v).sqrt()
    expected_audio = std * audio_noise.double() / (a_a * std**2 + 1 - a_a).sqrt()
    for name, got, expected in (("video", video, expected_video), ("audio", audio, expected_audio)):
        ratio = got.double() / expected
        # A linear flow maps the noise to a multiple of itself: one ratio for every element...
        assert ratio.std() < 1e-4, f"{name}: not proportional to its noise ({ratio.std():.2e})"
        # ... and that multiple is 1 up to the solver's discretisation error.
        assert abs(ratio.mean() - 1) < tolerance, f"{name}: {ratio.mean():.4f}"


# ----- the real (tiny) coupled model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    return tiny_coupled_model()


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_tiny_model_samples_guided_batches_deterministically(tiny_model, sampler):
    size = ClipSize(frames=8, height=128, width=128, mel_bins=128)
    settings = MMGSettings(steps=2, sampler=sampler, modality=1.0)
    conditions = tiny_conditions(tiny_model, batch=2)
    with torch.no_grad():
        runs = [generate_mmg(tiny_model, conditions, size, settings, generator=torch.Generator().manual_seed(seed))
                for seed in (5, 5, 6)]
    (audio, video), again, other = runs
    assert audio.shape == (2, 4, 16, 8) and video.shape == (2, 4, 8, 16, 16)
    assert torch.isfinite(audio).all() and torch.isfinite(video).all()
    assert torch.equal(audio, again[0]) and torch.equal(video, again[1])
    assert not torch.equal(video, other[1])


def test_scaled_video_denoiser_feeds_the_unet_c_times_the_state():
    seen = {}

    def model(audio, audio_t, audio_text, video, video_t, video_text, fps, coupled=True):
        seen["video"], seen["video_t"] = video, video_t
        return torch.zeros_like(audio), torch.zeros_like(video)

    denoiser = ScaledVideoDenoiser(model, fake_conditions(1), VIDEOCRAFTER2_SCHEDULE, 1.0, 1.0, 0.0)
    state = torch.ones(1, *VIDEO_SHAPE)
    denoiser(AV(video=state, audio=torch.zeros(1, *AUDIO_SHAPE)), torch.tensor([600]))
    c = VIDEOCRAFTER2_SCHEDULE.signal_scale()
    torch.testing.assert_close(seen["video"], state * float(c[600]))
    assert seen["video_t"].dtype.is_floating_point and float(seen["video_t"]) == 600.0
    halfway = denoiser.video_input_scale(torch.tensor([600.5]))
    assert float(halfway) == pytest.approx(float((c[600] + c[601]) / 2))


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        check_sampler("heun")
    with pytest.raises(ValueError, match="ddim"):
        MMGSettings(sampler="k_lms")
