"""The sync nodes (nodes/sync_nodes.py) and the helpers behind them (mmg_core.sync.shift, views,
best_of_n): offsets that undo themselves, overlays, figures, reports, best of N, and the shipped
``mmg_sync_score`` workflow on a real ComfyUI server.

Node classes are imported in-process from ComfyUI 0.3.75 (``--cpu``) and their ``execute`` called
directly; only nodes/sync_nodes.py and what it imports are loaded, not every node family.
"""

from __future__ import annotations

import importlib
import io as bytes_io
import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_harness import execution_error, output_files
from sync_stand_ins import LoudnessNet, ensure_default_audio_classifier, write_audio_classifier

from mmg_core.compat.mmdiffusion import config_from_reference
from mmg_core.models.mmdiffusion import MMDiffusionUNet
from mmg_core.pipeline import GenerationSettings, decode, generate
from mmg_core.sync import SyncModels, load_frame_classifier, score_clip
from mmg_core.sync.best_of_n import best_of_n, clip_video, rank_key, score_decoded
from mmg_core.sync.shift import correction_s, seconds_to_samples, shift_audio
from mmg_core.sync.views import cam_overlay, check_clip, heat_colours, sync_figure, sync_report
from mmg_core.world import WorldConfig, make_spec, render_clip

REPO = Path(__file__).resolve().parent.parent
SYNC_WORKFLOW = REPO / "workflows" / "api" / "mmg_sync_score.json"
LONG = WorldConfig(frames=40)  # 4 s: enough irregular lamp events for one unambiguous best lag

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return SyncModels(frames=load_frame_classifier(input_size=128), audio=LoudnessNet().eval())


@pytest.fixture(scope="module")
def lamp():
    spec = make_spec(4, LONG, scene="lamp", colour="yellow", background="dark", tempo="fast", pitch="high")
    return render_clip(spec, LONG)


def as_comfy(clip) -> tuple[torch.Tensor, dict]:
    """A world clip as ComfyUI's IMAGE (F, H, W, 3) in [0, 1] and AUDIO."""
    images = clip.video.permute(0, 2, 3, 1).add(1).div(2).contiguous()
    return images, {"waveform": clip.audio.reshape(1, 1, -1).clone(), "sample_rate": LONG.sample_rate}


# ----------------------------------------------------------------------------------------------
# ComfyUI in-process


@pytest.fixture(scope="module")
def sync_nodes(tmp_path_factory):
    """nodes/sync_nodes.py imported inside ComfyUI 0.3.75 (--cpu), its classifier folder in a tmp dir."""
    sys.path.append(str(REPO / "scripts"))
    import comfyui_env

    root = str(comfyui_env.ensure_comfyui())
    if root not in sys.path:
        sys.path.insert(0, root)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import folder_paths
    finally:
        sys.argv = argv
    # The pack as a package without running its __init__ files (they register every node family).
    for name, folder in (("mmg_pack", REPO), ("mmg_pack.nodes", REPO / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    models_dir = tmp_path_factory.mktemp("mmg_sync")
    folder_paths.folder_names_and_paths["mmg_sync"] = ([str(models_dir)], set())
    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))  # where node previews go
    module = importlib.import_module("mmg_pack.nodes.sync_nodes")
    module.models_dir = models_dir
    write_audio_classifier(models_dir / "stand_in.safetensors")
    return module


def test_schemas_have_tooltips_and_stable_ids(sync_nodes):
    ids = []
    for node in sync_nodes.SYNC_NODES:
        schema = node.define_schema()
        ids.append(schema.node_id)
        assert schema.category == "MMG/sync"
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
    assert ids == ["MMGSyncScore", "MMGSyncApplyOffset", "MMGSyncBestOfN"]
    score_inputs = [item.id for item in sync_nodes.MMGSyncScore.define_schema().inputs]
    assert score_inputs == ["images", "audio", "fps", "audio_classifier", "frame_classifier", "max_lag_s",
                            "overlay_strength"]


