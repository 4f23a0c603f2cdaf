"""Text-to-audio-video parts: the analytic codec, the text-conditioned coupled U-Net, guidance,
prompt encoding, training (resume, export, two gloo processes) and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmg_core import checkpoint, media
from mmg_core.av import AV
from mmg_core.codec import decode_latent, encode_media, stft_frames
from mmg_core.conditioning import Guidance, encode_prompts, repeat_context
from mmg_core.models.mmdiffusion import MMDiffusionUNet
from mmg_core.models.mmdiffusion_config import PRESETS
from mmg_core.pipeline import GenerationSettings, combine_guidance, decode, generate
from mmg_core.text import default_text_encoder
from mmg_core.training import TrainConfig, export_weights, train

REPO = Path(__file__).resolve().parent.parent
TINY_WORLD = dataclasses.replace(PRESETS["world"], model_channels=32, text_heads=2)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers values so every path affects the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="module")
def encoder():
    return default_text_encoder()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomise(MMDiffusionUNet(TINY_WORLD)).eval()


@pytest.fixture(scope="module")
def prompts(encoder):
    return encode_prompts(encoder, "a red ball bouncing fast", None, "")


# ----------------------------------------------------------------------------- codec
def _codec_test_media() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 16, 3, 64, 64, generator=generator) * 2 - 1
    t = torch.arange(25600) / 16000
    audio = torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * t), 0.3 * torch.sin(2 * torch.pi * 1200 * t)])[:, None]
    return video, audio


def test_complex_stft_codec_round_trip_is_exact():
    config = dataclasses.replace(PRESETS["world"], video_patch=4, audio_codec="stft", stft_scale=2.0)
    video, audio = _codec_test_media()
    latent = encode_media(config, video, audio)
    assert tuple(latent.video.shape[1:]) == config.latent_video_shape == (16, 48, 16, 16)
    assert tuple(latent.audio.shape[1:]) == config.latent_audio_shape == (402, 256)
    back = decode_latent(config, latent)
    torch.testing.assert_close(back.video, video, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.audio, audio, atol=1e-4, rtol=0)


def test_magnitude_codec_keeps_pixels_exactly_and_the_sound_as_heard():
    """The default model's codec: pixels round-trip exactly; Griffin-Lim's waveform differs in phase
    but re-encodes to nearly the same magnitude latent, with the same pitch and loudness."""
    config = PRESETS["world"]
    assert config.audio_codec == "stft_mag"
    video, audio = _codec_test_media()
    latent = encode_media(config, video, audio)
    assert tuple(latent.video.shape[1:]) == config.latent_video_shape == (16, 192, 8, 8)
    assert tuple(latent.audio.shape[1:]) == config.latent_audio_shape == (201, 256)
    back = decode_latent(config, latent)
    torch.testing.assert_close(back.video, video, atol=1e-6, rtol=0)
    again = encode_media(config, back.video, back.audio)
    inner = (slice(None), slice(None), slice(8, -8))  # the clip's edges lack overlap for Griffin-Lim
    assert (again.audio - latent.audio)[inner].abs().mean() < 0.05  # latent range is about [-1, 1]
    for row in range(2):  # the strongest bin (the tone's pitch) and the level are kept
        assert latent.audio[row].mean(-1).argmax() == again.audio[row].mean(-1).argmax()
        assert abs(back.audio[row].square().mean().sqrt() - audio[row].square().mean().sqrt()) < 0.02


def test_griffin_lim_is_deterministic_and_needs_no_generator():
    config = PRESETS["world"]
    _, audio = _codec_test_media()
    latent = encode_media(config, torch.zeros(2, 16, 3, 64, 64), audio)
    first = decode_latent(config, latent).audio
    assert torch.equal(first, decode_latent(config, latent).audio)


def test_stft_frame_k_covers_hop_k():
    """A click at the start of hop interval k lands in STFT frame k: audio and video align by index."""
    hop, n_fft = 100, 400
    for k in (0, 37, 200):
        wave = torch.zeros(1, 25600)
        wave[0, k * hop + hop // 2] = 1.0
        energy = stft_frames(wave, n_fft, hop).abs().pow(2).sum(1)[0]
        assert int(energy.argmax()) == k


# ----------------------------------------------------------------------------- model
def test_text_model_needs_text_and_uses_it(tiny_model, prompts, encoder):
    config = tiny_model.config
    x = AV(video=torch.randn(1, *config.latent_video_shape), audio=torch.randn(1, *config.latent_audio_shape))
    with pytest.raises(ValueError, match="text-conditioned"):
        tiny_model(x.video, x.audio, torch.tensor([10]))
    other = encode_prompts(encoder, "a blue lamp blinking slowly")
    with torch.no_grad():
        a = tiny_model(x.video, x.audio, torch.tensor([10]), text=prompts.positive)
        b = tiny_model(x.video, x.audio, torch.tensor([10]), text=other.positive)
    assert (a[0] - b[0]).abs().max() > 1e-4 and (a[1] - b[1]).abs().max() > 1e-4


def test_coupling_gate_switches_the_exchange_per_sample(tiny_model, prompts):
    """Gate 0 on one sample changes only that sample; each stream then ignores the other stream."""
    config = tiny_model.config
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(2, *config.latent_video_shape, generator=generator)
    audio = torch.randn(2, *config.latent_audio_shape, generator=generator)
    text = repeat_context(prompts.positive, 2)
    t = torch.tensor([300, 300])
    with torch.no_grad():
        on = tiny_model(video, audio, t, text=text)
        mixed = tiny_model(video, audio, t, text=text, coupling=torch.tensor([1.0, 0.0]))
        other_audio = audio.clone()
        other_audio[1] = torch.randn(audio[1].shape, generator=generator)
        off_other = tiny_model(video, other_audio, t, text=text, coupling=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(mixed[0][0], on[0][0])
    assert (mixed[0][1] - on[0][1]).abs().max() > 1e-4
    # With the exchange off, sample 1's video prediction no longer depends on its audio.
    torch.testing.assert_close(off_other[0][1], mixed[0][1], atol=1e-5, rtol=1e-5)


def test_unconditional_reference_config_is_untouched():
    """Text layers exist only behind text_dim: the released config keeps its 1046 keys."""
    with torch.device("meta"):
        keys = MMDiffusionUNet(PRESETS["mmdiffusion-released"]).state_dict().keys()
    assert len(keys) == 1046 and not any("text" in k for k in keys)


# ----------------------------------------------------------------------------- guidance
def test_combine_guidance_formula():
    def av(v: float) -> AV:
        return AV(video=torch.full((1, 1, 1, 1, 1), v), audio=torch.full((1, 1, 1), v))

    preds = {"cond": av(2.0), "uncond": av(1.0), "uncoupled": av(1.5)}
    out = combine_guidance(preds, Guidance(video_cfg=3.0, audio_cfg=5.0, modality=2.0))
    assert out.video.item() == pytest.approx(2 + 2 * 1 + 2 * 0.5)
    assert out.audio.item() == pytest.approx(2 + 4 * 1 + 2 * 0.5)


def test_guided_generation_is_deterministic_and_prompt_dependent(tiny_model, prompts, encoder):
    settings = GenerationSettings(seed=3, steps=3, sampler="ddim", guidance=Guidance(3.0, 4.0, 1.0))
    first = generate(tiny_model, settings, conditioning=prompts)
    second = generate(tiny_model, settings, conditioning=prompts)
    assert torch.equal(first.video, second.video) and torch.equal(first.audio, second.audio)
    other = generate(tiny_model, settings, conditioning=encode_prompts(encoder, "a green slider moving slowly"))
    assert not torch.equal(first.video, other.video)
    clip = decode(first, tiny_model.config)
    assert clip.frames.shape == (1, 16, 64, 64, 3) and clip.audio.shape == (1, 1, 25600)


def test_prompt_fallbacks(encoder):
    conditioning = encode_prompts(encoder, "a purple drum struck slowly", "", "blurry")
    assert conditioning.audio_prompt == conditioning.video_prompt
    assert conditioning.negative_audio_prompt == "blurry"
    torch.testing.assert_close(conditioning.positive.audio_tokens, conditioning.positive.video_tokens)


# ----------------------------------------------------------------------------- training
def _train_config(out_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), model=TINY_WORLD.to_dict(), steps=steps, batch_size=2, log_every=1,
                       checkpoint_minutes=60, warmup_steps=2)


def test_training_resumes_exports_and_loads(tmp_path, encoder):
    state = train(_train_config(tmp_path / "run", 2), text_encoder=encoder)
    assert state.step == 2
    state = train(_train_config(tmp_path / "run", 4), text_encoder=encoder)
    assert state.step == 4
    rows = (tmp_path / "run" / "loss.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    for name in ("model", "ema", "optimizer"):
        assert (tmp_path / "run" / "checkpoint" / f"{name}.safetensors").stat().st_size < 50e6
    exported = tmp_path / "model.safetensors"
    export_weights(tmp_path / "run" / "checkpoint", exported)
    loaded = checkpoint.load_model(exported)
    assert loaded.config == TINY_WORLD
    meta = checkpoint.read_state_dict(exported)[1]
    assert json.loads(meta["mmg.training"])["steps"] == 4


def test_two_process_gloo_training(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks step together and rank 0 writes the checkpoint."""
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps({**{k: v for k, v in dataclasses.asdict(_train_config(tmp_path / "ddp", 2)).items()},
                                  "threads": 1}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mmg_core", "train", "--config", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


def test_sigterm_to_the_process_group_saves_a_checkpoint(tmp_path):
    """A session ending sends SIGTERM to every process, data worker included: the run must still stop
    cleanly with a checkpoint of the step it reached (the worker ignores the signal)."""
    import signal
    import time

    config = tmp_path / "long.json"
    settings = dataclasses.asdict(_train_config(tmp_path / "long", 10_000))
    config.write_text(json.dumps({**settings, "threads": 1, "log_every": 1}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mmg_core", "train", "--config", str(config)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    loss_csv = tmp_path / "long" / "loss.csv"
    deadline = time.monotonic() + 300
    while not (loss_csv.exists() and len(loss_csv.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    state = json.loads((tmp_path / "long" / "checkpoint" / "state.json").read_text())
    assert state["step"] >= 2 and "stopped at step" in stderr


def test_min_snr_weights_cap_the_low_noise_steps():
    from mmg_core.training import timestep_weights

    alpha_bar = torch.tensor([0.999, 0.9, 5 / 6, 0.5, 0.01])
    weights = timestep_weights(alpha_bar, "min_snr", 5.0)
    snr = alpha_bar / (1 - alpha_bar)
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert weights[0] < 0.01 and weights[2] == pytest.approx(1.0) and torch.all(weights[3:] == 1)
    torch.testing.assert_close(timestep_weights(alpha_bar, "v"), 1 / alpha_bar)
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(out_dir="x", loss_weighting="snr").validate()


def test_learning_rate_warms_up_then_halves_every_half_life_down_to_the_floor():
    from mmg_core.training import learning_rate

    constant = TrainConfig(out_dir="x", lr=4e-4, warmup_steps=50)
    assert learning_rate(constant, 0) == pytest.approx(4e-4 / 50)
    assert learning_rate(constant, 49) == learning_rate(constant, 10**6) == pytest.approx(4e-4)
    decayed = TrainConfig(out_dir="x", lr=4e-4, warmup_steps=50, lr_decay_start=1000, lr_half_life=500, lr_floor=0.2)
    assert learning_rate(decayed, 1000) == pytest.approx(4e-4)
    assert learning_rate(decayed, 1500) == pytest.approx(2e-4)
    assert learning_rate(decayed, 1250) == pytest.approx(4e-4 / 2**0.5)
    assert learning_rate(decayed, 2500) == learning_rate(decayed, 10**6) == pytest.approx(0.2 * 4e-4)
    for bad in ({"lr_half_life": 0, "lr_decay_start": 5}, {"lr_decay_start": -1}, {"lr_floor": 0.0}):
        with pytest.raises(ValueError, match="lr_"):
            TrainConfig(out_dir="x", **bad).validate()


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path, encoder):
    train(_train_config(tmp_path / "first", 2), text_encoder=encoder)
    source = load_file(str(tmp_path / "first" / "checkpoint" / "model.safetensors"))
    config = dataclasses.replace(_train_config(tmp_path / "second", 1), lr=0.0,
                                 init_from=str(tmp_path / "first" / "checkpoint"))
    state = train(config, text_encoder=encoder)
    assert state.step == 1
    for key, value in state.model.state_dict().items():
        torch.testing.assert_close(value, source[key])  # lr 0: the step left the initial weights as they were
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(dataclasses.replace(_train_config(tmp_path / "third", 1), init_from=str(tmp_path / "nowhere")),
              text_encoder=encoder)


def test_cli_generate_with_prompt(tmp_path):
    model_path = tmp_path / "tiny_world.safetensors"
    torch.manual_seed(0)
    checkpoint.save_safetensors(randomise(MMDiffusionUNet(TINY_WORLD)), model_path)
    out = tmp_path / "clip.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "mmg_core", "generate", "--model", str(model_path), "--prompt", "a white lamp blinking",
         "--seed", "5", "--steps", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    clip = media.read_mp4(out)
    assert clip.frames.shape == (16, 64, 64, 3) and clip.audio.shape == (1, 25600)
    assert json.loads(clip.metadata["mmg"])["prompt"] == "a white lamp blinking"
    assert "warning" not in result.stderr
    long = "a white lamp blinking slowly, a low beep while it is lit, " * 3  # 39 words
    result = subprocess.run(
        [sys.executable, "-m", "mmg_core", "generate", "--model", str(model_path), "--prompt", long, "--audio-prompt",
         "a low beep", "--seed", "5", "--steps", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "video_prompt is longer than the text encoder reads" in warning and "end, 'a white lamp blinking slowly, a low beep while it is lit,'" in warning
    # A model exported from a `train` run knows only the synthetic world: a prompt outside it is warned about.
    world_path = tmp_path / "tiny_world_trained.safetensors"
    checkpoint.save_safetensors(randomise(MMDiffusionUNet(TINY_WORLD)), world_path, {"mmg.train_config": "{}"})
    result = subprocess.run(
        [sys.executable, "-m", "mmg_core", "generate", "--model", str(world_path), "--prompt", "a dog barking",
         "--seed", "5", "--steps", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: video_prompt: ")]
    assert len(warnings) == 3 and "no scene" in warnings[0] and "no colour" in warnings[1] and "no tempo" in warnings[2]
    missing = subprocess.run([sys.executable, "-m", "mmg_core", "generate", "--model", str(model_path), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "--prompt" in missing.stderr
