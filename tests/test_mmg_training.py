"""MMG coupler training (mmg_core/mmg_training.py) on the tiny parity configuration, on CPU.

Base U-Nets: the parity fixture's random weights (tests/fixtures/mmg/tiny, no zero-initialised layer)
without its CMTs, so the couplers start from the trainer's own initialisation. Data: synthetic latents
in which the audio is a function of the video. Clips are small (8 frames of 8x8, audio 8x8, 8 text
tokens): a training step takes about 1 s on a free core (several times that while the machine is busy).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from mmg_core.__main__ import main as cli_main
from mmg_core.mmg_sampling import AUFFUSION_SCHEDULER_CONFIG, VIDEOCRAFTER2_SCHEDULE
from mmg_core.mmg_training import (
    COUPLER_INITS, LatentFolderData, LatentFolders, MMGTrainConfig, NoiseSchedules, SyntheticData,
    SyntheticLatents, build_model, distill_timesteps, train_mmg,
)

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "mmg" / "tiny"
CLIP = {"kind": "synthetic", "frames": 8, "height": 8, "width": 8, "mel": 8, "columns": 8, "text_tokens": 8}
STEPS = 5  # enough for the couplers to move; the reference initialisation stays blind after as many
COUPLERS = ("audio_cmt.", "video_cmt.")

# diffusers 0.42 calls np.array() on a torch tensor in its schedulers; harmless, and not ours.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory) -> str:
    """The fixture's U-Net weights without its CMTs."""
    state = load_file(TINY / "state_dict.safetensors")
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith(COUPLERS)}, str(path))
    return str(path)


def make_config(out_dir: Path, base_weights: str | None = None, **overrides) -> MMGTrainConfig:
    values = {"out_dir": str(out_dir), "model": str(TINY / "config.json"), "base_weights": base_weights,
              "data": CLIP, "steps": STEPS, "lr": 1e-3, "warmup_steps": 0, "log_every": 1, "seed": 0}
    return MMGTrainConfig.from_dict({**values, **overrides})


def cross_modal_sensitivity(model) -> tuple[float, float]:
    """(max |Δ audio eps| when only the video input changes, max |Δ video eps| when only the audio does)."""
    g = torch.Generator().manual_seed(1234)
    audio, other_audio = torch.randn(2, 1, 4, 8, 8, generator=g)
    video, other_video = torch.randn(2, 1, 4, 8, 8, 8, generator=g)
    audio_text, video_text = torch.randn(1, 8, 24, generator=g), torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([500])
    model.eval()
    with torch.no_grad():
        audio_eps, video_eps = model(audio, t, audio_text, video, t, video_text, 12.5)
        audio_eps_other_video, _ = model(audio, t, audio_text, other_video, t, video_text, 12.5)
        _, video_eps_other_audio = model(other_audio, t, audio_text, video, t, video_text, 12.5)
    return ((audio_eps - audio_eps_other_video).abs().max().item(),
            (video_eps - video_eps_other_audio).abs().max().item())


def loss_rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "loss.csv").open() as handle:
        return list(csv.DictReader(handle))


# ----- (a) and (b): the couplers learn with our initialisation, never with the reference's ----------
def test_identity_couplers_learn_to_use_the_other_modality(tmp_path, base_weights):
    config = make_config(tmp_path / "run", base_weights)
    fresh = build_model(config, config.model_config())
    # Identity start: the coupled model is the two U-Nets alone, so neither output sees the other input.
    assert cross_modal_sensitivity(fresh) == (0.0, 0.0)
    state = train_mmg(config)
    assert state.step == STEPS
    audio_change, video_change = cross_modal_sensitivity(state.model)
    assert audio_change > 1e-4, "after training, the audio must depend on the video input"
    assert video_change > 1e-4, "after training, the video must depend on the audio input"
    first = loss_rows(tmp_path / "run")[0]
    # At step 0 the student is its teachers: the distillation losses start at (numerically) zero.
    assert float(first["distill_audio"]) < 1e-8 and float(first["distill_video"]) < 1e-8
    assert float(first["loss_audio"]) > 0.1 and float(first["loss_video"]) > 0.1
    frozen = [n for n, p in state.model.named_parameters() if not n.startswith(COUPLERS) and p.requires_grad]
    assert frozen == []
    assert len(state.names) == sum(1 for n, _ in state.model.named_parameters() if n.startswith(COUPLERS))


def test_reference_initialisation_never_couples(tmp_path, base_weights):
    """Every CMT parameter zero (public MMG code): only proj_out.bias gets a gradient, so after the same
    training the audio still ignores the video (exactly), and vice versa."""
    assert "reference" in COUPLER_INITS
    config = make_config(tmp_path / "run", base_weights, coupler_init="reference")
    state = train_mmg(config)
    assert cross_modal_sensitivity(state.model) == (0.0, 0.0)
    trained = state.trainable_state()
    moved = sorted(name for name, value in trained.items() if value.any())
    assert moved and all(name.endswith("proj_out.bias") for name in moved), moved


