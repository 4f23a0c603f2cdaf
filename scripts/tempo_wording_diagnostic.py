"""Is tempo lost in the words or in the generation? The evaluation prompts with only the tempo phrase swapped.

    python scripts/tempo_wording_diagnostic.py --out eval/tempo_wording/prompts.json
    python -m mmg_core eval-world --model models/mmg-world-v1.safetensors \
        --prompts eval/tempo_wording/prompts.json --out eval/tempo_wording

writes the 64 evaluation prompts (`mmg_core/world/eval_prompts.json`) with each held-out tempo phrase
("briskly", "unhurriedly", ...) replaced by the plainest training phrase of its tempo ("fast", "slowly");
every other word, the seeds and the asked attributes stay as they are. If the model gets tempo right on
these prompts but not on the originals, tempo is lost in reading the unseen words, not in making the
rhythm. A diagnostic only: these prompts are not the evaluation (their tempo words are seen in training).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.world.captions import TEMPO_WORDS, phrase_pattern  # noqa: E402
from mmg_core.world_eval import DEFAULT_PROMPTS_PATH, EvalPrompt, load_eval_prompts  # noqa: E402

PLAIN_TEMPO = {"fast": "fast", "slow": "slowly"}


def with_plain_tempo(item: EvalPrompt) -> EvalPrompt:
    """``item`` with its held-out tempo phrase replaced by PLAIN_TEMPO[its tempo]; refuses prompts without one."""
    for phrase in TEMPO_WORDS[item.tempo]["eval"]:
        pattern = phrase_pattern(phrase)
        if pattern.search(item.prompt):
            return replace(item, prompt=pattern.sub(PLAIN_TEMPO[item.tempo], item.prompt, count=1))
    raise ValueError(f"prompt {item.id} names its tempo ({item.tempo}) with no held-out phrase: {item.prompt!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS_PATH), help="evaluation prompts to start from")
    parser.add_argument("--out", required=True, help="where to write the swapped prompts (JSON)")
    args = parser.parse_args(argv)
    source = json.loads(Path(args.prompts).read_text())
    items = [with_plain_tempo(item) for item in load_eval_prompts(args.prompts)]
    payload = {**{key: value for key, value in source.items() if key != "items"},
               "made_by": f"scripts/tempo_wording_diagnostic.py from {source.get('made_by')}: held-out tempo "
                          f"phrases replaced by {PLAIN_TEMPO}",
               "items": [asdict(item) for item in items]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
