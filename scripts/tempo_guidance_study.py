"""Does stronger guidance make the world model read tempo from unseen words? Chosen on dev phrases only.

    python scripts/tempo_guidance_study.py --out eval/tempo_guidance [--scales 3 6 1.5 10]

takes the 64 evaluation prompts with each held-out tempo phrase replaced by a development phrase of its
tempo (``tempo_wording_diagnostic.py --wording dev``: phrases in neither split of captions.py, so neither
trained on nor the evaluation's), generates and judges them with ``eval-world`` once per text-guidance
scale (video and audio CFG set alike, modality guidance as the sampler node's default), and tabulates how
often tempo is read right, how often "fast" is read whatever was asked, and each phrase's hits. The held-out
evaluation is never run here: a scale that helped on these prompts could then be tried on it once.
About 3 minutes per scale on 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import tempo_wording_diagnostic  # noqa: E402 (a sibling script)
from mmg_core.world_eval import DEFAULT_GUIDANCE, evaluate_world_model  # noqa: E402
from study_report import write_study_report  # noqa: E402 (a sibling script)
from tempo_text_probe import DEV_TEMPO_WORDS  # noqa: E402 (a sibling script)

DEFAULT_SCALES = (3.0, 6.0, 1.5, 10.0)  # the default first, then stronger, weaker, much stronger
DEFAULT_MODEL = "models/mmg-world-v1.safetensors"


def dev_phrase_of(prompt: str, tempo: str) -> str:
    """The development phrase a swapped prompt uses (each swapped prompt holds exactly one)."""
    found = [phrase for phrase in DEV_TEMPO_WORDS[tempo] if phrase in prompt.lower()]
    if len(found) != 1:
        raise ValueError(f"expected one {tempo} dev phrase in {prompt!r}, found {found}")
    return found[0]


def tempo_figures(clips: list[dict]) -> dict:
    """Tempo read right overall and per dev phrase, and the share of clips read "fast" (the model's lean)."""
    right = [c["measured"]["tempo"] == c["intended"]["tempo"] for c in clips]
    by_phrase: dict[str, list[int]] = {}
    for clip, hit in zip(clips, right):
        tempo = clip["intended"]["tempo"]
        key = f"{tempo}: {dev_phrase_of(clip['prompt'], tempo)}"
        by_phrase.setdefault(key, [0, 0])
        by_phrase[key][0] += int(hit)
        by_phrase[key][1] += 1
    read = Counter((c["intended"]["tempo"], c["measured"]["tempo"]) for c in clips)
    return {
        "tempo_accuracy": round(sum(right) / len(right), 4),
        "read_fast": round(sum(c["measured"]["tempo"] == "fast" for c in clips) / len(clips), 4),
        "asked_read": {f"{asked} -> {seen}": n for (asked, seen), n in sorted(read.items())},
        "by_phrase": {key: f"{hits}/{n}" for key, (hits, n) in sorted(by_phrase.items())},
    }


def run_scale(model: str, prompts: Path, out_dir: Path, scale: float) -> dict:
    guidance = replace(DEFAULT_GUIDANCE, video_cfg=scale, audio_cfg=scale)
    report = evaluate_world_model(model, prompts, out_dir / f"cfg_{scale:g}", guidance=guidance)
    criteria = {key: round(c["value"], 4) for key, c in report["criteria"].items()}
    return {"scale": scale, "guidance": asdict(guidance), "criteria": criteria, **tempo_figures(report["clips"])}


def markdown(report: dict) -> str:
    lines = [
        "# Tempo from unseen (dev) wording against text-guidance scale",
        "",
        f"Command: `python scripts/tempo_guidance_study.py --out {report['out']}` ({report['seconds']:.0f} s); see the "
        f"script's docstring. Model `{report['model']}`; the 64 evaluation prompts with their held-out tempo phrase "
        "replaced by a development phrase (in neither caption split), 4 prompts per phrase. Chance is 50 %.",
        "",
        "| video / audio CFG | tempo read right | read \"fast\" | colour | scene | sync | slider |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        c = run["criteria"]
        lines.append(f"| {run['scale']:g} | {100 * run['tempo_accuracy']:.1f} % | {100 * run['read_fast']:.1f} % | "
                     f"{100 * c['colour_accuracy']:.1f} % | {100 * c['scene_accuracy']:.1f} % | "
                     f"{100 * c['sync_pass_rate']:.1f} % | {100 * c['slider_pass_rate']:.1f} % |")
    phrases = list(report["runs"][0]["by_phrase"])
    lines += ["", "Tempo read right per dev phrase (clips):", "",
              "| phrase | " + " | ".join(f"CFG {run['scale']:g}" for run in report["runs"]) + " |",
              "|---|" + "---|" * len(report["runs"])]
    for phrase in phrases:
        lines.append(f"| {phrase} | " + " | ".join(run["by_phrase"][phrase] for run in report["runs"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for dev_prompts.json, report.json/.md and clips")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                        help="video and audio CFG scales to try (each > 1 pushes toward the prompt)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "dev_prompts.json"
    prompts.write_text(tempo_wording_diagnostic.swapped_prompts_json(wording="dev"))
    started = time.time()
    runs = [run_scale(args.model, prompts, out / "clips", scale) for scale in args.scales]
    report = {"out": args.out, "model": args.model, "seconds": round(time.time() - started, 1), "runs": runs}
    write_study_report(out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
