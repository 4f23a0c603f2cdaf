"""How well can anything that reads the text encoder's states tell "slow" from "fast" in unseen wording?

``python scripts/tempo_text_probe.py --out eval/tempo_text_probe [--layers]`` (about 5 min on one core,
8 with ``--layers``) trains a small attention probe (4 learned queries over the caption's MiniLM token
states, plus the pooled embedding, then a linear read-out: the same inputs the world model's
cross-attention and text embedding get) to predict a caption's tempo from training-wording captions,
then scores it on captions whose tempo phrases it never saw:

  dev   tempo phrases of neither split (below), for choosing a training vocabulary;
  eval  the held-out "eval" wording of the world's evaluation prompts (reported, never chosen on).

It does this for the world's current training phrases and for the two earlier, narrower sets, so the effect
of the vocabulary on what can be read from the encoder is measured apart from the diffusion model.
With ``--layers`` it also trains probes (current vocabulary) on each layer of the encoder, embedding layer
first: whether an earlier layer than the last, the one the world model reads, carries tempo better.
The probe is a ceiling check, not a forecast: the world model reads the same states, but learns
tempo only through the denoising loss.

With ``--anchors`` it also asks the encoder as what it was trained to be, a sentence-similarity model,
with nothing learned: each tempo phrase, put in a sentence frame, is called fast when its pooled
embedding is closer (cosine) to the frame with a fast anchor phrase than to the frame with a slow one.
If MiniLM knew what the unseen words mean, this would read them without any probe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from einops import einsum, rearrange
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.text import TextEmbedding, default_text_encoder  # noqa: E402
from mmg_core.world import captions  # noqa: E402
from mmg_core.world.config import BACKGROUNDS, COLOURS, DEFAULT_CONFIG, PITCHES, SCENES, TEMPOS  # noqa: E402
from mmg_core.world.spec import make_spec  # noqa: E402
from study_report import write_study_report  # noqa: E402 (a sibling script)

# Captions each probe is trained on (about 30 per phrase for the widest vocabulary), and the probes averaged.
TRAINING_CAPTIONS = 3000
PROBE_SEEDS = (0, 1)

# Tempo phrases in neither split of captions.py: the probe's validation words.
DEV_TEMPO_WORDS = {
    "slow": ("at a snail's pace", "deliberately", "at a measured pace", "slothfully", "without haste",
             "ploddingly", "at a crawl", "at a languorous pace"),
    "fast": ("hastily", "nimbly", "at a lively pace", "zippily", "at full speed", "furiously",
             "at a breakneck pace", "in a flurry"),
}
# The training phrases before the vocabulary was widened (stop 11, commit fcac85a).
FIRST_TEMPO_WORDS = {
    "slow": ("slowly", "at a slow pace", "at a leisurely pace"),
    "fast": ("fast", "quickly", "rapidly", "at a fast pace"),
}
# The second set (commit 0a03ba2, used from step 11837 to 14429): 14 phrases per tempo, the first 14 of today's lists.
SECOND_TEMPO_WORDS = {tempo: captions.TEMPO_WORDS[tempo]["train"][:14] for tempo in TEMPOS}


def sample_captions(split: str, count: int, seed: int, tempo_words: dict[str, tuple[str, ...]] | None = None):
    """``count`` captions of random attributes in ``split``'s wording (tempo phrases optionally replaced);
    returns (texts, is_fast float tensor)."""
    saved = {tempo: dict(captions.TEMPO_WORDS[tempo]) for tempo in TEMPOS}
    if tempo_words is not None:
        for tempo in TEMPOS:
            captions.TEMPO_WORDS[tempo][split] = tempo_words[tempo]
    try:
        rng = np.random.default_rng(seed)
        texts, fast = [], []
        for _ in range(count):
            attributes = {name: table[int(rng.integers(len(table)))] for name, table in
                          (("scene", list(SCENES)), ("colour", list(COLOURS)), ("tempo", list(TEMPOS)),
                           ("pitch", list(PITCHES)), ("background", list(BACKGROUNDS)))}
            spec = make_spec(int(rng.integers(1 << 30)), DEFAULT_CONFIG, **attributes)
            texts.append(captions.caption_for(spec, rng, split))
            fast.append(attributes["tempo"] == "fast")
    finally:
        for tempo in TEMPOS:
            captions.TEMPO_WORDS[tempo].update(saved[tempo])
    return texts, torch.tensor(fast, dtype=torch.float32)


class AttentionProbe(torch.nn.Module):
    """Learned queries attend over the token states (padding masked); with the pooled embedding -> one logit."""

    def __init__(self, width: int, queries: int = 4, values: int = 16):
        super().__init__()
        self.query = torch.nn.Linear(width, queries)
        self.value = torch.nn.Linear(width, values)
        self.read_out = torch.nn.Linear(queries * values + width, 1)

    def forward(self, text: TextEmbedding) -> torch.Tensor:
        tokens = text.tokens.float()
        scores = self.query(tokens).masked_fill(~text.mask[..., None], -1e9).softmax(dim=1)
        attended = einsum(scores, self.value(tokens), "b t q, b t v -> b q v")
        features = torch.cat([rearrange(attended, "b q v -> b (q v)"), text.pooled.float()], dim=-1)
        return self.read_out(features).squeeze(-1)


def rows(text: TextEmbedding, index: torch.Tensor) -> TextEmbedding:
    return TextEmbedding(tokens=text.tokens[index], mask=text.mask[index], pooled=text.pooled[index])


def fit_probe(text: TextEmbedding, fast: torch.Tensor, *, steps: int = 600, seed: int = 0) -> AttentionProbe:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the probe's initial weights
    probe = AttentionProbe(text.tokens.shape[-1])
    optimiser = torch.optim.Adam(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        index = torch.randint(0, fast.numel(), (128,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(rows(text, index)), fast[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return probe


@torch.no_grad()
def accuracy_by_phrase(probe: AttentionProbe, texts: list[str], text: TextEmbedding, fast: torch.Tensor,
                       phrases: dict[str, tuple[str, ...]]) -> dict:
    correct = ((probe(text) > 0).float() == fast).numpy()
    by_phrase = {}
    for tempo, options in phrases.items():
        for phrase in options:
            hits = [c for t, c in zip(texts, correct) if phrase in t.lower()]
            if hits:
                by_phrase[f"{tempo}: {phrase}"] = round(float(np.mean(hits)), 3)
    return {"accuracy": round(float(correct.mean()), 3), "by_phrase": by_phrase}


def encode_layers(encoder, texts: list[str], chunk: int = 256) -> list[TextEmbedding]:
    """Every layer's states for ``texts`` (encoded in chunks to bound memory), embedding layer first."""
    parts = [encoder.layer_states(texts[start:start + chunk]) for start in range(0, len(texts), chunk)]
    return [TextEmbedding.cat([part[layer] for part in parts]) for layer in range(len(parts[0]))]


