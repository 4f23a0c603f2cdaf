#!/usr/bin/env python3
"""Generate one clip from a text prompt with a real ComfyUI 0.3.75 and this pack (the README's first job).

Starts ComfyUI on 127.0.0.1 with this repository installed as ``custom_nodes/ComfyUI-MMG``, queues the
shipped text-to-audio-video workflow (``workflows/api/mmg_text_to_audio_video.json``, which loads the
shipped ``models/mmg-world-v1.safetensors``) with the prompt, shows the sampler's progress, and prints the
absolute path of the MP4 as the last line of stdout. The MP4 lands in ``--output-directory`` (default
``./outputs`` under the current directory), which is ComfyUI's output folder for the run.

    python scripts/main_job.py --prompt "a green drum beating slowly, a low thump" --seed 7

Exit status: 0 with the MP4 written; 1 when ComfyUI, the pack or the prompt failed (the message names
the node and its error, or quotes the import traceback from ComfyUI's log); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import copy
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_client  # noqa: E402  (scripts/ is not a package)
import comfyui_env  # noqa: E402
from comfy_client import ComfyClient, ComfyError, ExecutionError  # noqa: E402

REPO_ROOT = comfyui_env.REPO_ROOT
PACK_NAME = comfyui_env.DEFAULT_PACK_NAME
DEFAULT_PROMPT = "a red ball bouncing fast, a sharp click at every bounce"
DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "api" / "mmg_text_to_audio_video.json"
PACK_MODELS_DIR = REPO_ROOT / "models"
MAX_SEED = 2**32  # any seed the sampler accepts; this range is enough to pick a fresh one
# Printed when a node of this class starts executing; the sampler also gets a progress bar.
PHASES = {
    "MMGLoadModel": "loading model",
    "MMGTextEncode": "encoding prompt",
    "MMGSampler": "sampling",
    "MMGDecode": "decoding",
    "MMGSaveMP4": "writing MP4",
}


# --------------------------------------------------------------------------- the workflow


def load_workflow(path: Path = DEFAULT_WORKFLOW) -> dict:
    """An API-format workflow (``{node_id: {class_type, inputs}}``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"workflow {path} does not exist; use an API-format file such as {DEFAULT_WORKFLOW}")
    prompt = json.loads(path.read_text())
    if not isinstance(prompt, dict) or not all(isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise ValueError(f"{path} is not an API-format workflow (export it with 'Export (API)' in ComfyUI)")
    return prompt


def find_node(prompt: Mapping, class_type: str) -> str:
    """The id of the one node of ``class_type`` (the text-to-AV overrides need exactly one)."""
    found = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    if len(found) != 1:
        raise ValueError(f"the workflow must have exactly one {class_type} node, it has {len(found)}")
    return found[0]


def text_to_av_prompt(workflow: Mapping, video_prompt: str, audio_prompt: str = "", seed: int = 0,
                      steps: int | None = None, filename_prefix: str | None = None) -> dict:
    """A copy of the text-to-audio-video workflow with the prompts, seed and (optionally) steps and
    output file prefix set; ``steps=None`` keeps the workflow's own value."""
    prompt = copy.deepcopy(dict(workflow))
    text = prompt[find_node(prompt, "MMGTextEncode")]["inputs"]
    text["video_prompt"], text["audio_prompt"] = video_prompt, audio_prompt
    sampler = prompt[find_node(prompt, "MMGSampler")]["inputs"]
    sampler["seed"] = seed
    if steps is not None:
        sampler["steps"] = steps
    if filename_prefix is not None:
        prompt[find_node(prompt, "MMGSaveMP4")]["inputs"]["filename_prefix"] = filename_prefix
    return prompt


def missing_pack_models(prompt: Mapping) -> list[str]:
    """Checkpoints the workflow loads that are not in the pack's ``models/`` (the run's only model folder)."""
    names = [node["inputs"].get("ckpt_name") for node in prompt.values() if node["class_type"] == "MMGLoadModel"]
    return [name for name in names if isinstance(name, str) and not (PACK_MODELS_DIR / name).is_file()]


def mp4_of(entry: Mapping, prompt: Mapping) -> comfy_client.OutputFile:
    """The MP4 the Save MP4 node listed (PreviewVideo puts it under ``images``)."""
    files = comfy_client.output_files(entry, node_id=find_node(prompt, "MMGSaveMP4"), suffix=".mp4")
    if not files:
        raise ComfyError(f"the prompt succeeded but MMGSaveMP4 listed no .mp4: outputs {entry.get('outputs')}")
    return files[0]


def text_encode_notes(entry: Mapping, prompt: Mapping) -> list[str]:
    """What MMG Text Encode said of the prompts (e.g. words past the encoder's limit), from its UI text."""
    ui = (entry.get("outputs") or {}).get(find_node(prompt, "MMGTextEncode")) or {}
    return [str(note) for note in ui.get("text", [])]


# --------------------------------------------------------------------------- progress display


class ProgressView:
    """Turns the prompt's websocket events into phase lines (stdout) and a sampler bar (stderr)."""

    def __init__(self, prompt: Mapping, steps: int):
        self.prompt = prompt
        self.steps = steps
        self.sampler_node = find_node(prompt, "MMGSampler")
        self.bar: tqdm | None = None
        self.announced: set[str] = set()

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing" and data.get("node") is not None:
            self._phase(str(data["node"]))
        elif event == "progress" and str(data.get("node")) == self.sampler_node:
            self._advance(int(data["value"]), int(data["max"]))

    def _phase(self, node_id: str) -> None:
        phase = PHASES.get(self.prompt.get(node_id, {}).get("class_type"))
        if phase is None or phase in self.announced:
            return
        self.close()
        self.announced.add(phase)
        say(phase)

    def _advance(self, value: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(value - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the server


def start_comfyui(output_dir: Path, port: int | None) -> comfyui_env.ServerProcess:
    """ComfyUI with this pack on 127.0.0.1, writing outputs to ``output_dir``; logs in a temp base dir."""
    if not (comfyui_env.comfyui_cache_dir() / comfyui_env.EXTRACTED_MARKER).is_file():
        say(f"fetching ComfyUI into {comfyui_env.comfyui_cache_dir()} (first run only)")
    root = comfyui_env.ensure_comfyui()
    base = comfyui_env.make_base_dir(Path(tempfile.mkdtemp(prefix="mmg-main-job-")),
                                     comfyui_env.default_packs())
    # A later --output-directory wins over the one server_command sets inside the base dir.
    extra = ("--output-directory", str(output_dir))
    if port is None:
        return comfyui_env.start_server(root, base, extra_args=extra)
    server = comfyui_env.ServerProcess(root, base, extra_args=extra, port=port)
    server.start()
    try:
        server.wait_ready()
    except comfyui_env.ServerStartError:
        server.stop()
        raise
    return server


def pack_import_problems(server: comfyui_env.ServerProcess) -> list[str]:
    """Why this pack did not load, with the traceback lines from the log; empty when it did."""
    report = comfyui_env.parse_import_report(server.log_text())
    if PACK_NAME in report.loaded and PACK_NAME not in report.failed:
        return []
    problems = [f"ComfyUI could not import the {PACK_NAME} nodes (log: {server.log_path})"]
    problems += report.excerpts or [comfyui_env.tail(server.log_text(), 40)]
    return problems


def keep_serving(server: comfyui_env.ServerProcess, output_dir: Path) -> None:
    """Block until Ctrl-C (the server is this process's child and ends with it)."""
    warn(f"ComfyUI keeps running at {server.url} (outputs in {output_dir}); press Ctrl-C to stop it.")
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------- the job


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"what to see (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--audio-prompt", default="", help="what to hear (default: the prompt)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random, printed)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the workflow's, 25)")
    parser.add_argument("--output-directory", type=Path, default=Path("outputs"),
                        help="ComfyUI's output folder for the run (default: ./outputs)")
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help="API-format text-to-AV workflow (default: the shipped one)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the clip")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave ComfyUI running after the clip is written, until Ctrl-C")
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("--prompt is empty: describe the clip, e.g. 'a red ball bouncing fast'")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be 0 or more")
    return args


def generate(server: comfyui_env.ServerProcess, prompt: Mapping, steps: int, timeout: float) -> Path:
    """Queue the prompt, show its progress, and return the MP4's path in the output folder."""
    client = ComfyClient(server.url)
    view = ProgressView(prompt, steps)
    try:
        client.events()  # listen before queueing, so no early event is missed
        prompt_id = client.queue(prompt)
        say(f"queued (prompt id {prompt_id})")
        alive = lambda: server.process is not None and server.process.poll() is None  # noqa: E731
        entry = client.wait(prompt_id, timeout=timeout, on_event=view, alive=alive)
    finally:
        view.close()
        client.close()
    for note in text_encode_notes(entry, prompt):
        warn(f"warning: {note}")
    return mp4_of(entry, prompt).relative_path()


def prepare(args: argparse.Namespace) -> tuple[dict, int, int]:
    """The API prompt to queue, its seed and its number of steps; ValueError if it cannot run here."""
    workflow = load_workflow(args.workflow)
    missing = missing_pack_models(workflow)
    if missing:
        raise ValueError(f"the shipped model {', '.join(missing)} is missing from {PACK_MODELS_DIR}; it ships "
                         "with the pack: restore it from the pack's repository")
    seed = secrets.randbelow(MAX_SEED) if args.seed is None else args.seed
    prompt = text_to_av_prompt(workflow, args.prompt, args.audio_prompt, seed, args.steps)
    return prompt, seed, prompt[find_node(prompt, "MMGSampler")]["inputs"]["steps"]


def clip_on(server: comfyui_env.ServerProcess, prompt: Mapping, steps: int, output_dir: Path,
            timeout: float) -> Path | None:
    """Run the prompt on the booted server; the MP4's absolute path, or None after printing why not."""
    problems = pack_import_problems(server)
    if problems:
        warn("error: " + "\n".join(problems))
        return None
    try:
        relative = generate(server, prompt, steps, timeout)
    except ExecutionError as error:
        warn(f"error: node {error.node_id} ({error.node_type}) failed: "
             f"{error.exception_type}: {error.exception_message}\nserver log: {server.log_path}")
        return None
    except (ComfyError, TimeoutError) as error:  # rejected prompt, lost server, time limit
        warn(f"error: {error}\n--- server log tail ---\n{comfyui_env.tail(server.log_text(), 30)}")
        return None
    mp4 = output_dir / relative
    if not mp4.is_file():
        warn(f"error: ComfyUI reported {relative} but {mp4} does not exist")
        return None
    return mp4


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    prompt, seed, steps = prepare(args)
    output_dir = args.output_directory.expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    say(f"prompt: {args.prompt!r}" + (f", audio prompt: {args.audio_prompt!r}" if args.audio_prompt else ""))
    say(f"seed {seed}, {steps} steps")
    say(f"starting ComfyUI {comfyui_env.COMFYUI_VERSION}")
    try:
        server = start_comfyui(output_dir, args.port)
    except comfyui_env.ServerStartError as error:
        warn(f"error: {error}")
        return 1
    mp4 = None
    try:
        booted = time.monotonic()
        say(f"ComfyUI at {server.url} (started in {booted - started:.1f} s)")
        mp4 = clip_on(server, prompt, steps, output_dir, args.timeout)
        if mp4 is None:
            return 1
        finished = time.monotonic()
        say(f"done in {finished - started:.1f} s (ComfyUI start {booted - started:.1f} s, "
            f"generation {finished - booted:.1f} s)")
        say(str(mp4))
        if args.keep_server:
            keep_serving(server, output_dir)
        return 0
    finally:
        server.stop()
        if mp4 is None:
            warn(f"ComfyUI's log and folders are kept in {server.base}")
        else:
            shutil.rmtree(server.base, ignore_errors=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(143)  # unwinds through `finally`, which stops the server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Started in the background by a shell, Python inherits SIGINT ignored; Ctrl-C / kill -INT must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except ValueError as error:
        warn(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        warn("cancelled")
        return 130


if __name__ == "__main__":
    sys.exit(main())
