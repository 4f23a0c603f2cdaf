"""Every shipped workflow loads in the real ComfyUI frontend (headless Chromium) with all node types
known, and each UI workflow converts (``app.graphToPrompt``) to exactly its API-format twin; queued from
the page, the pack's nodes show their text on the canvas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_check import check_workflows, node_texts_after_run, prompt_differences

REPO = Path(__file__).resolve().parent.parent
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(comfy_server):
    return check_workflows(comfy_server.url, UI_WORKFLOWS + API_WORKFLOWS)


def test_workflows_ship_in_both_formats():
    assert UI_WORKFLOWS, "no UI-format workflow in workflows/"
    assert [p.name for p in UI_WORKFLOWS] == [p.name for p in API_WORKFLOWS], "every UI workflow needs its API twin"


@pytest.mark.parametrize("path", UI_WORKFLOWS + API_WORKFLOWS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_workflow_loads_without_missing_nodes(report, path):
    result = report.result(path)
    assert result.format in ("ui", "api"), result
    assert not result.missing_types, f"{path.name}: missing node types {result.missing_types}"
    assert not result.errors, f"{path.name}: {result.errors}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_equals_its_api_twin(report, path):
    twin = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    differences = prompt_differences(report.result(path).api_prompt, twin)
    assert not differences, "\n".join(differences)


def test_queued_from_the_page_text_encode_shows_the_dropped_words_on_its_node(comfy_server, tmp_path):
    workflow = json.loads((REPO / "workflows" / "api" / "mmg_text_to_audio_video.json").read_text())
    nodes = {node["class_type"]: node_id for node_id, node in workflow.items()}
    workflow[nodes["MMGSampler"]]["inputs"]["steps"] = 1
    workflow[nodes["MMGTextEncode"]]["inputs"]["video_prompt"] = (
        "a green lamp blinking fast, a high beep while it is lit, on a dark background, seen through the "
        "window of a small wooden hut at the edge of a quiet pine forest")
    path = tmp_path / "long_prompt.json"
    path.write_text(json.dumps(workflow))
    texts = node_texts_after_run(comfy_server.url, path, [nodes["MMGTextEncode"]], timeout=120)  # 1 step: seconds
    shown = texts.get(nodes["MMGTextEncode"], "")
    assert shown.startswith("video_prompt is longer than the text encoder reads") and "pine forest" in shown, texts
