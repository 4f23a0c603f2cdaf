"""mmg_core.sync.calibration: the shifted-audio calibration of CAM-Sync and its baselines, shot-cut
holding in VideoCAM's motion, and the ``calibrate-sync`` command on the synthetic world."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmg_core.__main__ import main
from mmg_core.sync import SyncModels, load_frame_classifier
from mmg_core.sync.backbones import DEFAULT_AUDIO_CLASSIFIER
from mmg_core.sync.calibration import (
    Film, av_align_offset, markdown_report, real_calibration, segment_starts, summarise_real, summarise_synthetic,
    synthetic_calibration, verdicts,
)
from mmg_core.sync.gradcam import motion_maps, shot_cuts, turn_back_maps
from repo_scripts import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_av_align_offset_finds_a_known_lag():
    fps, peaks = 24.0, [10, 31, 55, 80, 101]
    late = [p / fps + 0.25 for p in peaks]  # every sound 6 frames after its motion peak
    assert av_align_offset(late, peaks, fps, duration_s=5.0) == pytest.approx(0.25)
    assert av_align_offset([p / fps for p in peaks], peaks, fps, duration_s=5.0) == 0.0
    assert math.isnan(av_align_offset([], peaks, fps, duration_s=5.0))


def test_av_align_offset_gains_nothing_by_pushing_sound_out_of_the_clip():
    fps, peaks = 10.0, [5, 12, 20]
    onsets = [p / fps for p in peaks] + [3.95]  # one onset no picture event explains, near the end
    assert av_align_offset(onsets, peaks, fps, duration_s=4.0) == 0.0


def film_with_ramp(seconds: float = 10.0, rate: int = 100) -> Film:
    """A Film whose soundtrack sample n holds n (frames are never decoded here)."""
    return Film(path=None, fps=25.0, duration_s=seconds, sample_rate=rate,
                audio=np.arange(seconds * rate, dtype=np.float32), audio_start_s=0.0, video_start_s=0.0)


def test_film_audio_window_delays_by_reading_earlier_and_pads_past_the_ends():
    film = film_with_ramp()
    window = film.audio_window(2.0, 1.0, delay_s=0.3)[0]  # heard at 2.0 s: what the film had at 1.7 s
    assert window.shape == (100,) and window[0] == 170 and window[-1] == 269
    assert torch.all(film.audio_window(0.1, 1.0, delay_s=0.5)[0][:40] == 0)  # before the film: silence
    assert film.audio_window(0.1, 1.0, delay_s=0.5)[0][40] == 0
    assert film.audio_window(0.1, 1.0, delay_s=0.5)[0][41] == 1
    assert torch.all(film.audio_window(9.5, 1.0, delay_s=-0.2)[0][30:] == 0)  # past the end: silence


def test_segments_spread_evenly_on_frame_boundaries():
    film = film_with_ramp(seconds=600.0)
    starts = segment_starts(film, 20, 8.0)
    assert len(starts) == 20 and starts[0] == 5.0 and starts[-1] <= 600.0 - 8.0 - 5.0
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1.0 / film.fps + 1e-9
    assert all(abs(s * film.fps - round(s * film.fps)) < 1e-9 for s in starts)
    with pytest.raises(ValueError, match="cannot fit"):
        segment_starts(film_with_ramp(seconds=15.0), 3, 8.0)


def test_shot_cut_is_held_not_counted_as_motion():
    video = torch.full((12, 3, 32, 32), -0.8)
    video[:, :, 10:14, :] = 0.8  # a bright bar ...
    for frame in range(12):
        video[frame, :, 10:14, :] = -0.8
        video[frame, :, 10:14, 2 * frame: 2 * frame + 6] = 0.8  # ... whose lit part slides right
    video[7:] = torch.flip(video[7:], dims=(2,)) * -1  # frame 7 starts a new shot (inverted, mirrored)
    raw = motion_maps(video).mean((1, 2))
    held = motion_maps(video, hold_cuts=True).mean((1, 2))
    assert shot_cuts(raw).nonzero().flatten().tolist() == [7]
    assert raw[7] > 10 * raw[6] and held[7] == pytest.approx(float(held[6]))
    assert torch.equal(held[:7], raw[:7]) and torch.equal(held[8:], raw[8:])
    turn_raw = turn_back_maps(video).mean((1, 2))
    turn_held = turn_back_maps(video, hold_cuts=True).mean((1, 2))
    assert turn_raw[6] > 10 * turn_raw[5]  # the cut's change against the frame before it ...
    assert turn_held[6] == turn_held[7] == pytest.approx(float(turn_held[5]))  # ... is no reversal
    assert torch.equal(turn_held[:6], turn_raw[:6]) and torch.equal(turn_held[8:], turn_raw[8:])


def fake_real_segments(offsets0: list[float], rolls=(-0.4, 0.4), error: float = 0.0) -> list[dict]:
    def result(value):
        return {m: {"offset_s": value, "score_at_0": 0.5, "reason": None} for m in ("cam_sync", "av_align", "onset_sync")}

    segments = []
    for offset in offsets0:
        entry = {"0": result(offset)}
        for roll in rolls:
            entry[f"{roll:g}"] = result(offset + roll + error if math.isfinite(offset) else math.nan)
        segments.append({"start_s": 0.0, "offsets": entry})
    return segments


def test_real_summary_counts_tracked_rolls_and_unsynchronizable_segments():
    summary = summarise_real(fake_real_segments([0.0, 0.05, math.nan, 1.2]))["cam_sync"]
    assert summary["tracked"] == 1.0 and summary["rolls_judged"] == 6
    assert summary["tracked_of_all_rolls"] == 0.75 and summary["unsynchronizable"] == 0.25
    assert summary["zero_within_0.1s"] == 0.5
    off = summarise_real(fake_real_segments([0.0, 0.1], error=0.09))["cam_sync"]
    assert off["tracked"] == 0.0  # 0.09 s off the roll is more than the 0.08 s tolerance


def test_real_summary_tells_a_reading_of_zero_from_a_habit_of_zero():
    # Follows every roll from a true zero: right on every roll, never zero when zero is wrong.
    reader = summarise_real(fake_real_segments([0.0, 0.05], rolls=(-0.4, 0.2, 0.8)))["cam_sync"]
    assert reader["within_0.1s_of_roll"] == 1.0 and reader["zero_when_rolled_far"] == 0.0
    # Answers zero whatever the roll: "offset(0) near zero" alike, but zero when zero is 0.4 s or more wrong.
    segments = fake_real_segments([0.0, 0.05], rolls=(-0.4, 0.2, 0.8))
    for segment in segments:
        for roll, result in segment["offsets"].items():
            result["cam_sync"]["offset_s"] = 0.0
    stuck = summarise_real(segments)["cam_sync"]
    assert stuck["zero_within_0.1s"] == reader["zero_within_0.1s"] == 1.0
    assert stuck["zero_when_rolled_far"] == 1.0  # 4 of 4 far rolls (-0.4, +0.8) read as zero
    assert stuck["within_0.1s_of_roll"] == 0.25  # right only at roll 0: 2 of 8 results
    # Unsynchronizable results count as misses in both figures.
    lost = summarise_real(fake_real_segments([math.nan, 0.0], rolls=(0.4,)))["cam_sync"]
    assert lost["within_0.1s_of_roll"] == 0.5 and lost["zero_when_rolled_far"] == 0.0


def test_real_verdicts_compare_every_figure_with_both_baselines():
    def figures(tracked, zero):
        return {"tracked": tracked, "tracked_of_all_rolls": tracked, "unsynchronizable": 0.0, "zero_within_0.1s": zero}

    real = {"cam_sync": figures(0.85, 0.05), "av_align": figures(0.25, 0.45), "onset_sync": figures(0.6, 0.15)}
    checks = verdicts({"real": {"summary": real}})
    assert checks["real rolls tracked >= 80 %"] and checks["CAM-Sync tracks more rolls than both baselines"]
    assert not checks["CAM-Sync has offset(0) within 0.1 s more often than both baselines"]


def test_real_calibration_pools_segments_and_tracks_rolls_on_a_lamp_film(tmp_path):
    """A 20 s "film" of a blinking lamp with its beeps: every segment, and the pool of them, is in sync,
    and rolling the audio moves the pooled offset by the roll."""
    from mmg_core import media
    from mmg_core.world import WorldConfig, make_spec, render_clip
    from sync_stand_ins import LoudnessNet

    config = WorldConfig(frames=200)
    clip = render_clip(make_spec(3, config, scene="lamp", colour="white", background="dark", tempo="fast",
                                 pitch="high"), config)
    film = media.write_mp4(tmp_path / "lamp.mp4", clip.frames_uint8(), clip.audio.numpy(), fps=config.fps,
                           sample_rate=config.sample_rate)
    models = SyncModels(frames=load_frame_classifier(), audio=LoudnessNet().eval())
    report = real_calibration(models, film, segments=2, length_s=6.0, rolls_s=(-0.4, 0.4), short_side=64,
                              progress=False)
    pooled = report["pooled"]["cam_sync"]
    assert pooled["segments"] == 2 and pooled["rolls_tracked"] == 1.0 and pooled["zero_within_0.1s"]
    assert pooled["offset_s"]["0.4"] == pytest.approx(pooled["offset_s"]["0"] + 0.4, abs=0.04)
    assert set(report["pooled"]) == {"cam_sync", "onset_sync"}
    text = markdown_report({"command": "test", "seconds": 1.0, "models": {}, "real": report,
                            "verdicts": verdicts({"real": report})})
    assert "### All segments pooled" in text and "| cam_sync (2 segments) |" in text
    # The lamp film is in sync by construction: CAM-Sync reads every roll, and never zero for a far roll.
    summary = report["summary"]["cam_sync"]
    assert summary["within_0.1s_of_roll"] == 1.0 and summary["zero_when_rolled_far"] == 0.0
    assert "Reading zero, or answering zero?" in text and "| cam_sync | 100.0 % | 0.0 % |" in text


def test_synthetic_summary_and_verdicts():
    clips = [{"offsets": {"0.1": {m: {"offset_s": 0.1 + e} for m in ("cam_sync", "av_align", "onset_sync")}}}
             for e in (0.0, 0.05, 0.2)]
    summary = summarise_synthetic(clips, {m: (9, 10) for m in ("cam_sync", "av_align", "onset_sync")}, fps=10)
    assert summary["cam_sync"]["offset_within_1_frame"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["cam_sync"]["true_beats_shuffled"] == 0.9
    checks = verdicts({"synthetic": {"summary": summary}})
    assert checks == {"synthetic offset within 1 frame >= 90 %": False, "synthetic true beats shuffled >= 90 %": True}


@pytest.mark.skipif(not DEFAULT_AUDIO_CLASSIFIER.is_file(), reason="the shipped audio classifier is not trained yet")
def test_shipped_classifier_tracks_synthetic_shifts():
    """Truth known: a few world clips per event scene, audio shifted by 1-5 frames either way."""
    from mmg_core.sync import load_audio_classifier

    models = SyncModels(frames=load_frame_classifier(), audio=load_audio_classifier())
    report = synthetic_calibration(models, clips_per_scene=3, seed=1, progress=False)
    cam = report["summary"]["cam_sync"]
    assert cam["offset_within_1_frame"] >= 0.9 and cam["true_beats_shuffled"] >= 0.9


def test_calibrate_command_writes_both_reports(tmp_path, capsys):
    assert main(["calibrate-sync", "--skip-synthetic", "--out", str(tmp_path)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["calibrate-sync", "--film", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)]) == 2
    assert "get_big_buck_bunny" in capsys.readouterr().err
    if not DEFAULT_AUDIO_CLASSIFIER.is_file():
        pytest.skip("the shipped audio classifier is not trained yet")
    assert main(["calibrate-sync", "--out", str(tmp_path), "--synthetic-clips", "1"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["synthetic"]["summary"]) == {"cam_sync", "av_align", "onset_sync"}
    assert "## Synthetic world" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# The held-out variant study (scripts/sync_variant_study.py): its signal pieces


def _variant_study(name: str = "sync_variant_study"):
    return load_script(name)


def test_variant_study_median_percussive_split_and_peak_trains():
    study = _variant_study()
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    for dim, size in ((0, 3), (1, 5)):
        padded = np.pad(x.numpy(), [(size // 2, size // 2) if d == dim else (0, 0) for d in range(2)], mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=dim)
        np.testing.assert_allclose(study.median_along(x, dim, size).numpy(), np.median(windows, -1), rtol=1e-6)
    # A steady note in a few bands with two broadband clicks: the percussive level rises at the clicks only.
    power = torch.full((64, 200), 1e-6)
    power[10:13] = 1.0
    power[:, [60, 140]] = 0.5
    level = study.percussive_level(power)
    assert set(np.argsort(level)[-2:]) == {60, 140} and level[100] < level[60] - 20
    train = study.peak_train(np.array([0, 1, 0, 0, 9, 0, 0, 1, 0, 0, 0], float))
    assert np.argmax(train) == 4 and train[1] == 0 and train[3] == train[5] > 0


def test_variant_study_floor_mixes_cam_and_motion_and_cache_round_trips(tmp_path):
    study = _variant_study()
    record = {"videocam": np.array([0.0, 2.0, 4.0]), "motion": np.array([4.0, 4.0, 8.0])}
    np.testing.assert_allclose(study.picture_energy(record, "videocam floor 0.25"), [1.0, 2.5, 5.0])
    np.testing.assert_allclose(study.picture_energy(record, "motion"), record["motion"])
    np.testing.assert_allclose(study.picture_energy(record, "videocam+turn"), record["videocam"])

    class Models:
        notes = {"frame_classifier": "fake"}

    measured = []

    def energies(models, film, start):
        measured.append(start)
        return {"start_s": start, "fps": 24.0, "duration_s": 8.0, "videocam": np.arange(3.0), "turn_back": None,
                "motion": np.ones(3), "audio": {0.0: {"loudness": (np.arange(4.0), 100.0)}}}

    study.segment_energies = energies
    cache = tmp_path / "energies.json"
    first = study.cached_energies(str(cache), Models(), None, {"eval": [0.0, 8.0]}, lambda x, **_: x)
    again = study.cached_energies(str(cache), Models(), None, {"eval": [0.0, 8.0]}, lambda x, **_: x)
    assert measured == [0.0, 8.0]  # the second call read the cache
    np.testing.assert_array_equal(again["eval"][1]["videocam"], first["eval"][1]["videocam"])
    energy, rate = again["eval"][0]["audio"][0.0]["loudness"]
    assert rate == 100.0 and energy.tolist() == [0.0, 1.0, 2.0, 3.0] and again["eval"][0]["turn_back"] is None
    study.cached_energies(str(cache), Models(), None, {"eval": [4.0]}, lambda x, **_: x)  # other segments: measured
    assert measured == [0.0, 8.0, 4.0]


# ----------------------------------------------------------------------------------------------
# The window-length study (scripts/sync_window_study.py)


def test_window_study_chunks_tile_the_film_and_joined_windows_find_a_weak_shared_lag():
    study = _variant_study("sync_window_study")
    starts = study.chunk_starts(60.0, 24.0)
    assert starts[0] == 5.0 and np.allclose(np.diff(starts), 8.0) and starts[-1] + 8.0 <= 55.0
    # 16 chunks of 8 s: in each, 2 synced events (audio 0.12 s late) among 6 unrelated louder sounds.
    rng, delay = np.random.default_rng(2), 3
    video, audio = [], []
    for _ in range(16):
        v = np.zeros(200)
        v[rng.choice(np.arange(10, 190), 2, replace=False)] = 1.0
        a = np.roll(v, delay) * 0.5
        a[rng.choice(np.arange(200), 6, replace=False)] += 1.0
        video.append(v)
        audio.append(a)
    single = np.array(study.window_offsets(video, audio, 1))
    whole = study.window_offsets(video, audio, 16)
    assert single.size == 16 and np.mean(np.abs(single - 0.12) <= 0.04) < 0.5
    assert len(whole) == 1 and whole[0] == pytest.approx(0.12, abs=0.02)
    assert math.isnan(study.window_offsets([np.zeros(200)], [audio[0]], 1)[0])  # a flat side: no offset
    # The whole study on those chunks: each roll of every chunk's audio moves the whole-film offset by the roll.
    onsets = [{method: {"video": v, "audio": {roll: np.roll(a, round(roll * 25)) for roll in (0.0, *study.REAL_ROLLS_S)}}
               for method in study.METHODS} for v, a in zip(video, audio)]
    methods = study.study(onsets)
    whole_film = methods["cam_sync"]["windows"][-1]
    assert whole_film["label"] == "whole film (128 s)" and whole_film["tracked"] == 1.0
    assert methods["cam_sync"]["pooled"]["0"]["offset_s"] == pytest.approx(0.12, abs=0.02)
    report = {"command": "test", "seconds": 1.0, "film": "f.mp4", "chunks": 16, "models": {}, "methods": methods}
    assert "| cam_sync | whole film (128 s) | 1 of 1 |" in study.markdown(report)


# ----------------------------------------------------------------------------------------------
# The lag-penalty study (scripts/sync_lag_prior_study.py)


def _curve(peaks: dict[float, float], rate: float = 25.0, max_lag_s: float = 2.0):
    """A SyncResult whose correlation over lags is a sum of narrow bumps of the given heights."""
    from mmg_core.sync.camsync import SyncResult

    lags_s = np.arange(-round(max_lag_s * rate), round(max_lag_s * rate) + 1) / rate
    r = sum(height * np.exp(-0.5 * ((lags_s - at) / 0.03) ** 2) for at, height in peaks.items())
    return SyncResult(float(r.max()), float(lags_s[np.argmax(r)]), 0.0, 0.0, lags_s=lags_s, correlation=r)


def test_lag_prior_penalty_zero_is_the_shipped_peak_and_a_strong_one_answers_zero():
    study = _variant_study("sync_lag_prior_study")
    result = _curve({0.0: 0.30, 1.2: 0.34})
    assert study.penalised_offset(result, 0.0) == pytest.approx(1.2, abs=0.01)  # the higher, far peak
    assert study.penalised_offset(result, 0.1) == pytest.approx(0.0, abs=0.01)  # 0.1 x 1.2 / 2 > 0.04
    assert study.penalised_offset(_curve({-0.4: 0.5}), 0.1) == pytest.approx(-0.4, abs=0.02)  # a lone peak stays


def test_lag_prior_figures_tell_reading_from_answering_zero():
    study = _variant_study("sync_lag_prior_study")
    rolls = (0.0, *study.REAL_ROLLS_S)
    # A segment whose true lag is a slightly lower peak than a spurious one at +1.2 s that moves with the roll.
    segment = {roll: _curve({roll: 0.30, 1.2 + roll: 0.33}) for roll in rolls}
    plain = study.figures([segment], 0.0)
    assert plain["tracked"] == 1.0 and plain["zero_within_0.1s"] == 0.0 and plain["right_within_0.1s"] == 0.0
    # A mild penalty finds the true lag at roll 0, but at rolls -0.4 and -0.8 s the spurious peak (then at
    # +0.8 / +0.4 s) is as near 0 as the true one and still wins: the penalty cannot tell them apart.
    mild = study.figures([segment], 0.1)
    assert mild == {"tracked": round(4 / 6, 4), "zero_within_0.1s": 1.0, "right_within_0.1s": round(5 / 7, 4),
                    "zero_when_rolled_0.4s_plus": 0.0}
    # A flat side (None) is a miss everywhere; a huge penalty answers 0 whatever the roll.
    assert study.figures([{**segment, 0.8: None}], 0.1)["tracked"] == round(3 / 6, 4)
    huge = study.figures([segment], 50.0)
    assert huge["zero_when_rolled_0.4s_plus"] == 1.0 and huge["right_within_0.1s"] == round(1 / 7, 4)
    rows = [{"penalty": p, "dev": study.figures([segment], p)} for p in (0.0, 0.1, 0.25, 0.2)]
    assert study.pick_penalty(rows) == 0.2  # 0.2 and 0.25 read 6 of 7 rolls: the smaller of the two
