"""The synthetic audio-video world (mmg_core.world): rendering, timing, captions, splits, analysis.

The analysis checks run on rendered clips after a real H.264/AAC round trip through
mmg_core.media, because that is how generated clips will reach them.
"""

from __future__ import annotations

import itertools
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmg_core.media import read_mp4, write_mp4
from mmg_core.world import (
    BACKGROUNDS,
    COLOURS,
    EVAL_HOLDOUT_COMBOS,
    PITCH_HZ,
    PITCHES,
    PROP_GREY,
    SCENES,
    TEMPLATES,
    TEMPOS,
    TRAIN_COMBOS,
    ClipSpec,
    WorldConfig,
    WorldDataset,
    analyse_clip,
    analysis,
    audio_onsets,
    caption_attributes,
    caption_for,
    captions,
    estimate_pitch,
    render_batch,
    render_clip,
    sample_spec,
    sync_offset_stats,
)
from mmg_core.world.render_audio import render_audio
from mmg_core.world.render_video import BALL_RADIUS, FLOOR_Y
from mmg_core.world.timeline import build_timeline

CONFIG = WorldConfig()
FPS, SR, SPF = CONFIG.fps, CONFIG.sample_rate, 1600  # samples per frame at the defaults


def specs_for(scene: str, count: int, seed: int, **fixed) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, CONFIG, split="all", scene=scene, **fixed) for _ in range(count)]


