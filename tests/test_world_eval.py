"""mmg_core.world_eval: the evaluation prompts, the scoring of decoded clips, and the eval-world command."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmg_core import checkpoint, media
from mmg_core.__main__ import main
from mmg_core.models.mmdiffusion import MMDiffusionUNet
from mmg_core.models.mmdiffusion_config import PRESETS
from mmg_core.world import EVAL_HOLDOUT_COMBOS, SCENES, TEMPOS, caption_attributes, captions
from mmg_core.world_eval import (
    DEFAULT_PROMPTS_PATH,
    EVENT_SCENES,
    THRESHOLDS,
    check_world_model,
    evaluate_items,
    load_eval_prompts,
    make_eval_prompts,
    reference_media,
    write_eval_prompts,
)

SHIPPED = load_eval_prompts()
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# The prompts


def test_shipped_prompts_are_exactly_what_the_generator_writes(tmp_path):
    assert SHIPPED == make_eval_prompts(0) == load_eval_prompts(DEFAULT_PROMPTS_PATH)
    rewritten = write_eval_prompts(tmp_path / "prompts.json", seed=0)
    assert rewritten.read_text() == DEFAULT_PROMPTS_PATH.read_text()
    assert make_eval_prompts(1) != SHIPPED


def test_prompts_mix_unseen_combinations_and_paraphrases_over_all_scenes():
    assert len(SHIPPED) == 64
    assert len({item.id for item in SHIPPED}) == len({item.prompt for item in SHIPPED}) == 64
    scenes = [item.scene for item in SHIPPED]
    assert set(scenes) == set(SCENES)
    assert scenes.count("slider") >= 12 and sum(scene in EVENT_SCENES for scene in scenes) >= 36
    for item in SHIPPED:
        assert (item.kind == "unseen_combination") == (item.combo in EVAL_HOLDOUT_COMBOS), item
    unseen = [item for item in SHIPPED if item.kind == "unseen_combination"]
    assert len(unseen) > len(SHIPPED) / 2 and {item.combo for item in unseen} == set(EVAL_HOLDOUT_COMBOS)
    for scene in SCENES:  # both tempos of every scene, so every sync comparison has same-tempo partners
        assert {item.tempo for item in SHIPPED if item.scene == scene} == set(TEMPOS)
    for item in SHIPPED:
        assert caption_attributes(item.prompt) == {name: {value} for name, value in item.attributes.items()}, item


def _all_captions(item, split: str) -> set[str]:
    """Every caption caption_for can write for the item's attributes with ``split``'s wording."""
    banks = [
        captions.TEMPLATES[split],
        [s.format(colour=item.colour) for s in captions.SUBJECTS[item.scene][split]],
        captions.TEMPO_WORDS[item.tempo][split],
        captions.PITCH_WORDS[item.pitch][split],
        captions.SOUNDS[item.scene][split],
        captions.SYNCS[item.scene][split],
        captions.BACKGROUND_WORDS[item.background][split],
    ]
    found = set()
    for template, subject, tempo, pitch, sound, sync, background in itertools.product(*banks):
        text = template.format(subject=subject, tempo=tempo, pitch=pitch, sound=sound, sync=sync,
                               background=background)
        text = re.sub(r"\ba (?=[aeiou])", "an ", text)
        found.add(text[0].upper() + text[1:])
    return found


def test_prompts_use_held_out_wording_only():
    for item in SHIPPED:
        # Membership in the held-out set also proves the enumeration writes captions as caption_for does.
        assert item.prompt in _all_captions(item, "eval"), item.prompt
        assert item.prompt not in _all_captions(item, "train"), item.prompt


def test_bad_prompt_files_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match="not an evaluation prompts file"):
        load_eval_prompts(path)
    payload = json.loads(DEFAULT_PROMPTS_PATH.read_text())
    payload["items"][3]["scene"] = "piano"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="scene must be one of"):
        load_eval_prompts(path)
    del payload["items"][3]["scene"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="exactly the keys"):
        load_eval_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_eval_prompts(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------
# Scoring, on the world's own renders of the prompts


def _subset():
    """2 prompts per (scene, tempo): 6 event clips per tempo and 4 slider clips."""
    chosen = []
    for scene, tempo in itertools.product(SCENES, TEMPOS):
        chosen += [item for item in SHIPPED if item.scene == scene and item.tempo == tempo][:2]
    return chosen


@pytest.fixture(scope="module")
def reference_clips():
    items = _subset()
    return items, [reference_media(item) for item in items]


def test_ground_truth_clips_pass_every_criterion(reference_clips, tmp_path):
    items, clips = reference_clips
    report = evaluate_items(items, clips, tmp_path, {"source": "reference", "prompts": "test"}, progress=False)
    assert report["passed"] and set(report["criteria"]) == set(THRESHOLDS)
    assert all(c["value"] == 1.0 for c in report["criteria"].values()), report["criteria"]
    assert report["criteria"]["sync_pass_rate"]["clips"] == 12 and report["criteria"]["slider_pass_rate"]["clips"] == 4
    for record in report["clips"]:
        if "sync" in record:
            assert record["sync"]["own_s"] <= 0.005
            # The yardstick averages over all 5 other event clips of the same tempo, not one partner.
            assert record["sync"]["mismatched_clips"] == 5 and record["sync"]["mismatched_s"] > 0.04
        else:
            assert record["slider"]["r"] >= 0.9
    written = json.loads((tmp_path / "report.json").read_text())  # strict JSON: no NaN
    assert written["criteria"] == report["criteria"] and len(written["clips"]) == len(items)
    markdown = (tmp_path / "report.md").read_text()
    assert "| Tempo read correctly | 100.0 % | ≥ 80 % | 16 | pass |" in markdown and "**PASS**" in markdown
    # Every prompt names its tempo with exactly one held-out phrase, so the per-phrase counts add up.
    by_phrase = report["details"]["tempo_accuracy_by_phrase"]
    assert sum(rate["clips"] for rate in by_phrase.values()) == len(items)
    assert all(rate["value"] == 1.0 for rate in by_phrase.values())
    assert all(key.split(": ")[0] in TEMPOS for key in by_phrase)
    decoded = media.read_mp4(written["clips"][0]["path"])  # the analysed file is a real MP4
    assert decoded.frames.shape == (16, 64, 64, 3) and decoded.audio.shape == (1, 25600)


def test_tempo_accuracy_is_broken_down_by_held_out_phrase():
    from mmg_core.world_eval import _tempo_by_phrase

    def record(prompt: str, correct: bool) -> dict:
        return {"prompt": prompt, "correct": {"tempo": correct}}

    slow_phrase, other_slow = captions.TEMPO_WORDS["slow"]["eval"][:2]
    records = [record(f"A lamp blinking {slow_phrase.upper()}, a beep", False),
               record(f"a ball bouncing {slow_phrase}", True),
               record(f"a drum struck {other_slow}", True),
               record("a bar sliding slowly", True)]  # training wording: in no held-out group
    by_phrase = _tempo_by_phrase(records)
    assert by_phrase[f"slow: {slow_phrase}"] == {"value": 0.5, "passed_clips": 1, "clips": 2}
    assert by_phrase[f"slow: {other_slow}"]["clips"] == 1
    assert not any(key.startswith("fast") for key in by_phrase)


def test_read_world_reads_one_clip_against_its_prompt(reference_clips, tmp_path, capsys):
    items, clips = reference_clips
    index = next(i for i, item in enumerate(items) if item.scene == "ball")
    item, clip = items[index], clips[index]
    path = tmp_path / "ball.mp4"
    media.write_mp4(path, clip.frames, clip.audio, fps=clip.fps, sample_rate=clip.sample_rate)
    out = tmp_path / "reading.json"
    assert main(["read-world", str(path), "--prompt", item.prompt, "--json", str(out), "--check"]) == 0
    reading = json.loads(out.read_text())
    assert reading["read"]["scene"] == "ball" and reading["read"]["colour"] == item.colour
    assert reading["asked"]["tempo"] == item.tempo and reading["differs"] == []
    assert reading["sync"]["passed"] and reading["sync"]["median_onset_to_event_s"] <= 0.005
    assert "all read as asked" in capsys.readouterr().out
    # A prompt naming another colour and the other tempo: both are reported, and --check fails.
    colour = next(c for c in ("red", "green", "blue") if c != item.colour)
    tempo = "slowly" if item.tempo == "fast" else "fast"
    assert main(["read-world", str(path), "--prompt", f"a {colour} ball bouncing {tempo}", "--check"]) == 1
    assert "read differently: colour, tempo" in capsys.readouterr().out
    # Audio from another clip: the picture still reads, the sync check fails.
    other = next(i for i, it in enumerate(items) if it.scene == "ball" and it.tempo != item.tempo)
    media.write_mp4(path, clip.frames, clips[other].audio, fps=clip.fps, sample_rate=clip.sample_rate)
    assert main(["read-world", str(path), "--check"]) == 1
    assert main(["read-world", str(tmp_path / "missing.mp4")]) == 2


def _rotate_within(groups: dict, clips: list) -> list:
    """Give every clip the audio of the next clip of its group (a derangement within each group)."""
    swapped = list(clips)
    for members in groups.values():
        assert len(members) >= 2
        for a, b in zip(members, members[1:] + members[:1]):
            swapped[a] = dataclasses.replace(clips[a], audio=clips[b].audio)
    return swapped


def test_audio_from_other_clips_fails_sync_and_slider(reference_clips, tmp_path):
    items, clips = reference_clips
    groups: dict = {}
    for index, item in enumerate(items):
        groups.setdefault((item.scene in EVENT_SCENES, item.tempo), []).append(index)
    shuffled = _rotate_within(groups, clips)
    report = evaluate_items(items, shuffled, tmp_path, {"source": "reference", "prompts": "test"}, progress=False)
    criteria = report["criteria"]
    assert criteria["colour_accuracy"]["value"] == criteria["scene_accuracy"]["value"] == 1.0
    assert criteria["sync_pass_rate"]["value"] <= 0.25 and not criteria["sync_pass_rate"]["passed"]
    assert not criteria["slider_pass_rate"]["passed"] and not report["passed"]
    assert "**FAIL**" in (tmp_path / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# A model run end to end


def test_models_the_prompts_cannot_describe_are_refused():
    with pytest.raises(ValueError, match="text-conditioned"):
        check_world_model(dataclasses.replace(PRESETS["world"], text_dim=None))
    with pytest.raises(ValueError, match="synthetic world"):
        check_world_model(dataclasses.replace(PRESETS["world"], fps=25.0))
    check_world_model(PRESETS["world"])


def test_eval_world_command_runs_a_tiny_model_end_to_end(tmp_path):
    torch.manual_seed(0)  # the model's random initialisation
    model = MMDiffusionUNet(dataclasses.replace(PRESETS["world"], model_channels=32))
    model_path = tmp_path / "tiny-world.safetensors"
    checkpoint.save_safetensors(model, model_path)
    out = tmp_path / "eval"
    code = main(["eval-world", "--model", str(model_path), "--out", str(out), "--limit", "2", "--steps", "2",
                 "--batch-size", "2", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["num_clips"] == 2 and settings["steps"] == 2 and settings["batch_size"] == 2
    assert settings["guidance"] == {"video_cfg": 3.0, "audio_cfg": 3.0, "modality": 1.0}
    assert [c["id"] for c in report["clips"]] == ["eval-00", "eval-01"]
    assert set(report["criteria"]) == set(THRESHOLDS) and isinstance(report["passed"], bool)
    for criterion in report["criteria"].values():
        assert set(criterion) == {"value", "passed_clips", "clips", "threshold", "passed"}
    for record in report["clips"]:
        assert set(record["measured"]) == set(record["intended"]) == {"scene", "colour", "tempo", "pitch", "background"}
        clip = media.read_mp4(record["path"])
        assert clip.frames.shape == (16, 64, 64, 3) and clip.audio.shape == (1, 25600) and clip.fps == 10
        assert json.loads(clip.metadata["mmg_eval"])["prompt"] == record["prompt"]
    assert "## Evaluation on unseen prompts" in (out / "report.md").read_text()


def test_tempo_wording_diagnostic_swaps_only_the_tempo_phrase(tmp_path):
    from repo_scripts import load_script

    module = load_script("tempo_wording_diagnostic")
    out = tmp_path / "prompts.json"
    assert module.main(["--out", str(out)]) == 0
    # The committed diagnostic prompts are exactly what the script writes from the shipped ones.
    assert out.read_text() == (REPO / "eval" / "tempo_wording" / "prompts.json").read_text()
    swapped = load_eval_prompts(out)
    assert len(swapped) == len(SHIPPED)
    held_out = [p for tempo in TEMPOS for p in captions.TEMPO_WORDS[tempo]["eval"]]
    for before, after in zip(SHIPPED, swapped):
        assert dataclasses.replace(after, prompt=before.prompt) == before  # ids, seeds, attributes kept
        assert caption_attributes(after.prompt)["tempo"] == {before.tempo}
        assert not any(phrase in after.prompt.lower() for phrase in held_out), after.prompt
        # Only the tempo phrase changed: the rest of the words are the original's.
        removed = set(re.findall(r"[a-z]+", before.prompt.lower())) - set(re.findall(r"[a-z]+", after.prompt.lower()))
        assert removed <= {w for phrase in held_out for w in phrase.split()}, removed
    # Swapping twice is refused: the swapped prompts have no held-out phrase left to replace.
    with pytest.raises(ValueError, match="no held-out phrase"):
        module.main(["--prompts", str(out), "--out", str(tmp_path / "again.json")])


def test_dev_wording_uses_phrases_of_neither_split_each_in_turn(tmp_path):
    from repo_scripts import load_script

    module = load_script("tempo_wording_diagnostic")
    probe = load_script("tempo_text_probe")
    out = tmp_path / "dev.json"
    assert module.main(["--wording", "dev", "--out", str(out)]) == 0
    # The guidance study's committed prompts are exactly these.
    assert out.read_text() == (REPO / "eval" / "tempo_guidance" / "dev_prompts.json").read_text()
    swapped = load_eval_prompts(out)
    held_out = [p for tempo in TEMPOS for p in captions.TEMPO_WORDS[tempo]["eval"]]
    used = []
    for before, after in zip(SHIPPED, swapped):
        assert dataclasses.replace(after, prompt=before.prompt) == before
        found = [p for p in probe.DEV_TEMPO_WORDS[before.tempo] if p in after.prompt.lower()]
        assert len(found) == 1, after.prompt
        used.append(found[0])
        assert not any(phrase in after.prompt.lower() for phrase in held_out), after.prompt
        # The dev phrase names no tempo by a word the captions use: the reading is truly unseen.
        assert caption_attributes(after.prompt)["tempo"] == set(), after.prompt
    # Taken in turn: every dev phrase of a tempo is used, as evenly as the prompt counts allow.
    counts = {phrase: used.count(phrase) for tempo in TEMPOS for phrase in probe.DEV_TEMPO_WORDS[tempo]}
    assert min(counts.values()) >= 1 and max(counts.values()) - min(counts.values()) <= 1, counts


def test_separate_wording_recaptions_only_the_unseen_combinations_in_training_words(tmp_path):
    from repo_scripts import load_script

    module = load_script("tempo_wording_diagnostic")
    out = tmp_path / "separate.json"
    assert module.main(["--wording", "separate", "--out", str(out)]) == 0
    assert out.read_text() == (REPO / "eval" / "wording_separate" / "prompts.json").read_text()  # the committed run's
    eval_phrases = {phrase.lower() for table in (captions.TEMPO_WORDS, captions.PITCH_WORDS, captions.BACKGROUND_WORDS)
                    for value in table.values() for phrase in value["eval"]}
    for before, after in zip(SHIPPED, load_eval_prompts(out)):
        assert dataclasses.replace(after, prompt=before.prompt) == before  # attributes, seed and kind kept
        if before.kind == "unseen_paraphrase":
            assert after.prompt == before.prompt
            continue
        assert after.prompt != before.prompt
        read = caption_attributes(after.prompt)
        for attribute in ("scene", "colour", "tempo", "pitch", "background"):
            assert read[attribute] == {getattr(before, attribute)}, (attribute, after.prompt)
        training = captions.TEMPO_WORDS[before.tempo]["train"]
        assert any(captions.phrase_pattern(phrase).search(after.prompt) for phrase in training), after.prompt
        assert not any(captions.phrase_pattern(phrase).search(after.prompt) for phrase in eval_phrases), after.prompt


def test_tempo_guidance_study_tables_tempo_and_the_models_lean():
    from repo_scripts import load_script

    module = load_script("tempo_guidance_study")

    def clip(asked: str, seen: str, phrase: str) -> dict:
        return {"prompt": f"A red ball bouncing {phrase}, a click at every bounce",
                "intended": {"tempo": asked}, "measured": {"tempo": seen}}

    clips = [clip("fast", "fast", "hastily"), clip("fast", "slow", "hastily"), clip("slow", "fast", "at a crawl"),
             clip("slow", "slow", "deliberately")]
    figures = module.tempo_figures(clips)
    assert figures["tempo_accuracy"] == 0.5 and figures["read_fast"] == 0.5
    assert figures["by_phrase"] == {"fast: hastily": "1/2", "slow: at a crawl": "0/1", "slow: deliberately": "1/1"}
    assert figures["asked_read"] == {"fast -> fast": 1, "fast -> slow": 1, "slow -> fast": 1, "slow -> slow": 1}
    with pytest.raises(ValueError, match="expected one fast dev phrase"):
        module.dev_phrase_of("a ball bouncing fast", "fast")
    criteria = {"colour_accuracy": 1.0, "scene_accuracy": 0.9, "sync_pass_rate": 0.95, "slider_pass_rate": 1.0,
                "tempo_accuracy": 0.5}
    runs = [{"scale": scale, "criteria": criteria, **figures} for scale in (3.0, 1.5)]
    text = module.markdown({"out": "eval/tempo_guidance", "model": "m.safetensors", "seconds": 12.0, "runs": runs})
    assert "| 3 | 50.0 % | 50.0 % | 100.0 % | 90.0 % | 95.0 % | 100.0 % |" in text
    assert "| 1.5 | 50.0 % |" in text
    assert "| slow: at a crawl | 0/1 | 0/1 |" in text