def test_score_node_outputs_numbers_report_overlay_and_plot(sync_nodes, lamp):
    images, audio = as_comfy(lamp)
    with torch.inference_mode():  # as ComfyUI runs every node (execution.py); Grad-CAM must still work
        images, audio = images.clone(), {**audio, "waveform": audio["waveform"].clone()}
        out = sync_nodes.MMGSyncScore.execute(images, audio, LONG.fps, audio_classifier="stand_in.safetensors")
    score, offset, confidence, at_zero, report, overlay, plot = out.args
    for value in (score, offset, confidence, at_zero):
        assert isinstance(value, float)
    assert math.isnan(score) or -1.0 <= score <= 1.0
    assert "CAM-Sync" in report and "positive offset_s = audio late" in report and "stand_in.safetensors" in report
    assert overlay.shape == images.shape and 0.0 <= float(overlay.min()) and float(overlay.max()) <= 1.0
    assert not torch.equal(overlay, images)  # the heatmap is drawn on
    assert plot.shape == (1, 480, 640, 3)
    assert out.ui["text"] == (report,) and out.ui["images"]  # report and plot are shown in the node
    assert torch.equal(images, as_comfy(lamp)[0]) and torch.equal(audio["waveform"], as_comfy(lamp)[1]["waveform"])


def test_score_node_says_nan_and_why_for_silence(sync_nodes, lamp):
    images, audio = as_comfy(lamp)
    silent = {"waveform": torch.zeros_like(audio["waveform"]), "sample_rate": audio["sample_rate"]}
    score, offset, confidence, at_zero, report, _, plot = sync_nodes.MMGSyncScore.execute(
        images, silent, LONG.fps, audio_classifier="stand_in.safetensors").args
    assert all(math.isnan(v) for v in (score, offset, confidence, at_zero))
    assert "unsynchronizable" in report and "audio energy is flat" in report
    assert plot.shape == (1, 480, 640, 3)


@pytest.mark.parametrize("change, message", [
    ({"images": torch.zeros(0, 64, 64, 3)}, "images is empty"),
    ({"fps": 0.0}, "fps must be > 0"),
    ({"fps": -10.0}, "fps must be > 0"),
    ({"fps": 25.0}, "10 fps would match"),  # 40 frames at 25 fps are 1.6 s, the audio is 4 s
    ({"audio": {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}}, "audio is empty"),
    ({"audio": torch.zeros(1, 64000)}, "AUDIO value"),
    ({"images": torch.zeros(40, 64, 64, 2)}, "1, 3 or 4 channels"),
    ({"max_lag_s": 0.0}, "max_lag_s must be > 0"),
    ({"audio_classifier": "nothing.safetensors"}, "mmg_sync"),
    ({"frame_classifier": "stand_in.safetensors"}, "_fc.weight"),  # an audio file as frame classifier
])
def test_score_node_names_what_to_fix(sync_nodes, lamp, change, message):
    images, audio = as_comfy(lamp)
    inputs = {"images": images, "audio": audio, "fps": LONG.fps, "audio_classifier": "stand_in.safetensors", **change}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sync_nodes.MMGSyncScore.execute(**inputs)


def test_missing_default_classifier_says_how_to_get_it(sync_nodes, tmp_path, monkeypatch):
    """A checkout without the shipped file (the pack's models/sync swapped for an empty folder)."""
    import folder_paths

    paths, known = folder_paths.folder_names_and_paths[sync_nodes.SYNC_FOLDER]
    kept = [p for p in paths if p != sync_nodes.PACK_SYNC_DIR]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, sync_nodes.SYNC_FOLDER, (kept, known))
    monkeypatch.setattr(sync_nodes, "PACK_SYNC_DIR", str(tmp_path))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    with pytest.raises(FileNotFoundError) as error:
        sync_nodes.resolve_classifier(sync_nodes.DEFAULT_AUDIO_FILE, "audio")
    assert "scripts/train_audio_classifier.py" in str(error.value) and "mmg_sync" in str(error.value)
    assert sync_nodes.audio_classifier_options()[0] == sync_nodes.DEFAULT_AUDIO_FILE  # listed anyway
    assert "stand_in.safetensors" in sync_nodes.audio_classifier_options()
    assert sync_nodes.frame_classifier_options()[0] == sync_nodes.BUILTIN_FRAME_CLASSIFIER


