"""The real-ComfyUI harness itself, exercised with core ComfyUI nodes only.

Boots ComfyUI 0.3.75 (session fixture), queues tiny core prompts over HTTP, listens on the
websocket, interrupts a running prompt, and loads UI/API workflows in headless Chromium.
Two tests boot extra servers with throwaway packs to prove that import failures are caught
and that a stopped server leaves nothing behind.
"""
import io
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

import browser_check
import comfy_harness
from comfy_harness import (ComfyServer, ExecutionFailed, PromptRejected, assert_no_import_failures,
                           assert_success, execution_error, output_files, status_messages,
                           was_interrupted)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_SCRIPT = REPO_ROOT / "scripts" / "comfyui_env.py"

GOOD_PACK_INIT = textwrap.dedent('''
    import comfy.utils
    from PIL import Image
    from comfy_api.latest import ComfyExtension, io

    class HarnessProbeAdd(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="HarnessProbeAdd", category="testing",
                             inputs=[io.Int.Input("a"), io.Int.Input("b")], outputs=[io.Int.Output()])

        @classmethod
        def execute(cls, a, b):
            return io.NodeOutput(a + b)

    class HarnessProbePreview(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="HarnessProbePreview", category="testing", is_output_node=True,
                             inputs=[io.Int.Input("steps", min=1, max=10)], outputs=[])

        @classmethod
        def execute(cls, steps):
            bar = comfy.utils.ProgressBar(steps)
            for step in range(1, steps + 1):
                bar.update_absolute(step, steps, ("JPEG", Image.new("RGB", (16, 8), (0, 255, 0)), 64))
            return io.NodeOutput()

    class ProbeExtension(ComfyExtension):
        async def get_node_list(self):
            return [HarnessProbeAdd, HarnessProbePreview]

    async def comfy_entrypoint():
        return ProbeExtension()
''')
BROKEN_PACK_INIT = "import harness_module_that_does_not_exist_42\n"


def save_prompt(color: int, width: int = 64, height: int = 48, prefix: str = "harness") -> dict:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def blur_chain_prompt(color: int, blurs: int) -> dict:
    """EmptyImage -> ``blurs`` slow ImageBlur nodes (ids 2..blurs+1) -> SaveImage (last id)."""
    prompt = {"1": {"class_type": "EmptyImage",
                    "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": color}}}
    for index in range(2, blurs + 2):
        prompt[str(index)] = {"class_type": "ImageBlur",
                              "inputs": {"image": [str(index - 1), 0], "blur_radius": 20, "sigma": 9.0}}
    prompt[str(blurs + 2)] = {"class_type": "SaveImage",
                              "inputs": {"images": [str(blurs + 1), 0], "filename_prefix": "blurred"}}
    return prompt


def write_pack(folder: Path, init_source: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(init_source)
    return folder


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) != 0


# --------------------------------------------------------------------------- boot and imports


def test_server_is_comfyui_0_3_75_with_the_repo_pack_installed(comfy_server):
    stats = comfy_server.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert "--cpu" in stats["system"]["argv"]
    link = comfy_server.base / "custom_nodes" / "ComfyUI-MMG"
    assert link.is_symlink() and link.resolve() == REPO_ROOT
    report = comfy_harness.comfyui_env.parse_import_report(comfy_server.log_text())
    assert "ComfyUI-MMG" in report.loaded + report.failed, comfy_server.log_tail()
    assert report.unexpected_core_failures() == (), report.excerpts


def test_repo_pack_imports_without_failure(comfy_server):
    comfy_server.assert_imported("ComfyUI-MMG")


def test_pack_code_imports_its_own_modules_relatively():
    """Inside ComfyUI the pack is custom_nodes/ComfyUI-MMG with mmg_core as its subpackage, so an absolute
    ``import mmg_core...`` works only from a checkout on sys.path: one in world/config.py broke the node
    import as soon as a node module first reached mmg_core.world."""
    import ast

    absolute = []
    for path in [REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").rglob("*.py")),
                 *sorted((REPO_ROOT / "mmg_core").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            absolute += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}" for name in names
                         if name.split(".")[0] in ("mmg_core", "nodes")]
    assert not absolute, absolute


def test_models_dir_is_the_folder_the_pack_registered(comfy_server):
    path = comfy_server.models_dir("mmg")
    assert path == comfy_server.base / "models" / "mmg" and path.is_dir()
    (path / "harness_probe.safetensors").write_bytes(b"not read, only listed")
    try:
        assert "harness_probe.safetensors" in comfy_server.model_files("mmg")
    finally:
        (path / "harness_probe.safetensors").unlink()


