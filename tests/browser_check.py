#!/usr/bin/env python3
"""Load workflows into the real ComfyUI frontend in headless Chromium and report what breaks.

Talks the Chrome DevTools Protocol over a websocket (``websocket-client``); needs Debian's
``chromium`` (``apt-get install -y chromium``), nothing from npm and no browser download.

For every workflow file:
- UI format (has a ``nodes`` list): every ``nodes[].type`` (subgraph nodes included) must be in
  ``LiteGraph.registered_node_types``; the file is loaded with ``app.loadGraphData`` and
  ``app.graphToPrompt()`` gives the API prompt the frontend would queue (``api_prompt``).
- API format (``{id: {class_type, inputs}}``): every ``class_type`` must be registered; the file is
  loaded with ``app.loadApiJson`` and converted back with ``graphToPrompt``.
JavaScript exceptions and ``console.error`` calls while a workflow loads are that workflow's errors.

    python tests/browser_check.py --url http://127.0.0.1:8188 workflows/*.json
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Sequence

import websocket  # websocket-client

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio",
    "--window-size=1600,1000",
)
# Frontend-only node types: they exist in LiteGraph but never in /object_info.
FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
READY_PROBE = "KSampler"
PR_SET_PDEATHSIG = 1

APP_READY_JS = f"""(() => {{
  const app = window.app ?? window.comfyAPI?.app?.app;
  const types = window.LiteGraph?.registered_node_types;
  return !!(app && app.graph && types && ({json.dumps(READY_PROBE)} in types));
}})()"""

# Runs in the page: check types, load the UI workflow, convert it back to an API prompt.
LOAD_UI_JS = """async (wf, name) => {
  const app = window.app ?? window.comfyAPI.app.app;
  const registered = LiteGraph.registered_node_types;
  const subgraphs = wf.definitions?.subgraphs ?? [];
  const subgraphIds = new Set(subgraphs.map((s) => s.id));
  const allNodes = [...(wf.nodes ?? []), ...subgraphs.flatMap((s) => s.nodes ?? [])];
  const missing = [...new Set(allNodes.map((n) => n.type))]
    .filter((t) => !(t in registered) && !subgraphIds.has(t));
  await app.loadGraphData(wf, true, true, name,
    { showMissingNodesDialog: false, showMissingModelsDialog: false });
  const loaded = app.graph.nodes.map((n) => ({ id: n.id, type: n.type, has_errors: !!n.has_errors }));
  let prompt = null, promptError = null;
  try { prompt = (await app.graphToPrompt()).output; }
  catch (e) { promptError = String(e?.stack ?? e); }
  return { missing, loaded, prompt, promptError };
}"""

LOAD_API_JS = """async (wf, name) => {
  const app = window.app ?? window.comfyAPI.app.app;
  const registered = LiteGraph.registered_node_types;
  const missing = [...new Set(Object.values(wf).map((n) => n.class_type))]
    .filter((t) => !(t in registered));
  if (missing.length) return { missing, loaded: [], prompt: null, promptError: null };
  app.loadApiJson(wf, name);
  const loaded = app.graph.nodes.map((n) => ({ id: n.id, type: n.type, has_errors: !!n.has_errors }));
  let prompt = null, promptError = null;
  try { prompt = (await app.graphToPrompt()).output; }
  catch (e) { promptError = String(e?.stack ?? e); }
  return { missing, loaded, prompt, promptError };
}"""


# Queue the loaded graph as a user's Queue button does, then wait until each given node shows a text
# preview (the "$$node-text-preview" widget the frontend adds for a node's progress text).
RUN_AND_READ_NODE_TEXTS_JS = """async (nodeIds, timeoutMs) => {
  const app = window.app ?? window.comfyAPI.app.app;
  await app.queuePrompt(0, 1);
  const deadline = Date.now() + timeoutMs;
  let texts = {};
  while (Date.now() < deadline) {
    texts = {};
    for (const id of nodeIds) {
      const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
      const preview = node?.widgets?.find((w) => w.name === '$$node-text-preview');
      if (preview?.value) texts[id] = String(preview.value);
    }
    if (Object.keys(texts).length === nodeIds.length) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return texts;
}"""


class BrowserCheckError(RuntimeError):
    """The browser or the page could not be brought up (not a finding about a workflow)."""


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class WorkflowResult:
    path: str
    format: str                                  # "ui" | "api" | "invalid"
    missing_types: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)     # JS exceptions, console.error
    warnings: list[str] = dataclasses.field(default_factory=list)   # console.warn
    offline: list[str] = dataclasses.field(default_factory=list)    # failed requests to other hosts
    node_count: int | None = None                # nodes in the frontend graph after loading
    nodes_with_errors: list[str] = dataclasses.field(default_factory=list)
    api_prompt: dict | None = None               # graphToPrompt().output

    @property
    def ok(self) -> bool:
        return not (self.missing_types or self.errors or self.nodes_with_errors) \
            and self.format != "invalid"

    def summary(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'} {self.path} [{self.format}]"
        details = []
        if self.missing_types:
            details.append(f"missing node types: {', '.join(self.missing_types)}")
        if self.nodes_with_errors:
            details.append(f"nodes flagged with errors: {', '.join(self.nodes_with_errors)}")
        details += [f"error: {e}" for e in self.errors]
        details += [f"warning: {w}" for w in self.warnings]
        details += [f"offline (ignored): {o}" for o in self.offline]
        if self.node_count is not None:
            details.append(f"{self.node_count} nodes loaded; API prompt has "
                           f"{len(self.api_prompt or {})} nodes")
        return "\n".join([head, *("    " + d for d in details)])


@dataclasses.dataclass
class BrowserReport:
    url: str
    frontend_version: str | None = None
    registered_types: int = 0
    boot_errors: list[str] = dataclasses.field(default_factory=list)  # before any workflow
    workflows: list[WorkflowResult] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.workflows)

    def result(self, path: str | os.PathLike) -> WorkflowResult:
        wanted = str(Path(path))
        return next(w for w in self.workflows if w.path == wanted)

    def summary(self) -> str:
        lines = [f"ComfyUI frontend {self.frontend_version} at {self.url}: "
                 f"{self.registered_types} registered node types"]
        lines += [f"  boot error: {e}" for e in self.boot_errors]
        lines += [w.summary() for w in self.workflows]
        return "\n".join(lines)


def workflow_format(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui"
    if isinstance(data, dict) and data and all(
            isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    return "invalid"


# --------------------------------------------------------------------------- chromium


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserCheckError("no Chromium found: install it with `apt-get install -y chromium`")


class Chromium:
    """Headless Chromium in its own process group with a throwaway profile."""

    def __init__(self, executable: str | None = None, start_timeout: float = 30.0):
        self.executable = executable or find_chromium()
        self.start_timeout = start_timeout
        self.profile = Path(tempfile.mkdtemp(prefix="mmg-chromium-"))
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = self.profile.parent / (self.profile.name + ".log")

    def __enter__(self) -> "Chromium":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        # Port 0: Chromium picks a free port and writes it to DevToolsActivePort (no race).
        command = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                   "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=_own_group_die_with_parent)
        self.port = self._read_port()

    def _read_port(self) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserCheckError(f"chromium exited with {self.process.returncode}:\n"
                                        f"{self.log_path.read_text(errors='replace')[-3000:]}")
            text = port_file.read_text() if port_file.exists() else ""
            if text.strip():
                return int(text.splitlines()[0])
            time.sleep(0.1)
        raise BrowserCheckError(f"chromium wrote no DevToolsActivePort within {self.start_timeout} s")

    def page_ws_url(self) -> str:
        """The DevTools websocket of the first page target."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            targets = json.loads(_http_get(f"http://127.0.0.1:{self.port}/json/list"))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise BrowserCheckError("chromium has no page target")

    def stop(self) -> None:
        if self.process is not None:
            self._close_gracefully()
            _kill_group(self.process.pid)
            self.process = None
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def _close_gracefully(self, timeout: float = 5.0) -> None:
        """Browser.close lets Chromium end and reap its own helper processes."""
        try:
            version = json.loads(_http_get(f"http://127.0.0.1:{self.port}/json/version", timeout=2.0))
            session = CdpSession(version["webSocketDebuggerUrl"], timeout=2.0)
            try:
                session.socket.send(json.dumps({"id": 1, "method": "Browser.close"}))
            finally:
                session.close()
            self.process.wait(timeout=timeout)
        except Exception:
            pass  # unreachable or hung: _kill_group below ends it regardless


def _own_group_die_with_parent() -> None:
    """Child-side: own process group, and SIGKILL if the launching process dies (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not glibc: stop() still cleans up


def _kill_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process group (helpers such as the renderer and zygote share it) and wait
    until none of it is left, so no Chromium outlives the check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _group_has_live_members(pgid):
            return  # only zombies remain; they hold no resources
        time.sleep(0.1)


def _group_has_live_members(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _http_get(url: str, timeout: float = 5.0) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


# --------------------------------------------------------------------------- CDP


class CdpSession:
    """Minimal synchronous DevTools client: one websocket, events buffered while waiting."""

    def __init__(self, ws_url: str, timeout: float = 10.0):
        self.socket = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.socket.close()
        except Exception:
            pass  # the browser may already be gone

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        self.next_id += 1
        call_id = self.next_id
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline - time.monotonic())
            if message is None:
                raise BrowserCheckError(f"DevTools call {method} got no answer within {timeout} s")
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserCheckError(f"DevTools call {method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Receive events for a while (lets late console messages arrive)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._receive(remaining)
            if message is not None and "method" in message:
                self.events.append(message)

    def _receive(self, timeout: float) -> dict | None:
        if timeout <= 0:
            return None
        self.socket.settimeout(timeout)
        try:
            return json.loads(self.socket.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate JS (awaiting promises); return its JSON value or raise with the JS error."""
        result = self.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
            "timeout": int(timeout * 1000)}, timeout=timeout + 5)
        if "exceptionDetails" in result:
            raise BrowserCheckError(f"JavaScript failed: {describe_exception(result['exceptionDetails'])}")
        return result.get("result", {}).get("value")

    def take_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def describe_exception(details: dict) -> str:
    exception = details.get("exception") or {}
    text = exception.get("description") or details.get("text") or "unknown exception"
    where = details.get("url", "")
    if where:
        text += f" (at {where}:{details.get('lineNumber')})"
    return text


