"""Forward time and peak memory of the released-size MM-Diffusion U-Net, ours vs the reference code,
plus the joint samplers' overhead per step beyond the model call.

    python benchmarks/bench_mmdiffusion.py --reference-repo /path/to/MM-Diffusion [--repeats 3]

Both models get the same random weights (the state-dict layouts are identical), batch 1, fp32, on the
CPU, each in its own fresh process so peak RSS is its own. The reference is a checkout of
github.com/researchmm/MM-Diffusion that you provide (it is not shipped with the pack); without it the
script reports our figures alone. Results are printed as JSON and written to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The released Landscape / AIST++ settings, in the reference's argument names.
RELEASED_REFERENCE_ARGS = {
    "video_size": "16,3,64,64", "audio_size": "1,25600", "num_channels": 128, "num_res_blocks": 2,
    "num_heads": 4, "num_head_channels": 64, "cross_attention_resolutions": "2,4,8",
    "cross_attention_windows": "1,4,8", "cross_attention_shift": True, "video_attention_resolutions": "2,4,8",
    "audio_attention_resolutions": "-1", "use_scale_shift_norm": True, "resblock_updown": True,
    "learn_sigma": False, "dropout": 0.0,
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_forwards(forward, repeats: int) -> list[float]:
    forward()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward()
        times.append(time.perf_counter() - started)
    return times


def _inputs():
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, 16, 3, 64, 64, generator=generator)
    audio = torch.randn(1, 1, 25600, generator=generator)
    return video, audio, torch.tensor([500])


def child_ours(weights: str, repeats: int) -> dict:
    from safetensors.torch import load_file

    from mmg_core.compat.mmdiffusion import from_reference

    model = from_reference(RELEASED_REFERENCE_ARGS, load_file(weights))
    video, audio, t = _inputs()
    shift_generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        times = _time_forwards(lambda: model(video, audio, t, generator=shift_generator), repeats)
    return {"times_s": times, "peak_rss_mb": _peak_rss_mb()}


def child_reference(weights: str, repeats: int, repo: str) -> dict:
    import random

    from safetensors.torch import load_file

    sys.path.insert(0, repo)
    # The reference's own class, built with the arguments its create_model() derives from the flags
    # (create_model itself drags in training-only dependencies such as blobfile and mpi4py).
    from mm_diffusion.multimodal_unet import MultimodalUNet

    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    a = RELEASED_REFERENCE_ARGS
    model = MultimodalUNet(
        video_size=ints(a["video_size"]), audio_size=ints(a["audio_size"]), model_channels=a["num_channels"],
        video_out_channels=3, audio_out_channels=1, num_res_blocks=a["num_res_blocks"],
        cross_attention_resolutions=ints(a["cross_attention_resolutions"]),
        cross_attention_windows=ints(a["cross_attention_windows"]),
        cross_attention_shift=a["cross_attention_shift"],
        video_attention_resolutions=ints(a["video_attention_resolutions"]),
        audio_attention_resolutions=ints(a["audio_attention_resolutions"]),
        channel_mult=(1, 2, 3, 4), num_heads=a["num_heads"], num_head_channels=a["num_head_channels"],
        use_scale_shift_norm=a["use_scale_shift_norm"], resblock_updown=a["resblock_updown"],
    )
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    random.seed(0)  # the reference draws its RS-MMA shifts from Python's global RNG
    video, audio, t = _inputs()
    with torch.inference_mode():
        times = _time_forwards(lambda: model(video, audio, t), repeats)
    return {"times_s": times, "peak_rss_mb": _peak_rss_mb()}


def sampler_overhead(steps: int = 20) -> dict:
    """Per-step cost of each sampler with a free model (returns zeros), at the released tensor sizes."""
    from mmg_core.av import AV, randn_av
    from mmg_core.denoiser import NoiseSchedule
    from mmg_core.sampling import sample, sampler_names

    noise = randn_av((1, 16, 3, 64, 64), (1, 1, 25600), generator=torch.Generator().manual_seed(0))
    schedule = NoiseSchedule.ddpm_linear()

    def free_model(x: AV, t: torch.Tensor) -> AV:
        return x.map(torch.zeros_like)

    result = {}
    for name in sampler_names():
        started = time.perf_counter()
        sample(name, free_model, noise, schedule, steps=steps, generator=torch.Generator().manual_seed(0))
        result[name] = (time.perf_counter() - started) / steps * 1000
    return {"ms_per_step": result, "steps": steps}


def _run_child(kind: str, weights: str, repeats: int, repo: str | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--weights", weights, "--repeats", str(repeats)]
    if repo:
        command += ["--reference-repo", repo]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", help="checkout of researchmm/MM-Diffusion to time as the baseline")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model (after one warm-up)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        print(json.dumps(child_ours(args.weights, args.repeats)))
        return
    if args.child == "reference":
        print(json.dumps(child_reference(args.weights, args.repeats, args.reference_repo)))
        return

    from safetensors.torch import save_file

    from mmg_core.compat.mmdiffusion import config_from_reference
    from mmg_core.models.mmdiffusion import MMDiffusionUNet

    torch.manual_seed(0)
    model = MMDiffusionUNet(config_from_reference(RELEASED_REFERENCE_ARGS))
    # Zero-initialised output layers would let a broken model look fast and correct: randomise them.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.02)
    report: dict = {
        "config": "MM-Diffusion released (Landscape/AIST++), batch 1, fp32, CPU",
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        weights = os.path.join(scratch, "weights.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        del model
        ours = _run_child("ours", weights, args.repeats, None)
        report["ours"] = {"median_forward_s": statistics.median(ours["times_s"]), **ours}
        if args.reference_repo:
            reference = _run_child("reference", weights, args.repeats, args.reference_repo)
            report["reference"] = {"median_forward_s": statistics.median(reference["times_s"]), **reference}
            report["time_ratio_ours_over_reference"] = report["ours"]["median_forward_s"] / report["reference"]["median_forward_s"]
            report["peak_rss_ratio_ours_over_reference"] = ours["peak_rss_mb"] / reference["peak_rss_mb"]
    report["sampler_overhead"] = sampler_overhead()
    report["sampler_overhead"]["fraction_of_forward"] = {
        name: ms / 1000 / report["ours"]["median_forward_s"] for name, ms in report["sampler_overhead"]["ms_per_step"].items()
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
