"""mmg_core.sync: EfficientNet-Lite0, Grad-CAM, VideoCAM / AudioCAM, CAM-Sync, AV-Align, the
audio classifier's training script, best-of-N ranking and the ``evaluate`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmg_core import media
from mmg_core.__main__ import main
from mmg_core.sync import (
    AudioEventNet, SyncModels, audio_cam, av_align, av_align_score, cam_sync, grad_cam, load_audio_classifier,
    load_frame_classifier, onset_motion_sync, pooled_sync, rank_by_cam_sync, save_audio_classifier, score_clip, sync_energies,
    video_cam,
)
from mmg_core.sync import backbones
from mmg_core.sync.backbones import TRAIN_AUDIO_COMMAND, AudioNetConfig
from mmg_core.sync.camsync import video_events
from mmg_core.sync.gradcam import cam_level_db, smear, turn_back_maps
from mmg_core.weights import WeightsMismatchError
from mmg_core.world import WorldConfig, make_spec, render_clip
from sync_stand_ins import LoudnessNet

ROOT = Path(__file__).resolve().parents[1]
LONG = WorldConfig(frames=40)  # 4 s clips: enough irregular events for one unambiguous best lag


@pytest.fixture(scope="module")
def frame_net():
    return load_frame_classifier()


def lamp_clip(seed: int = 4):
    spec = make_spec(seed, LONG, scene="lamp", colour="yellow", background="dark", tempo="fast", pitch="high")
    return render_clip(spec, LONG)


@pytest.fixture(scope="module")
def lamp_and_cam(frame_net):
    """A 4 s fast lamp clip (11 switch-ons at irregular 0.3 / 0.4 s intervals) and its VideoCAM."""
    clip = lamp_clip()
    return clip, video_cam(frame_net, clip.video, LONG.fps)


def moving_disc(frames: int = 8, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3, H, W) red disc (radius 8) crossing a dark frame left to right, and its (F, H, W) masks."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.stack([((xx - 10 - 6 * f) ** 2 + (yy - 32) ** 2 <= 64).float() for f in range(frames)])
    video = torch.full((frames, 3, size, size), -0.9)
    video[:, 0] = torch.where(masks > 0, 0.8, video[:, 0])
    video[:, 1] = torch.where(masks > 0, -0.6, video[:, 1])
    return video, masks


# ----------------------------------------------------------------------------------------------
# Backbones


def test_efficientnet_lite0_loads_the_package_weights_with_strict_keys():
    model = load_frame_classifier(fold=False)
    stored = torch.load(backbones._package_weights_path(), map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(stored)  # every key, same order, nothing ignored
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    clip = render_clip(make_spec(0, WorldConfig(), scene="ball", colour="red", background="dark", tempo="fast",
                                 pitch="low"))
    frames = torch.cat([clip.video[:3], torch.rand(1, 3, 64, 64) * 2 - 1])  # world frames and noise
    with torch.no_grad():
        logits = model(frames)
        folded = backbones.fold_batch_norms(model)(frames)
    assert logits.shape == (4, 1000) and torch.isfinite(logits).all()
    torch.testing.assert_close(folded, logits, atol=2e-3, rtol=1e-3)  # folding changes no prediction
    assert (folded.argmax(-1) == logits.argmax(-1)).all()


def test_efficientnet_lite0_recognises_photos():
    """The TF conversion needs TF "same" padding and (p - 127) / 128 inputs: with PyTorch's symmetric
    padding the daisy photo's top class becomes 947 (mushroom)."""
    datasets = pytest.importorskip("sklearn.datasets")  # two photos ship inside scikit-learn's wheel
    model = load_frame_classifier(input_size=224)  # ImageNet's resolution
    photos = {name: torch.from_numpy(np.array(datasets.load_sample_image(f"{name}.jpg")))
              for name in ("china", "flower")}
    with torch.no_grad():
        top = {name: model(pixels.permute(2, 0, 1)[None].float() / 127.5 - 1.0).topk(3).indices[0].tolist()
               for name, pixels in photos.items()}
    assert top["flower"][0] == 985  # daisy
    assert {442, 698} & set(top["china"])  # bell cote / palace: the photo shows a temple roof


