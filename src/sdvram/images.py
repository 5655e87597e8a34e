"""Reading input images the way the pipeline sees them, and the prompt manifest beside them.

Pillow only. Sizes are taken after EXIF orientation is applied: a phone photo stored landscape with a
"rotate 90" tag reaches the pipeline portrait, because loaders apply the tag (``ImageOps.exif_transpose``).

``image_info`` reads what the estimate and the simulation need, the oriented size, from the file's header
without decoding its pixels, and checks that the file is whole: a JPEG is decoded at 1/8 scale (libjpeg's
DCT scaling reads every coded block but keeps 1/64 of the pixels); a PNG's chunks are walked to its IEND and its
image data inflated as a stream, counted and dropped (a garbled or short stream is caught, whatever the size,
in a few MiB of memory); other formats are decoded when small, and above ``DECODE_LIMIT`` pixels checked from their
structure (every strip or tile of the file's index inside the file) rather than decoded whole (a 16384 x 16384
TIFF would take a GB). ``load_rgb`` decodes the image for a real run.
"""

from __future__ import annotations

import os
import struct
import tomllib
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sdvram.errors import InputError
from sdvram.inputs import MAX_SIDE, MIN_SIDE, plural

MANIFEST_NAME = "prompts.toml"  # beside the images: one [images."NAME"] table with a prompt per image
EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels must be turned
SWAPS_SIDES = {5, 6, 7, 8}  # orientations that turn the image by 90 or 270 degrees (transpose variants)
JPEG_DRAFT_SCALE = 8  # libjpeg decodes at 1/1, 1/2, 1/4 or 1/8 scale; 1/8 keeps the check cheapest
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples a pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP = 1 << 20  # bytes of inflated PNG data held at once while counting it
# Above this many pixels an image that is neither JPEG nor PNG is checked from its structure, not decoded: a full
# decode costs its pixels' bytes in memory (64 MP of RGB is 192 MB; 16384 x 16384, 805 MB and more).
DECODE_LIMIT = 64_000_000


@dataclass(frozen=True)
class ImageInfo:
    """An image's size as the pipeline sees it (after EXIF orientation), its format, and notes on what
    was odd about the file but did not stop it (a damaged EXIF block)."""

    path: Path
    width: int
    height: int
    format: str
    notes: tuple[str, ...] = ()


def image_info(path: str | Path, min_side: int = MIN_SIDE) -> ImageInfo:
    """The oriented size of ``path``, read from its header, with the file checked to be whole; an
    InputError when it is not an image, is damaged, or a side is outside ``min_side`` to 16384."""
    notes: list[str] = []
    with _open(path, notes) as image:
        info = _checked_info(path, image, min_side, notes)
        _check_whole(path, image)
    return info


def load_rgb(path: str | Path, min_side: int = MIN_SIDE, mode: str = "RGB") -> Image.Image:
    """The image as the pipeline takes it: checked as ``image_info`` checks it, decoded, EXIF orientation
    applied, in ``mode`` (RGB; "L" for an inpainting mask, which the pipeline reads as grey levels)."""
    notes: list[str] = []
    with _open(path, notes) as image:
        _checked_info(path, image, min_side, notes)
        _decode(path, image)
        with _quiet_exif(notes):
            oriented = ImageOps.exif_transpose(image)
        return (oriented if oriented is not None else image).convert(mode)


def manifest_prompt(path: str | Path) -> str | None:
    """The prompt the manifest beside ``path`` gives for it, or None when there is no entry."""
    path = Path(path)
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest} is not valid TOML ({exc}); fix it or pass a prompt.") from None
    entry = data.get("images", {}).get(path.name)
    if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        return None
    return str(entry["prompt"])


def _checked_info(path: str | Path, image: Image.Image, min_side: int, notes: list[str]) -> ImageInfo:
    """The header's size after EXIF orientation, or an InputError when a side is out of range."""
    width, height = image.size
    if _orientation(image, notes) in SWAPS_SIDES:
        width, height = height, width
    for side, name in ((width, "width"), (height, "height")):
        if not min_side <= side <= MAX_SIDE:
            raise InputError(
                f"{path}: its {name} is {plural(side, 'pixel')}; images from {min_side} to {MAX_SIDE} pixels "
                "a side are allowed."
            )
    return ImageInfo(Path(path), width, height, image.format or "unknown", tuple(notes))


def _orientation(image: Image.Image, notes: list[str]) -> int:
    """The EXIF orientation tag (1 when absent), read without decoding pixels. A PNG keeps its EXIF in an
    eXIf chunk that Pillow only reads while decoding unless it precedes the pixels; one after them is not
    looked for (the pipeline's loader would find it only after decoding too)."""
    with _quiet_exif(notes):
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not isinstance(raw, bytes):
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = exif.get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