# ----------------------------------------------------------------------------------------------
# Offsets


def test_shift_audio_pads_with_silence_and_keeps_length():
    wave = torch.arange(1.0, 11.0).reshape(1, 1, 10)
    later, earlier = shift_audio(wave, 3), shift_audio(wave, -3)
    assert later.tolist() == [[[0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]]
    assert earlier.tolist() == [[[4, 5, 6, 7, 8, 9, 10, 0, 0, 0]]]
    assert torch.equal(shift_audio(wave, 0), wave) and wave[0, 0, 0] == 1  # input untouched
    with pytest.raises(ValueError, match="only silence"):
        shift_audio(wave, 10)
    assert seconds_to_samples(0.1, 16000) == 1600 and correction_s(0.25) == -0.25
    with pytest.raises(ValueError, match="finite"):
        seconds_to_samples(math.nan, 16000)


def test_applying_the_estimated_offset_brings_the_audio_back(sync_nodes, models, lamp):
    """Delay the audio by 3 frames (0.3 s): CAM-Sync measures about +0.3 s (audio late); feeding that
    estimate to the Apply Offset node moves the audio back, and CAM-Sync then measures about 0."""
    images, audio = as_comfy(lamp)
    late, delay = sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=0.3).args
    assert delay == pytest.approx(0.3) and late["waveform"].shape == audio["waveform"].shape
    measured = score_clip(models, lamp.video, late["waveform"][0], LONG.fps, LONG.sample_rate).cam_sync
    assert measured.offset_s == pytest.approx(0.3, abs=0.05), measured.summary()
    fixed, applied = sync_nodes.MMGSyncApplyOffset.execute(late, estimated_offset_s=measured.offset_s).args
    assert applied == pytest.approx(-measured.offset_s, abs=1 / LONG.sample_rate)
    again = score_clip(models, lamp.video, fixed["waveform"][0], LONG.fps, LONG.sample_rate).cam_sync
    assert abs(again.offset_s) <= 0.05, again.summary()
    assert again.score_at_0 > measured.score_at_0 + 0.3
    original = score_clip(models, lamp.video, audio["waveform"][0], LONG.fps, LONG.sample_rate).cam_sync
    assert again.score_at_0 >= original.score_at_0 - 0.05  # as well aligned as the clip before the delay


def test_apply_offset_node_edge_cases(sync_nodes):
    audio = {"waveform": torch.ones(1, 2, 16000), "sample_rate": 16000}
    unchanged, applied = sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=0.0, estimated_offset_s=math.nan).args
    assert applied == 0.0 and torch.equal(unchanged["waveform"], audio["waveform"])
    out = sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=0.5, estimated_offset_s=0.25)
    assert out.args[1] == pytest.approx(0.25) and "NaN" not in out.ui["text"][0]
    assert float(out.args[0]["waveform"][..., :4000].abs().max()) == 0.0  # explicit silence at the start
    with pytest.raises(ValueError, match="smaller delay_s"):
        sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=1.0)
    with pytest.raises(ValueError, match="delay_s must be"):
        sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=math.inf)
    with pytest.raises(ValueError, match="AUDIO"):
        sync_nodes.MMGSyncApplyOffset.execute({"waveform": torch.ones(16000)}, delay_s=0.1)


def test_apply_offset_shows_what_it_did_on_the_node(sync_nodes, monkeypatch):
    """Inside ComfyUI (a node id in ``hidden``) the text goes to the queueing client as progress text."""
    sent = []

    class FakeServer:
        client_id = "client-1"

        def send_progress_text(self, text, node_id, sid=None):
            sent.append((text, node_id, sid))

    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=FakeServer())))
    audio = {"waveform": torch.ones(1, 1, 16000), "sample_rate": 16000}
    out = sync_nodes.MMGSyncApplyOffset.execute(audio, delay_s=0.25)  # called directly: no node id, nothing sent
    assert sent == []
    node = sync_nodes.MMGSyncApplyOffset.PREPARE_CLASS_CLONE({sync_nodes.io.Hidden.unique_id: "12"})
    out = node.execute(audio, delay_s=0.25)
    assert sent == [(out.ui["text"][0], "12", "client-1")] and sent[0][0].startswith("audio moved +0.2500 s")