def test_frame_classifier_files_are_strict_and_never_unpickled(tmp_path):
    state = load_frame_classifier(fold=False).state_dict()
    torch.save({**state, "_extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsMismatchError, match="_extra.weight"):
        load_frame_classifier(tmp_path / "extra.pt")
    torch.save({"state_dict": state, "note": object()}, tmp_path / "object.pt")  # needs real unpickling
    with pytest.raises(ValueError, match="weights_only=True"):
        load_frame_classifier(tmp_path / "object.pt")
    fine_tune = {**state, "_fc.weight": state["_fc.weight"][:5], "_fc.bias": state["_fc.bias"][:5]}
    torch.save({"state_dict": fine_tune}, tmp_path / "five.pth")
    assert load_frame_classifier(tmp_path / "five.pth", input_size=64)(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_audio_classifier_round_trip_and_clear_errors(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = AudioEventNet(AudioNetConfig(channels=(8, 16, 16, 32))).eval()
    path = save_audio_classifier(model, tmp_path / "audio.safetensors", extra={"mmg.train.steps": "0"})
    loaded = load_audio_classifier(path)
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert path.stat().st_size < 2_000_000
    monkeypatch.setattr(backbones, "DEFAULT_AUDIO_CLASSIFIER", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match=TRAIN_AUDIO_COMMAND):
        load_audio_classifier()
    from safetensors.torch import save_file

    save_file(dict(model.state_dict()), str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match=TRAIN_AUDIO_COMMAND):
        load_audio_classifier(tmp_path / "bare.safetensors")


# ----------------------------------------------------------------------------------------------
# Grad-CAM


def test_grad_cam_of_a_mean_pooled_linear_head_is_the_class_activation_map():
    torch.manual_seed(0)
    net = AudioEventNet().eval()
    waves = torch.randn(2, 1, 25600) * 0.1
    cam = grad_cam(net, waves)
    features = net.features(waves).detach()
    assert features.shape == (2, 128, 8, 40) and cam.maps.shape == (2, 8, 40) and cam.logits.shape == (2, 8)
    weights = net.classifier.weight[cam.target] / (8 * 40)  # d mean-pool / d feature = 1 / (h w)
    expected = F.relu(torch.einsum("nc,nchw->nhw", weights, features))
    torch.testing.assert_close(cam.maps, expected, rtol=1e-4, atol=1e-7)
    shared = grad_cam(net, waves, shared_target=True)
    assert (shared.target == cam.logits.mean(0).argmax()).all()


def test_video_cam_heatmap_follows_a_moving_object(frame_net):
    video, masks = moving_disc()
    result = video_cam(frame_net, video, fps=10)
    assert result.heatmaps.shape == (8, 5, 5) and result.energy.shape == result.motion.shape == (8,)
    frame_peaks = result.heatmaps.amax((1, 2))
    assert float(frame_peaks.max()) == pytest.approx(1.0) and float(frame_peaks.min()) < 0.95  # over the clip
    heat = F.interpolate(result.heatmaps[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    near = F.max_pool2d(masks[:, None], 17, stride=1, padding=8)[:, 0]  # the disc dilated by 8 px
    peaks = [int(near[f].flatten()[heat[f].argmax()]) for f in range(8)]
    assert peaks == [1] * 8, "the map's peak must sit on the disc in every frame"
    assert float((heat * near).sum() / heat.sum()) > 2 * float(near.mean())
    columns = heat.sum(1).argmax(-1)  # the peak moves right with the disc
    assert columns[-1] > columns[0] + 20
    assert np.all(result.energy >= 0) and result.energy.max() > 0


def moving_square(path: list[int], size: int = 48, side: int = 8) -> torch.Tensor:
    """(F, 3, H, W) a grey square on black whose left edge is at ``path[f]`` (pixels) in frame f."""
    video = torch.full((len(path), 3, size, size), -1.0)
    for frame, left in enumerate(path):
        video[frame, :, 20: 20 + side, left: left + side] = 0.5
    return video


def test_turn_back_peaks_on_the_frame_where_motion_reverses():
    # Right 4 px a frame for frames 0-5, back left from frame 6: frame 5 is the "bounce".
    path = [4 * f for f in range(6)] + [20 - 4 * f for f in range(1, 5)]
    per_frame = turn_back_maps(moving_square(path)).mean((1, 2))
    assert int(per_frame.argmax()) == 5
    steady = [f for f in range(len(path)) if f not in (5,)]
    assert torch.all(per_frame[steady] == 0), "a square moving steadily (wider than its step) never turns back"
    assert per_frame[0] == 0 and per_frame[-1] == 0  # no neighbour on one side
    still = turn_back_maps(moving_square([10] * 6))
    assert torch.all(still == 0)


def test_video_cam_turn_back_energy_marks_the_reversal(frame_net):
    path = [4 * f for f in range(6)] + [20 - 4 * f for f in range(1, 5)]
    result = video_cam(frame_net, moving_square(path), fps=10)
    assert result.turn_back.shape == result.energy.shape == (10,)
    assert int(np.argmax(result.turn_back)) == 5 and np.all(result.turn_back >= 0)


def test_turn_back_removes_the_falling_ball_lead():
    """A ball is dropped (motion appears), falls faster for 8 frames, bounces (heard then) and slows
    on the way up: the motion onsets all come before the sound, the turn-back is on the bounce."""
    fps, bounces = 25.0, (12, 40, 58, 90)
    motion, turn_back, audio = np.zeros(120), np.zeros(120), np.zeros(120)
    for bounce in bounces:
        motion[bounce - 8: bounce + 1] = np.linspace(0.2, 1.0, 9)  # dropped, then speeding up
        motion[bounce + 1: bounce + 9] = np.linspace(0.9, 0.1, 8)  # slowing on the way up
        turn_back[bounce] = 1.0
        audio[bounce] = 1.0
    lead = sync_energies(motion, fps, audio, fps, duration_s=120 / fps)
    assert lead.offset_s == pytest.approx(8 / fps, abs=0.5 / fps)  # onsets alone: the drop, 8 frames early
    fixed = sync_energies(motion, fps, audio, fps, duration_s=120 / fps, video_turn_back=turn_back)
    assert fixed.offset_s == pytest.approx(0.0, abs=0.5 / fps), fixed.summary()
    events = video_events(motion, turn_back)
    onsets = np.maximum(np.diff(motion, prepend=motion[:1]), 0.0)
    assert np.allclose(events, np.maximum(onsets / onsets.std(), turn_back / turn_back.std()))
    assert np.array_equal(video_events(motion), onsets) and np.array_equal(video_events(motion, 0 * motion),
                                                                           onsets / onsets.std())


def test_audio_energy_is_the_db_level_of_the_cam_weighted_power():
    flat = torch.ones(4, 5)
    power = torch.tensor([1.0, 2.0, 4.0, 8.0, 1e-9])[None].expand(4, 5)
    level = cam_level_db(flat, power)
    assert np.allclose(np.diff(level[:4]), 10 * math.log10(2), atol=1e-3)  # doubling the power: +3 dB
    assert level.min() == 0.0 and level[4] == 0.0 and level[0] == pytest.approx(50 - 10 * math.log10(8), abs=1e-3)
    half = cam_level_db(flat * torch.tensor([1.0, 0.5, 1, 1])[:, None], power)  # CAM weight halves one bin
    assert np.all(half <= level + 1e-9)
    assert np.array_equal(cam_level_db(torch.zeros(4, 5), power), np.zeros(5))  # nothing looked at: flat
    assert np.array_equal(cam_level_db(flat, torch.zeros(4, 5)), np.zeros(5))  # silence: flat


def test_audio_cam_energy_rises_with_loudness_and_ignores_gain():
    rate, step = 16000, 8000  # a 440 Hz tone whose amplitude triples every 0.5 s
    seconds = torch.arange(4 * step) / rate
    amplitude = torch.tensor([0.01, 0.03, 0.09, 0.27]).repeat_interleave(step)
    tone = amplitude * torch.sin(2 * math.pi * 440 * seconds)
    net = LoudnessNet().eval()
    result = audio_cam(net, tone, rate)
    levels = [float(np.median(result.energy[25 + 50 * k: 45 + 50 * k])) for k in range(4)]  # inside each step
    assert all(b > a + 5 for a, b in zip(levels, levels[1:])), levels  # 9.5 dB louder each step
    louder = audio_cam(net, 3 * tone, rate)
    np.testing.assert_allclose(louder.energy, result.energy, atol=1e-3)  # a level relative to the clip's own


def test_audio_heatmap_is_smeared_over_the_frames_each_cam_step_pooled():
    cam = torch.arange(6.0).reshape(2, 3)
    spread = smear(cam, (8, 12))  # 4 mel bins and 4 frames per cell
    assert spread.shape == (8, 12)
    assert torch.equal(spread, cam.repeat_interleave(4, 0).repeat_interleave(4, 1))


def test_audio_cam_at_any_sample_rate():
    torch.manual_seed(0)
    net = AudioEventNet().eval()
    seconds = torch.arange(48000 * 2) / 48000
    stereo = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * seconds)] * 2) * (seconds > 1.0)
    result = audio_cam(net, stereo, 48000)  # resampled to 16 kHz, mixed to mono
    assert result.log_mel.shape == result.heatmap.shape == (64, 200) and result.energy.shape == (200,)
    assert result.frames_per_second == 100.0 and 0 <= result.top_class < 8
    assert float(result.heatmap.max()) == pytest.approx(1.0)
    assert result.energy.min() == 0.0 and np.all(np.isfinite(result.energy))  # dB above the clip's quietest frame


# ----------------------------------------------------------------------------------------------
# CAM-Sync


def test_offset_sign_convention_on_constructed_energies():
    fps, rng = 25.0, np.random.default_rng(0)
    video = np.zeros(100)
    video[rng.choice(np.arange(5, 90), 8, replace=False)] = 1.0  # irregular events over 4 s
    for delay in (-7, -2, 0, 3, 10):  # audio late by delay frames: positive offset
        audio = np.roll(video, delay)
        result = sync_energies(video, fps, audio, fps, duration_s=4.0)
        assert result.offset_s == pytest.approx(delay / fps, abs=0.01)  # the parabola refines within a step
        assert result.score == pytest.approx(result.correlation.max())
        assert result.confidence > 0.5
    aligned = sync_energies(video, fps, video, fps, duration_s=4.0)
    assert aligned.score_at_0 == pytest.approx(1.0) and aligned.score == pytest.approx(1.0)


def test_pooled_sync_finds_the_shared_lag_that_single_noisy_clips_miss():
    rng, delay = np.random.default_rng(1), 3  # every clip's audio is late by 3 steps (0.12 s)
    results = []
    for clip in range(40):
        video = np.zeros(200)
        video[rng.choice(np.arange(10, 190), 4, replace=False)] = 1.0  # 4 synced events in 8 s
        audio = np.roll(video, delay) * 0.4
        audio[rng.choice(np.arange(200), 12, replace=False)] += 1.0  # louder unrelated sounds (music, cuts)
        duration = 8.0 if clip % 2 else 3.0  # a 3 s clip searches +-1.48 s only: pooled on the shared lags
        steps = int(duration * 25)
        results.append(sync_energies(video[:steps], 25.0, audio[:steps], 25.0, duration_s=duration))
    single_hits = np.mean([abs(r.offset_s - delay / 25) <= 0.04 for r in results])
    pooled = pooled_sync(results + [sync_energies(np.zeros(100), 25.0, np.ones(100), 25.0, duration_s=4.0)])
    assert single_hits < 0.3  # most single clips lock onto the unrelated sounds (0.2 here)
    assert pooled.offset_s == pytest.approx(delay / 25, abs=0.02) and pooled.synchronizable
    assert pooled.confidence > 0 and pooled.lags_s.max() == pytest.approx(1.48)
    nothing = pooled_sync([sync_energies(np.zeros(100), 25.0, np.ones(100), 25.0, duration_s=4.0)])
    assert not nothing.synchronizable and "no synchronizable clip" in nothing.reason


@pytest.mark.parametrize("frames_late", [-3, 0, 2, 5])
def test_cam_sync_offset_follows_rolled_audio(lamp_and_cam, frames_late):
    clip, visual = lamp_and_cam
    audio = torch.roll(clip.audio, frames_late * LONG.frame_sample(1), dims=-1)
    expected = frames_late / LONG.fps
    result = cam_sync(visual, audio_cam(LoudnessNet().eval(), audio, LONG.sample_rate))
    assert result.offset_s == pytest.approx(expected, abs=0.05), result.summary()
    baseline = onset_motion_sync(clip.video, audio, LONG.fps, LONG.sample_rate)
    assert baseline.offset_s == pytest.approx(expected, abs=0.05), baseline.summary()


def test_flat_signals_are_unsynchronizable(frame_net):
    still = sync_energies(np.full(16, 0.3), 10, np.random.default_rng(0).random(160), 100, duration_s=1.6)
    assert math.isnan(still.score) and math.isnan(still.offset_s) and "video energy is flat" in still.reason
    silent = sync_energies(np.random.default_rng(0).random(16), 10, np.zeros(160), 100, duration_s=1.6)
    assert math.isnan(silent.score_at_0) and "audio energy is flat" in silent.reason
    assert "shorter" in sync_energies(np.ones(1), 10, np.ones(10), 100, duration_s=0.1).reason
    torch.manual_seed(0)
    models = SyncModels(frames=frame_net, audio=AudioEventNet().eval())
    clip = render_clip(make_spec(1, WorldConfig(), scene="drum", colour="red", background="dark", tempo="fast",
                                 pitch="low"))
    frozen = score_clip(models, clip.video[:1].expand(16, -1, -1, -1), clip.audio, 10, 16000)
    assert "video energy is flat" in frozen.cam_sync.reason and math.isnan(frozen.cam_sync.confidence)
    quiet = score_clip(models, clip.video, torch.zeros_like(clip.audio), 10, 16000)
    assert "audio energy is flat" in quiet.cam_sync.reason


def test_av_align_on_constructed_matches():
    # audio onset frames 1, 5, 9, 15 against video peaks 2, 5, 12: matches 1-2 and 5-5 -> 2 / (4 + 3 - 2)
    assert av_align_score([0.1, 0.52, 0.9, 1.5], [2, 5, 12], fps=10) == pytest.approx(0.4)
    assert av_align_score([0.5, 0.6], [5], fps=10) == pytest.approx(0.5)  # one peak matches one onset only
    assert av_align_score([], [3], fps=10) == 0.0
    assert math.isnan(av_align_score([], [], fps=10))
    # A picture that flashes at frames 4 and 10 with a click at exactly those times, then 3 frames late.
    video = torch.full((16, 3, 32, 32), -0.8)
    video[[4, 10], :, 8:24, 8:24] = 0.9
    audio = torch.zeros(1, 25600)
    for frame in (4, 10):
        audio[0, frame * 1600: frame * 1600 + 400] = 0.5 * torch.sin(torch.arange(400) * 0.3)
    matched = av_align(video, audio, fps=10, sample_rate=16000)
    assert matched.video_peaks == (4, 10) and matched.score == pytest.approx(1.0)
    assert np.allclose(matched.audio_onsets_s, [0.4, 1.0], atol=0.011)
    assert av_align(video, torch.roll(audio, 3 * 1600, -1), fps=10, sample_rate=16000).score == 0.0


def test_rank_by_cam_sync_puts_the_aligned_candidate_first(frame_net):
    clip = lamp_clip()
    models = SyncModels(frames=frame_net, audio=LoudnessNet().eval())
    audio = torch.stack([torch.roll(clip.audio, 3 * 1600, -1), torch.zeros_like(clip.audio), clip.audio])
    ranked = rank_by_cam_sync(models, clip.video[None].expand(3, -1, -1, -1, -1), audio, LONG.fps, LONG.sample_rate)
    assert [item.index for item in ranked] == [2, 0, 1]
    assert math.isnan(ranked[-1].cam_sync.score_at_0)
    with pytest.raises(ValueError, match="key"):
        rank_by_cam_sync(models, clip.video[None], clip.audio[None], 10, 16000, key="peak")


# ----------------------------------------------------------------------------------------------
# Training script and command line


def _training_script():
    from repo_scripts import load_script

    return load_script("train_audio_classifier")


def test_training_script_is_deterministic_and_writes_its_config(tmp_path):
    script = _training_script()
    waves = torch.randn(3, 1, 1600)
    assert torch.equal(script.augment(waves, torch.Generator().manual_seed(1)),
                       script.augment(waves, torch.Generator().manual_seed(1)))
    argv = ["--steps", "2", "--batch-size", "4", "--eval-clips", "4", "--log-every", "1", "--world-only"]
    first, summary = script.train(script.parse_args(argv))
    second, _ = script.train(script.parse_args(argv))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert len(json.loads(summary["history"])) == 2
    out = tmp_path / "audio.safetensors"
    assert script.main(argv + ["--out", str(out)]) == 0
    assert load_audio_classifier(out).config == AudioNetConfig()


def _fake_real_sources(folder: Path) -> dict:
    """Stand-ins for the Debian recordings: a long chord ("music") and short clicks ("effect")."""
    import soundfile

    folder.mkdir()
    t = np.arange(3 * 22050) / 22050
    for index in range(5):  # the 5th file of a source is held out
        chord = sum(np.sin(2 * np.pi * f * (1 + index / 10) * t) for f in (220.0, 277.0, 330.0)) / 4
        soundfile.write(folder / f"music{index}.wav", np.stack([chord, chord], 1), 22050)
        click = np.random.default_rng(index).standard_normal(2205) * np.exp(-np.arange(2205) / 200)
        soundfile.write(folder / f"click{index}.wav", click / 4, 44100 if index % 2 else 22050)
    return {"music": (("fake-music", str(folder / "music*.wav")),), "effect": (("fake-sfx", str(folder / "click*.wav")),)}


def test_training_script_mixes_real_recordings_with_multi_hot_labels(tmp_path, monkeypatch):
    script = _training_script()
    monkeypatch.setattr(script, "REAL_SOURCES", _fake_real_sources(tmp_path / "sounds"))
    args = script.parse_args(["--steps", "2", "--batch-size", "4", "--eval-clips", "8", "--log-every", "1"])
    config = AudioNetConfig(classes=backbones.WORLD_AUDIO_CLASSES + ("music", "effect"), background_classes=("music",))
    source = script.build_source(args, config, "train")
    assert len(source.real["music"].train) == 4 and len(source.real["music"].held_out) == 1
    waves, labels = source.draw(64, torch.Generator().manual_seed(0))
    assert waves.shape == (64, 1, source.length) and waves.abs().max() <= 1.0
    world, music, effect = labels[:, :8].sum(-1), labels[:, 8], labels[:, 9]
    assert torch.all(world + effect <= 1) and torch.all((world + effect + music) >= 1)  # one event kind, music or both
    assert 0 < float((music * (world + effect)).sum()) < 64  # some events are mixed over music, not all
    again, _ = source.draw(64, torch.Generator().manual_seed(0))
    assert torch.equal(waves, again)
    model, summary = script.train(args)
    assert model.config.classes[-2:] == ("music", "effect") and model.config.background_classes == ("music",)
    assert "fake-music" in summary["trained_on"] and "music_accuracy" in json.loads(summary["held_out"])
    monkeypatch.setattr(script, "REAL_SOURCES", {"music": (("pkg-x", str(tmp_path / "none*.wav")),)})
    with pytest.raises(FileNotFoundError, match="apt-get install pkg-x.*--world-only"):
        script.build_source(args, config, "train")


def test_audio_cam_never_targets_a_background_class():
    from mmg_core.sync.gradcam import top_class

    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 4.0, -1.0]])
    assert top_class(logits).tolist() == [1, 1] and top_class(logits, candidates=[0, 2]).tolist() == [2, 0]
    assert int(top_class(logits, shared=True, candidates=[0, 2])) == 0
    torch.manual_seed(0)
    model = AudioEventNet(AudioNetConfig(channels=(8, 16, 16, 32))).eval()
    clip = lamp_clip()
    favourite = audio_cam(model, clip.audio, LONG.sample_rate).top_class
    background = model.config.classes[favourite]
    model.config = AudioNetConfig(channels=(8, 16, 16, 32), background_classes=(background,))
    assert model.config.event_class_indices == [i for i in range(8) if i != favourite]
    assert audio_cam(model, clip.audio, LONG.sample_rate).top_class != favourite
    with pytest.raises(ValueError, match="background_classes"):
        AudioNetConfig(background_classes=("music",))
    with pytest.raises(ValueError, match="background_classes"):
        AudioNetConfig(classes=("a", "b"), background_classes=("a", "b"))


