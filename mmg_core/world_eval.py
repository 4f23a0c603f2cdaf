"""Evaluation of a text-to-audio-video model of the synthetic world on prompts it never saw in training.

``python -m mmg_core eval-world`` generates one clip per evaluation prompt (``world/eval_prompts.json``:
64 prompts in held-out wording, most of them for held-out (scene, colour, tempo) combinations),
writes each clip as an H.264/AAC MP4, decodes it again with FFmpeg (PyAV) and judges the decoded
pixels and samples with ``mmg_core.world.analysis``, which knows the world's colours and event kinds
but never sees the prompt. The prompt's intended attributes are only used to score the readings.

Criteria (thresholds in ``THRESHOLDS``), each over the clips it applies to:
  colour, scene, tempo accuracy (all clips): the attribute read from the media equals the prompt's.
  event-scene synchrony (prompts for ball / drum / lamp): a clip passes when the median distance from
      each audio onset to the nearest visual event (floor contact, drum strike, lamp switch-on, read
      for the scene the analysis sees) is <= half a frame AND <= half the "mismatched" distance:
      the same median measured with the onsets of another clip's audio, AVERAGED over all other
      event-scene clips of the same intended tempo in the evaluation set. Averaging matters: events
      sit on the 10 fps grid, so a single other fast clip shares most event frames by chance and even
      perfect audio beats one random partner by a factor 2 only ~92 % of the time.
  slider pitch (prompts for the slider): a clip passes when the Pearson r between the coloured bar's
      height and the tone's log-frequency per frame is >= 0.6.
A clip whose measurement is undefined (no onsets, no visual event, no bar) fails that criterion.

Two media sources share one path (``evaluate_items``): generated clips (``evaluate_world_model``)
and the world's own renders of each prompt's attributes (``evaluate_reference``), which show what
the analysis reads from perfect clips after the same MP4 round trip; optionally passed through a
model's codec first (``codec=``), which shows what a perfect model with that codec could score.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, media
from .av import AV
from .codec import encode_media
from .conditioning import Conditioning, Guidance, concat_contexts, encode_prompts
from .pipeline import GenerationSettings, decode, generate, initial_noise
from .world import analysis
from .world.captions import TEMPO_WORDS, caption_attributes, caption_for, phrase_pattern
from .world.config import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_CONFIG,
    EVAL_HOLDOUT_COMBOS,
    PITCHES,
    SCENES,
    TEMPOS,
    TRAIN_COMBOS,
)
from .world.render import render_clip
from .world.spec import ClipSpec, make_spec

DEFAULT_PROMPTS_PATH = Path(__file__).resolve().parent / "world" / "eval_prompts.json"
EVENT_SCENES = ("ball", "drum", "lamp")
ATTRIBUTES = ("scene", "colour", "tempo", "pitch", "background")
KINDS = ("unseen_combination", "unseen_paraphrase")
# The sampler settings users get from the pack's nodes by default (nodes/sampler_nodes.py).
DEFAULT_GUIDANCE = Guidance(video_cfg=3.0, audio_cfg=3.0, modality=1.0)

THRESHOLDS = {
    "colour_accuracy": 0.8,
    "scene_accuracy": 0.8,
    "tempo_accuracy": 0.8,
    "sync_pass_rate": 0.8,
    "slider_pass_rate": 0.8,
}
SYNC_MAX_FRAMES = 0.5  # own median onset-to-event distance, in frames
SYNC_MISMATCH_RATIO = 0.5  # own median <= this x the mean mismatched median
SLIDER_MIN_R = 0.6

# Layout of the 64 prompts made by make_eval_prompts: every held-out triple 6 times (12 per scene,
# so 12 slider and 36 event-scene prompts), plus held-out wording of training triples, 2 slow and 2 fast
# per scene.
_PER_HOLDOUT_COMBO = 6
_SEEN_PER_SCENE_TEMPO = 2


# ----------------------------------------------------------------------------------------------
# Evaluation prompts


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: the text, what it asks for, and the seed of its clip.

    kind: "unseen_combination" (a triple of EVAL_HOLDOUT_COMBOS, never trained on) or
    "unseen_paraphrase" (a training triple in held-out wording). Every prompt uses the held-out
    ("eval") caption templates and paraphrases. seed: the generation seed, and the seed of the
    reference clip's rhythm, position and detune (``reference_spec``).
    """

    id: str
    prompt: str
    kind: str
    scene: str
    colour: str
    tempo: str
    pitch: str
    background: str
    seed: int

    def __post_init__(self) -> None:
        tables = {"kind": KINDS, "scene": SCENES, "colour": COLOURS, "tempo": TEMPOS, "pitch": PITCHES,
                  "background": BACKGROUNDS}
        for name, table in tables.items():
            if getattr(self, name) not in table:
                raise ValueError(f"evaluation prompt {self.id!r}: {name} must be one of {list(table)}, "
                                 f"got {getattr(self, name)!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"evaluation prompt {self.id!r} has no prompt text")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"evaluation prompt {self.id!r}: seed must be an int in [0, 2^63), got {self.seed!r}")

    @property
    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.scene, self.colour, self.tempo)