# ----------------------------------------------------------------------------------------------
# Overlay, figure, report, checks


def test_overlay_colours_only_where_the_classifier_looks():
    frames = torch.full((2, 8, 8, 3), 0.5)
    heat = torch.zeros(2, 2, 2)
    heat[1] = 1.0
    out = cam_overlay(frames, heat, strength=0.6)
    assert torch.equal(out[0], frames[0])  # no heat: the frame as it was
    red = heat_colours(torch.ones(1))[0]
    torch.testing.assert_close(out[1], frames[1] * 0.4 + red * 0.6)
    assert heat_colours(torch.tensor([0.0, 0.5, 1.0])).shape == (3, 3)
    with pytest.raises(ValueError, match="strength"):
        cam_overlay(frames, heat, strength=2.0)


def test_figure_and_report_of_a_scored_clip(models, lamp):
    scores = score_clip(models, lamp.video, lamp.audio, LONG.fps, LONG.sample_rate)
    figure = sync_figure(scores)
    assert figure.shape == (480, 640, 3) and figure.dtype == np.uint8
    assert (figure != 255).any(axis=-1).mean() > 0.02  # curves and text were drawn
    report = sync_report(scores, sample_rate=LONG.sample_rate, audio_seconds=4.0)
    assert f"{scores.cam_sync.score:.3f}" in report and "audio late" in report and "AV-Align" in report
    assert "40 frames at 10 fps (4.00 s), audio 4.00 s at 16000 Hz" in report


def test_check_clip_accepts_codec_slack_and_refuses_wrong_fps():
    check_clip(16, 10.0, 25600 + 1024, 16000)  # AAC priming / padding: fine
    with pytest.raises(ValueError, match="fps"):
        check_clip(16, 24.0, 25600, 16000)


# ----------------------------------------------------------------------------------------------
# Best of N

TINY = {  # the released MM-Diffusion pattern, tiny (as tests/test_server_workflows.py uses)
    "video_size": "16,3,16,16", "audio_size": "1,25600", "num_channels": 32, "num_res_blocks": 1,
    "num_heads": 4, "num_head_channels": 32, "cross_attention_resolutions": "2,4,8",
    "cross_attention_windows": "1,4,8", "cross_attention_shift": True, "video_attention_resolutions": "2,4,8",
    "audio_attention_resolutions": "-1", "use_scale_shift_norm": True, "resblock_updown": True,
    "learn_sigma": False, "dropout": 0.0,
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = MMDiffusionUNet(config_from_reference(TINY)).eval()
    with torch.no_grad():  # zero-initialised output layers would make every clip grey and silent
        for parameter in model.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.05)
    return model


def test_best_of_n_keeps_the_best_seed_and_matches_the_plain_sampler(tiny_model, models):
    settings = GenerationSettings(seed=11, steps=2, sampler="ddim")
    steps_seen = []
    result = best_of_n(tiny_model, settings, models, 3, step_callback=lambda i, info: steps_seen.append((i, info.step)))
    assert steps_seen == [(i, s) for i in range(3) for s in range(2)]
    assert [c.seed for c in result.candidates] == [11, 12, 13]
    assert result.best is min(result.candidates, key=lambda c: rank_key(c.cam_sync, "score_at_0", c.index))
    plain = decode(generate(tiny_model, GenerationSettings(seed=result.best.seed, steps=2, sampler="ddim")),
                   tiny_model.config)
    assert torch.equal(plain.frames, result.clip.frames) and torch.equal(plain.audio, result.clip.audio)
    assert json.dumps(score_decoded(models, plain).summary()) == json.dumps(result.best.cam_sync.summary())
    assert clip_video(plain).shape == (16, 3, 16, 16)
    table = result.table()
    assert table.splitlines()[0].startswith("ranked by score_at_0") and len(table.splitlines()) == 5
    with pytest.raises(ValueError, match="between 1 and"):
        best_of_n(tiny_model, settings, models, 0)
    with pytest.raises(ValueError, match="lower seed"):
        best_of_n(tiny_model, GenerationSettings(seed=2**64 - 1), models, 2)