def mean_of_runs(runs: list[dict]) -> dict:
    """Accuracy and per-phrase accuracy averaged over probes trained with different seeds."""
    return {"accuracy": round(float(np.mean([run["accuracy"] for run in runs])), 3),
            "by_phrase": {phrase: round(float(np.mean([run["by_phrase"][phrase] for run in runs])), 3)
                          for phrase in runs[0]["by_phrase"]},
            "accuracy_per_seed": [run["accuracy"] for run in runs]}


def averaged_probe(train_sets: list[tuple[TextEmbedding, torch.Tensor]], tests: dict) -> dict:
    """One probe per training set (its index is the probe's seed), scored on each test set
    (name -> (texts, embedding, is_fast, phrases)); accuracies averaged over the probes."""
    runs = []
    for seed, (train_text, train_fast) in enumerate(train_sets):
        probe = fit_probe(train_text, train_fast, seed=seed)
        runs.append({name: accuracy_by_phrase(probe, texts, text, fast, phrases)
                     for name, (texts, text, fast, phrases) in tests.items()})
    return {name: mean_of_runs([run[name] for run in runs]) for name in tests}


def layer_results(encoder, words: dict, dev: tuple, eval_: tuple) -> list[dict]:
    """Probes on each encoder layer's states (embedding layer = 0), trained on ``words``' captions."""
    train = [sample_captions("train", TRAINING_CAPTIONS, seed=1 + seed, tempo_words=words) for seed in PROBE_SEEDS]
    train_layers = [encode_layers(encoder, texts) for texts, _ in train]
    dev_layers, eval_layers = encode_layers(encoder, dev[0]), encode_layers(encoder, eval_[0])
    results = []
    for layer in tqdm(range(len(dev_layers)), desc="layers"):
        tests = {"dev": (dev[0], dev_layers[layer], *dev[2:]), "eval": (eval_[0], eval_layers[layer], *eval_[2:])}
        sets = [(layers[layer], fast) for layers, (_, fast) in zip(train_layers, train)]
        results.append({"layer": layer, **averaged_probe(sets, tests)})
    return results


# Sentence frames and (fast, slow) anchor phrases for the zero-shot similarity reading (--anchors).
ANCHOR_FRAMES = ("{}", "the ball bounces {}", "a red ball bouncing {}, a click at every bounce")
ANCHOR_PAIRS = (("fast", "slowly"), ("quickly", "slowly"), ("at a fast pace", "at a slow pace"))


