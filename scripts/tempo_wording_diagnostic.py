"""Is tempo lost in the words or in the generation? The evaluation prompts with only the tempo phrase swapped.

    python scripts/tempo_wording_diagnostic.py --out eval/tempo_wording/prompts.json
    python -m mmg_core eval-world --model models/mmg-world-v1.safetensors \
        --prompts eval/tempo_wording/prompts.json --out eval/tempo_wording

writes the 64 evaluation prompts (`mmg_core/world/eval_prompts.json`) with each held-out tempo phrase
("briskly", "unhurriedly", ...) replaced by the plainest training phrase of its tempo ("fast", "slowly");
every other word, the seeds and the asked attributes stay as they are. If the model gets tempo right on
these prompts but not on the originals, tempo is lost in reading the unseen words, not in making the
rhythm. A diagnostic only: these prompts are not the evaluation (their tempo words are seen in training).

With ``--wording dev`` the held-out phrase is replaced instead by a development phrase of its tempo, one
in neither split of captions.py (the tempo text probe's DEV_TEMPO_WORDS, taken in turn): unseen wording
that is not the evaluation's, on which sampling settings can be chosen without looking at the held-out
phrases (scripts/tempo_guidance_study.py).

With ``--wording separate`` the 48 unseen-combination prompts are captioned afresh in training wording
(a training template and training phrases, drawn from the prompt's seed) and the 16 unseen-paraphrase
prompts stay as they are: each prompt then tests one kind of generalisation, a new combination of known
words or new words for a known combination, where the evaluation's combination prompts test both at once.
An alternative design for the owner to weigh, measured so the choice is concrete; not the evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.world.captions import TEMPO_WORDS, caption_for, phrase_pattern  # noqa: E402
from mmg_core.world_eval import DEFAULT_PROMPTS_PATH, EvalPrompt, load_eval_prompts, reference_spec  # noqa: E402

from tempo_text_probe import DEV_TEMPO_WORDS  # noqa: E402 (a sibling script)

PLAIN_TEMPO = {"fast": "fast", "slow": "slowly"}
WORDINGS = ("plain", "dev", "separate")


def with_tempo_phrase(item: EvalPrompt, phrase: str) -> EvalPrompt:
    """``item`` with its held-out tempo phrase replaced by ``phrase``; refuses prompts without one."""
    for held_out in TEMPO_WORDS[item.tempo]["eval"]:
        pattern = phrase_pattern(held_out)
        if pattern.search(item.prompt):
            # A function as replacement: a phrase is inserted literally (no backslash escapes).
            return replace(item, prompt=pattern.sub(lambda _: phrase, item.prompt, count=1))
    raise ValueError(f"prompt {item.id} names its tempo ({item.tempo}) with no held-out phrase: {item.prompt!r}")


def with_plain_tempo(item: EvalPrompt) -> EvalPrompt:
    """``item`` with its held-out tempo phrase replaced by PLAIN_TEMPO[its tempo]."""
    return with_tempo_phrase(item, PLAIN_TEMPO[item.tempo])


def with_dev_tempo(items: list[EvalPrompt]) -> list[EvalPrompt]:
    """Each item's held-out tempo phrase replaced by the next DEV_TEMPO_WORDS phrase of its tempo, in turn."""
    used = {tempo: 0 for tempo in DEV_TEMPO_WORDS}
    swapped = []
    for item in items:
        phrases = DEV_TEMPO_WORDS[item.tempo]
        swapped.append(with_tempo_phrase(item, phrases[used[item.tempo] % len(phrases)]))
        used[item.tempo] += 1
    return swapped


def with_training_wording(item: EvalPrompt) -> EvalPrompt:
    """An unseen-combination item captioned in training wording (from its seed); other kinds unchanged."""
    if item.kind != "unseen_combination":
        return item
    caption = caption_for(reference_spec(item), np.random.default_rng([item.seed, 1]), split="train")
    return replace(item, prompt=caption)


def swapped_prompts_json(prompts_path: str | Path = DEFAULT_PROMPTS_PATH, wording: str = "plain") -> str:
    """The prompts file at ``prompts_path`` reworded as ``wording`` says (see the module doc), as JSON text."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {list(WORDINGS)}, got {wording!r}")
    source = json.loads(Path(prompts_path).read_text())
    originals = load_eval_prompts(prompts_path)
    if wording == "plain":
        items = [with_plain_tempo(item) for item in originals]
        replacement = f"replaced by {PLAIN_TEMPO}"
    elif wording == "separate":
        items = [with_training_wording(item) for item in originals]
        replacement = "kept in the 16 unseen-paraphrase prompts; the 48 unseen-combination prompts recaptioned in training wording"
    else:
        items = with_dev_tempo(originals)
        replacement = "replaced by the tempo text probe's DEV_TEMPO_WORDS in turn"
    payload = {**{key: value for key, value in source.items() if key != "items"},
               "made_by": f"scripts/tempo_wording_diagnostic.py from {source.get('made_by')}: held-out tempo "
                          f"phrases {replacement}",
               "items": [asdict(item) for item in items]}
    return json.dumps(payload, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS_PATH), help="evaluation prompts to start from")
    parser.add_argument("--out", required=True, help="where to write the swapped prompts (JSON)")
    parser.add_argument("--wording", choices=WORDINGS, default="plain",
                        help="plain: 'fast' / 'slowly' (seen in training); dev: development phrases of neither split; "
                             "separate: unseen combinations in training wording, unseen paraphrases as they are")
    args = parser.parse_args(argv)
    text = swapped_prompts_json(args.prompts, args.wording)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