@pytest.mark.server
def test_import_check_cli_fails_on_a_broken_pack_and_names_it(tmp_path):
    good = write_pack(tmp_path / "probe_good", GOOD_PACK_INIT)
    broken = write_pack(tmp_path / "probe_broken", BROKEN_PACK_INIT)
    result = subprocess.run(
        [sys.executable, str(ENV_SCRIPT), "check-import", "--no-default-pack",
         "--pack", f"Good={good}", "--pack", f"Broken={broken}", "--base-dir", str(tmp_path / "base")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "custom node 'Broken' failed to import" in result.stdout
    assert "harness_module_that_does_not_exist_42" in result.stdout  # the traceback is quoted
    assert "'Good'" not in result.stdout


@pytest.mark.server
def test_extra_server_runs_a_v3_pack_with_previews_and_leaves_nothing_behind(tmp_path):
    good = write_pack(tmp_path / "probe_good", GOOD_PACK_INIT)
    server = ComfyServer(packs={"probe_good": good})
    with server:
        server.assert_imported("probe_good")
        with pytest.raises(AssertionError, match="'ComfyUI-MMG' was not imported"):
            assert_no_import_failures(server.log_text(), ["ComfyUI-MMG"])
        assert "HarnessProbeAdd" in server.object_info("HarnessProbeAdd")
        with server.listen() as ws:
            prompt_id = server.queue({"1": {"class_type": "HarnessProbePreview", "inputs": {"steps": 3}}},
                                     client_id=ws.client_id)
            assert_success(server.wait(prompt_id, timeout=60))
            ws.wait_event("execution_success", prompt_id=prompt_id, timeout=10)
            progress = [(m["value"], m["max"]) for m in ws.of_type("progress", prompt_id)]
            previews = [Image.open(io.BytesIO(jpeg)) for jpeg in ws.previews()]
        assert progress == [(1, 3), (2, 3), (3, 3)]
        # ComfyUI fits each preview into its max size (64), keeping the 2:1 aspect.
        assert [(p.format, p.size) for p in previews] == [("JPEG", (64, 32))] * 3
        pid, url, base = server.pid, server.url, server.base
    assert not Path(f"/proc/{pid}").exists()
    assert port_is_closed(url)
    assert not base.exists()
    assert "Import times for custom nodes" in server.log_text()  # the log outlives the folder


# --------------------------------------------------------------------------- prompts over HTTP


def test_core_prompt_runs_reports_progress_and_its_png_is_viewable(comfy_server):
    with comfy_server.listen() as ws:
        prompt_id = comfy_server.queue(save_prompt(0x3366CC), client_id=ws.client_id)
        entry = comfy_server.wait(prompt_id, timeout=60)
        ws.wait_event("execution_success", prompt_id=prompt_id, timeout=10)
        executed_nodes = {m["node"] for m in ws.of_type("executing", prompt_id) if m["node"]}
    assert_success(entry)
    assert executed_nodes == {"1", "2"}
    [saved] = output_files(entry)
    assert (saved.node_id, saved.kind, saved.type) == ("2", "images", "output")
    image = Image.open(io.BytesIO(comfy_server.view_bytes(**saved.view_args())))
    assert image.size == (64, 48)
    assert image.convert("RGB").getpixel((10, 10)) == (0x33, 0x66, 0xCC)
    assert (comfy_server.output_dir / saved.subfolder / saved.filename).is_file()


def test_invalid_prompt_raises_with_the_servers_node_errors(comfy_server):
    bad = save_prompt(0)
    bad["1"]["inputs"]["width"] = 0  # below EmptyImage's min of 1
    with pytest.raises(PromptRejected) as caught:
        comfy_server.queue(bad)
    assert caught.value.status == 400
    assert "1" in caught.value.node_errors
    assert "width" in str(caught.value)

    with pytest.raises(PromptRejected, match="HarnessNoSuchNode"):
        comfy_server.queue({"1": {"class_type": "HarnessNoSuchNode", "inputs": {}}})


def test_execution_error_is_returned_with_its_exception_message(comfy_server):
    escaping = save_prompt(0x101010, prefix="../../outside")  # SaveImage refuses at run time
    with comfy_server.listen() as ws:
        prompt_id = comfy_server.queue(escaping, client_id=ws.client_id)
        entry = comfy_server.wait(prompt_id, timeout=60)
        pushed = ws.wait_event("execution_error", prompt_id=prompt_id, timeout=10)
    error = execution_error(entry)
    assert entry["status"]["status_str"] == "error"
    assert error["node_id"] == "2" and error["node_type"] == "SaveImage"
    assert "outside the output folder" in error["exception_message"]
    assert pushed["exception_message"] == error["exception_message"]
    with pytest.raises(ExecutionFailed, match="outside the output folder"):
        assert_success(entry)


def test_interrupt_stops_a_running_prompt_and_the_next_prompt_runs(comfy_server):
    blurs = 10
    prompt = blur_chain_prompt(0x20A040, blurs)
    last_node = str(blurs + 2)
    with comfy_server.listen() as ws:
        prompt_id = comfy_server.queue(prompt, client_id=ws.client_id)
        ws.wait_event("executing", node="3", prompt_id=prompt_id, timeout=120)
        running = [item[1] for item in comfy_server.queue_state()["queue_running"]]
        comfy_server.interrupt(prompt_id)
        entry = comfy_server.wait(prompt_id, timeout=120)
    assert running == [prompt_id]
    assert was_interrupted(entry)
    [(_, interrupted)] = status_messages(entry, "execution_interrupted")
    assert last_node not in interrupted["executed"]
    assert entry["outputs"] == {}

    after = comfy_server.run(save_prompt(0x20A041, prefix="after_interrupt"), timeout=60)
    assert len(output_files(after)) == 1
    assert comfy_server.queue_state() == {"queue_running": [], "queue_pending": []}


# --------------------------------------------------------------------------- the browser


def ui_workflow(node_type: str = "SaveImage") -> dict:
    """A UI-format EmptyImage -> SaveImage graph; ``node_type`` replaces the second node's type."""
    return {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [315, 130], "flags": {}, "order": 0,
             "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
             "properties": {"Node name for S&R": "EmptyImage"}, "widgets_values": [32, 16, 1, 0xAA5500]},
            {"id": 2, "type": node_type, "pos": [400, 0], "size": [210, 246], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
             "properties": {}, "widgets_values": ["from_browser"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "groups": [], "config": {}, "extra": {},
    }


@pytest.fixture(scope="module")
def browser_run(comfy_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("workflows")
    files = {
        "core_ui": ui_workflow(),
        "core_api": save_prompt(0xAA5500, width=32, height=16, prefix="from_browser"),
        "bogus_ui": ui_workflow("HarnessBogusNode"),
        "bogus_api": {"1": {"class_type": "HarnessBogusApiNode", "inputs": {}}},
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    report = browser_check.check_workflows(comfy_server.url, list(paths.values()))
    return report, paths, files


@pytest.mark.browser
def test_browser_loads_a_core_ui_workflow_into_the_api_prompt_of_its_twin(browser_run, comfy_server):
    report, paths, files = browser_run
    assert report.frontend_version == "1.32.9"
    core_ui = report.result(paths["core_ui"])
    assert core_ui.ok, core_ui.summary()
    assert core_ui.node_count == 2
    assert browser_check.prompt_differences(core_ui.api_prompt, files["core_api"]) == []
    # and what the frontend would queue really runs
    entry = comfy_server.run(core_ui.api_prompt, timeout=60)
    assert output_files(entry)[0].filename.startswith("from_browser")


@pytest.mark.browser
def test_browser_accepts_a_core_api_workflow(browser_run):
    report, paths, _ = browser_run
    core_api = report.result(paths["core_api"])
    assert core_api.ok and core_api.format == "api", core_api.summary()
    assert core_api.node_count == 2


@pytest.mark.browser
def test_browser_reports_missing_node_types(browser_run):
    report, paths, _ = browser_run
    bogus_ui, bogus_api = report.result(paths["bogus_ui"]), report.result(paths["bogus_api"])
    assert not report.ok
    assert bogus_ui.missing_types == ["HarnessBogusNode"] and not bogus_ui.ok
    assert bogus_api.missing_types == ["HarnessBogusApiNode"] and not bogus_api.ok
    assert "HarnessBogusNode" in report.summary()


def test_prompt_differences_names_the_changed_input():
    twin = save_prompt(1)
    changed = json.loads(json.dumps(twin))
    changed["1"]["inputs"]["width"] = 65
    assert browser_check.prompt_differences(twin, twin) == []
    [difference] = browser_check.prompt_differences(changed, twin)
    assert "node 1 (EmptyImage) input 'width'" in difference
