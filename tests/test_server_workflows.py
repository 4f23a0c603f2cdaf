"""The shipped workflows on a real ComfyUI 0.3.75 server, driven through its HTTP API.

A tiny random-weight MM-Diffusion checkpoint is written in the released ``.pt`` format (with the
JSON of its reference arguments beside it) under the name the workflows use, then every API-format
workflow is queued as shipped.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_harness import assert_no_import_failures, execution_error, output_files, was_interrupted
from sync_stand_ins import ensure_default_audio_classifier

from mmg_core import media
from mmg_core.compat.mmdiffusion import config_from_reference
from mmg_core.models.mmdiffusion import MMDiffusionUNet

REPO = Path(__file__).resolve().parent.parent
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
MAIN_WORKFLOW = REPO / "workflows" / "api" / "mmg_mmdiffusion_unconditional.json"
CHECKPOINT = "Landscape.pt"  # the name the shipped workflows load
# Released architecture pattern at a size that samples in well under a second per step on CPU;
# the audio keeps the released 1.6 s at 16 kHz so durations are real.
TINY_REFERENCE_ARGS = {
    "video_size": "16,3,16,16", "audio_size": "1,25600", "num_channels": 32, "num_res_blocks": 1,
    "num_heads": 4, "num_head_channels": 32, "cross_attention_resolutions": "2,4,8",
    "cross_attention_windows": "1,4,8", "cross_attention_shift": True, "video_attention_resolutions": "2,4,8",
    "audio_attention_resolutions": "-1", "use_scale_shift_norm": True, "resblock_updown": True,
    "learn_sigma": False, "dropout": 0.0,
}


def write_released_checkpoint(folder: Path, name: str, seed: int = 0) -> Path:
    """A random-weight checkpoint as the MM-Diffusion release stores it: a pickled raw state dict."""
    torch.manual_seed(seed)
    model = MMDiffusionUNet(config_from_reference(TINY_REFERENCE_ARGS))
    with torch.no_grad():  # zero-initialised output layers would make every clip grey and silent
        for parameter in model.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.05)
    path = folder / name
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(TINY_REFERENCE_ARGS))
    return path


@pytest.fixture(scope="module")
def server(comfy_server):
    write_released_checkpoint(Path(comfy_server.models_dir("mmg")), CHECKPOINT)
    ensure_default_audio_classifier(comfy_server.models_dir("mmg_sync"))  # mmg_sync_score's audio classifier
    return comfy_server


def load_api(path: Path, **overrides) -> dict:
    """The API workflow with input overrides given as {(node_id, input): value}."""
    prompt = json.loads(path.read_text())
    for (node_id, name), value in overrides.get("inputs", {}).items():
        prompt[node_id]["inputs"][name] = value
    return prompt


def find_nodes(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def ffprobe(path: Path) -> dict:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(result.stdout)


def fetch_mp4s(server, entry, tmp_path: Path) -> list[Path]:
    paths = []
    for item in output_files(entry):
        if item.filename.endswith(".mp4"):
            target = tmp_path / f"{item.node_id}_{item.filename}"
            target.write_bytes(server.view_bytes(**item.view_args()))
            paths.append(target)
    return paths


def test_pack_imports_cleanly(server):
    assert_no_import_failures(server.log_text(), required=("ComfyUI-MMG",))
    info = server.object_info()
    for node in ("MMGLoadModel", "MMGEmptyAVLatent", "MMGSampler", "MMGDecode", "MMGSaveMP4", "MMGSaveAudio"):
        assert node in info, f"{node} not registered"
        assert info[node]["category"].startswith("MMG/")
        for section in ("required", "optional"):
            for name, spec in info[node]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"


def test_loader_lists_pt_and_safetensors(server, tmp_path):
    models = Path(server.models_dir("mmg"))
    write_released_checkpoint(tmp_path, "other.pt", seed=1)
    subprocess.run(
        [sys.executable, "-m", "mmg_core", "convert", str(tmp_path / "other.pt"),
         str(models / "converted.safetensors")],
        check=True, cwd=REPO,
    )
    options = server.object_info("MMGLoadModel")["MMGLoadModel"]["input"]["required"]["ckpt_name"][1]["options"]
    assert CHECKPOINT in options and "converted.safetensors" in options


# Workflows of other model families, run with their own models by their own test module.
OWN_TESTS = {"mmg_videocrafter2_auffusion": "needs VideoCrafter2 + Auffusion files: run in tests/test_mmg_workflow.py"}


@pytest.mark.parametrize("workflow", [
    pytest.param(p, marks=pytest.mark.skip(reason=OWN_TESTS[p.stem])) if p.stem in OWN_TESTS else p
    for p in API_WORKFLOWS], ids=lambda p: p.stem)
def test_shipped_workflow_writes_synchronized_mp4(server, workflow, tmp_path):
    prompt = load_api(workflow)
    sampler = find_nodes(prompt, "MMGSampler")[0]
    with server.listen() as ws:  # the workflows share their sampler settings: make each one really sample
        entry = server.run_uncached(prompt, sampler, timeout=300, ws=ws)
        previews = ws.previews()
    assert previews, "the sampler sent no preview frames"
    mp4s = fetch_mp4s(server, entry, tmp_path)
    assert mp4s, f"no MP4 in the outputs of {workflow.name}: {entry.get('outputs')}"
    fps = 10.0
    for path in mp4s:
        probe = ffprobe(path)
        video = [s for s in probe["streams"] if s["codec_type"] == "video"]
        audio = [s for s in probe["streams"] if s["codec_type"] == "audio"]
        assert [s["codec_name"] for s in video] == ["h264"], probe["streams"]
        assert [s["codec_name"] for s in audio] == ["aac"], probe["streams"]
        assert abs(float(video[0]["duration"]) - float(audio[0]["duration"])) <= 1 / fps + 1e-6
        assert abs(float(video[0]["duration"]) - 1.6) <= 1 / fps


def test_mp4_carries_the_workflow(server, tmp_path):
    workflow = MAIN_WORKFLOW
    prompt = load_api(workflow, inputs={(find_nodes(json.loads(workflow.read_text()), "MMGSampler")[0], "seed"): 7})
    entry = server.run(prompt, timeout=300)
    clip = media.read_mp4(fetch_mp4s(server, entry, tmp_path)[0])
    stored = json.loads(clip.metadata["prompt"])
    assert stored[find_nodes(prompt, "MMGSampler")[0]]["inputs"]["seed"] == 7


def test_missing_model_is_a_clear_execution_error(server):
    prompt = load_api(MAIN_WORKFLOW)
    prompt[find_nodes(prompt, "MMGLoadModel")[0]]["inputs"]["ckpt_name"] = "no_such_model.pt"
    entry = server.wait(server.queue(prompt), timeout=120)
    error = execution_error(entry)
    assert error is not None, entry
    assert "no_such_model.pt" in error["exception_message"]
    assert "models" in error["exception_message"] and "mmg" in error["exception_message"]


def test_bad_sampler_name_names_the_choices(server):
    prompt = load_api(MAIN_WORKFLOW)
    prompt[find_nodes(prompt, "MMGSampler")[0]]["inputs"]["sampler_name"] = "heun_wrong"
    error = execution_error(server.wait(server.queue(prompt), timeout=120))
    assert error is not None and "dpmpp_2m" in error["exception_message"]


def test_interrupt_mid_run_leaves_server_usable(server, tmp_path):
    slow = load_api(MAIN_WORKFLOW)
    sampler = find_nodes(slow, "MMGSampler")[0]
    slow[sampler]["inputs"].update(steps=1000, sampler_name="ddim", seed=12345)
    with server.listen() as ws:
        prompt_id = server.queue(slow, client_id=ws.client_id)
        ws.wait_event("progress", timeout=120, node=sampler)
        server.interrupt()
        entry = server.wait(prompt_id, timeout=120)
    assert was_interrupted(entry), entry.get("status")
    quick = load_api(MAIN_WORKFLOW, inputs={(sampler, "seed"): 54321, (sampler, "steps"): 3})
    entry = server.run(quick, timeout=300)
    assert fetch_mp4s(server, entry, tmp_path)


def _decoded(server, entry, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    clip = media.read_mp4(fetch_mp4s(server, entry, folder)[0])
    return clip.frames, clip.audio


def test_same_seed_same_clip(server, tmp_path):
    base = load_api(MAIN_WORKFLOW)
    sampler = find_nodes(base, "MMGSampler")[0]
    save = find_nodes(base, "MMGSaveMP4")[0]
    runs = []
    for prefix, seed in (("det/a", 99), ("det/b", 99), ("det/c", 100)):
        prompt = copy.deepcopy(base)
        prompt[sampler]["inputs"].update(seed=seed, steps=4)
        prompt[save]["inputs"]["filename_prefix"] = prefix
        entry = server.run_uncached(prompt, sampler, timeout=300)  # det/a and det/b differ only in the prefix
        runs.append(_decoded(server, entry, tmp_path / prefix.replace("/", "_")))
    (frames_a, audio_a), (frames_b, audio_b), (frames_c, audio_c) = runs
    assert np.array_equal(frames_a, frames_b) and np.array_equal(audio_a, audio_b)
    assert not np.array_equal(frames_a, frames_c)