def anchor_accuracy(encoder, frame: str, anchors: tuple[str, str], words: dict[str, tuple[str, ...]]) -> float:
    """Share of ``words``' phrases whose framed sentence is nearer (cosine of pooled embeddings) to the
    frame with their own tempo's anchor than to the frame with the other tempo's."""
    fast_anchor, slow_anchor = encoder.encode([frame.format(a) for a in anchors]).pooled  # unit vectors
    right = 0
    for tempo, phrases in words.items():
        pooled = encoder.encode([frame.format(phrase) for phrase in phrases]).pooled
        says_fast = pooled @ fast_anchor > pooled @ slow_anchor
        right += int((says_fast if tempo == "fast" else ~says_fast).sum())
    return right / sum(map(len, words.values()))


def anchor_results(encoder, phrase_sets: dict[str, dict[str, tuple[str, ...]]]) -> list[dict]:
    return [{"frame": frame, "anchors": list(anchors),
             **{name: round(anchor_accuracy(encoder, frame, anchors, words), 4) for name, words in phrase_sets.items()}}
            for frame in ANCHOR_FRAMES for anchors in ANCHOR_PAIRS]


def report_markdown(report: dict) -> str:
    lines = ["# Tempo from unseen wording: an attention probe on the MiniLM states", "",
             f"Command: `{report['command']}` ({report['seconds']:.0f} s); see the script's docstring. Each figure is the",
             f"mean of {len(PROBE_SEEDS)} probes (different training captions and initial weights), each trained on "
             f"{TRAINING_CAPTIONS} captions.", "",
             "| training phrases | dev accuracy (per probe) | eval accuracy | eval by phrase |", "|---|---|---|---|"]
    for name, result in report["vocabularies"].items():
        phrases = ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["eval"]["by_phrase"].items())
        per_seed = ", ".join(f"{100 * accuracy:.0f}" for accuracy in result["dev"]["accuracy_per_seed"])
        lines.append(f"| {name} ({sum(map(len, result['training_phrases'].values()))} phrases) | "
                     f"{100 * result['dev']['accuracy']:.1f} % ({per_seed}) | {100 * result['eval']['accuracy']:.1f} % | {phrases} |")
    if report.get("layers"):
        lines += ["", "Per encoder layer (current phrases; layer 6 is the last, which the world model reads):", "",
                  "| layer | dev accuracy (per probe) | eval accuracy |", "|---|---|---|"]
        for result in report["layers"]:
            per_seed = ", ".join(f"{100 * accuracy:.0f}" for accuracy in result["dev"]["accuracy_per_seed"])
            lines.append(f"| {result['layer']} | {100 * result['dev']['accuracy']:.1f} % ({per_seed}) | "
                         f"{100 * result['eval']['accuracy']:.1f} % |")
    if report.get("anchors"):
        lines += ["", "Zero-shot, as a sentence-similarity model (`--anchors`): phrases read right by the nearer "
                  "anchor sentence (training phrases: the current ones; chance is 50 %):", "",
                  "| sentence frame | anchors (fast / slow) | training phrases | dev phrases | eval phrases |",
                  "|---|---|---|---|---|"]
        for row in report["anchors"]:
            lines.append(f"| `{row['frame']}` | {row['anchors'][0]} / {row['anchors'][1]} | {100 * row['train']:.0f} % | "
                         f"{100 * row['dev']:.0f} % | {100 * row['eval']:.0f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for report.json and report.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", action="store_true", help="also probe every encoder layer (about 3 min more)")
    parser.add_argument("--anchors", action="store_true", help="also read tempo zero-shot by anchor similarity (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    encoder = default_text_encoder()
    dev_texts, dev_fast = sample_captions("eval", 400, seed=5, tempo_words=DEV_TEMPO_WORDS)
    eval_texts, eval_fast = sample_captions("eval", 400, seed=2)
    eval_words = {t: captions.TEMPO_WORDS[t]["eval"] for t in TEMPOS}
    dev = (dev_texts, encoder.encode(dev_texts), dev_fast, DEV_TEMPO_WORDS)
    eval_ = (eval_texts, encoder.encode(eval_texts), eval_fast, eval_words)
    current = {t: captions.TEMPO_WORDS[t]["train"] for t in TEMPOS}
    vocabularies = {"current": current, "second": SECOND_TEMPO_WORDS, "first": FIRST_TEMPO_WORDS}
    results = {}
    for name, words in vocabularies.items():
        # One probe is noisy (+-5 points on dev): average independent ones.
        train_sets = [sample_captions("train", TRAINING_CAPTIONS, seed=1 + seed, tempo_words=words) for seed in PROBE_SEEDS]
        results[name] = {"training_phrases": words,
                         **averaged_probe([(encoder.encode(texts), fast) for texts, fast in train_sets],
                                          {"dev": dev, "eval": eval_})}
    report = {"command": "python scripts/tempo_text_probe.py " + " ".join(sys.argv[1:]), "vocabularies": results}
    if args.layers:
        report["layers"] = layer_results(encoder, current, dev, eval_)
    if args.anchors:
        report["anchors"] = anchor_results(encoder, {"train": current, "dev": DEV_TEMPO_WORDS, "eval": eval_words})
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_study_report(args.out, report, report_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
