"""Speed of sync scoring (issue 4, point 5): CAM-Sync + AV-Align + onset baseline of one clip on the CPU.

    python benchmarks/bench_sync.py [--runs 3] [--threads 2] [--json benchmarks/sync_last_run.json]

Two clips from the synthetic world: 1.6 s at 64x64 (target <= 2 s) and 10 s at 256x256 (target <= 20 s),
10 fps, 16 kHz. Each is scored ``--runs`` times after one warm-up run (models loaded once, not timed);
the median is reported, with the model-free onset baseline timed in the same run for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmg_core.sync import load_sync_models, onset_motion_sync, score_clip  # noqa: E402
from mmg_core.world import WorldConfig, make_spec, render_clip  # noqa: E402

CASES = {"1.6 s 64x64": (WorldConfig(frames=16, size=64), 2.0), "10 s 256x256": (WorldConfig(frames=100, size=256), 20.0)}


def median_seconds(work, runs: int) -> float:
    work()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (this machine has 2 cores)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_sync_models()
    results = {}
    for name, (config, target) in CASES.items():
        clip = render_clip(make_spec(0, config, scene="ball", colour="red", background="dark", tempo="fast", pitch="high"), config)
        full = median_seconds(lambda: score_clip(models, clip.video, clip.audio, config.fps, config.sample_rate), args.runs)
        onset = median_seconds(lambda: onset_motion_sync(clip.video, clip.audio, config.fps, config.sample_rate), args.runs)
        results[name] = {"seconds": round(full, 3), "target_s": target, "within_target": full <= target,
                         "onset_baseline_s": round(onset, 3), "ratio_to_onset_baseline": round(full / onset, 1)}
        print(f"{name}: {full:.2f} s (target {target:g} s), onset baseline alone {onset:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "runs": args.runs, "cases": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
