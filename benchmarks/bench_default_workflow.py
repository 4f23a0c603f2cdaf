"""Speed of the shipped text-to-audio-video workflow on a real ComfyUI 0.3.75 server.

    python benchmarks/bench_default_workflow.py [--runs 3] [--json out.json]

Measures, for the default workflow (25 steps, batch 1, shipped model):
  - model load: ``mmg_core.checkpoint.load_model`` of the shipped file, in a fresh process (cold) —
    target ≤ 3 s;
  - queued prompt → finished MP4: POST /prompt until the history entry is complete, with a new seed
    each run so nothing is served from ComfyUI's cache; the first run includes loading the model and
    the text encoder (cold), later runs reuse them (warm) — target ≤ 30 s;
  - the same clip through ``python -m mmg_core generate`` without ComfyUI, as the baseline the
    server's overhead is measured against (ratio server / baseline).
Server boot is not included (it happens once per ComfyUI start, not per prompt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import comfyui_env  # noqa: E402

WORKFLOW = ROOT / "workflows" / "api" / "mmg_text_to_audio_video.json"
MODEL = ROOT / "models" / "mmg-world-v1.safetensors"
PROMPT = "a red ball bouncing fast, a sharp click at every bounce"


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def time_prompt(server_url: str, seed: int, timeout: float = 600) -> float:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"]["seed"] = seed
    started = time.perf_counter()
    prompt_id = _post(f"{server_url}/prompt", {"prompt": prompt})["prompt_id"]
    while time.perf_counter() - started < timeout:
        entry = _get(f"{server_url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed"):
            return time.perf_counter() - started
        if entry and entry.get("status", {}).get("status_str") == "error":
            raise RuntimeError(f"prompt failed: {entry['status']}")
        time.sleep(0.05)
    raise TimeoutError("prompt did not finish")


def time_model_load() -> float:
    code = ("import time, sys; sys.path.insert(0, %r); from mmg_core.checkpoint import load_model; "
            "t = time.perf_counter(); load_model(%r); print(time.perf_counter() - t)") % (str(ROOT), str(MODEL))
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1])


def time_cli(seed: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmg_core", "generate", "--prompt", PROMPT, "--seed", str(seed),
                        "--steps", "25", "--out", f"{scratch}/clip.mp4"], check=True, cwd=ROOT, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict = {"workflow": WORKFLOW.name, "model": MODEL.name, "steps": 25}
    report["model_load_s"] = [time_model_load() for _ in range(args.runs)]
    report["cli_baseline_s"] = [time_cli(seed=1000 + i) for i in range(args.runs)]
    comfy_root = comfyui_env.ensure_comfyui()
    with tempfile.TemporaryDirectory() as scratch:
        base = comfyui_env.make_base_dir(Path(scratch), comfyui_env.default_packs())
        server = comfyui_env.start_server(comfy_root, base)
        try:
            times = [time_prompt(server.url, seed=2000 + i) for i in range(args.runs + 1)]
        finally:
            server.stop()
    report["queued_to_mp4_cold_s"] = times[0]
    report["queued_to_mp4_warm_s"] = times[1:]
    warm = statistics.median(times[1:])
    report["summary"] = {
        "model_load_median_s": statistics.median(report["model_load_s"]),
        "queued_to_mp4_cold_s": times[0],
        "queued_to_mp4_warm_median_s": warm,
        "cli_median_s": statistics.median(report["cli_baseline_s"]),
        "server_over_cli_ratio": warm / statistics.median(report["cli_baseline_s"]),
        "targets": {"model_load_s": 3.0, "queued_to_mp4_s": 30.0},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
