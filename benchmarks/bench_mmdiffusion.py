"""Forward time and peak memory of the released-size MM-Diffusion U-Net, ours vs the reference code,
plus the joint samplers' overhead per step beyond the model call.

    python benchmarks/bench_mmdiffusion.py --reference-repo /path/to/MM-Diffusion [--repeats 3]

Both models get the same random weights (the state-dict layouts are identical), batch 1, fp32, on the
CPU, each in its own process so peak RSS is its own. The reference is a checkout of
github.com/researchmm/MM-Diffusion that you provide (it is not shipped with the pack); without it the
script reports our figures alone.

On a shared machine the load drifts within minutes, so the two processes are loaded and warmed up
once and then take turns, one forward each, in the order ours-reference, reference-ours, ... (an ABBA
pattern cancels a linear drift); the time ratio is the median of the per-pair ratios. Each forward
also reports its process CPU time: CPU/wall near the thread count means the cores were ours.
Results are printed as JSON (and written to ``--json`` if given), with a short summary on stderr.
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
from typing import Callable

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


def _inputs():
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, 16, 3, 64, 64, generator=generator)
    audio = torch.randn(1, 1, 25600, generator=generator)
    return video, audio, torch.tensor([500])


def build_ours(weights: str) -> Callable[[], object]:
    from safetensors.torch import load_file

    from mmg_core.compat.mmdiffusion import from_reference

    model = from_reference(RELEASED_REFERENCE_ARGS, load_file(weights))
    video, audio, t = _inputs()
    shift_generator = torch.Generator().manual_seed(0)
    return lambda: model(video, audio, t, generator=shift_generator)


def build_reference(weights: str, repo: str) -> Callable[[], object]:
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
    return lambda: model(video, audio, t)


def serve(forward: Callable[[], object]) -> None:
    """Child loop: warm up, then one timed forward per "forward" line on stdin; "done" ends it with
    the peak RSS. Every answer is one JSON line on stdout."""
    with torch.inference_mode():
        forward()  # warm-up: allocator, oneDNN kernel selection
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() != "forward":
                break
            started, cpu_started = time.perf_counter(), time.process_time()
            forward()
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            print(json.dumps({"wall_s": wall, "cpu_s": cpu}), flush=True)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}), flush=True)


class Child:
    """One model in its own process, answering forward requests (see ``serve``)."""

    def __init__(self, kind: str, weights: str, repo: str | None):
        command = [sys.executable, __file__, "--child", kind, "--weights", weights]
        if repo:
            command += ["--reference-repo", repo]
        self.kind = kind
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer()  # wait until loaded and warmed up, so the two warm-ups never overlap

    def _answer(self) -> dict:
        while line := self.process.stdout.readline():
            if line.startswith("{"):  # skip anything the model code itself prints
                return json.loads(line)
        raise RuntimeError(f"the {self.kind} benchmark process exited with code {self.process.wait()}")

    def forward(self) -> dict:
        self.process.stdin.write("forward\n")
        self.process.stdin.flush()
        return self._answer()

    def finish(self) -> float:
        """Stop the process; returns its peak RSS in MB."""
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        peak = self._answer()["peak_rss_mb"]
        self.process.wait()
        return peak


def _summarise(runs: list[dict], peak_rss_mb: float) -> dict:
    walls = [run["wall_s"] for run in runs]
    return {
        "median_forward_s": statistics.median(walls),
        "times_s": walls,
        "cpu_times_s": [run["cpu_s"] for run in runs],
        "peak_rss_mb": peak_rss_mb,
    }


def compare(weights: str, repeats: int, repo: str | None) -> dict:
    """Time ours (and the reference, if given) with interleaved forwards."""
    ours = Child("ours", weights, None)
    reference = Child("reference", weights, repo) if repo else None
    ours_runs, reference_runs, ratios = [], [], []
    for i in range(repeats):
        if reference is None:
            ours_runs.append(ours.forward())
            continue
        if i % 2 == 0:
            ours_runs.append(ours.forward())
            reference_runs.append(reference.forward())
        else:
            reference_runs.append(reference.forward())
            ours_runs.append(ours.forward())
        ratios.append(ours_runs[-1]["wall_s"] / reference_runs[-1]["wall_s"])
    report: dict = {"ours": _summarise(ours_runs, ours.finish())}
    if reference is not None:
        report["reference"] = _summarise(reference_runs, reference.finish())
        report["time_ratio_ours_over_reference"] = statistics.median(ratios)
        report["time_ratio_per_pair"] = ratios
        report["peak_rss_ratio_ours_over_reference"] = report["ours"]["peak_rss_mb"] / report["reference"]["peak_rss_mb"]
    return report


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


def summary(report: dict) -> str:
    """A few human-readable lines of the JSON report."""
    lines = [
        f"{report['config']}; torch {report['torch']}, {report['threads']} threads, "
        f"1-min load average before/after {report['load_average']}"
    ]
    for name in ("ours", "reference"):
        if name in report:
            r = report[name]
            lines.append(
                f"  {name:9s}: median forward {r['median_forward_s']:.2f} s "
                f"(CPU {statistics.median(r['cpu_times_s']):.2f} s), peak RSS {r['peak_rss_mb']:.0f} MB"
            )
    if "time_ratio_ours_over_reference" in report:
        pairs = ", ".join(f"{x:.2f}" for x in report["time_ratio_per_pair"])
        lines.append(
            f"  ours / reference: time {report['time_ratio_ours_over_reference']:.2f} (per pair {pairs}), "
            f"peak RSS {report['peak_rss_ratio_ours_over_reference']:.2f}"
        )
    overhead = report["sampler_overhead"]
    lines.append(f"  sampler overhead per step beyond the model call ({overhead['steps']} steps, free model):")
    for name, ms in overhead["ms_per_step"].items():
        share = overhead["fraction_of_forward"][name] * 100
        lines.append(f"    {name:9s} {ms:7.2f} ms/step = {share:.3f} % of our median forward")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", help="checkout of researchmm/MM-Diffusion to time as the baseline")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model (after one warm-up)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        serve(build_ours(args.weights))
        return
    if args.child == "reference":
        serve(build_reference(args.weights, args.reference_repo))
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

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
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        weights = os.path.join(scratch, "weights.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
        del model
        report.update(compare(weights, args.repeats, args.reference_repo))
    # The load average after includes our own processes while they ran.
    report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report["sampler_overhead"] = sampler_overhead()
    report["sampler_overhead"]["fraction_of_forward"] = {
        name: ms / 1000 / report["ours"]["median_forward_s"] for name, ms in report["sampler_overhead"]["ms_per_step"].items()
    }
    text = json.dumps(report, indent=1)
    print(summary(report), file=sys.stderr)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
