"""The README's main job (scripts/main_job.py) and HTTP batch queueing (scripts/batch_queue.py),
run as a user runs them: as subprocesses against real ComfyUI 0.3.75 servers with the shipped
text-to-audio-video workflow and the pack's own model (models/mmg-world-v1.safetensors), 1-2 steps.
The first two tests (prompt files) need no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from mmg_core.world.captions import caption_attributes

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "scripts") not in sys.path:
    sys.path.append(str(REPO / "scripts"))
from batch_queue import output_name, parse_prompts  # noqa: E402  (scripts/ is not a package)

MAIN_JOB = REPO / "scripts" / "main_job.py"
BATCH = REPO / "scripts" / "batch_queue.py"
WORKFLOW = REPO / "workflows" / "api" / "mmg_text_to_audio_video.json"
TIMEOUT = 600


def run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # TMPDIR: the servers' base folders (kept after a failure, with the log) stay under pytest's tmp.
    env = {**os.environ, "TMPDIR": str(cwd)}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr[-4000:]}"


def stream_types(path: Path) -> list[str]:
    container = av.open(str(path))
    try:
        return sorted(stream.type for stream in container.streams)
    finally:
        container.close()


def write_prompts(folder: Path, lines: list[str]) -> Path:
    path = folder / "prompts.txt"
    path.write_text("# test prompts\n\n" + "\n".join(lines) + "\n")
    return path


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


class RefusingComfy(BaseHTTPRequestHandler):
    """Looks like a ComfyUI with every node installed, but answers HTTP 500 to every queued prompt."""

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/object_info/"):
            self._answer(200, {self.path.rsplit("/", 1)[1]: {}})
        else:
            self._answer(200, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500, {"error": "out of memory (test server)"})

    def log_message(self, *args) -> None:
        pass  # keep pytest's output clean


@pytest.fixture
def refusing_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingComfy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prompt_file_lines_comments_and_audio_split():
    prompts = parse_prompts("# heading\n\n  a red ball bouncing | a click  \nA Blue Lamp, blinking!\n   # note\n| only sound\n")
    assert [(p.index, p.line, p.video, p.audio) for p in prompts] == [
        (1, 3, "a red ball bouncing", "a click"),
        (2, 4, "A Blue Lamp, blinking!", ""),
        (3, 6, "", "only sound"),
    ]
    assert [output_name(p, 3) for p in prompts] == [
        "001-a-red-ball-bouncing.mp4", "002-a-blue-lamp-blinking.mp4", "003-only-sound.mp4"]
    assert output_name(prompts[0], 1200) == "0001-a-red-ball-bouncing.mp4"  # names sort in prompt order


def test_example_prompts_speak_the_world_models_language():
    prompts = parse_prompts((REPO / "examples" / "prompts.txt").read_text())
    assert len(prompts) >= 6
    seen: dict[str, set[str]] = {}
    for prompt in prompts:
        attributes = caption_attributes(f"{prompt.video} {prompt.audio}")
        for name, values in attributes.items():
            assert len(values) == 1, f"{prompt.video!r} names {name} {sorted(values) or 'not at all'}"
            seen.setdefault(name, set()).update(values)
    assert seen["scene"] == {"ball", "drum", "lamp", "slider"}
    assert len(seen["colour"]) == 7 and seen["tempo"] == {"fast", "slow"} and seen["pitch"] == {"low", "high"}


def test_batch_spreads_prompts_over_given_and_started_servers(comfy_server, tmp_path):
    prompts = write_prompts(tmp_path, [
        "a red ball bouncing fast, a high click at every bounce, on a dark background",
        # tempo in words the shipped world model was not trained on: the manifest passes on its warning
        "a blue lamp blinking unhurriedly, on a light background | a low beep while it is lit",
        # too long for the text encoder: its last words are dropped, and the manifest says which
        "a stick striking a green drum quickly, a deep thump at every strike, on a dark background, "
        "heard from the very back of a large and echoing concert hall",
    ])
    out = tmp_path / "clips"
    result = run_script(BATCH, "--prompts", str(prompts), "--server", comfy_server.url, "--start-servers", "1",
                        "--out", str(out), "--steps", "2", "--seed-base", "11", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert "3 prompts, 3 ok, 0 failed" in result.stdout

    manifest = read_manifest(out)
    assert manifest["summary"] == {"prompts": 3, "ok": 3, "failed": 0, "pending": 0}
    entries = manifest["prompts"]
    assert [e["index"] for e in entries] == [1, 2, 3]
    assert [e["seed"] for e in entries] == [11, 12, 13]
    assert entries[1]["video_prompt"].startswith("a blue lamp") and entries[1]["audio_prompt"].startswith("a low beep")
    assert entries[0]["output"] == "001-a-red-ball-bouncing-fast-a-high-click-at-every.mp4"
    for entry in entries:
        assert entry["status"] == "ok" and entry["prompt_id"], entry
        assert stream_types(out / entry["output"]) == ["audio", "video"], entry
    assert entries[0]["warnings"] == []
    [note] = entries[1]["warnings"]
    assert note.startswith("video_prompt: the prompt's tempo words were not in the model's training captions"), note
    [note] = entries[2]["warnings"]
    assert note.startswith("video_prompt is longer than the text encoder reads") and "'concert hall'" in note
    assert f"[3/3] warning: {note}" in result.stderr  # and the console says so as the clip arrives
    # Three prompts, at most two in flight per server: both servers got work.
    servers = {entry["server"] for entry in entries}
    started = [s["url"] for s in manifest["servers"] if s["started_here"]]
    assert len(started) == 1 and servers == {comfy_server.url, started[0]}, manifest["servers"]


def test_batch_retries_elsewhere_and_reports_every_failure(comfy_server, refusing_server, tmp_path):
    prompts = write_prompts(tmp_path, [
        "a yellow bar sliding up and down slowly, a low hum that rises and falls with the bar",
        "   | a sound without a picture",  # MMGTextEncode rejects an empty video prompt
    ])
    out = tmp_path / "clips"
    result = run_script(BATCH, "--prompts", str(prompts), "--server", refusing_server, "--server", comfy_server.url,
                        "--out", str(out), "--steps", "1", "--seed-base", "3", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    assert "2 prompts, 1 ok, 1 failed" in result.stdout

    good, bad = read_manifest(out)["prompts"]
    # The first prompt went to the refusing server (least busy, listed first) and was retried on the real one.
    assert good["status"] == "ok" and good["server"] == comfy_server.url, good
    assert [a["server"] for a in good["attempts"]] == [refusing_server, comfy_server.url]
    assert "HTTP 500" in good["attempts"][0]["message"]
    assert stream_types(out / good["output"]) == ["audio", "video"]

    assert bad["status"] == "error" and bad["output"] is None, bad
    assert {a["server"] for a in bad["attempts"]} == {refusing_server, comfy_server.url}
    assert "node 2 (MMGTextEncode) failed" in bad["message"] and "video_prompt is empty" in bad["message"]
    assert not list(out.glob("002-*.mp4"))


@pytest.mark.server  # boots its own ComfyUI
def test_main_job_prints_the_mp4_path_last(tmp_path):
    result = run_script(MAIN_JOB, "--steps", "2", "--seed", "1", "--prompt",
                        "a purple drum being hit with a stick rapidly, a high drum hit with every hit, on a dark "
                        "background, recorded close up in a small quiet wooden room", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    lines = result.stdout.strip().splitlines()
    mp4 = Path(lines[-1])
    assert mp4.is_absolute() and mp4.suffix == ".mp4" and mp4.is_file(), explain(result)
    assert mp4.is_relative_to(tmp_path / "outputs")  # the documented default output folder
    assert stream_types(mp4) == ["audio", "video"]
    for phase in ("seed 1, 2 steps", "starting ComfyUI", "queued", "sampling", "writing MP4", "done in"):
        assert any(line.startswith(phase) for line in lines), f"no {phase!r} line:\n{result.stdout}"
    assert "2/2" in result.stderr  # the sampler's progress bar, fed by websocket progress events
    # The prompt is too long for the text encoder: the job says which words the model never saw.
    assert "warning: video_prompt is longer than the text encoder reads" in result.stderr, explain(result)
    assert "'wooden room'" in result.stderr


@pytest.mark.server
def test_main_job_names_the_failing_node(tmp_path):
    workflow = json.loads(WORKFLOW.read_text())
    workflow["4"]["inputs"]["sampler_name"] = "no_such_sampler"  # combos are checked at run time (V3)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(workflow))
    result = run_script(MAIN_JOB, "--steps", "1", "--seed", "1", "--workflow", str(broken), cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    assert "node 4 (MMGSampler) failed" in result.stderr and "no_such_sampler" in result.stderr, explain(result)
    assert not list((tmp_path / "outputs").rglob("*.mp4"))


def test_text_encode_shows_the_words_it_drops_on_the_node(comfy_server):
    """A prompt too long for the text encoder: MMG Text Encode quotes the dropped words on the node in the
    UI (progress text to the queueing client) and in its /history text, which the main job prints."""
    prompt = json.loads(WORKFLOW.read_text())
    nodes = {node["class_type"]: node_id for node_id, node in prompt.items()}
    prompt[nodes["MMGSampler"]]["inputs"]["steps"] = 1
    prompt[nodes["MMGTextEncode"]]["inputs"]["video_prompt"] = (
        "a yellow ball bouncing slowly, a low knock at every bounce, on a light background, filmed by a camera "
        "standing still on a tripod beside the garden fence")
    with comfy_server.listen() as ws:
        prompt_id = comfy_server.queue(prompt, client_id=ws.client_id)
        ws.wait_event("execution_success", timeout=300, prompt_id=prompt_id)
        shown = ws.progress_texts()
    entry = comfy_server.wait(prompt_id, timeout=60)  # /history is written just after execution_success
    [note] = entry["outputs"][nodes["MMGTextEncode"]]["text"]
    assert note.startswith("video_prompt is longer than the text encoder reads") and "garden fence" in note, note
    assert (nodes["MMGTextEncode"], note) in shown, shown
    # Fixed, the prompt's run replaces the warning on the node (the frontend keeps a node's last text).
    prompt[nodes["MMGTextEncode"]]["inputs"]["video_prompt"] = "a yellow ball bouncing slowly, a low knock at every bounce"
    with comfy_server.listen() as ws:
        prompt_id = comfy_server.queue(prompt, client_id=ws.client_id)
        ws.wait_event("execution_success", timeout=300, prompt_id=prompt_id)
        shown = ws.progress_texts()
    assert (nodes["MMGTextEncode"], "no warnings: the prompts fit the text encoder and name a scene, a colour and a "
                                    "tempo the model was trained on") in shown, shown
    assert "text" not in comfy_server.wait(prompt_id, timeout=60)["outputs"].get(nodes["MMGTextEncode"], {})