def test_rank_key_puts_nan_last_and_ties_to_the_lower_seed():
    from mmg_core.sync.camsync import SyncResult, unsynchronizable

    good, worse, flat = SyncResult(0.8, 0.0, 0.5, 0.7), SyncResult(0.9, 0.4, 0.5, 0.1), unsynchronizable("flat")
    assert sorted([(flat, 0), (worse, 1), (good, 2)], key=lambda x: rank_key(x[0], "score_at_0", x[1]))[0][0] is good
    assert min([(good, 3), (worse, 1)], key=lambda x: rank_key(x[0], "score", x[1]))[0] is worse
    assert rank_key(good, "score", 0) < rank_key(good, "score", 1)


# ----------------------------------------------------------------------------------------------
# The shipped workflow on a real server


@pytest.fixture(scope="module")
def sync_server(comfy_server):
    ensure_default_audio_classifier(comfy_server.models_dir("mmg_sync"))
    return comfy_server


def quick_sync_prompt() -> dict:
    """The shipped workflow with a fixed seed and 6 sampler steps (the generic server test runs it as
    shipped); the next test reuses its cached generation."""
    prompt = json.loads(SYNC_WORKFLOW.read_text())
    sampler = next(i for i, node in prompt.items() if node["class_type"] == "MMGSampler")
    prompt[sampler]["inputs"].update(seed=2024, steps=6)
    return prompt


def test_sync_score_workflow_scores_a_generated_clip(sync_server, tmp_path):
    prompt = quick_sync_prompt()
    score_id = next(i for i, node in prompt.items() if node["class_type"] == "MMGSyncScore")
    report_id = next(i for i, node in prompt.items() if node["class_type"] == "PreviewAny")
    with sync_server.listen() as ws:
        entry = sync_server.run(prompt, timeout=600, client_id=ws.client_id)
        ws.wait_event("execution_success", timeout=60)
        shown = dict(ws.progress_texts())
    report = entry["outputs"][score_id]["text"][0]
    assert "CAM-Sync" in report and "audio late" in report and "16 frames at 10 fps (1.60 s)" in report
    # The node itself shows the numbers in the UI (score, offset, confidence, lag 0), or why there are none.
    assert re.fullmatch(r"CAM-Sync -?\d\.\d{3}, offset [+-]\d\.\d{3} s, confidence \d\.\d{3}, at lag 0 -?\d\.\d{3}",
                        shown[score_id]) or shown[score_id].startswith("unsynchronizable: "), shown
    assert entry["outputs"][report_id]["text"][0] == report  # the report node shows the same text
    plots = [item for item in output_files(entry, score_id) if item.filename.endswith(".png")]
    assert len(plots) == 1
    assert Image.open(bytes_io.BytesIO(sync_server.view_bytes(**plots[0].view_args()))).size == (640, 480)
    mp4s = [item.filename for item in output_files(entry) if item.filename.endswith(".mp4")]
    assert any(name.startswith("sync_score") for name in mp4s) and any(name.startswith("sync_cam") for name in mp4s)


def test_sync_score_with_a_missing_classifier_says_where_to_put_it(sync_server):
    prompt = quick_sync_prompt()
    score_id = next(i for i, node in prompt.items() if node["class_type"] == "MMGSyncScore")
    prompt[score_id]["inputs"]["audio_classifier"] = "no_such_classifier.safetensors"
    error = execution_error(sync_server.wait(sync_server.queue(prompt), timeout=600))
    assert error is not None and error["node_id"] == score_id
    assert "no_such_classifier.safetensors" in error["exception_message"] and "mmg_sync" in error["exception_message"]