# ----- (c) resume --------------------------------------------------------------------------------
def test_resume_repeats_an_uninterrupted_run(tmp_path, base_weights):
    steps = 3
    whole = train_mmg(make_config(tmp_path / "whole", base_weights, steps=steps))
    train_mmg(make_config(tmp_path / "split", base_weights, steps=1))
    resumed = train_mmg(make_config(tmp_path / "split", base_weights, steps=steps))
    assert resumed.step == whole.step == steps
    for ema in (False, True):
        expected, got = whole.trainable_state(ema=ema), resumed.trainable_state(ema=ema)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"ema={ema}: weights differ after resume"
    timing = ("elapsed_s", "clips_per_s")
    logged = [[{k: v for k, v in row.items() if k not in timing} for row in loss_rows(tmp_path / run)]
              for run in ("split", "whole")]
    assert logged[0] == logged[1]
    with pytest.raises(ValueError, match="^trainable"):
        train_mmg(make_config(tmp_path / "split", base_weights, steps=steps + 1, trainable=["couplers", "audio_unet"]))


# ----- (d) validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("override, field", [
    ({"trainable": ["couplers", "text_encoder"]}, "trainable"),
    ({"trainable": []}, "trainable"),
    ({"coupler_init": "zeros"}, "coupler_init"),
    ({"distill_timesteps": "cosine"}, "distill_timesteps"),
    ({"family": "mmdiffusion"}, "family"),
    ({"cond_dropout": 1.0}, "cond_dropout"),
    ({"batch_size": 0}, "batch_size"),
    ({"video_loss_weight": -1}, "video_loss_weight"),
    ({"learning_rate": 1e-4}, "learning_rate"),
    ({"data": {"kind": "webdataset"}}, "data.kind"),
    ({"data": dict(CLIP, columns=6)}, "data.columns"),
    ({"data": dict(CLIP, frames=12)}, "data.frames"),
    ({"data": dict(CLIP, height=12)}, "data.height"),
    ({"data": dict(CLIP, sample_rate=16000)}, "data.sample_rate"),
    ({"data": {"kind": "latents", "paired": "p", "audio_only": "a", "video_only": "v"}}, "data.null_video_text"),
    ({"base_weights": "missing.safetensors"}, "base_weights"),
    ({"model": "no-such-config.json"}, "model"),
    ({"model": {"video_unet": {}, "audio_unet": {}, "cross_modal_config": {}}}, "model"),
])
def test_config_errors_name_the_field(tmp_path, override, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        make_config(tmp_path, **override)


def test_config_needs_out_dir_and_resolves_paths_next_to_the_file(tmp_path):
    with pytest.raises(ValueError, match="^out_dir: "):
        MMGTrainConfig.from_dict({"model": "full"})
    (tmp_path / "cfg.json").write_text(json.dumps({"family": "mmg", "out_dir": "runs/a", "model": "full"}))
    config = MMGTrainConfig.from_file(tmp_path / "cfg.json")
    assert Path(config.out_dir) == tmp_path / "runs" / "a"
    assert config.model_config().cross_modal.layer_channels == (320, 640, 1280, 1280, 1280, 640)


# ----- pieces of the objective -------------------------------------------------------------------
def test_noising_matches_auffusion_and_videocrafter2():
    """Audio: diffusers DDPMScheduler.add_noise with Auffusion's config; video: lvdm q_sample with
    use_scale (x_t = √ᾱ·scale_arr[t]·x0 + √(1-ᾱ)·ε)."""
    g = torch.Generator().manual_seed(0)
    audio, noise_a = torch.randn(2, 3, 4, 8, 8, generator=g)
    video, noise_v = torch.randn(2, 3, 4, 2, 8, 8, generator=g)
    t = torch.tensor([0, 399, 999])
    schedules = NoiseSchedules.videocrafter2_auffusion()
    scheduler = DDPMScheduler.from_config(AUFFUSION_SCHEDULER_CONFIG)
    torch.testing.assert_close(schedules.noised(audio, noise_a, t, video=False), scheduler.add_noise(audio, noise_a, t))
    a = VIDEOCRAFTER2_SCHEDULE.alphas_cumprod()[t].view(-1, 1, 1, 1, 1)
    scale = torch.tensor([1.0, 0.7, 0.7]).view(-1, 1, 1, 1, 1)  # scale_arr ramps 1 → 0.7 over 400 steps
    torch.testing.assert_close(schedules.noised(video, noise_v, t, video=True),
                               a.sqrt() * scale * video + (1 - a).sqrt() * noise_v)


def test_distillation_timesteps_favour_noisy_steps():
    draws = distill_timesteps("linear_biased", 20000, 1000, torch.Generator().manual_seed(0)).float()
    assert abs(draws.mean().item() - 666) < 10  # E[t] for p(t) ∝ t + 1 on 0..999
    uniform = distill_timesteps("uniform", 20000, 1000, torch.Generator().manual_seed(0)).float()
    assert abs(uniform.mean().item() - 499.5) < 10


def test_synthetic_audio_follows_the_video(tmp_path):
    config = make_config(tmp_path)
    source = SyntheticLatents(SyntheticData(**{k: v for k, v in CLIP.items() if k != "kind"}), config.model_config())
    data = source.step_data(4, torch.Generator().manual_seed(0))
    energy = data.paired.video.mean(dim=(1, 3, 4))  # (b, f); one frame per audio column here
    loudness = data.paired.audio[:, 0, 0, :]  # (b, t), first mel bin
    correlation = torch.corrcoef(torch.stack([energy.flatten(), loudness.flatten()]))[0, 1]
    assert correlation > 0.95
    assert data.audio_only.video is None and data.video_only.audio is None
    assert data.paired.audio_text.shape == (4, 8, 24) and data.video_only.video_text.shape == (4, 8, 32)


def test_latent_folders_batch_clips_and_name_a_missing_tensor(tmp_path):
    g = torch.Generator().manual_seed(0)
    texts = {"audio_text": torch.randn(8, 24, generator=g), "video_text": torch.randn(8, 32, generator=g)}
    audio, video = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, 8, generator=g)
    for name, tensors in (("paired", {"audio": audio, "video": video}), ("audio_only", {"audio": audio}),
                          ("video_only", {"video": video})):
        (tmp_path / name).mkdir()
        for i in range(3):
            save_file({**tensors, **texts}, str(tmp_path / name / f"clip{i}.safetensors"))
    save_file({"video_text": torch.zeros(8, 32)}, str(tmp_path / "null.safetensors"))
    data = LatentFolderData(*(str(tmp_path / n) for n in ("paired", "audio_only", "video_only", "null.safetensors")))
    batch = LatentFolders(data).step_data(2, torch.Generator().manual_seed(0))
    assert batch.paired.audio.shape == (2, 4, 8, 8) and batch.paired.video.shape == (2, 4, 8, 8, 8)
    assert batch.audio_only.video is None and batch.video_only.video_text.shape == (2, 8, 32)
    (tmp_path / "no_caption").mkdir()
    save_file({"audio": audio, "audio_text": texts["audio_text"]}, str(tmp_path / "no_caption" / "clip0.safetensors"))
    broken = LatentFolderData(data.paired, str(tmp_path / "no_caption"), data.video_only, data.null_video_text)
    with pytest.raises(ValueError, match=r"clip0\.safetensors lacks tensor\(s\) \['video_text'\]"):
        LatentFolders(broken).step_data(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="^data.video_only: no .safetensors"):
        LatentFolders(LatentFolderData(data.paired, data.audio_only, str(tmp_path / "no_caption" / "x"),
                                       data.null_video_text))