def _console_text(params: dict) -> str:
    parts = []
    for arg in params.get("args", []):
        if "value" in arg:
            parts.append(arg["value"] if isinstance(arg["value"], str) else json.dumps(arg["value"]))
        else:
            parts.append(arg.get("description") or arg.get("type", "?"))
    return " ".join(str(p) for p in parts)


@dataclasses.dataclass
class PageMessages:
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    offline: list[str] = dataclasses.field(default_factory=list)


def _is_other_host(url: str, server_url: str) -> bool:
    """A request the frontend makes to the internet (registry, release notes): it always fails
    here, so it says nothing about our workflows."""
    host = urllib.parse.urlparse(url).hostname
    return bool(host) and host != urllib.parse.urlparse(server_url).hostname


def classify_events(events: Iterable[dict], server_url: str) -> PageMessages:
    """Readable errors, warnings and offline-only failures from Runtime/Log events."""
    found = PageMessages()
    errors, warnings = found.errors, found.warnings
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append("exception: " + describe_exception(params.get("exceptionDetails", {})))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + _console_text(params))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "warning":
            warnings.append("console.warn: " + _console_text(params))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            line = f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
            if entry.get("source") == "network" and _is_other_host(entry.get("url", ""), server_url):
                found.offline.append(line)
            elif entry.get("level") == "error":
                errors.append(line)
            elif entry.get("level") == "warning":
                warnings.append(line)
    return found


