#!/usr/bin/env python3
"""Queue a file of prompts on one or more ComfyUI servers and collect every MP4, with a manifest.

    python scripts/batch_queue.py --prompts examples/prompts.txt --server http://127.0.0.1:8188 --out clips/
    python scripts/batch_queue.py --prompts examples/prompts.txt --start-servers 2 --out clips/ --steps 10

Prompt file: one prompt per line, ``video prompt | audio prompt`` (the audio part is optional); blank
lines and lines starting with ``#`` are skipped. Each prompt runs the shipped text-to-audio-video workflow
(or ``--workflow``) with seed ``seed-base + index - 1``. Work goes to the least busy server, never more
than ``--max-in-flight`` prompts per server at once; a prompt that fails or whose server stops answering
is retried once on another server. Clips are downloaded over HTTP (``/view``) as
``DIR/<index>-<slug of the prompt>.mp4``, and ``DIR/manifest.json`` records, for every input prompt, its
server, prompt id, seed, status (``ok`` / ``error`` with the message), output file and warnings (e.g. the
words of a prompt too long for the text encoder, which the model never saw).

Exit status: 0 when every prompt has its MP4; 1 otherwise (see the manifest); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import dataclasses
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfyui_env  # noqa: E402  (scripts/ is not a package)
import main_job  # noqa: E402
from comfy_client import (ComfyClient, ComfyError, ExecutionError, ServerUnreachable,  # noqa: E402
                          output_files)

MANIFEST = "manifest.json"
ATTEMPTS_PER_PROMPT = 2  # the first try and one retry on another server
SLUG_LENGTH = 48


# --------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class PromptLine:
    index: int          # 1-based position among the prompts (not counting skipped lines)
    line: int           # line number in the file
    video: str
    audio: str


def parse_prompts(text: str) -> list[PromptLine]:
    """``video | audio`` per line; blank lines and ``#`` comments are skipped."""
    prompts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        video, _, audio = stripped.partition("|")
        prompts.append(PromptLine(len(prompts) + 1, number, video.strip(), audio.strip()))
    return prompts


