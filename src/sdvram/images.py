"""Reading input images the way the pipeline sees them, and the prompt manifest beside them.

Pillow only. Sizes are taken after EXIF orientation is applied: a phone photo stored landscape with an
"rotate 90" tag reaches the pipeline portrait, because loaders apply the tag (``ImageOps.exif_transpose``).
"""

from __future__ import annotations

import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sdvram.errors import InputError
from sdvram.inputs import MAX_SIDE, MIN_SIDE

MANIFEST_NAME = "prompts.toml"  # beside the images: one [images."NAME"] table with a prompt per image
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels must be turned
SWAPS_SIDES = {5, 6, 7, 8}  # orientations that turn the image by 90 or 270 degrees (transpose variants)


@dataclass(frozen=True)
class ImageInfo:
    """An image's size as the pipeline sees it (after EXIF orientation), and its format."""

    path: Path
    width: int
    height: int
    format: str


def image_info(path: str | Path) -> ImageInfo:
    """Decode ``path`` fully (so a truncated file is caught) and return its oriented size."""
    with _open(path) as image:
        return _checked_info(path, image)


def load_rgb(path: str | Path) -> Image.Image:
    """The image as the pipeline takes it: decoded once, checked as `estimate --image` checks it, EXIF
    orientation applied, RGB."""
    with _open(path) as image:
        _checked_info(path, image)
        oriented = ImageOps.exif_transpose(image)
        return (oriented if oriented is not None else image).convert("RGB")


def _checked_info(path: str | Path, image: Image.Image) -> ImageInfo:
    """The decoded ``image``'s size after EXIF orientation, or an InputError when a side is out of range."""
    width, height = image.size
    if image.getexif().get(EXIF_ORIENTATION, 1) in SWAPS_SIDES:
        width, height = height, width
    for side, name in ((width, "width"), (height, "height")):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InputError(
                f"{path}: its {name} is {side} pixels; images from {MIN_SIDE} to {MAX_SIDE} pixels a side "
                "are allowed."
            )
    return ImageInfo(Path(path), width, height, image.format or "unknown")


def manifest_prompt(path: str | Path) -> str | None:
    """The prompt the manifest beside ``path`` gives for it, or None when there is no entry."""
    path = Path(path)
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest} is not valid TOML ({exc}); fix it or pass --prompt.") from None
    entry = data.get("images", {}).get(path.name)
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        return None
    return str(entry["prompt"])


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``, turning every way it can fail into one InputError sentence."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; give the path of a JPEG, PNG or other image Pillow can read.")
    if not path.is_file():
        raise InputError(f"{path}: not a file; give the path of an image file.")
    try:
        with _pixel_limit(MAX_SIDE * MAX_SIDE):
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(f"{path}: too many pixels; images up to {MAX_SIDE} pixels a side are allowed.") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read; give a JPEG, PNG, WebP or similar.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    try:
        with _pixel_limit(MAX_SIDE * MAX_SIDE):
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        image.close()
        raise InputError(
            f"{path}: the image data is damaged or truncated ({exc}); re-export or re-download the file."
        ) from None
    return image


@contextmanager
def _pixel_limit(pixels: int) -> Iterator[None]:
    """Pillow refuses images above ``Image.MAX_IMAGE_PIXELS`` (about 89 M, a guard against decompression
    bombs), below our 16384 x 16384 maximum: raise it to that maximum while we decode, and put it back.
    Beyond twice the limit Pillow raises DecompressionBombError; at the limit it only warns, so the warning
    is silenced for sizes we allow."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
