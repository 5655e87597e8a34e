"""Shared test helpers: the repository layout, small image files made with Pillow, and the slow things
built once per session (a CPU profile of the tiny architecture, SD v1.5 simulators on meta)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

try:  # the tests run as sdvram's commands do, with stand-ins (standins.py) in place before a test module imports
    # diffusers (``pytest.importorskip("diffusers")`` would load the real one first, and no test would see the stand-in)
    from sdvram import standins

    standins.defer()
except ImportError:  # no torch: the estimate's tests alone
    pass

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
MEASURED = REPO / "docs" / "measurements" / "h200-2026-11-26"
# the second lent H200 session: every other pipeline family, the SD v1.5 profiles again, fit's boundary
MEASURED_FAMILIES = REPO / "docs" / "measurements" / "h200-2026-11-30"


def load_tool(name: str) -> ModuleType:
    """A script of tools/ as a module (its definitions only: the scripts run from ``if __name__ == ...``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def make_jpeg(tmp_path: Path):
    """Write a JPEG of the given size (width, height), optionally with an EXIF orientation tag."""

    def make(width: int, height: int, name: str = "input.jpg", orientation: int | None = None) -> Path:
        path = tmp_path / name
        image = Image.new("RGB", (width, height), (120, 80, 40))
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        image.save(path, "JPEG", exif=exif.tobytes())
        return path

    return make


@pytest.fixture(scope="session")
def tiny_profile():
    """One real CPU run of the tiny architecture (SD's classes and 8x latent), 10 steps, 192 x 128."""
    pytest.importorskip("diffusers")
    from sdvram.choices import Architecture, Weights
    from sdvram.profiler import profile
    from sdvram.requests import ProfileOptions, RunRequest, Settings

    request = RunRequest(height=128, width=192, prompt="a photo of a cat", architecture=Architecture.tiny,
                         settings=Settings(steps=10, safety_checker=True))
    return profile(request, ProfileOptions(device="cpu", weights=Weights.random))


@pytest.fixture(scope="session")
def sd15_with_checker():
    """SD v1.5 built once on meta in fp16 with its safety checker, as the H200 measurements ran it."""
    pytest.importorskip("diffusers")
    from sdvram.simulate import Simulator

    return Simulator(safety_checker=True)
