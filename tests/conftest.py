"""Shared test helpers: the repository layout and small image files made with Pillow."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"


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
