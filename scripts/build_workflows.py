"""Write the shipped workflows from one description: UI format in ``workflows/`` (template browser)
and the API-format twin in ``workflows/api/`` (for POST /prompt).

Run ``python scripts/build_workflows.py`` after changing a graph; the tests check that the UI file,
converted by the real frontend (``app.graphToPrompt``), equals its API twin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"

# Socket types of the outputs we link from, by (node type, output slot).
OUTPUT_TYPES = {
    "MMGLoadModel": ["MMG_MODEL"],
    "MMGTextEncode": ["MMG_CONDITIONING"],
    "MMGEmptyAVLatent": ["MMG_AV_LATENT"],
    "MMGSampler": ["MMG_AV_LATENT"],
    "MMGDecode": ["IMAGE", "AUDIO", "FLOAT"],
    "MMGSaveMP4": ["VIDEO"],
    "CreateVideo": ["VIDEO"],
    "CLIPLoader": ["CLIP"],
    "CLIPTextEncode": ["CONDITIONING"],
    "MMGCoupledLoader": ["MMG_COUPLED_MODEL", "VAE", "VAE"],
    "MMGAudioTextEncode": ["CONDITIONING"],
    "MMGCoupledSampler": ["MMG_COUPLED_LATENT"],
    "MMGVocoderLoader": ["MMG_VOCODER"],
    "MMGCoupledDecode": ["IMAGE", "AUDIO", "FLOAT"],
    "MMGSyncScore": ["FLOAT", "FLOAT", "FLOAT", "FLOAT", "STRING", "IMAGE", "IMAGE"],
    "MMGSyncApplyOffset": ["AUDIO", "FLOAT"],
    "MMGSyncBestOfN": ["IMAGE", "AUDIO", "FLOAT", "INT", "FLOAT", "STRING"],
}
OUTPUT_NAMES = {
    "MMGLoadModel": ["model"],
    "MMGTextEncode": ["conditioning"],
    "MMGEmptyAVLatent": ["latent"],
    "MMGSampler": ["latent"],
    "MMGDecode": ["images", "audio", "fps"],
    "MMGSaveMP4": ["video"],
    "CreateVideo": ["VIDEO"],
    "CLIPLoader": ["CLIP"],
    "CLIPTextEncode": ["CONDITIONING"],
    "MMGCoupledLoader": ["model", "video_vae", "audio_vae"],
    "MMGAudioTextEncode": ["conditioning"],
    "MMGCoupledSampler": ["latent"],
    "MMGVocoderLoader": ["vocoder"],
    "MMGCoupledDecode": ["images", "audio", "fps"],
    "MMGSyncScore": ["score", "offset_s", "confidence", "score_at_0", "report", "cam_overlay", "plot"],
    "MMGSyncApplyOffset": ["audio", "applied_delay_s"],
    "MMGSyncBestOfN": ["images", "audio", "fps", "seed", "score", "scores"],
}


@dataclass
class Node:
    id: int
    type: str
    title: str
    widgets: dict = field(default_factory=dict)  # widget inputs, in schema order
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot, type)
    seed_control: str | None = None  # control_after_generate value shown after the seed widget
    size: tuple[int, int] = (320, 130)


def api_prompt(nodes: list[Node]) -> dict:
    prompt = {}
    for node in nodes:
        inputs = {name: value for name, value in node.widgets.items() if name not in node.links}
        inputs.update({name: [str(src), slot] for name, (src, slot, _) in node.links.items()})
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title}}
    return prompt


def ui_workflow(nodes: list[Node], note: str) -> dict:
    links, link_id = [], 0
    outgoing: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    x = 40
    for order, node in enumerate(nodes):
        inputs = []
        for name, (src, slot, kind) in node.links.items():
            link_id += 1
            target_slot = len(inputs)
            links.append([link_id, src, slot, node.id, target_slot, kind])
            outgoing.setdefault((src, slot), []).append(link_id)
            entry = {"name": name, "type": kind, "link": link_id}
            if name in node.widgets:  # a widget driven by a link
                entry["widget"] = {"name": name}
            inputs.append(entry)
        widgets_values = []
        for name, value in node.widgets.items():
            widgets_values.append(value)
            if node.seed_control is not None and name == "seed":
                widgets_values.append(node.seed_control)
        ui_nodes.append({
            "id": node.id, "type": node.type, "title": node.title,
            "pos": [x, 80 + (order % 2) * 60], "size": list(node.size), "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node.type},
            "widgets_values": widgets_values,
        })
        x += node.size[0] + 40
    for ui_node, node in zip(ui_nodes, nodes):
        for slot, (kind, name) in enumerate(zip(OUTPUT_TYPES.get(node.type, []), OUTPUT_NAMES.get(node.type, []))):
            ui_node["outputs"].append({"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot})
    return {
        "last_node_id": max(n.id for n in nodes), "last_link_id": link_id,
        "nodes": ui_nodes, "links": links, "groups": [], "config": {},
        "extra": {"mmg_note": note}, "version": 0.4,
    }


def mmdiffusion_head(ckpt: str) -> list[Node]:
    """Loader → empty latent → joint sampler → decode: the start of every MM-Diffusion workflow."""
    return [
        Node(1, "MMGLoadModel", "Load MM-Diffusion model", {"ckpt_name": ckpt, "weight_dtype": "auto"}),
        Node(2, "MMGEmptyAVLatent", "Empty AV latent", {"batch_size": 1}, {"model": (1, 0, "MMG_MODEL")}),
        Node(3, "MMGSampler", "Joint audio-video sampler",
             {"seed": 42, "steps": 20, "sampler_name": "dpmpp_2m", "video_cfg": 1.0, "audio_cfg": 1.0,
              "modality_scale": 0.0},
             {"model": (1, 0, "MMG_MODEL"), "latent": (2, 0, "MMG_AV_LATENT")}, seed_control="randomize",
             size=(320, 260)),
        Node(4, "MMGDecode", "Decode to frames + audio", {}, {"latent": (3, 0, "MMG_AV_LATENT")}),
    ]


def unconditional_av() -> tuple[str, list[Node], str]:
    nodes = mmdiffusion_head("Landscape.pt") + [
        Node(5, "MMGSaveMP4", "Save MP4", {"fps": 10.0, "filename_prefix": "mmg/mmdiffusion", "crf": 18},
             {"images": (4, 0, "IMAGE"), "fps": (4, 2, "FLOAT"), "audio": (4, 1, "AUDIO")}, size=(360, 420)),
        Node(6, "MMGSaveAudio", "Save WAV", {"filename_prefix": "mmg/mmdiffusion"}, {"audio": (4, 1, "AUDIO")}),
    ]
    note = ("Unconditional audio-video generation with a released MM-Diffusion checkpoint "
            "(put Landscape.pt or AIST++.pt in ComfyUI/models/mmg).")
    return "mmg_mmdiffusion_unconditional", nodes, note


def core_video_nodes() -> tuple[str, list[Node], str]:
    nodes = mmdiffusion_head("Landscape.pt") + [
        Node(5, "PreviewImage", "Preview frames", {}, {"images": (4, 0, "IMAGE")}),
        Node(6, "CreateVideo", "Create Video (core)", {"fps": 10.0},
             {"images": (4, 0, "IMAGE"), "fps": (4, 2, "FLOAT"), "audio": (4, 1, "AUDIO")}),
        Node(7, "SaveVideo", "Save Video (core)", {"filename_prefix": "video/mmg", "format": "auto", "codec": "auto"},
             {"video": (6, 0, "VIDEO")}, size=(360, 420)),
    ]
    note = "MM-Diffusion output wired into ComfyUI's core PreviewImage, CreateVideo and SaveVideo nodes."
    return "mmg_mmdiffusion_core_video_nodes", nodes, note


# Guidance of the shipped world model (chosen with `python -m mmg_core eval-world`, see models/MODEL_CARD.md).
WORLD_GUIDANCE = {"video_cfg": 3.0, "audio_cfg": 3.0, "modality_scale": 1.0}
DEFAULT_PROMPT = "a red ball bouncing fast, a sharp click at every bounce"


def text_to_av() -> tuple[str, list[Node], str]:
    nodes = [
        Node(1, "MMGLoadModel", "Load MMG model (shipped world model)",
             {"ckpt_name": "mmg-world-v1.safetensors", "weight_dtype": "auto"}),
        Node(2, "MMGTextEncode", "Prompts (what to see / what to hear)",
             {"video_prompt": DEFAULT_PROMPT, "audio_prompt": "", "negative_video_prompt": "", "negative_audio_prompt": ""},
             {"model": (1, 0, "MMG_MODEL")}, size=(400, 360)),
        Node(3, "MMGEmptyAVLatent", "Empty AV latent", {"batch_size": 1}, {"model": (1, 0, "MMG_MODEL")}),
        Node(4, "MMGSampler", "Joint audio-video sampler",
             {"seed": 42, "steps": 25, "sampler_name": "dpmpp_2m", **WORLD_GUIDANCE},
             {"model": (1, 0, "MMG_MODEL"), "latent": (3, 0, "MMG_AV_LATENT"), "conditioning": (2, 0, "MMG_CONDITIONING")},
             seed_control="randomize", size=(320, 260)),
        Node(5, "MMGDecode", "Decode to frames + audio", {}, {"latent": (4, 0, "MMG_AV_LATENT")}),
        Node(6, "MMGSaveMP4", "Save MP4", {"fps": 10.0, "filename_prefix": "mmg/text_to_av", "crf": 18},
             {"images": (5, 0, "IMAGE"), "fps": (5, 2, "FLOAT"), "audio": (5, 1, "AUDIO")}, size=(360, 420)),
    ]
    note = ("Text to synchronized audio + video with the pack's own model (ships with the pack, no download). "
            "Edit the prompts and press Run.")
    return "mmg_text_to_audio_video", nodes, note


# The MMG family (VideoCrafter2 + Auffusion): file names as their releases ship them.
VIDEOCRAFTER2_CKPT = "model.ckpt"
AUFFUSION_FOLDER = "auffusion-full"
CLIP_H = "open_clip_pytorch_model.bin"  # OpenCLIP ViT-H/14 (laion2b_s32b_b79k), what VideoCrafter2 loads
CLIP_L = "clip_l.safetensors"  # CLIP ViT-L/14 text model (Auffusion's text_encoder_0)
MMG_PROMPT = "a dog barking in a park, handheld camera"
MMG_AUDIO_PROMPT = "a dog barking"


def videocrafter2_auffusion() -> tuple[str, list[Node], str]:
    clip_h, clip_l = (1, 0, "CLIP"), (2, 0, "CLIP")
    model, video_vae, audio_vae = (3, 0, "MMG_COUPLED_MODEL"), (3, 1, "VAE"), (3, 2, "VAE")
    nodes = [
        Node(1, "CLIPLoader", "Load CLIP-H (video prompts)",
             {"clip_name": CLIP_H, "type": "stable_diffusion", "device": "default"}),
        Node(2, "CLIPLoader", "Load CLIP-L (audio prompt)",
             {"clip_name": CLIP_L, "type": "stable_diffusion", "device": "default"}),
        Node(3, "MMGCoupledLoader", "Load VideoCrafter2 + Auffusion",
             {"video_ckpt": VIDEOCRAFTER2_CKPT, "auffusion_folder": AUFFUSION_FOLDER, "couplers": "none (fresh couplers)",
              "coupler_seed": 0, "weight_dtype": "auto", "offload": "auto"}, size=(360, 240)),
        Node(4, "CLIPTextEncode", "Video prompt", {"text": MMG_PROMPT}, {"clip": clip_h}, size=(400, 160)),
        Node(5, "CLIPTextEncode", "Negative video prompt (empty = unconditional)", {"text": ""}, {"clip": clip_h},
             size=(400, 160)),
        Node(6, "MMGAudioTextEncode", "Audio prompt", {"text": MMG_AUDIO_PROMPT}, {"clip": clip_l}, size=(400, 160)),
        Node(7, "MMGCoupledSampler", "Joint audio-video sampler (DDIM)",
             {"seed": 42, "steps": 25, "video_cfg": 12.0, "audio_cfg": 7.5, "modality_scale": 0.0, "width": 512,
              "height": 320, "frames": 40, "fps": 12, "batch_size": 1, "sampler_name": "ddim"},
             {"model": model, "video_positive": (4, 0, "CONDITIONING"), "video_negative": (5, 0, "CONDITIONING"),
              "audio_positive": (6, 0, "CONDITIONING")}, seed_control="randomize", size=(340, 420)),
        Node(8, "MMGVocoderLoader", "Load vocoder (Auffusion's HiFi-GAN)",
             {"vocoder_name": "auffusion:" + AUFFUSION_FOLDER, "config": "config.json"}),
        Node(9, "MMGCoupledDecode", "Decode frames + audio",
             {}, {"latent": (7, 0, "MMG_COUPLED_LATENT"), "video_vae": video_vae, "audio_vae": audio_vae,
                  "vocoder": (8, 0, "MMG_VOCODER")}),
        Node(10, "MMGSaveMP4", "Save MP4", {"fps": 12.5, "filename_prefix": "mmg/videocrafter2_auffusion", "crf": 18},
             {"images": (9, 0, "IMAGE"), "fps": (9, 2, "FLOAT"), "audio": (9, 1, "AUDIO")}, size=(360, 420)),
    ]
    note = ("MMG: VideoCrafter2 (video) and Auffusion (audio) sampled together, coupled by cross-modal transformers. "
            "Needs VideoCrafter2's model.ckpt (models/checkpoints), the Auffusion folder (models/auffusion), OpenCLIP "
            "ViT-H/14 and CLIP ViT-L/14 text encoders (models/text_encoders). GPU: about 9.2 GB in fp16/bf16.")
    return "mmg_videocrafter2_auffusion", nodes, note


# The sync score node's classifiers as shipped: the pack's audio event classifier (models/sync) and the
# built-in ImageNet EfficientNet-Lite0 (see nodes/sync_nodes.py).
SYNC_CLASSIFIERS = {"audio_classifier": "audio_events.safetensors",
                    "frame_classifier": "efficientnet-lite0 (ImageNet, built in)"}


def sync_score() -> tuple[str, list[Node], str]:
    _, generation, _ = text_to_av()
    head = [node for node in generation if node.type != "MMGSaveMP4"]  # model, prompts, latent, sampler, decode
    decode = next(node.id for node in head if node.type == "MMGDecode")
    images, audio, fps = (decode, 0, "IMAGE"), (decode, 1, "AUDIO"), (decode, 2, "FLOAT")
    nodes = head + [
        Node(6, "MMGSyncScore", "Sync score (CAM-Sync)",
             {"fps": 10.0, **SYNC_CLASSIFIERS, "max_lag_s": 2.0, "overlay_strength": 0.6},
             {"images": images, "audio": audio, "fps": fps}, size=(420, 560)),
        Node(7, "MMGSaveMP4", "Save MP4", {"fps": 10.0, "filename_prefix": "mmg/sync_score", "crf": 18},
             {"images": images, "fps": fps, "audio": audio}, size=(360, 420)),
        # "preview" is the frontend's text box of Preview as Text; its prompt carries it (empty).
        Node(8, "PreviewAny", "Sync report", {"preview": ""}, {"source": (6, 4, "STRING")}, size=(460, 240)),
        Node(9, "MMGSaveMP4", "Save CAM overlay MP4", {"fps": 10.0, "filename_prefix": "mmg/sync_cam", "crf": 18},
             {"images": (6, 5, "IMAGE"), "fps": fps, "audio": audio}, size=(360, 420)),
    ]
    note = ("Generate a clip with the shipped world model and measure its audio-video sync with CAM-Sync: score, "
            "offset (positive = audio late) and confidence, the VideoCAM overlay as a video and the energy / "
            "correlation plot. Any frames + audio can be wired into the score node instead.")
    return "mmg_sync_score", nodes, note


ALL = [text_to_av, unconditional_av, core_video_nodes, videocrafter2_auffusion, sync_score]


def main() -> None:
    (WORKFLOWS / "api").mkdir(parents=True, exist_ok=True)
    for build in ALL:
        name, nodes, note = build()
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(ui_workflow(nodes, note), indent=1) + "\n")
        (WORKFLOWS / "api" / f"{name}.json").write_text(json.dumps(api_prompt(nodes), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
