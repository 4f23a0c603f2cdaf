"""Model files in ComfyUI's ``models/mmg`` folder and their life in ComfyUI's model management."""

from __future__ import annotations

import os
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch

from ..mmg_core import checkpoint
from ..mmg_core.models.mmdiffusion_config import MMDiffusionConfig

FOLDER = "mmg"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The pack's own default model ships inside the pack and is found there, with no copying.
PACK_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
DEFAULT_MODEL = "mmg-world-v1.safetensors"


def register_model_folder() -> None:
    """Add ``models/mmg`` (keeping any extra paths a user configured) and the pack's own ``models/``."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    extensions = set(checkpoint.CHECKPOINT_SUFFIXES)
    paths, known = folder_paths.folder_names_and_paths.get(FOLDER, ([default], set()))
    paths = list(paths) + ([PACK_MODELS_DIR] if PACK_MODELS_DIR not in paths else [])
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(known) | extensions)


def list_model_files() -> list[str]:
    """Model files, the shipped default model first. The pack's ``models/sync/`` holds the sync
    classifiers (listed by the sync nodes), not generation models, so it is left out."""
    names = [name for name in folder_paths.get_filename_list(FOLDER) if not name.replace("\\", "/").startswith("sync/")]
    return sorted(names, key=lambda name: (name != DEFAULT_MODEL, name.lower()))


def resolve_model_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name) if name else None
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
        available = ", ".join(list_model_files()) or "none"
        raise FileNotFoundError(
            f"MMG model file {name!r} not found. Put the checkpoint (.safetensors or released .pt) in {folders} "
            f"and refresh (R) the node list. Available: {available}"
        )
    return path


@dataclass
class MMGModel:
    """What the MMG_MODEL socket carries: the patcher ComfyUI moves between devices, and the config."""

    patcher: comfy.model_patcher.ModelPatcher
    config: MMDiffusionConfig
    family: str
    name: str
    trained_on_world: bool = False  # knows only the synthetic world's vocabulary (checkpoint.LoadedModel)

    def load_to_device(self) -> torch.nn.Module:
        """Ask ComfyUI for room on its compute device and return the model placed there."""
        mm.load_models_gpu([self.patcher])
        return self.patcher.model


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested not in DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if DTYPES[requested] is not None:
        return DTYPES[requested]
    # fp32 on CPU (half precision is slow there); let ComfyUI pick on accelerators.
    if device.type == "cpu":
        return torch.float32
    return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])


def load_mmg_model(name: str, weight_dtype: str = "auto") -> MMGModel:
    path = resolve_model_path(name)
    load_device = mm.get_torch_device()
    dtype = choose_dtype(weight_dtype, load_device)
    loaded = checkpoint.load_model(path, device="cpu", dtype=dtype)
    patcher = comfy.model_patcher.ModelPatcher(loaded.model, load_device=load_device, offload_device=mm.unet_offload_device())
    return MMGModel(patcher=patcher, config=loaded.config, family=loaded.family, name=name,
                    trained_on_world=loaded.trained_on_world)