def test_evaluate_command_writes_json_csv_and_plots(tmp_path, capsys):
    clip = lamp_clip()
    folder = tmp_path / "clips"
    folder.mkdir()
    media.write_mp4(folder / "lamp.mp4", clip.frames_uint8(), clip.audio.numpy(), fps=LONG.fps,
                    sample_rate=LONG.sample_rate)
    (folder / "broken.mp4").write_bytes(b"not a video")
    torch.manual_seed(0)
    audio_file = save_audio_classifier(AudioEventNet().eval(), tmp_path / "audio.safetensors")
    report, table, plots = tmp_path / "report.json", tmp_path / "report.csv", tmp_path / "plots"
    code = main(["evaluate", str(folder), "--json", str(report), "--csv", str(table), "--plots", str(plots),
                 "--audio-classifier", str(audio_file), "--frame-size", "128", "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    lamp, broken = sorted(data["clips"], key=lambda record: record["path"].endswith("broken.mp4"))
    for field in ("cam_sync", "offset_s", "confidence", "cam_sync_at_0", "av_align"):
        assert isinstance(lamp[field], float), field
    assert lamp["frames"] == 40 and lamp["fps"] == 10 and lamp["error"] is None
    assert broken["error"] and broken["cam_sync"] is None
    assert data["aggregate"]["clips"] == 2 and data["aggregate"]["errors"] == 1
    assert data["aggregate"]["cam_sync"]["count"] == 1 and "audio late" in data["offset_convention"]
    pooled = data["aggregate"]["pooled"]  # one clip: the pooled curve is its own
    assert pooled["clips"] == 1 and pooled["offset_s"] == pytest.approx(lamp["offset_s"], abs=1e-5)
    assert table.read_text().splitlines()[0].startswith("path,cam_sync,offset_s,confidence,cam_sync_at_0,av_align")
    assert {p.name for p in plots.iterdir()} == {"lamp_cam.png", "lamp_onsets.png", "lamp_xcorr.png"}
    missing = ["evaluate", str(tmp_path / "nothing"), "--json", str(report), "--audio-classifier", str(audio_file)]
    assert main(missing) == 2
    assert "no such file or folder" in capsys.readouterr().err