@contextmanager
def _quiet_exif(notes: list[str]) -> Iterator[None]:
    """Pillow warns (with its own file path) about damaged EXIF blocks; make each one note instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        note = f"The image's EXIF data is damaged ({warning.message}); its orientation tag, if any, was ignored."
        if note not in notes:
            notes.append(note)


def _check_whole(path: str | Path, image: Image.Image) -> None:
    """Raise an InputError when the file is cut short or damaged, at a fraction of a full decode's cost."""
    if image.format == "PNG":
        _check_png(path)
        return
    if image.format == "JPEG":
        width, height = image.size
        image.draft("RGB", (max(1, width // JPEG_DRAFT_SCALE), max(1, height // JPEG_DRAFT_SCALE)))
    elif image.size[0] * image.size[1] > DECODE_LIMIT:
        _check_structure(path, image)
        return
    _decode(path, image)


def _damaged(path: str | Path, why: str) -> InputError:
    return InputError(f"{path}: the image data is damaged or truncated ({why}); re-export or re-download the file.")


def _check_png(path: str | Path) -> None:
    """Walk the PNG's chunks (length, type, data, CRC) to IEND, and inflate its IDAT stream as it goes, counting
    the bytes and dropping them: the stream must end, undamaged, at exactly the rows the header promises."""
    decompressor = zlib.decompressobj()
    inflated = 0
    expected = None
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(len(PNG_SIGNATURE))
        while True:
            header = handle.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            end = handle.tell() + length + 4  # the data, then the CRC
            if end > size:
                break
            if kind == b"IHDR":
                expected = _png_raw_bytes(handle.read(min(length, 13)))
            elif kind == b"IDAT":
                try:
                    data = handle.read(length)
                    while data:
                        inflated += len(decompressor.decompress(data, INFLATE_STEP))
                        data = decompressor.unconsumed_tail
                except zlib.error as exc:
                    raise _damaged(path, f"broken data stream: {exc}") from None
            elif kind == b"IEND":
                if not decompressor.eof or (expected is not None and inflated != expected):
                    raise _damaged(path, f"{inflated:,} bytes of pixel rows where the header promises "
                                         f"{expected or 0:,}")
                return
            handle.seek(end)
    raise InputError(f"{path}: the image data is cut short (no IEND chunk); re-export or re-download the file.")


def _png_raw_bytes(ihdr: bytes) -> int | None:
    """The inflated size of a PNG's pixel rows: each row one filter byte and its samples (Adam7: per pass)."""
    if len(ihdr) < 13:
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    bits = depth * PNG_CHANNELS.get(colour, 0)
    if not bits:
        return None
    if not interlace:
        return height * (1 + -(-width * bits // 8))
    total = 0
    for x0, y0, dx, dy in ADAM7:
        columns, rows = -(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0
        if columns and rows:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _check_structure(path: str | Path, image: Image.Image) -> None:
    """A large image of another format, checked without decoding: every strip or tile its index names must lie
    inside the file (a TIFF's StripOffsets/StripByteCounts or TileOffsets/TileByteCounts; elsewhere the offsets
    of Pillow's tiles)."""
    size = os.path.getsize(path)
    spans: list[tuple[int, int]] = []
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        for offsets_tag, counts_tag in ((273, 279), (324, 325)):
            offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
            if offsets is not None and counts is not None:
                spans += list(zip(_ints(offsets), _ints(counts), strict=False))
    spans += [(tile[2], 0) for tile in getattr(image, "tile", []) or [] if isinstance(tile[2], int)]
    if not spans:
        _decode(path, image)
        return
    for offset, count in spans:
        if offset + count > size:
            raise _damaged(path, f"its data runs to byte {offset + count:,} of a {size:,}-byte file")


def _ints(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)]  # type: ignore[call-overload]


def _decode(path: str | Path, image: Image.Image) -> None:
    try:
        with _pixel_limit():
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path}: the image data is damaged or truncated ({exc}); re-export or re-download the file."
        ) from None


@contextmanager
def _open(path: str | Path, notes: list[str]) -> Iterator[Image.Image]:
    """Open ``path`` (its header only), turning every way that can fail into one InputError sentence."""
    path = Path(path)
    if not path.exists():
        what = "a symbolic link that leads nowhere (a loop or a missing file)" if path.is_symlink() else "no such file"
        raise InputError(f"{path}: {what}; give the path of a JPEG, PNG or other image Pillow can read.")
    if not path.is_file():
        raise InputError(f"{path}: not a file; give the path of an image file.")
    try:
        with _pixel_limit(), _quiet_exif(notes):
            image = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read; give a JPEG, PNG, WebP or similar.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}).") from None
    try:
        yield image
    finally:
        image.close()


@contextmanager
def _pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, about 89 M pixels) would refuse sizes
    we allow; sizes are checked from the header (``_checked_info``, at most 16384 a side) before any pixel
    is decoded, so the guard is lifted while Pillow opens and decodes, and put back."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