def slug(text: str, limit: int = SLUG_LENGTH) -> str:
    """A file-name-safe, lower-case version of the prompt: 'A red ball, fast!' -> 'a-red-ball-fast'."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(words) > limit:  # cut at a word boundary unless that drops more than half
        boundary = words[:limit + 1].rfind("-")
        words = words[:boundary] if boundary > limit // 2 else words[:limit]
    return words or "prompt"


def output_name(prompt: PromptLine, count: int) -> str:
    width = max(3, len(str(count)))
    return f"{prompt.index:0{width}d}-{slug(prompt.video or prompt.audio)}.mp4"


# --------------------------------------------------------------------------- servers


@dataclasses.dataclass(eq=False)
class Server:
    """One ComfyUI the batch uses; ``process`` is set for the servers this script started."""
    client: ComfyClient
    process: comfyui_env.ServerProcess | None = None
    usable: bool = True
    reason: str = ""
    in_flight: int = 0
    assigned: int = 0

    @property
    def url(self) -> str:
        return self.client.url

    def alive(self) -> bool:
        return self.process is None or (self.process.process is not None and self.process.process.poll() is None)

    def disable(self, reason: str) -> None:
        if self.usable:
            main_job.warn(f"server {self.url} is no longer used: {reason}")
        self.usable, self.reason = False, reason

    def describe(self) -> dict:
        return {"url": self.url, "started_here": self.process is not None,
                "status": "ok" if self.usable else "unusable", "message": self.reason or None,
                "prompts_sent": self.assigned,
                "log": str(self.process.log_path) if self.process is not None else None}


def check_server(server: Server, node_types: Sequence[str]) -> Server:
    """Mark the server unusable if it does not answer or lacks a node class of the workflow."""
    try:
        server.client.system_stats()
        missing = server.client.missing_nodes(*node_types)
    except ComfyError as error:
        server.disable(f"not reachable: {error}")
        return server
    if missing:
        server.disable(f"lacks the node classes {', '.join(missing)} (is ComfyUI-MMG installed?)")
    return server


def launch_local_server(root: Path) -> comfyui_env.ServerProcess:
    """Start (not wait for) a ComfyUI with this pack on a free port, in its own temporary base directory.

    Must run on the main thread: the server gets SIGKILL when the thread that started it ends
    (PR_SET_PDEATHSIG, see comfyui_env), and a pool thread ends long before the batch does.
    """
    base = comfyui_env.make_base_dir(Path(tempfile.mkdtemp(prefix="mmg-batch-")), comfyui_env.default_packs())
    process = comfyui_env.ServerProcess(root, base)
    process.start()
    return process


def ready_server(process: comfyui_env.ServerProcess, root: Path, number: int) -> Server:
    """Wait for a launched server (relaunching once if its port was taken); unusable, with why, on failure."""
    for attempt in range(2):
        try:
            process.wait_ready()
            break
        except comfyui_env.ServerStartError as error:
            process.stop()
            if attempt == 0 and process.port_was_taken():
                process = comfyui_env.ServerProcess(root, process.base)
                process.start()
                continue
            dead = Server(ComfyClient(process.url), process)
            dead.disable(f"local server {number} did not start: {error}")
            return dead
    server = Server(ComfyClient(process.url), process)
    problems = main_job.pack_import_problems(process)
    if problems:
        server.disable("\n".join(problems))
    return server


def start_local_servers(count: int) -> list[Server]:
    """Boot ``count`` servers at once (they load in parallel) and wait for each."""
    if count <= 0:
        return []
    root = comfyui_env.ensure_comfyui()
    processes = [launch_local_server(root) for _ in range(count)]
    return [ready_server(process, root, number) for number, process in enumerate(processes, start=1)]


# --------------------------------------------------------------------------- one attempt


@dataclasses.dataclass
class Attempt:
    server: str | None           # None: the prompt was never sent anywhere
    prompt_id: str | None = None
    status: str = "running"
    message: str | None = None
    seconds: float = 0.0
    unreachable: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)  # MMG Text Encode's notes on the prompt

    def to_json(self) -> dict:
        return {"server": self.server, "prompt_id": self.prompt_id, "status": self.status,
                "message": self.message, "seconds": round(self.seconds, 2), "warnings": self.warnings}


@dataclasses.dataclass
class Job:
    prompt: PromptLine
    seed: int
    output: str                  # file name in the output directory
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    status: str = "pending"      # pending | ok | error

    def tried(self) -> set[str]:
        return {attempt.server for attempt in self.attempts}

    def failure_message(self) -> str:
        """Every attempt's error, so a retry's different failure does not hide the first one."""
        failed = [a for a in self.attempts if a.status != "ok"]
        if len(failed) <= 1:
            return failed[0].message if failed else "not run"
        return "; ".join(f"on {a.server or 'no server'}: {a.message}" for a in failed)

    def to_json(self) -> dict:
        last = self.attempts[-1] if self.attempts else None
        return {
            "index": self.prompt.index, "line": self.prompt.line,
            "video_prompt": self.prompt.video, "audio_prompt": self.prompt.audio, "seed": self.seed,
            "status": self.status,
            "message": None if self.status == "ok" else self.failure_message(),
            "server": last.server if last else None, "prompt_id": last.prompt_id if last else None,
            "output": self.output if self.status == "ok" else None,
            "warnings": last.warnings if last else [],
            "attempts": [attempt.to_json() for attempt in self.attempts],
        }


def describe_failure(error: BaseException) -> str:
    if isinstance(error, ExecutionError):
        return f"node {error.node_id} ({error.node_type}) failed: {error.exception_type}: {error.exception_message}"
    return f"{type(error).__name__}: {error}"


def run_attempt(server: Server, prompt: Mapping, target: Path, attempt: Attempt, timeout: float,
                cancel: threading.Event, save_node: str) -> Attempt:
    """Queue on one server, wait, download the MP4 to ``target``; the outcome is written into ``attempt``."""
    started = time.monotonic()
    client = server.client
    try:
        client.events()  # listen before queueing
        attempt.prompt_id = client.queue(prompt)
        entry = client.wait(attempt.prompt_id, timeout=timeout, alive=server.alive, cancel=cancel)
        attempt.warnings = main_job.text_encode_notes(entry, prompt)
        files = output_files(entry, node_id=save_node, suffix=".mp4")
        if not files:
            raise ComfyError(f"the prompt succeeded but node {save_node} listed no .mp4")
        client.download(files[0], target)
        if target.stat().st_size == 0:
            raise ComfyError(f"/view returned an empty file for {files[0].relative_path()}")
        attempt.status = "ok"
    except TimeoutError as error:
        attempt.status, attempt.message = "error", describe_failure(error)
        _cancel_quietly(client, attempt.prompt_id)
    except ServerUnreachable as error:
        attempt.status, attempt.message, attempt.unreachable = "error", describe_failure(error), True
    except (ComfyError, OSError) as error:
        attempt.status, attempt.message = "error", describe_failure(error)
    finally:
        attempt.seconds = time.monotonic() - started
    return attempt


def _cancel_quietly(client: ComfyClient, prompt_id: str | None) -> None:
    """Best effort: a prompt we gave up on should not keep the server busy."""
    if prompt_id is None:
        return
    try:
        client.cancel(prompt_id)
    except ComfyError:
        pass  # the server is gone or refused; nothing more to undo


# --------------------------------------------------------------------------- the dispatcher


class Batch:
    """Spreads jobs over servers (least busy first, ``max_in_flight`` each) and records every outcome."""

    def __init__(self, servers: list[Server], jobs: list[Job], make_prompt: Callable[[Job], dict],
                 out_dir: Path, max_in_flight: int, timeout: float, save_node: str,
                 on_change: Callable[[], None]):
        self.servers = servers
        self.jobs = jobs
        self.make_prompt = make_prompt
        self.out_dir = out_dir
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.save_node = save_node
        self.on_change = on_change
        self.cancel = threading.Event()
        self.running: dict[futures.Future, tuple[Job, Server, Attempt]] = {}

    def _pick_server(self, job: Job) -> Server | None:
        tried = job.tried()
        free = [s for s in self.servers if s.usable and s.in_flight < self.max_in_flight and s.url not in tried]
        return min(free, key=lambda s: (s.in_flight, s.assigned), default=None)

    def _can_retry(self, job: Job) -> bool:
        tried = job.tried()
        return len(job.attempts) < ATTEMPTS_PER_PROMPT and any(s.usable and s.url not in tried for s in self.servers)

    def _submit_ready(self, pending: deque, pool: futures.Executor) -> None:
        waiting = deque()
        while pending:
            job = pending.popleft()
            server = self._pick_server(job)
            if server is None:
                waiting.append(job)
                continue
            server.in_flight += 1
            server.assigned += 1
            attempt = Attempt(server.url)
            job.attempts.append(attempt)
            target = self.out_dir / job.output
            future = pool.submit(run_attempt, server, self.make_prompt(job), target, attempt, self.timeout,
                                 self.cancel, self.save_node)
            self.running[future] = (job, server, attempt)
        pending.extend(waiting)

    def _finish(self, future: futures.Future, pending: deque) -> None:
        job, server, attempt = self.running.pop(future)
        server.in_flight -= 1
        future.result()  # run_attempt records its errors in the attempt; anything else is a bug: raise
        if attempt.unreachable:
            server.disable(attempt.message)
        if attempt.status == "ok":
            job.status = "ok"
            main_job.say(f"[{job.prompt.index}/{len(self.jobs)}] ok  {job.output}  ({server.url}, "
                         f"{attempt.seconds:.1f} s)")
            for note in attempt.warnings:
                main_job.warn(f"[{job.prompt.index}/{len(self.jobs)}] warning: {note}")
        elif self._can_retry(job):
            main_job.warn(f"[{job.prompt.index}/{len(self.jobs)}] failed on {server.url}: {attempt.message}; "
                          "retrying on another server")
            pending.appendleft(job)
        else:
            job.status = "error"
            main_job.warn(f"[{job.prompt.index}/{len(self.jobs)}] FAILED: {attempt.message}")
        self.on_change()

    def run(self) -> None:
        pending = deque(self.jobs)
        workers = max(1, self.max_in_flight * len(self.servers))
        with futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch") as pool:
            try:
                while pending or self.running:
                    self._submit_ready(pending, pool)
                    if not self.running:  # nothing runs and nothing could start: no server left for these
                        self._give_up(pending, "no usable server left to run it on")
                        break
                    done, _ = futures.wait(self.running, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        self._finish(future, pending)
            except BaseException:
                self._stop_running()
                self._give_up(pending, "cancelled")
                raise

    def _give_up(self, pending: deque, reason: str) -> None:
        for job in list(pending) + [job for job, _, _ in self.running.values()]:
            if job.status == "pending":
                job.status = "error"
                if job.attempts and job.attempts[-1].status == "running":
                    job.attempts[-1].status, job.attempts[-1].message = "error", reason
                else:
                    job.attempts.append(Attempt(server=None, status="error", message=reason))
        pending.clear()
        self.on_change()

    def _stop_running(self) -> None:
        """Ctrl-C: take our prompts off the servers, and release the waiting threads."""
        self.cancel.set()
        for _, server, attempt in self.running.values():
            _cancel_quietly(server.client, attempt.prompt_id)


# --------------------------------------------------------------------------- manifest and CLI


def write_json(path: Path, data: Mapping) -> None:
    """Atomically (temp file, then rename): a reader never sees half a manifest."""
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def manifest(args: argparse.Namespace, steps: int, seed_base: int, servers: list[Server], jobs: list[Job]) -> dict:
    ok = sum(job.status == "ok" for job in jobs)
    failed = sum(job.status == "error" for job in jobs)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prompts_file": str(args.prompts.resolve()), "workflow": str(args.workflow.resolve()),
        "steps": steps, "seed_base": seed_base,
        "summary": {"prompts": len(jobs), "ok": ok, "failed": failed, "pending": len(jobs) - ok - failed},
        "servers": [server.describe() for server in servers],
        "prompts": [job.to_json() for job in jobs],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, required=True, help="file of prompts, one per line")
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="a running ComfyUI with ComfyUI-MMG, e.g. http://127.0.0.1:8188 (repeatable)")
    parser.add_argument("--start-servers", type=int, default=0, metavar="N",
                        help="also start N local ComfyUI servers with this pack (stopped at the end)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the MP4s and manifest.json")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the workflow's)")
    parser.add_argument("--seed-base", type=int, default=None,
                        help="seed of the first prompt; prompt i gets seed-base + i - 1 (default: random)")
    parser.add_argument("--workflow", type=Path, default=main_job.DEFAULT_WORKFLOW,
                        help="API-format text-to-AV workflow (default: the shipped one)")
    parser.add_argument("--max-in-flight", type=int, default=2,
                        help="prompts queued at once per server (default 2: one running, one waiting)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one prompt may take")
    args = parser.parse_args(argv)
    if not args.server and args.start_servers <= 0:
        parser.error("give at least one --server URL or --start-servers N")
    if args.start_servers < 0:
        parser.error("--start-servers must be 0 or more")
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def make_jobs(prompts: list[PromptLine], seed_base: int) -> list[Job]:
    return [Job(p, seed_base + p.index - 1, output_name(p, len(prompts))) for p in prompts]


def stop_servers(servers: list[Server], keep_logs: bool) -> None:
    for server in servers:
        server.client.close()
        if server.process is not None:
            server.process.stop()
            if keep_logs or not server.usable:
                main_job.warn(f"log of {server.url}: {server.process.log_path}")
            else:
                shutil.rmtree(server.process.base, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    prompts = parse_prompts(args.prompts.read_text())
    if not prompts:
        raise ValueError(f"{args.prompts} holds no prompts (one per line; '#' starts a comment)")
    workflow = main_job.load_workflow(args.workflow)
    save_node = main_job.find_node(workflow, "MMGSaveMP4")
    node_types = sorted({node["class_type"] for node in workflow.values()})
    steps = args.steps or workflow[main_job.find_node(workflow, "MMGSampler")]["inputs"]["steps"]
    seed_base = secrets.randbelow(main_job.MAX_SEED) if args.seed_base is None else args.seed_base
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(prompts, seed_base)
    main_job.say(f"{len(jobs)} prompts from {args.prompts}, {steps} steps, seed base {seed_base}")

    servers = [Server(ComfyClient(url)) for url in args.server]
    if args.start_servers:
        main_job.say(f"starting {args.start_servers} ComfyUI server(s)")
    servers += start_local_servers(args.start_servers)
    record = lambda: write_json(args.out / MANIFEST, manifest(args, steps, seed_base, servers, jobs))  # noqa: E731
    try:
        for server in servers:
            if server.usable:
                check_server(server, node_types)
        main_job.say("servers: " + ", ".join(f"{s.url} ({'ok' if s.usable else 'unusable'})" for s in servers))

        def make_prompt(job: Job) -> dict:
            prefix = f"mmg/batch/{Path(job.output).stem}"
            return main_job.text_to_av_prompt(workflow, job.prompt.video, job.prompt.audio, job.seed,
                                              args.steps, prefix)

        batch = Batch(servers, jobs, make_prompt, args.out, args.max_in_flight, args.timeout, save_node, record)
        record()
        batch.run()
    finally:
        record()
        stop_servers(servers, keep_logs=any(job.status != "ok" for job in jobs))
    ok = sum(job.status == "ok" for job in jobs)
    main_job.say(f"{len(jobs)} prompts, {ok} ok, {len(jobs) - ok} failed "
                 f"({time.monotonic() - started:.1f} s); manifest: {(args.out / MANIFEST).resolve()}")
    return 0 if ok == len(jobs) else 1


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(143)  # unwinds through `finally`: manifest written, servers stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Started in the background by a shell, Python inherits SIGINT ignored; Ctrl-C / kill -INT must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except ValueError as error:
        main_job.warn(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        main_job.warn("cancelled")
        return 130


if __name__ == "__main__":
    sys.exit(main())