# --------------------------------------------------------------------------- the check


def open_app(cdp: CdpSession, url: str, timeout: float) -> None:
    for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
        cdp.call(domain)
    cdp.call("Page.navigate", {"url": url})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cdp.evaluate(APP_READY_JS, timeout=10):
                cdp.pump(1.0)  # the app restores its default graph right after setup
                return
        except BrowserCheckError:
            pass  # navigation in progress: the context was replaced under us
        cdp.pump(0.5)
    errors = classify_events(cdp.events, url).errors
    raise BrowserCheckError(f"the ComfyUI app did not boot at {url} within {timeout} s "
                            f"(window.app with {READY_PROBE} registered); page errors: {errors}")


def check_one(cdp: CdpSession, path: Path, timeout: float, server_url: str) -> WorkflowResult:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return WorkflowResult(str(path), "invalid", errors=[f"cannot read JSON: {error}"])
    kind = workflow_format(data)
    result = WorkflowResult(str(path), kind)
    if kind == "invalid":
        result.errors.append("neither a UI workflow (no 'nodes' list) nor an API prompt "
                             "(values with 'class_type')")
        return result
    script = LOAD_UI_JS if kind == "ui" else LOAD_API_JS
    cdp.take_events()
    try:
        value = cdp.evaluate(f"({script})({json.dumps(data)}, {json.dumps(path.name)})", timeout)
    except BrowserCheckError as error:
        value = None
        result.errors.append(str(error))
    cdp.pump(0.5)
    messages = classify_events(cdp.take_events(), server_url)
    result.errors += messages.errors
    result.warnings += messages.warnings
    result.offline += messages.offline
    if value:
        result.missing_types = sorted(value["missing"])
        result.node_count = len(value["loaded"])
        result.nodes_with_errors = [f"#{n['id']} {n['type']}" for n in value["loaded"] if n["has_errors"]]
        result.api_prompt = value["prompt"]
        if value["promptError"]:
            result.errors.append("graphToPrompt failed: " + value["promptError"])
    return result


def check_workflows(server_url: str, workflow_paths: Sequence[str | os.PathLike],
                    boot_timeout: float = 120.0, workflow_timeout: float = 60.0,
                    chromium: str | None = None) -> BrowserReport:
    """Open ``server_url`` in headless Chromium, wait for the app, check each workflow file."""
    report = BrowserReport(url=server_url)
    with Chromium(chromium) as browser:
        cdp = CdpSession(browser.page_ws_url())
        try:
            open_app(cdp, server_url, boot_timeout)
            report.boot_errors = classify_events(cdp.take_events(), server_url).errors
            report.frontend_version = cdp.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? null")
            report.registered_types = cdp.evaluate("Object.keys(LiteGraph.registered_node_types).length")
            for path in workflow_paths:
                report.workflows.append(check_one(cdp, Path(path), workflow_timeout, server_url))
        finally:
            cdp.close()
    return report


