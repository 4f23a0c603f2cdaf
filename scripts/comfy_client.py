"""A small client for one ComfyUI server's HTTP + websocket API (written against ComfyUI 0.3.75).

Used by ``scripts/main_job.py`` and ``scripts/batch_queue.py``::

    client = ComfyClient("http://127.0.0.1:8188")
    prompt_id = client.queue(api_prompt)                 # POST /prompt; PromptRejected on HTTP 400
    entry = client.wait(prompt_id, on_event=print)      # websocket events, /history polling as fallback
    for item in output_files(entry, node_id="6"):
        client.download(item, Path("clip.mp4"))         # GET /view

``wait`` returns the history entry of a successful prompt and raises ``ExecutionError`` (naming the node
and carrying its exception message and traceback), ``ExecutionInterrupted``, ``ServerUnreachable`` or
``TimeoutError`` otherwise. Several threads may wait on one client at the same time: they share one
websocket, each reading the events of its own prompt.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import requests
import websocket  # websocket-client

HTTP_TIMEOUT = 30.0
# While the websocket is up, /history is still polled now and then: events sent before the socket
# connected, or lost with it, must not leave a waiter hanging.
POLL_WITH_SOCKET = 5.0
POLL_WITHOUT_SOCKET = 0.5
# How long a server may refuse connections before a wait gives up on it (a restart takes longer).
UNREACHABLE_GRACE = 15.0
TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


# --------------------------------------------------------------------------- errors


class ComfyError(RuntimeError):
    """Anything that stops a prompt from producing its outputs."""


class ServerUnreachable(ComfyError):
    """The server did not answer (refused, reset, timed out) or died while a prompt was waiting."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400: the prompt failed validation. ``body`` is ComfyUI's JSON."""

    def __init__(self, body: Any):
        self.body = body
        super().__init__(f"ComfyUI rejected the prompt:\n{describe_rejection(body)}")


class ExecutionError(ComfyError):
    """A node raised while the prompt ran; ``data`` is ComfyUI's ``execution_error`` message."""

    def __init__(self, data: Mapping, entry: Mapping | None = None):
        self.data = dict(data)
        self.entry = entry
        self.node_id = str(data.get("node_id"))
        self.node_type = data.get("node_type")
        self.exception_type = data.get("exception_type")
        self.exception_message = (data.get("exception_message") or "").strip()
        self.traceback = "".join(data.get("traceback") or [])
        super().__init__(f"node {self.node_id} ({self.node_type}) failed: "
                         f"{self.exception_type}: {self.exception_message}")


class ExecutionInterrupted(ComfyError):
    """The prompt was cancelled (POST /interrupt, or Cancel in the UI)."""


def describe_rejection(body: Any) -> str:
    """ComfyUI's validation answer as text: the top error, then one line per failing node input."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error") or {}
    lines = [f"{error.get('message', 'rejected')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for item in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {item.get('message')}"
                         f" - {item.get('details')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- history entries


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One file a node listed in its UI output (``{filename, subfolder, type}``)."""
    node_id: str
    kind: str        # the UI key: "images" (also used by PreviewVideo), "audio", ...
    filename: str
    subfolder: str
    type: str        # "output" | "temp" | "input"

    def relative_path(self) -> Path:
        """Where the file lies under the server's folder of its ``type``."""
        return Path(self.subfolder) / self.filename if self.subfolder else Path(self.filename)


def output_files(entry: Mapping, node_id: str | None = None, suffix: str | None = None) -> list[OutputFile]:
    """Every file in a history entry's outputs, optionally of one node and/or one file suffix."""
    files = []
    for nid, ui in (entry.get("outputs") or {}).items():
        if node_id is not None and str(nid) != str(node_id):
            continue
        for kind, items in ui.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and \
                        (suffix is None or item["filename"].lower().endswith(suffix)):
                    files.append(OutputFile(str(nid), kind, item["filename"], item.get("subfolder", ""),
                                            item.get("type", "output")))
    return files


def status_messages(entry: Mapping, event: str) -> list[dict]:
    return [m[1] for m in (entry.get("status") or {}).get("messages", []) if m[0] == event]


