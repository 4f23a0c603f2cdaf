"""Fixtures and markers for tests that need a real ComfyUI server or headless Chromium.

- ``comfy_server`` (session): one ComfyUI 0.3.75 with this repository installed as
  ``custom_nodes/ComfyUI-MMG``, booted once per session (see tests/comfy_harness.py).
  Tests using it are marked ``server`` automatically; deselect with ``-m "not server"``.
- ``browser`` marker: the test also needs Debian's ``chromium``.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import comfy_harness` in any import mode

from comfy_harness import ComfyServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "server: needs the real ComfyUI server (fixture comfy_server)")
    config.addinivalue_line("markers", "browser: needs headless Chromium (apt-get install -y chromium)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """The session's ComfyUI server; its base dir (log, models, output) stays under pytest's tmp."""
    with ComfyServer(base_dir=tmp_path_factory.mktemp("comfyui")) as server:
        yield server


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of many small CPU tests (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    one thread is faster than two for tiny tensors and leaves the other core to the rest of the machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