# ----- (e) the command line ----------------------------------------------------------------------
def run_cli(config_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "mmg_core", "train", "--config", str(config_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_trains_a_tiny_mmg_config_end_to_end(tmp_path):
    config = {"family": "mmg", "out_dir": "run", "model": str(TINY / "config.json"), "data": CLIP, "steps": 2,
              "log_every": 1, "threads": 1}
    (tmp_path / "tiny_mmg.json").write_text(json.dumps(config))
    result = run_cli(tmp_path / "tiny_mmg.json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopped at step 2" in result.stdout
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["train_config"]["family"] == "mmg"
    assert all(name.startswith(COUPLERS) for name in state["trainable_names"])
    assert len(loss_rows(tmp_path / "run")) == 2 and (tmp_path / "run" / "loss.png").stat().st_size > 0
    couplers = load_file(str(tmp_path / "run" / "checkpoint" / "trainable.safetensors"))
    assert any(name.endswith("proj_out.weight") and value.any() for name, value in couplers.items())



def test_cli_reports_a_config_error_by_field(tmp_path, capsys):
    """Same entry point in-process (a second interpreter would only repeat the imports)."""
    config = {"family": "mmg", "out_dir": "run", "model": str(TINY / "config.json"), "data": CLIP,
              "trainable": ["couplers", "vae"]}
    (tmp_path / "bad.json").write_text(json.dumps(config))
    assert cli_main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "error: trainable: choose one or more of" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