def node_texts_after_run(server_url: str, workflow_path: str | os.PathLike, node_ids: Sequence[str],
                         timeout: float = 300.0, boot_timeout: float = 120.0) -> dict[str, str]:
    """Load one workflow, queue it from the page, and return the text each of ``node_ids`` shows on
    the canvas (only the nodes that showed one within ``timeout``)."""
    with Chromium() as browser:
        cdp = CdpSession(browser.page_ws_url())
        try:
            open_app(cdp, server_url, boot_timeout)
            result = check_one(cdp, Path(workflow_path), 60.0, server_url)
            if not result.ok:
                raise BrowserCheckError(f"{workflow_path} did not load: {result.summary()}")
            expression = f"({RUN_AND_READ_NODE_TEXTS_JS})({json.dumps(list(node_ids))}, {int(timeout * 1000)})"
            return cdp.evaluate(expression, timeout=timeout + 10) or {}
        finally:
            cdp.close()


def screenshot(server_url: str, workflow_path: str | os.PathLike, png_path: str | os.PathLike,
               boot_timeout: float = 120.0) -> WorkflowResult:
    """Load one workflow and save a PNG of the canvas (for a person to look at)."""
    import base64
    with Chromium() as browser:
        cdp = CdpSession(browser.page_ws_url())
        try:
            open_app(cdp, server_url, boot_timeout)
            result = check_one(cdp, Path(workflow_path), 60.0, server_url)
            cdp.evaluate("(window.app ?? window.comfyAPI.app.app).canvas.setDirty(true, true)")
            cdp.pump(1.0)
            shot = cdp.call("Page.captureScreenshot", {"format": "png"})
            Path(png_path).write_bytes(base64.b64decode(shot["data"]))
        finally:
            cdp.close()
    return result


def _normalised_inputs(node: dict) -> dict:
    """Inputs with links as [str(node_id), slot] so hand-written twins compare equal."""
    inputs = {}
    for name, value in node.get("inputs", {}).items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            value = [str(value[0]), value[1]]
        inputs[name] = value
    return inputs


def prompt_differences(frontend: dict, twin: dict) -> list[str]:
    """Differences between the API prompt ``graphToPrompt`` made and an API-format twin file:
    node ids, class types and input values (``_meta`` titles are ignored)."""
    frontend = {str(k): v for k, v in frontend.items()}
    twin = {str(k): v for k, v in twin.items()}
    problems = [f"node {k} only in the UI workflow's prompt" for k in sorted(frontend.keys() - twin.keys())]
    problems += [f"node {k} only in the API twin" for k in sorted(twin.keys() - frontend.keys())]
    for node_id in sorted(frontend.keys() & twin.keys()):
        ui_node, api_node = frontend[node_id], twin[node_id]
        if ui_node.get("class_type") != api_node.get("class_type"):
            problems.append(f"node {node_id}: class_type {ui_node.get('class_type')!r} in the UI "
                            f"workflow, {api_node.get('class_type')!r} in the twin")
            continue
        ui_inputs, api_inputs = _normalised_inputs(ui_node), _normalised_inputs(api_node)
        for name in sorted(ui_inputs.keys() | api_inputs.keys()):
            if ui_inputs.get(name, "<absent>") != api_inputs.get(name, "<absent>"):
                problems.append(f"node {node_id} ({ui_node.get('class_type')}) input {name!r}: UI "
                                f"{ui_inputs.get(name, '<absent>')!r} vs twin {api_inputs.get(name, '<absent>')!r}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check workflows in the real ComfyUI frontend.")
    parser.add_argument("--url", required=True, help="ComfyUI server URL, e.g. http://127.0.0.1:8188")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the app to boot")
    parser.add_argument("--json", dest="json_out", help="also write the report (with API prompts) here")
    parser.add_argument("--screenshot", help="PNG of the canvas after loading the first workflow")
    parser.add_argument("workflows", nargs="+", help="workflow JSON files (UI or API format)")
    args = parser.parse_args(argv)
    parsed = urllib.parse.urlparse(args.url)
    if parsed.scheme not in ("http", "https"):
        parser.error(f"--url must be http(s)://host:port, got {args.url!r}")
    report = check_workflows(args.url, args.workflows, boot_timeout=args.timeout)
    print(report.summary())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dataclasses.asdict(report), indent=2))
    if args.screenshot:
        screenshot(args.url, args.workflows[0], args.screenshot, args.timeout)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
