"""Reading image sizes the way the pipeline sees them, with real Pillow decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sdvram.errors import InputError
from sdvram.images import image_info, load_rgb, manifest_prompt
from sdvram.tokenizer import count_tokens

from .conftest import IMAGES

SEED_IMAGES = {
    "balloon--low-res.jpeg": (396, 380),
    "groceries--low-res.jpg": (800, 534),
    "truck--high-res.jpg": (1800, 1200),
    "bench--high-res.jpg": (2048, 2048),
}


@pytest.mark.parametrize(("name", "size"), SEED_IMAGES.items())
def test_the_four_seed_images_exist_with_their_sizes(name: str, size: tuple[int, int]) -> None:
    with Image.open(IMAGES / name) as image:
        assert image.format == "JPEG"
        assert image.size == size
    info = image_info(IMAGES / name)
    assert (info.width, info.height) == size


@pytest.mark.parametrize(
    ("name", "seed_tokens"),
    [("balloon--low-res.jpeg", 50), ("groceries--low-res.jpg", 45), ("truck--high-res.jpg", 40),
     ("bench--high-res.jpg", 55)],
)
def test_manifest_prompts_are_about_the_seed_token_counts(name: str, seed_tokens: int) -> None:
    prompt = manifest_prompt(IMAGES / name)
    assert prompt is not None
    assert abs(count_tokens(prompt).tokens - seed_tokens) <= 3


def test_exif_rotation_swaps_the_sides(make_jpeg) -> None:
    path = make_jpeg(64, 32, orientation=6)  # stored landscape, shown rotated by 90 degrees
    info = image_info(path)
    assert (info.width, info.height) == (32, 64)
    assert load_rgb(path).size == (32, 64)
    upright = make_jpeg(64, 32, name="upright.jpg", orientation=1)
    assert (image_info(upright).width, image_info(upright).height) == (64, 32)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file"):
        image_info(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG")
    with pytest.raises(InputError, match=r"not an image Pillow can read"):
        image_info(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = (IMAGES / "truck--high-res.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"damaged or truncated"):
        image_info(path)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not a file"):
        image_info(tmp_path)


def test_image_too_small(make_jpeg) -> None:
    with pytest.raises(InputError, match=r"its height is 4 pixels; images from 8 to 16384"):
        image_info(make_jpeg(16, 4))


def test_no_manifest_entry(make_jpeg) -> None:
    assert manifest_prompt(make_jpeg(16, 16)) is None


def test_image_above_the_maximum_is_refused_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (16400, 8)).save(path)  # Pillow's own pixel guard would not stop this one
    with pytest.raises(InputError, match=r"its width is 16400 pixels; images from 8 to 16384 pixels"):
        image_info(path)


def test_a_huge_claimed_size_is_refused_from_the_header(tmp_path: Path) -> None:
    # A PNG whose header claims 20000 x 20000 (its pixels are one row): refused before any pixel is inflated.
    path = tmp_path / "claims.png"
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 20000, 20000)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"its width is 20000 pixels; images from 8 to 16384 pixels"):
        image_info(path)


def test_a_cut_png_is_caught_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.effect_noise((256, 256), 40).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match=r"cut short \(no IEND chunk\)"):
        image_info(path)


def test_one_pixel_reads_singular(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 64)).save(path)
    with pytest.raises(InputError, match=r"its width is 1 pixel; images from 8"):
        image_info(path)


def test_damaged_exif_is_a_note_not_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (64, 32)).save(path, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01")
    info = image_info(path)  # the suite turns warnings into errors: none may escape
    assert (info.width, info.height) == (64, 32)
    assert len(info.notes) == 1 and info.notes[0].startswith("The image's EXIF data is damaged (")