def reference_spec(item: EvalPrompt) -> ClipSpec:
    """The world's clip spec for a prompt: its attributes, with rhythm and position drawn from its seed."""
    return make_spec(item.seed, DEFAULT_CONFIG, **item.attributes)


def _planned_attributes(rng: np.random.Generator) -> list[tuple[str, tuple[str, str, str]]]:
    """(kind, (scene, colour, tempo)) of every prompt, before shuffling."""
    plan = [("unseen_combination", combo) for combo in sorted(EVAL_HOLDOUT_COMBOS) for _ in range(_PER_HOLDOUT_COMBO)]
    for scene, tempo in itertools.product(SCENES, TEMPOS):
        seen = [combo for combo in TRAIN_COMBOS if combo[0] == scene and combo[2] == tempo]
        chosen = rng.choice(len(seen), size=_SEEN_PER_SCENE_TEMPO, replace=False)
        plan += [("unseen_paraphrase", seen[int(i)]) for i in sorted(chosen)]
    return plan


def _background_pitch_cycle(rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """(background, pitch) pairs in a shuffled order, repeated: balances them within each triple."""
    pairs = list(itertools.product(BACKGROUNDS, PITCHES))
    while True:
        for index in rng.permutation(len(pairs)):
            yield pairs[int(index)]


def _unique_caption(spec: ClipSpec, seed: int, used: set[str]) -> str:
    """A held-out-wording caption not yet in ``used`` (then added to it): redraw the wording until new."""
    for stream in itertools.count(1):
        caption = caption_for(spec, np.random.default_rng([seed, stream]), split="eval")
        if caption not in used:
            used.add(caption)
            return caption


def make_eval_prompts(seed: int = 0) -> list[EvalPrompt]:
    """The 64 evaluation prompts, deterministic in ``seed`` (the shipped file is ``seed=0``).

    48 prompts for the 8 held-out triples (6 each) and 16 for training triples (2 slow and 2 fast per
    scene), all in held-out wording (caption split "eval"); background and pitch are balanced within
    each triple. The order is shuffled so that any prefix (``--limit``) mixes scenes and tempos.
    Captions are unique.
    """
    rng = np.random.default_rng(seed)
    plan = _planned_attributes(rng)
    cycles: dict[tuple[str, str, str], Iterator[tuple[str, str]]] = {}
    items, used = [], set()
    for position, index in enumerate(rng.permutation(len(plan))):
        kind, combo = plan[int(index)]
        background, pitch = next(cycles.setdefault(combo, _background_pitch_cycle(rng)))
        attributes = dict(zip(("scene", "colour", "tempo"), combo), pitch=pitch, background=background)
        clip_seed = int(rng.integers(0, 2**31))
        prompt = _unique_caption(make_spec(clip_seed, DEFAULT_CONFIG, **attributes), clip_seed, used)
        items.append(EvalPrompt(id=f"eval-{position:02d}", prompt=prompt, kind=kind, seed=clip_seed, **attributes))
    return items


_PROMPTS_FORMAT = "mmg-world-eval-prompts"


def write_eval_prompts(path: str | os.PathLike = DEFAULT_PROMPTS_PATH, seed: int = 0) -> Path:
    """Write ``make_eval_prompts(seed)`` as JSON (how the shipped eval_prompts.json was made)."""
    payload = {
        "format": _PROMPTS_FORMAT,
        "version": 1,
        "made_by": f"mmg_core.world_eval.write_eval_prompts(seed={seed})",
        "seed": seed,
        "items": [asdict(item) for item in make_eval_prompts(seed)],
    }
    path = Path(path)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def load_eval_prompts(path: str | os.PathLike | None = None) -> list[EvalPrompt]:
    """Read a prompts file written by ``write_eval_prompts`` (default: the shipped one)."""
    path = Path(DEFAULT_PROMPTS_PATH if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation prompts not found: {path}")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != _PROMPTS_FORMAT:
        raise ValueError(f"{path} is not an evaluation prompts file (expected \"format\": \"{_PROMPTS_FORMAT}\"); "
                         "make one with mmg_core.world_eval.write_eval_prompts")
    fields = set(EvalPrompt.__dataclass_fields__)
    items = []
    for entry in payload.get("items", []):
        if not isinstance(entry, dict) or set(entry) != fields:
            raise ValueError(f"{path}: every item needs exactly the keys {sorted(fields)}, got {entry!r}")
        items.append(EvalPrompt(**entry))
    ids = [item.id for item in items]
    if not items or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: needs at least one item, with unique ids")
    return items


def _select(items: list[EvalPrompt], limit: int | None) -> list[EvalPrompt]:
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int (number of prompts to evaluate) or None, got {limit!r}")
    return items[:limit]


# ----------------------------------------------------------------------------------------------
# Reading clips and scoring them


@dataclass(frozen=True)
class ClipReading:
    """What the analysis read from one decoded clip, next to the prompt it was made for."""

    item: EvalPrompt
    measured: analysis.ClipAnalysis  # everything analyse_clip read, blind to the prompt
    slider_r: float  # NaN unless the prompt asks for the slider
    fps: float
    path: str | None  # the MP4 the clip was read from


def read_clip(item: EvalPrompt, clip: media.MediaClip, path: str | os.PathLike | None = None) -> ClipReading:
    """Analyse decoded media (frames (F, H, W, 3) uint8, audio (C, T)) without looking at the prompt.

    Only the population a clip belongs to (event scene or slider) comes from the prompt: the slider's
    height-pitch correlation is computed for every slider prompt, whatever scene the analysis sees.
    """
    if clip.audio is None:
        raise ValueError(f"clip {item.id} has no audio stream; the evaluation needs sound and picture")
    fps, sr = float(clip.fps), int(clip.sample_rate)
    result = analysis.analyse_clip(clip.frames, clip.audio, sr, fps)
    slider_r = math.nan
    if item.scene == "slider":
        slider_r = analysis.slider_pitch_correlation(clip.frames, clip.audio, sr, fps)
    return ClipReading(item=item, measured=result, slider_r=slider_r, fps=fps, path=None if path is None else str(path))


@dataclass(frozen=True)
class SyncScore:
    """Synchrony of one event-scene clip (distances in seconds; NaN when undefined)."""

    own_s: float  # median distance from each of its audio onsets to the nearest visual event
    mismatched_s: float  # the same with other clips' onsets, averaged over same-tempo event clips
    mismatched_clips: int  # how many other clips' audio that average is over (those with onsets)
    passed: bool
    # For the record only (not a criterion): the verdict against ONE partner, the next same-tempo
    # event clip in the set's order, which events on a shared frame grid make a noisy yardstick.
    single_partner_s: float
    single_partner_passed: bool


def _same_tempo_event_clips(readings: Sequence[ClipReading], i: int) -> list[int]:
    """Indices of the other event-scene clips with clip i's intended tempo, starting after i (cyclic)."""
    order = [(i + k) % len(readings) for k in range(1, len(readings))]
    tempo = readings[i].item.tempo
    return [j for j in order if readings[j].item.scene in EVENT_SCENES and readings[j].item.tempo == tempo]


def _within_half_frame(own: float, fps: float) -> bool:
    """The absolute half of the sync rule: the own median onset-to-event distance is defined and small."""
    return bool(math.isfinite(own) and own <= SYNC_MAX_FRAMES / fps)


def _in_sync(own: float, mismatched: float, fps: float) -> bool:
    return bool(_within_half_frame(own, fps) and math.isfinite(mismatched) and own <= SYNC_MISMATCH_RATIO * mismatched)


def _slider_passes(r: float) -> bool:
    return bool(math.isfinite(r) and r >= SLIDER_MIN_R)


def sync_scores(readings: Sequence[ClipReading]) -> list[SyncScore | None]:
    """Per reading: its SyncScore if the prompt asks for an event scene, else None.

    The mismatched distance pairs this clip's visual events with the audio onsets of every other
    event-scene clip whose prompt has the same tempo, and averages their medians (over those with
    onsets): one random partner of the same tempo shares event frames by chance too often to be a
    fair yardstick.
    """
    scores: list[SyncScore | None] = []
    for i, reading in enumerate(readings):
        if reading.item.scene not in EVENT_SCENES:
            scores.append(None)
            continue
        mismatched = [
            analysis.sync_offset_stats(readings[j].measured.onsets, reading.measured.events, reading.fps).median_s
            for j in _same_tempo_event_clips(readings, i)
        ]
        finite = [m for m in mismatched if math.isfinite(m)]
        own = reading.measured.sync.median_s
        baseline = float(np.mean(finite)) if finite else math.nan
        single = mismatched[0] if mismatched else math.nan
        scores.append(SyncScore(own_s=own, mismatched_s=baseline, mismatched_clips=len(finite),
                                passed=_in_sync(own, baseline, reading.fps), single_partner_s=single,
                                single_partner_passed=_in_sync(own, single, reading.fps)))
    return scores


def clip_record(reading: ClipReading, sync: SyncScore | None) -> dict:
    """One clip's line of report.json: prompt, attributes asked for and read, and its scores."""
    found = reading.measured
    record = {
        "id": reading.item.id,
        "kind": reading.item.kind,
        "prompt": reading.item.prompt,
        "seed": reading.item.seed,
        "path": reading.path,
        "intended": reading.item.attributes,
        "measured": {name: found.attributes[name] for name in ATTRIBUTES},
        "correct": {name: found.attributes[name] == reading.item.attributes[name] for name in ATTRIBUTES},
        "onsets_s": list(found.onsets),
        "visual_events_s": list(found.events),
    }
    if sync is not None:
        record["sync"] = {**asdict(sync), "max_s": SYNC_MAX_FRAMES / reading.fps}
    if reading.item.scene == "slider":
        record["slider"] = {"r": reading.slider_r, "passed": _slider_passes(reading.slider_r)}
    return record


# ----------------------------------------------------------------------------------------------
# Aggregates and the report


def _rate(flags: Sequence[bool], threshold: float | None = None) -> dict:
    value = float(np.mean(flags)) if flags else math.nan
    rate = {"value": value, "passed_clips": int(sum(flags)), "clips": len(flags)}
    if threshold is not None:
        rate |= {"threshold": threshold, "passed": bool(flags) and value >= threshold}
    return rate


def _finite_median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _tempo_by_phrase(records: Sequence[dict]) -> dict[str, dict]:
    """Tempo accuracy per held-out tempo phrase ("slow: unhurriedly", ...) over the prompts that use it: where
    tempo fails, this shows whether some wordings fail and others hold."""
    by_phrase = {}
    for tempo, phrases in TEMPO_WORDS.items():
        for phrase in phrases["eval"]:
            pattern = phrase_pattern(phrase)
            flags = [r["correct"]["tempo"] for r in records if pattern.search(r["prompt"])]
            if flags:
                by_phrase[f"{tempo}: {phrase}"] = _rate(flags)
    return by_phrase


def summarise(records: Sequence[dict]) -> dict:
    """The five criteria (value, clips, threshold, passed) and descriptive details."""
    events = [r for r in records if "sync" in r]
    sliders = [r for r in records if "slider" in r]
    criteria = {
        f"{name}_accuracy": _rate([r["correct"][name] for r in records], THRESHOLDS[f"{name}_accuracy"])
        for name in ("colour", "scene", "tempo")
    }
    criteria["sync_pass_rate"] = _rate([r["sync"]["passed"] for r in events], THRESHOLDS["sync_pass_rate"])
    criteria["slider_pass_rate"] = _rate([r["slider"]["passed"] for r in sliders], THRESHOLDS["slider_pass_rate"])
    details = {
        "pitch_accuracy": _rate([r["correct"]["pitch"] for r in records]),
        "background_accuracy": _rate([r["correct"]["background"] for r in records]),
        "sync_pass_rate_single_partner": _rate([r["sync"]["single_partner_passed"] for r in events]),
        "sync_median_own_s": _finite_median(r["sync"]["own_s"] for r in events),
        "sync_median_mismatched_s": _finite_median(r["sync"]["mismatched_s"] for r in events),
        "slider_median_r": _finite_median(r["slider"]["r"] for r in sliders),
        "tempo_accuracy_by_phrase": _tempo_by_phrase(records),
        "by_kind": {
            kind: {f"{name}_accuracy": _rate([r["correct"][name] for r in records if r["kind"] == kind])
                   for name in ("colour", "scene", "tempo")}
            for kind in KINDS
        },
    }
    return {"criteria": criteria, "details": details, "passed": all(c["passed"] for c in criteria.values())}


METHOD = {
    "media": "each clip is written as H.264/AAC MP4 (mmg_core.media.write_mp4) and decoded again with FFmpeg "
             "(PyAV, mmg_core.media.read_mp4); only the decoded pixels and samples are analysed "
             "(mmg_core.world.analysis, which knows the world's colours and event kinds, not the prompt)",
    "accuracy": "attribute read from the media equals the attribute the prompt asks for, over all clips",
    "sync": "event-scene prompts (ball, drum, lamp): a clip passes when the median distance from each audio "
            "onset to the nearest visual event (contact, strike, lamp switch-on, read for the scene the "
            "analysis sees) is <= half a frame and <= half the mismatched distance = the same median with another clip's audio, averaged over ALL other "
            "event-scene clips of the same intended tempo in the set (one random partner shares event frames "
            "by chance on the 10 fps grid, so even perfect audio beats a single partner by 2x only ~92 % of "
            "the time: the details show that single-partner rate for comparison); undefined distances "
            "(no onset, no visual event) fail",
    "slider": f"slider prompts: a clip passes when the Pearson r between the bar's height and the tone's "
              f"log-frequency per frame is >= {SLIDER_MIN_R}; undefined r fails",
}


def build_report(records: Sequence[dict], settings: dict) -> dict:
    return {"settings": settings, "method": METHOD, **summarise(records), "clips": list(records)}


def _defined(value) -> bool:
    """False for NaN, and for None (how report.json stores NaN)."""
    return value is not None and math.isfinite(value)


def _percent(rate: dict) -> str:
    return f"{100 * rate['value']:.1f} %" if _defined(rate["value"]) else "n/a"


def _ms(seconds: float | None) -> str:
    return f"{1000 * seconds:.1f} ms" if _defined(seconds) else "n/a"


_CRITERIA_ROWS = (
    ("colour_accuracy", "Colour of the moving object read correctly"),
    ("scene_accuracy", "Scene read correctly"),
    ("tempo_accuracy", "Tempo read correctly"),
    ("sync_pass_rate", "Event scenes in sync (contact / strike / switch-on) [1]"),
    ("slider_pass_rate", f"Slider: tone pitch follows bar height, r ≥ {SLIDER_MIN_R}"),
)


def _settings_line(settings: dict) -> str:
    if settings.get("source") == "reference" and settings.get("codec"):
        source = (f"the world's own renders of each prompt passed through the codec ({settings['codec']}): "
                  "what a perfect model with this codec would score")
    elif settings.get("source") == "reference":
        source = "the world's own renders of each prompt (reference: what the analysis reads from perfect clips)"
    else:
        g = settings["guidance"]
        source = (f"model `{Path(settings['model']).name}`, {settings['sampler']} {settings['steps']} steps, "
                  f"guidance video {g['video_cfg']} / audio {g['audio_cfg']} / modality {g['modality']}")
    return (f"{settings['num_clips']} clips from {source}; prompts `{settings['prompts']}` "
            f"({_count(settings['kinds']['unseen_combination'], 'unseen attribute combination')}, "
            f"{_count(settings['kinds']['unseen_paraphrase'], 'unseen paraphrase')} of training combinations).")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_markdown(report: dict) -> list[str]:
    criteria, details = report["criteria"], report["details"]
    lines = ["| Criterion | Result | Threshold | Clips | |", "|---|---|---|---|---|"]
    for key, label in _CRITERIA_ROWS:
        c = criteria[key]
        verdict = "pass" if c["passed"] else "**fail**"
        lines.append(f"| {label} | {_percent(c)} | ≥ {100 * c['threshold']:.0f} % | {c['clips']} | {verdict} |")
    by_kind = details["by_kind"]
    lines += [
        "",
        "| Detail | Value |",
        "|---|---|",
        f"| Median onset-to-event distance, own audio (event scenes) | {_ms(details['sync_median_own_s'])} |",
        f"| Median mismatched distance (other same-tempo clips' audio) | {_ms(details['sync_median_mismatched_s'])} |",
        f"| Event scenes in sync if judged against ONE other same-tempo clip (not a criterion) "
        f"| {_percent(details['sync_pass_rate_single_partner'])} |",
        f"| Median slider height-pitch r | {_fmt_r(details['slider_median_r'])} |",
        f"| Pitch (low / high) read correctly | {_percent(details['pitch_accuracy'])} |",
        f"| Background read correctly | {_percent(details['background_accuracy'])} |",
    ]
    for key, rate in details.get("tempo_accuracy_by_phrase", {}).items():
        tempo, phrase = key.split(": ", 1)
        lines.append(f"| Tempo read correctly, {tempo} prompts saying \"{phrase}\" | {_percent(rate)} "
                     f"({rate['passed_clips']} of {rate['clips']}) |")
    for kind, label in (("unseen_combination", "unseen combinations"), ("unseen_paraphrase", "unseen paraphrases")):
        rates = by_kind[kind]
        n = rates["colour_accuracy"]["clips"]
        values = " / ".join(_percent(rates[f"{name}_accuracy"]) for name in ("colour", "scene", "tempo"))
        lines.append(f"| Colour / scene / tempo correct, {label} ({n} clips) | {values} |")
    return lines


def _fmt_r(value: float | None) -> str:
    return f"{value:.2f}" if _defined(value) else "n/a"


def _clip_row(record: dict) -> str:
    asked, read = record["intended"], record["measured"]
    sync, slider = record.get("sync"), record.get("slider")
    if sync is not None:
        score = f"{_ms(sync['own_s'])} vs {_ms(sync['mismatched_s'])}: {'pass' if sync['passed'] else 'fail'}"
    else:
        score = f"r = {_fmt_r(slider['r'])}: {'pass' if slider['passed'] else 'fail'}"
    cells = [f"{read[n]}" if record["correct"][n] else f"**{read[n]}**" for n in ("scene", "colour", "tempo")]
    return (f"| {record['id']} | {record['kind'].replace('_', ' ')} | {asked['scene']} {asked['colour']} "
            f"{asked['tempo']} | {' '.join(cells)} | {score} |")


def report_markdown(report: dict) -> str:
    """report.md: a summary table to paste into a model card, the method, then one row per clip."""
    passed = sum(c["passed"] for c in report["criteria"].values())
    lines = [
        "## Evaluation on unseen prompts (`python -m mmg_core eval-world`)",
        "",
        _settings_line(report["settings"]),
        "Every figure is measured from the MP4 decoded by FFmpeg (PyAV), from pixels and samples alone.",
        "",
        *_summary_markdown(report),
        "",
        f"Overall: **{'PASS' if report['passed'] else 'FAIL'}** ({passed} of {len(report['criteria'])} criteria met).",
        "",
        f"[1] {report['method']['sync'][0].upper()}{report['method']['sync'][1:]}.",
        "",
        "### Per clip",
        "",
        "Read attributes in bold differ from the prompt's. Sync: own median distance vs mismatched distance.",
        "",
        "| Clip | Kind | Asked (scene colour tempo) | Read | Sync / slider |",
        "|---|---|---|---|---|",
        *(_clip_row(record) for record in report["clips"]),
    ]
    return "\n".join(lines) + "\n"


def json_safe(value):
    """NaN / inf become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write report.json (NaN as null) and report.md into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    md_path.write_text(report_markdown(report))
    return json_path, md_path


# ----------------------------------------------------------------------------------------------
# Running an evaluation


def evaluate_items(
    items: Sequence[EvalPrompt],
    clips: Iterable[media.MediaClip],
    out_dir: str | os.PathLike,
    settings: dict,
    *,
    progress: bool = True,
) -> dict:
    """Write each clip as MP4, decode it back, read it, score everything; write and return the report.

    clips: one MediaClip per item, in order (frames (F, H, W, 3) uint8, audio (C, T) float), e.g.
    ``generated_media`` or ``reference_media``. The report's settings get the clip count, the
    prompt kinds and the elapsed time.
    """
    clip_dir = Path(out_dir) / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()  # clips is usually lazy: this times generation too
    readings = []
    with tqdm(total=len(items), desc="eval-world", unit="clip", disable=not progress) as bar:
        for item, clip in zip(items, clips, strict=True):
            path = media.write_mp4(clip_dir / f"{item.id}.mp4", clip.frames, clip.audio, fps=clip.fps,
                                   sample_rate=clip.sample_rate,
                                   metadata={"mmg_eval": json.dumps(asdict(item))})
            readings.append(read_clip(item, media.read_mp4(path), path))
            bar.update(1)
    records = [clip_record(r, s) for r, s in zip(readings, sync_scores(readings), strict=True)]
    kinds = {kind: sum(item.kind == kind for item in items) for kind in KINDS}
    elapsed = round(time.perf_counter() - started, 1)
    report = build_report(records, {**settings, "num_clips": len(items), "kinds": kinds, "elapsed_s": elapsed})
    write_report(report, out_dir)
    return report


def reference_media(item: EvalPrompt) -> media.MediaClip:
    """The world's own render of a prompt's attributes (``reference_spec``), as media."""
    clip = render_clip(reference_spec(item), DEFAULT_CONFIG)
    return media.MediaClip(frames=clip.frames_uint8(), audio=clip.audio.numpy(),
                           fps=media.fps_to_fraction(DEFAULT_CONFIG.fps),
                           sample_rate=DEFAULT_CONFIG.sample_rate, metadata={})


def through_codec(clip: media.MediaClip, config) -> media.MediaClip:
    """A clip encoded into a model's space and decoded again (its codec's loss, nothing else)."""
    video = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float()[None] / 127.5 - 1  # (1, F, C, H, W)
    audio = torch.from_numpy(np.ascontiguousarray(clip.audio)).float()[None]  # (1, C, T)
    decoded = decode(encode_media(config, video, audio), config)
    frames = (decoded.frames[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return replace(clip, frames=frames, audio=decoded.audio[0].numpy())


def evaluate_reference(
    prompts_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    codec=None,
    progress: bool = True,
) -> dict:
    """Evaluate the world's renders of the prompts through the same MP4 path: the analysis's ceiling.

    codec: a model config (MMDiffusionConfig) whose codec each render passes through first.
    """
    items = _select(load_eval_prompts(prompts_path), limit)
    settings = {"source": "reference", "prompts": _display_path(prompts_path)}
    clips = map(reference_media, items)
    if codec is not None:
        check_world_model(codec)
        settings["codec"] = _codec_summary(codec)
        clips = (through_codec(clip, codec) for clip in clips)
    return evaluate_items(items, clips, out_dir, settings, progress=progress)


def _codec_summary(config) -> str:
    audio = "raw waveform" if config.audio_codec == "waveform" else (
        f"{config.audio_codec} (n_fft {config.stft_n_fft}, hop {config.stft_hop})")
    return f"video {config.video_patch}x{config.video_patch} patches, audio {audio}"


def _display_path(prompts_path: str | os.PathLike | None) -> str:
    path = Path(DEFAULT_PROMPTS_PATH if prompts_path is None else prompts_path).resolve()
    package_root = Path(__file__).resolve().parent.parent
    return str(path.relative_to(package_root)) if path.is_relative_to(package_root) else str(path)


def check_world_model(config) -> None:
    """The prompts describe world clips: the model must be text-conditioned and make them at world size."""
    if not config.text_conditioned:
        raise ValueError("eval-world needs a text-conditioned model (e.g. the pack's world model, preset 'world'); "
                         "this checkpoint has no text conditioning")
    world = DEFAULT_CONFIG
    got = (config.video_frames, config.video_height, config.video_width, float(config.fps), config.sample_rate)
    want = (world.frames, world.size, world.size, float(world.fps), world.sample_rate)
    if got != want:
        raise ValueError(f"eval-world evaluates models of the synthetic world (frames, height, width, fps, "
                         f"sample rate) = {want}; this model makes {got}")


def _batch_conditioning(encoder, batch: Sequence[EvalPrompt]) -> Conditioning:
    """One row of text context per clip (the null prompt "" as negative), stacked along the batch."""
    each = [encode_prompts(encoder, item.prompt) for item in batch]
    if len(each) == 1:
        return each[0]
    return replace(each[0], positive=concat_contexts([c.positive for c in each]),
                   negative=concat_contexts([c.negative for c in each]),
                   video_prompt="\n".join(c.video_prompt for c in each),
                   audio_prompt="\n".join(c.audio_prompt for c in each))


def _batch_noise(config, batch: Sequence[EvalPrompt]) -> AV:
    """Each clip's initial noise drawn from its own seed, so a clip does not depend on its batch mates."""
    noises = [initial_noise(config, 1, torch.Generator("cpu").manual_seed(item.seed)) for item in batch]
    return AV(video=torch.cat([n.video for n in noises]), audio=torch.cat([n.audio for n in noises]))


def generated_media(
    loaded: checkpoint.LoadedModel,
    items: Sequence[EvalPrompt],
    *,
    text_encoder,
    steps: int = 25,
    sampler: str = "dpmpp_2m",
    guidance: Guidance = DEFAULT_GUIDANCE,
    batch_size: int = 1,
) -> Iterator[media.MediaClip]:
    """Generate one clip per item, ``batch_size`` at a time, yielded in order as media.

    With batch_size 1 a clip is exactly ``generate`` with the item's seed (as the generate CLI and
    the sampler node make it). Larger batches draw each clip's initial noise from its own seed and
    any further sampler randomness (none for deterministic samplers) from the batch's first seed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        settings = GenerationSettings(seed=batch[0].seed, steps=steps, sampler=sampler, batch_size=len(batch),
                                      guidance=guidance)
        # A single clip lets generate draw its own noise, so the clip equals a plain generate call.
        noise = None if len(batch) == 1 else _batch_noise(loaded.config, batch)
        latent = generate(loaded.model, settings, conditioning=_batch_conditioning(text_encoder, batch), noise=noise)
        decoded = decode(latent, loaded.config)
        frames = (decoded.frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (B, F, H, W, C)
        for index in range(len(batch)):
            yield media.MediaClip(frames=frames[index], audio=decoded.audio[index].numpy(),
                                  fps=media.fps_to_fraction(decoded.fps), sample_rate=decoded.sample_rate,
                                  metadata={})


def evaluate_world_model(
    model_path: str | os.PathLike,
    prompts_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    steps: int = 25,
    sampler: str = "dpmpp_2m",
    guidance: Guidance = DEFAULT_GUIDANCE,
    limit: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    text_encoder=None,
    progress: bool = True,
) -> dict:
    """Generate a clip per evaluation prompt, judge the decoded MP4s, write report.json / report.md.

    prompts_path None: the shipped prompts (64). limit: evaluate only the first N prompts.
    text_encoder: anything with ``encode(texts)`` (default: the pack's MiniLM encoder).
    Returns the report (see ``summarise`` for its "criteria", "details" and "passed").
    """
    items = _select(load_eval_prompts(prompts_path), limit)
    guidance.validate()
    loaded = checkpoint.load_model(model_path, device=device)
    check_world_model(loaded.config)
    if text_encoder is None:
        from .text import default_text_encoder

        text_encoder = default_text_encoder()
    clips = generated_media(loaded, items, text_encoder=text_encoder, steps=steps, sampler=sampler,
                            guidance=guidance, batch_size=batch_size)
    settings = {"source": "model", "model": str(model_path), "prompts": _display_path(prompts_path),
                "steps": steps, "sampler": sampler, "guidance": asdict(guidance), "batch_size": batch_size}
    return evaluate_items(items, clips, out_dir, settings, progress=progress)


def format_summary(report: dict) -> str:
    """A few plain lines for a terminal: each criterion's value, threshold and verdict."""
    lines = []
    for key, label in _CRITERIA_ROWS:
        c, label = report["criteria"][key], label.removesuffix(" [1]")
        lines.append(f"{'pass' if c['passed'] else 'FAIL'}  {label}: {_percent(c)} of {c['clips']} clips "
                     f"(needs ≥ {100 * c['threshold']:.0f} %)")
    lines.append(f"overall: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# One clip, any source: what the analysis reads, against what a prompt asks


def read_world_clip(path: str | os.PathLike, prompt: str | None = None) -> dict:
    """Analyse one MP4 of the world (e.g. the main job's output) and, given its prompt, compare.

    Only attributes the prompt names unambiguously are compared (``caption_attributes``). The sync
    verdict here is the absolute half of the evaluation's rule (median onset-to-event distance <= half a
    frame); the relative half needs other clips' audio and belongs to ``eval-world``.
    """
    clip = media.read_mp4(path)
    if clip.audio is None:
        raise ValueError(f"{path} has no audio stream; reading a world clip needs sound and picture")
    fps = float(clip.fps)
    result = analysis.analyse_clip(clip.frames, clip.audio, int(clip.sample_rate), fps)
    reading = {
        "path": str(path),
        "frames": int(clip.frames.shape[0]),
        "fps": fps,
        "read": result.attributes,
        "visual_events_s": [round(t, 4) for t in result.events],
        "audio_onsets_s": [round(t, 4) for t in result.onsets],
    }
    if result.scene in EVENT_SCENES:
        median = result.sync.median_s
        reading["sync"] = {"median_onset_to_event_s": median, "max_s": SYNC_MAX_FRAMES / fps,
                           "passed": _within_half_frame(median, fps)}
    else:
        reading["slider"] = {"r": result.slider_r, "passed": _slider_passes(result.slider_r)}
    if prompt is not None:
        asked = {name: next(iter(values)) for name, values in caption_attributes(prompt).items() if len(values) == 1}
        reading["prompt"] = prompt
        reading["asked"] = asked
        reading["differs"] = sorted(name for name, value in asked.items() if result.attributes[name] != value)
    return reading


def format_world_reading(reading: dict) -> str:
    """The reading as a few terminal lines."""
    read = reading["read"]
    lines = [f"{reading['path']}: {reading['frames']} frames at {reading['fps']:g} fps",
             "read: " + ", ".join(f"{name} {value}" for name, value in read.items())]
    if "sync" in reading:
        sync = reading["sync"]
        lines.append(f"sync: median onset-to-event {_ms(sync['median_onset_to_event_s'])} "
                     f"(at most {_ms(sync['max_s'])}): {'pass' if sync['passed'] else 'FAIL'}; "
                     f"events at {reading['visual_events_s']} s, onsets at {reading['audio_onsets_s']} s")
    else:
        slider = reading["slider"]
        lines.append(f"slider: height-pitch r = {_fmt_r(slider['r'])} (at least {SLIDER_MIN_R}): "
                     f"{'pass' if slider['passed'] else 'FAIL'}")
    if "asked" in reading:
        asked = ", ".join(f"{name} {value}" for name, value in reading["asked"].items())
        verdict = "all read as asked" if not reading["differs"] else "read differently: " + ", ".join(reading["differs"])
        lines.append(f"prompt asks: {asked}: {verdict}")
    return "\n".join(lines)