def balanced_specs(per_scene: int, seed: int) -> list[ClipSpec]:
    """Every scene with alternating tempo, background and pitch, random colour."""
    rng = np.random.default_rng(seed)
    specs = []
    for scene, i in itertools.product(SCENES, range(per_scene)):
        specs.append(
            sample_spec(
                rng,
                CONFIG,
                split="all",
                scene=scene,
                tempo=TEMPOS[i % 2],
                background=list(BACKGROUNDS)[(i // 2) % 2],
                pitch=PITCHES[(i // 4) % 2],
            )
        )
    return specs


# ----------------------------------------------------------------------------------------------
# Config, tables, rendering


def test_config_defaults_and_validation():
    assert CONFIG.video_shape == (16, 3, 64, 64)
    assert CONFIG.audio_shape == (1, 25600) and CONFIG.duration == pytest.approx(1.6)
    assert [CONFIG.frame_sample(k) for k in (0, 1, 15, 16)] == [0, 1600, 24000, 25600]
    for bad in ({"frames": 4}, {"fps": 0}, {"size": 16}, {"sample_rate": 100.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WorldConfig(**bad)


def test_colours_are_well_separated_from_each_other_and_the_backgrounds():
    lab = {name: analysis.srgb_to_lab(rgb) * analysis._LAB_WEIGHTS for name, rgb in COLOURS.items()}
    for a, b in itertools.combinations(COLOURS, 2):
        assert np.linalg.norm(lab[a] - lab[b]) >= 40.0, (a, b)
    for name in COLOURS:
        for other in [*BACKGROUNDS.values(), PROP_GREY]:
            assert np.linalg.norm(lab[name] - analysis.srgb_to_lab(other) * analysis._LAB_WEIGHTS) >= 20.0, (
                name
            )
    assert set(COLOURS) == {"red", "green", "blue", "yellow", "purple", "orange", "white"}


def test_rendering_is_deterministic_by_seed():
    spec_a = sample_spec(np.random.default_rng(7), CONFIG)
    spec_b = sample_spec(np.random.default_rng(7), CONFIG)
    assert spec_a == spec_b
    clip_a, clip_b = render_clip(spec_a, CONFIG), render_clip(spec_b, CONFIG)
    assert torch.equal(clip_a.video, clip_b.video) and torch.equal(clip_a.audio, clip_b.audio)
    assert clip_a.caption == clip_b.caption
    # A torch.Generator works too, and only its state matters.
    from_torch = [sample_spec(torch.Generator().manual_seed(3), CONFIG) for _ in range(2)]
    assert from_torch[0] == from_torch[1]
    others = {sample_spec(np.random.default_rng(seed), CONFIG) for seed in range(8)}
    assert len(others) == 8


@pytest.mark.parametrize("scene", SCENES)
def test_shapes_and_ranges(scene):
    for spec in specs_for(scene, 4, seed=1):
        clip = render_clip(spec, CONFIG)
        assert clip.video.shape == (16, 3, 64, 64) and clip.video.dtype == torch.float32
        assert clip.audio.shape == (1, 25600) and clip.audio.dtype == torch.float32
        assert clip.video.min() >= -1.0 and clip.video.max() <= 1.0
        assert 0.05 < clip.audio.abs().max() <= 0.9
        assert clip.frames_uint8().shape == (16, 64, 64, 3)


def test_render_batch_and_other_sizes():
    specs = [sample_spec(np.random.default_rng(i), CONFIG) for i in range(3)]
    video, audio, texts, clips = render_batch(specs, CONFIG)
    assert video.shape == (3, 16, 3, 64, 64) and audio.shape == (3, 1, 25600) and len(texts) == 3
    assert torch.equal(video[1], clips[1].video)
    big = WorldConfig(frames=24, fps=12, size=96, sample_rate=22050)
    clip = render_clip(sample_spec(np.random.default_rng(0), big, scene="ball"), big)
    assert clip.video.shape == (24, 3, 96, 96) and clip.audio.shape == (1, 44100)
    short = sample_spec(np.random.default_rng(0), CONFIG, scene="drum", tempo="fast")
    with pytest.raises(ValueError, match="shorter clip"):  # a spec drawn for 16 frames cannot fill 40
        render_clip(short, WorldConfig(frames=40))


def test_rendering_is_fast():
    specs = [sample_spec(np.random.default_rng(i), CONFIG) for i in range(20)]
    render_clip(specs[0], CONFIG)  # warm-up
    start = time.perf_counter()
    for spec in specs:
        render_clip(spec, CONFIG)
    assert (time.perf_counter() - start) / len(specs) < 0.05


# ----------------------------------------------------------------------------------------------
# Timing ground truth


@pytest.mark.parametrize("scene", ["ball", "drum", "lamp"])
def test_events_sit_on_frame_boundaries_with_tempo_counts(scene):
    for spec in specs_for(scene, 30, seed=2):
        clip = render_clip(spec, CONFIG)
        frames = clip.event_frames
        assert frames and all(1 <= k <= 15 for k in frames)
        assert clip.events == tuple(k / FPS for k in frames)
        assert clip.event_samples == tuple(SPF * k for k in frames)
        counts = {"slow": (1, 2), "fast": (3, 5)}[spec.tempo]
        assert counts[0] <= len(frames) <= counts[1], (spec.tempo, frames)
        if scene in ("ball", "drum"):  # ball on the floor / stick on the drum exactly on event frames
            assert [k for k in range(16) if clip.motion[k] == 0.0] == list(frames)


def test_ball_touches_the_floor_exactly_on_contact_frames():
    for spec in specs_for("ball", 10, seed=3):
        clip = render_clip(spec, CONFIG)
        ball = np.abs(clip.frames_uint8().astype(int) - COLOURS[spec.colour]).sum(-1) < 30  # (F, H, W)
        lowest = np.array([np.nonzero(mask.any(1))[0].max() for mask in ball])
        floor_row = int(FLOOR_Y) - 1  # last row above the floor band
        assert [k for k in range(16) if lowest[k] == floor_row] == list(clip.event_frames)
        assert lowest.max() == floor_row and np.all(lowest >= floor_row - 2 * BALL_RADIUS - 40)


@pytest.mark.parametrize("scene", ["ball", "drum", "lamp"])
def test_sound_onsets_are_exactly_at_event_samples(scene):
    for spec in specs_for(scene, 12, seed=4):
        timeline = build_timeline(spec, CONFIG)
        audio = render_audio(spec, timeline, CONFIG, hiss=False)
        for k in timeline.events:
            onset = SPF * k
            assert np.all(audio[onset - 160 : onset] == 0.0), (spec.scene, k)  # 10 ms of silence before
            assert np.any(audio[onset : onset + 4] != 0.0), (spec.scene, k)  # sound within 0.25 ms
        with_hiss = render_clip(spec, CONFIG).audio[0].numpy()
        detected = audio_onsets(with_hiss, SR)
        assert len(detected) == len(timeline.events)
        assert np.allclose(detected, [k / FPS for k in timeline.events], atol=0.003)


def test_beep_sounds_exactly_while_the_lamp_is_lit():
    for spec in specs_for("lamp", 12, seed=5):
        clip = render_clip(spec, CONFIG)
        audio = render_audio(spec, build_timeline(spec, CONFIG), CONFIG, hiss=False)
        frames = clip.frames_uint8()
        for k in range(16):
            lit = clip.motion[k] == 1.0
            bulb = frames[k, 27, int(spec.x)]
            assert np.abs(bulb.astype(int) - (COLOURS[spec.colour] if lit else PROP_GREY)).max() <= 1
            segment = audio[SPF * k : SPF * (k + 1)]
            assert np.all(segment[4:-4] != 0.0) if lit else np.all(segment == 0.0), (k, lit)
        assert set(clip.off_frames) == {
            k for k in range(1, 16) if clip.motion[k - 1] == 1 and clip.motion[k] == 0
        }


def test_slider_tone_is_phase_continuous_and_follows_the_bar():
    for spec in specs_for("slider", 8, seed=6):
        clip = render_clip(spec, CONFIG)
        audio = render_audio(spec, build_timeline(spec, CONFIG), CONFIG, hiss=False)
        base = PITCH_HZ["slider"][spec.pitch] * spec.detune
        # No jumps: the steepest step a sine of <= 2 * base Hz and amplitude <= 0.85 can make.
        assert np.abs(np.diff(audio)).max() <= 0.85 * 2 * np.pi * 2 * base / SR
        measured = analysis.frame_pitch_hz(audio, SR, FPS, 16)
        expected = base * 2.0**clip.motion
        assert np.allclose(measured[1:], expected[1:], rtol=0.04)  # frame 0's window is one-sided


@pytest.mark.parametrize("scene", SCENES)
def test_pitch_classes_sound_different(scene):
    for pitch in PITCHES:
        for spec in specs_for(scene, 4, seed=7, pitch=pitch):
            assert estimate_pitch(render_clip(spec, CONFIG).audio[0].numpy(), SR) == pitch


# ----------------------------------------------------------------------------------------------
# Captions and splits


def test_captions_name_every_attribute():
    rng = np.random.default_rng(8)
    for split in ("train", "eval"):
        for _ in range(300):
            spec = sample_spec(rng, CONFIG, split="all")
            text = caption_for(spec, rng, split)
            found = caption_attributes(text)
            assert found == {name: {value} for name, value in spec.attributes.items()}, text
    assert render_clip(spec, CONFIG).caption == render_clip(spec, CONFIG).caption


def test_vocabulary_notes_say_what_a_prompt_leaves_to_chance():
    rng = np.random.default_rng(3)
    for _ in range(300):  # a training caption leaves nothing to chance; a held-out one only its tempo wording
        spec = sample_spec(rng, CONFIG, split="all")
        assert captions.vocabulary_notes(caption_for(spec, rng, "train")) == []
        [note] = captions.vocabulary_notes(caption_for(spec, rng, "eval"))
        assert "not in the model's training captions" in note and "'slowly'" in note
    notes = captions.vocabulary_notes("a dog barking")
    assert [n.split(":")[0] for n in notes] == ["the prompt names no scene the model knows (ball, bar, drum, lamp)",
                                               "the prompt names no colour the model knows "
                                               "(blue, green, orange, purple, red, white, yellow)",
                                               "the prompt names no tempo"]
    assert captions.vocabulary_notes("a red and blue ball and a drum, fast then slowly") == [
        "the prompt names several scenes (ball, drum): a clip shows only one",
        "the prompt names several colours (blue, red): a clip shows only one",
        "the prompt asks for both tempos (fast, slow): a clip has one"]
    assert captions.trained_tempos("A Red Ball Bouncing At A Leisurely Pace") == {"slow"}
    assert captions.trained_tempos("a ball bouncing at a quick tempo") == set()  # held-out wording


def test_held_out_tempo_words_never_occur_in_training_phrases():
    """The words that name a tempo in held-out wording ("briskly", "unhurriedly", ...) appear in no training
    phrase, so an evaluation prompt's tempo can only be understood, not recognised."""
    training_words = {word for phrases in captions.TEMPO_WORDS.values() for phrase in phrases["train"]
                      for word in re.findall(r"[a-z]+", phrase)}
    for tempo, phrases in captions.TEMPO_WORDS.items():
        named = {word for phrase in phrases["eval"] for word in re.findall(r"[a-z]+", phrase)}
        naming = named & set(captions.ATTRIBUTE_WORDS["tempo"][tempo])
        assert naming, tempo
        assert not naming & training_words, (tempo, naming & training_words)
    assert len(captions.TEMPO_WORDS["slow"]["train"]) >= 10 and len(captions.TEMPO_WORDS["fast"]["train"]) >= 10


def test_eval_captions_use_held_out_wording():
    assert not set(TEMPLATES["train"]) & set(TEMPLATES["eval"])
    banks = [
        captions.SUBJECTS,
        captions.SOUNDS,
        captions.SYNCS,
        captions.TEMPO_WORDS,
        captions.PITCH_WORDS,
        captions.BACKGROUND_WORDS,
    ]
    for bank in banks:
        for value, phrases in bank.items():
            assert phrases["eval"] and not set(phrases["train"]) & set(phrases["eval"]), value
    rng = np.random.default_rng(9)
    specs = [sample_spec(rng, CONFIG, split="all") for _ in range(200)]
    train = {caption_for(spec, rng, "train") for spec in specs for _ in range(5)}
    evaluation = {caption_for(spec, rng, "eval") for spec in specs for _ in range(5)}
    assert len(train) > 500 and not train & evaluation
    with pytest.raises(ValueError, match="caption split"):
        caption_for(specs[0], rng, "test")


def test_held_out_combinations_are_never_sampled_for_training():
    rng = np.random.default_rng(10)
    train = [sample_spec(rng, CONFIG, split="train").combo for _ in range(3000)]
    assert not set(train) & EVAL_HOLDOUT_COMBOS
    assert len(set(train)) == len(TRAIN_COMBOS) == 56 - len(EVAL_HOLDOUT_COMBOS)
    assert {sample_spec(rng, CONFIG, split="eval").combo for _ in range(300)} == set(EVAL_HOLDOUT_COMBOS)
    for index, table in enumerate((SCENES, COLOURS, TEMPOS)):  # every value still trains
        assert {combo[index] for combo in TRAIN_COMBOS} == set(table)
    scene, colour, tempo = sorted(EVAL_HOLDOUT_COMBOS)[0]
    with pytest.raises(ValueError, match="held-out"):
        sample_spec(rng, CONFIG, split="train", scene=scene, colour=colour, tempo=tempo)


def test_dataset_is_deterministic_and_works_with_workers():
    dataset = WorldDataset(CONFIG, seed=5, split="train", length=6)
    again = WorldDataset(CONFIG, seed=5, split="train", length=6)
    item = dataset[3]
    assert torch.equal(item["video"], again[3]["video"]) and torch.equal(item["audio"], again[3]["audio"])
    assert not torch.equal(item["audio"], WorldDataset(CONFIG, seed=6, length=6)[3]["audio"])
    events = item["event_times"][: item["num_events"]]
    assert torch.allclose(events, torch.tensor(dataset.clip(3).events)) and torch.all(
        item["event_times"][item["num_events"] :] == -1
    )
    batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert batches[1]["video"].shape == (3, 16, 3, 64, 64) and batches[1]["audio"].shape == (3, 1, 25600)
    assert torch.equal(batches[1]["video"][0], item["video"]) and batches[1]["caption"][0] == item["caption"]
    held_out = WorldDataset(CONFIG, seed=5, split="eval", length=20)
    assert all(held_out.spec(i).combo in EVAL_HOLDOUT_COMBOS for i in range(20))
    with pytest.raises(ValueError, match="split"):
        WorldDataset(CONFIG, split="validation")
    with pytest.raises(IndexError):
        dataset[6]


# ----------------------------------------------------------------------------------------------
# Analysis on clips after an MP4 round trip


@pytest.fixture(scope="module")
def decoded_clips(tmp_path_factory):
    """40 rendered clips (10 per scene) with their frames and audio after H.264/AAC encode/decode."""
    folder = tmp_path_factory.mktemp("world")
    decoded = []
    for index, spec in enumerate(balanced_specs(10, seed=11)):
        clip = render_clip(spec, CONFIG)
        path = write_mp4(folder / f"{index}.mp4", clip.frames_uint8(), clip.audio, fps=FPS, sample_rate=SR)
        media = read_mp4(path)
        assert media.audio.shape == (1, 25600)
        decoded.append((clip, media.frames, media.audio[0]))
    return decoded


def test_analysis_reads_attributes_after_mp4_round_trip(decoded_clips):
    results = [(clip, analyse_clip(frames, audio, SR, FPS)) for clip, frames, audio in decoded_clips]
    for attribute in ("scene", "colour", "background", "tempo", "pitch"):
        correct = [
            result.attributes[attribute] == clip.spec.attributes[attribute] for clip, result in results
        ]
        assert np.mean(correct) >= 39 / 40, attribute
    for clip, result in results:
        if clip.spec.scene != "slider":
            assert result.events == clip.events  # visual events are exactly the ground-truth frames
            assert result.sync.median_s <= 0.005  # well inside the required half frame (50 ms)
        else:
            assert result.slider_r >= 0.9


def test_other_clips_audio_is_measurably_out_of_sync(decoded_clips):
    """The later evaluation compares a clip's onset distance with that of other clips' audio.

    Events sit on a 10 fps grid, so a single other fast clip sometimes shares most event frames by
    chance (about 1 pair in 5); against the average over all other clips of the same tempo the
    true audio always wins by at least a factor 2.
    """
    evented = [(clip, audio) for clip, _, audio in decoded_clips if clip.spec.scene != "slider"]
    onsets = [audio_onsets(audio, SR) for _, audio in evented]
    single_wins, averaged_wins = [], []
    for i, (clip, _) in enumerate(evented):
        same_tempo = [
            j for j, (other, _) in enumerate(evented) if j != i and other.spec.tempo == clip.spec.tempo
        ]
        true = sync_offset_stats(onsets[i], clip.events, FPS).median_s
        shuffled = [sync_offset_stats(onsets[j], clip.events, FPS).median_s for j in same_tempo]
        single_wins.append(true < shuffled[0])
        averaged_wins.append(true <= 0.5 * np.mean(shuffled) and true <= 0.5 / FPS)
    assert np.mean(single_wins) >= 0.8 and all(averaged_wins)


def test_analysis_rejects_wrong_layouts():
    with pytest.raises(ValueError, match="uint8"):
        analysis.object_colour(np.zeros((16, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="audio"):
        audio_onsets(np.zeros((2, 3, 4)), SR)
    with pytest.raises(ValueError, match="scene"):
        analysis.visual_events(np.zeros((4, 64, 64, 3), np.uint8), FPS, "piano")
    nothing = sync_offset_stats([], [0.1], FPS)
    assert np.isnan(nothing.median_s) and nothing.num_events == 1


def _tempo_text_probe():
    from repo_scripts import load_script

    return load_script("tempo_text_probe")


def test_tempo_text_probe_swaps_phrases_only_while_sampling_and_masks_padding():
    probe_script = _tempo_text_probe()
    before = {tempo: dict(phrases) for tempo, phrases in captions.TEMPO_WORDS.items()}
    texts, fast = probe_script.sample_captions("eval", 60, seed=0, tempo_words=probe_script.DEV_TEMPO_WORDS)
    assert captions.TEMPO_WORDS == before
    dev_words = {tempo: words for tempo, words in probe_script.DEV_TEMPO_WORDS.items()}
    for text, is_fast in zip(texts, fast.tolist()):
        tempo = "fast" if is_fast else "slow"
        assert any(phrase in text.lower() for phrase in dev_words[tempo]), text
    # No dev phrase is a training or evaluation phrase, and no training phrase shares a content word with
    # a dev phrase (else the dev accuracy that chose the vocabulary would not measure unseen wording).
    for tempo, words in dev_words.items():
        assert not set(words) & (set(before[tempo]["train"]) | set(before[tempo]["eval"]))
    function_words = {"a", "an", "at", "in", "s", "without", "pace"}  # frame words of both tempos
    dev_content = {word for words in dev_words.values() for phrase in words
                   for word in re.findall(r"[a-z]+", phrase)} - function_words
    for phrases in before.values():
        for phrase in phrases["train"]:
            assert not set(re.findall(r"[a-z]+", phrase)) & dev_content, phrase
    # Padding tokens are masked: changing them does not change the probe's output.
    from mmg_core.text import TextEmbedding

    torch.manual_seed(0)
    probe = probe_script.AttentionProbe(8)
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    pooled = torch.randn(2, 8)
    first = probe(TextEmbedding(tokens=tokens, mask=mask, pooled=pooled))
    tokens[0, 3:] = 100.0
    assert torch.allclose(first, probe(TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)))


def test_tempo_anchor_reading_calls_a_phrase_by_its_nearer_anchor():
    probe_script = _tempo_text_probe()

    class AxisEncoder:  # pooled embedding: +x for "zip", -x for "crawl", a neutral y otherwise; unit length
        def encode(self, texts):
            rows = [[1.0, 0.0] if "zip" in t else [-1.0, 0.0] if "crawl" in t else [0.0, 1.0] for t in texts]
            return SimpleNamespace(pooled=torch.tensor(rows))

    words = {"fast": ("zip", "zip along", "beige"), "slow": ("crawl", "zip-free")}  # 2 of 3 fast, 1 of 2 slow right
    accuracy = probe_script.anchor_accuracy(AxisEncoder(), "it goes {}", ("zipping", "crawling"), words)
    assert accuracy == pytest.approx(3 / 5)
    rows = probe_script.anchor_results(AxisEncoder(), {"dev": words})
    assert len(rows) == len(probe_script.ANCHOR_FRAMES) * len(probe_script.ANCHOR_PAIRS)
    assert {"frame", "anchors", "dev"} <= set(rows[0])
