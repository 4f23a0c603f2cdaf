"""ComfyUI-MMG: synchronized audio-video generation with coupled diffusion models.

ComfyUI entry point: registers the pack's nodes, nothing else. The library lives in ``mmg_core``.
"""

from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
