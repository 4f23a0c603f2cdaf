"""ComfyUI V3 nodes of ComfyUI-MMG. Node ids and input names are permanent once shipped."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .models import register_model_folder
from .mmg_nodes import MMG_COUPLED_NODES, register_mmg_folders
from .output_nodes import MMGSaveAudio, MMGSaveMP4
from .sampler_nodes import MMGDecode, MMGEmptyAVLatent, MMGLoadModel, MMGSampler, MMGTextEncode
from .sync_nodes import SYNC_NODES, register_sync_folder

NODES: list[type[io.ComfyNode]] = [
    MMGLoadModel,
    MMGTextEncode,
    MMGEmptyAVLatent,
    MMGSampler,
    MMGDecode,
    MMGSaveMP4,
    MMGSaveAudio,
]
NODES += MMG_COUPLED_NODES  # the MMG family: VideoCrafter2 + Auffusion
NODES += SYNC_NODES  # CAM-Sync score, apply offset, best of N


class MMGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> MMGExtension:
    # The loader node lists models/mmg while its schema is built, so the folder must exist before.
    register_model_folder()
    register_mmg_folders()
    register_sync_folder()
    return MMGExtension()