def check_entry(entry: Mapping) -> Mapping:
    """Return the entry of a successful prompt; raise ExecutionError / ExecutionInterrupted otherwise."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" and status.get("completed", False):
        return entry
    errors = status_messages(entry, "execution_error")
    if errors:
        raise ExecutionError(errors[0], entry)
    interrupted = status_messages(entry, "execution_interrupted")
    if interrupted:
        raise ExecutionInterrupted(f"the prompt was interrupted at node {interrupted[0].get('node_id')} "
                                   f"({interrupted[0].get('node_type')})")
    raise ComfyError(f"the prompt did not succeed: status {status}")


# --------------------------------------------------------------------------- websocket events


class EventStream:
    """The JSON messages ComfyUI pushes on ``/ws?clientId=...``, read by a background thread.

    ComfyUI sends a prompt's events (``executing``, ``progress``, ``executed``, ``execution_*``) only to
    the client id the prompt was queued with. Binary frames (sampler previews) are dropped.
    """

    def __init__(self, ws_url: str, client_id: str, connect_timeout: float = 10.0):
        self.client_id = client_id
        self._url = f"{ws_url}?clientId={client_id}"
        self._connect_timeout = connect_timeout
        self._messages: list[dict] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._socket: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def open(self) -> "EventStream":
        self._socket = websocket.create_connection(self._url, timeout=self._connect_timeout,
                                                   suppress_origin=True)
        self._socket.settimeout(0.5)  # lets the reader notice close() promptly
        self._thread = threading.Thread(target=self._read, name="comfy-events", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                opcode, data = self._socket.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as error:  # closed by us or by the server: remember why and stop
                if not self._stop.is_set():
                    self.error = error
                break
            if opcode == websocket.ABNF.OPCODE_TEXT:
                with self._changed:
                    self._messages.append(json.loads(data))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # wake waiters so they switch to polling

    def close(self) -> None:
        self._stop.set()
        if self._socket is not None:
            try:
                self._socket.close(timeout=1)
            except Exception:
                pass  # the connection is already gone; nothing else to release
        if self._thread is not None:
            self._thread.join(timeout=5)

    def read_from(self, cursor: int, timeout: float) -> tuple[list[dict], int]:
        """Messages after ``cursor`` (waiting up to ``timeout`` for one) and the new cursor."""
        with self._changed:
            if len(self._messages) <= cursor and self.alive:
                self._changed.wait(timeout)
            return self._messages[cursor:], len(self._messages)

    def cursor(self) -> int:
        with self._changed:
            return len(self._messages)


def _prompt_id_of(message: Mapping) -> str | None:
    data = message.get("data")
    return data.get("prompt_id") if isinstance(data, dict) else None


def _is_finished(message: Mapping) -> bool:
    """ComfyUI stores the history entry before sending either of these."""
    kind, data = message.get("type"), message.get("data") or {}
    return kind in TERMINAL_EVENTS or (kind == "executing" and data.get("node") is None)


# --------------------------------------------------------------------------- the client


class ComfyClient:
    """One ComfyUI server. ``client_id`` is sent with every queued prompt so its events reach us."""

    def __init__(self, url: str, client_id: str | None = None, http_timeout: float = HTTP_TIMEOUT):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"server URL {url!r} must start with http:// or https://, "
                             "e.g. http://127.0.0.1:8188")
        self.client_id = client_id or uuid.uuid4().hex
        self.http_timeout = http_timeout
        self._events: EventStream | None = None
        self._events_lock = threading.Lock()

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):] + "/ws"

    def __repr__(self) -> str:
        return f"ComfyClient({self.url!r})"

    # ---------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.http_timeout)
        try:
            return requests.request(method, self.url + path, **kwargs)
        except requests.RequestException as error:
            raise ServerUnreachable(f"{method} {self.url}{path} failed: {error}") from error

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyError(f"{method} {self.url}{path} answered HTTP {response.status_code}: "
                             f"{response.text[:1000]}")
        return response.json()

    def system_stats(self) -> dict:
        return self._json("GET", "/system_stats")

    def missing_nodes(self, *class_types: str) -> list[str]:
        """The given node classes this server does not know (empty when all are installed)."""
        return [name for name in class_types if not self._json("GET", f"/object_info/{name}")]

    def queue(self, prompt: Mapping, front: bool = False) -> str:
        """POST /prompt (API format); return the prompt id. Raise PromptRejected on HTTP 400."""
        payload: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if front:
            payload["front"] = True
        response = self._request("POST", "/prompt", json=payload)
        if response.status_code == 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise PromptRejected(body)
        if response.status_code != 200:
            raise ComfyError(f"POST {self.url}/prompt answered HTTP {response.status_code}: "
                             f"{response.text[:1000]}")
        return response.json()["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry, or None while it is queued or running."""
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id)

    def queue_state(self) -> dict:
        """GET /queue: ``{"queue_running": [...], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def view(self, item: OutputFile) -> bytes:
        """GET /view: the bytes of an output/temp/input file."""
        response = self._request("GET", "/view", params={"filename": item.filename,
                                                         "subfolder": item.subfolder, "type": item.type})
        if response.status_code != 200:
            raise ComfyError(f"GET /view of {item.type}/{item.relative_path()} answered HTTP "
                             f"{response.status_code}: {response.text[:300]}")
        return response.content

    def download(self, item: OutputFile, target: Path) -> Path:
        """Write the file to ``target`` (through a temp file, so a partial download is never left)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            partial.write_bytes(self.view(item))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is ``prompt_id``, when given)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def cancel(self, prompt_id: str) -> None:
        """Remove the prompt from the queue if it is pending, interrupt it if it is running."""
        self._request("POST", "/queue", json={"delete": [prompt_id]})
        self.interrupt(prompt_id)

    # ---------------------------------------------------------------- events and waiting

    def events(self) -> EventStream | None:
        """The shared websocket, (re)connected on demand; None if it cannot connect (then: polling)."""
        with self._events_lock:
            if self._events is None or not self._events.alive:
                try:
                    self._events = EventStream(self.ws_url, self.client_id).open()
                except (OSError, websocket.WebSocketException):
                    self._events = None
            return self._events

    def close(self) -> None:
        with self._events_lock:
            if self._events is not None:
                self._events.close()
                self._events = None

    def wait(self, prompt_id: str, timeout: float | None = None,
             on_event: Callable[[str, dict], None] | None = None,
             alive: Callable[[], bool] | None = None, cancel: threading.Event | None = None) -> dict:
        """Wait for the prompt to finish; return its history entry, or raise (see the module doc).

        ``on_event(type, data)`` gets each websocket event of this prompt (``executing``, ``progress``,
        ``executed``, ...) as it arrives. ``alive()`` may report that a local server process died;
        setting ``cancel`` ends the wait with ExecutionInterrupted (the prompt itself is left alone).
        Call ``events()`` before ``queue`` to be sure to see the prompt's first events.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = self.events()
        cursor = stream.cursor() if stream else 0
        next_poll, unreachable_since = 0.0, None
        while True:
            finished = False
            if stream is not None and stream.alive:
                messages, cursor = stream.read_from(cursor, timeout=0.5)
                for message in messages:
                    if _prompt_id_of(message) != prompt_id:
                        continue
                    if on_event is not None:
                        on_event(message.get("type"), message.get("data") or {})
                    finished = finished or _is_finished(message)
            else:
                time.sleep(POLL_WITHOUT_SOCKET)
            if cancel is not None and cancel.is_set():
                raise ExecutionInterrupted(f"stopped waiting for {prompt_id}: cancelled")
            if alive is not None and not alive():
                raise ServerUnreachable(f"the ComfyUI server at {self.url} died while running {prompt_id}")
            if finished or time.monotonic() >= next_poll:
                try:
                    entry = self.history(prompt_id)
                    unreachable_since = None
                except ServerUnreachable:
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > UNREACHABLE_GRACE:
                        raise
                    entry = None
                if entry is not None:
                    return dict(check_entry(entry))
                alive_socket = stream is not None and stream.alive
                next_poll = time.monotonic() + (POLL_WITH_SOCKET if alive_socket else POLL_WITHOUT_SOCKET)
                if finished:  # the entry is written before the event; look again very soon
                    next_poll = time.monotonic() + 0.2
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s on {self.url}")

    def run(self, prompt: Mapping, timeout: float | None = None,
            on_event: Callable[[str, dict], None] | None = None) -> tuple[str, dict]:
        """Queue and wait; return (prompt id, history entry)."""
        self.events()
        prompt_id = self.queue(prompt)
        return prompt_id, self.wait(prompt_id, timeout, on_event)
