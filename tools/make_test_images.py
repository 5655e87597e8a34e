"""Draw the four test images the seed document names, with Pillow alone (no downloads).

Simple but recognisable scenes matching the seed's descriptions, saved as JPEG with the seed's names and
these sizes (width x height). Deterministic: running it again writes the same pixels.
Run from the repository root: ``python tools/make_test_images.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path("images")
JPEG_QUALITY = 90  # ordinary camera-like quality; file size does not matter to the pipeline


def sky(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """A vertical gradient from ``top`` to ``bottom``."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    return image


def balloon(size: tuple[int, int]) -> Image.Image:
    """Hot air balloon scene: a striped balloon with a basket over green hills."""
    w, h = size
    image = sky(size, (90, 160, 235), (200, 230, 250))
    draw = ImageDraw.Draw(image)
    draw.ellipse([-w * 0.2, h * 0.75, w * 0.7, h * 1.3], fill=(70, 140, 60))
    draw.ellipse([w * 0.4, h * 0.8, w * 1.3, h * 1.4], fill=(50, 120, 50))
    cx, cy, rx, ry = w * 0.5, h * 0.38, w * 0.2, h * 0.25
    stripes = Image.new("RGB", size)
    stripe_draw = ImageDraw.Draw(stripes)
    colours = [(220, 40, 40), (250, 200, 40), (40, 90, 200), (250, 250, 250)]
    for i in range(8):
        left = cx - rx + i * (2 * rx / 8)
        stripe_draw.rectangle([left, cy - ry, left + 2 * rx / 8, cy + ry], fill=colours[i % 4])
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    image.paste(stripes, (0, 0), mask)
    basket_top = cy + ry + h * 0.06
    for dx in (-1, 1):
        draw.line([(cx + dx * rx * 0.45, cy + ry * 0.88), (cx + dx * rx * 0.3, basket_top)], fill=(60, 40, 20),
                  width=2)
    draw.rectangle([cx - rx * 0.3, basket_top, cx + rx * 0.3, basket_top + h * 0.06], fill=(140, 90, 40))
    return image


def groceries(size: tuple[int, int]) -> Image.Image:
    """Shopping scene: supermarket shelves of coloured goods and a shopping cart."""
    w, h = size
    rng = random.Random(2)
    image = Image.new("RGB", size, (235, 232, 225))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, h * 0.78, w, h], fill=(200, 195, 185))
    for row in range(4):
        shelf_y = h * (0.18 + row * 0.17)
        draw.rectangle([0, shelf_y, w, shelf_y + 6], fill=(120, 120, 130))
        x = 6.0
        while x < w - 20:
            item_w, item_h = rng.randint(18, 40), rng.randint(30, 70)
            colour = (rng.randint(40, 250), rng.randint(40, 250), rng.randint(40, 250))
            draw.rectangle([x, shelf_y - item_h, x + item_w, shelf_y], fill=colour, outline=(40, 40, 40))
            x += item_w + rng.randint(2, 8)
    cart_x, cart_y = w * 0.55, h * 0.58
    draw.polygon([(cart_x, cart_y), (cart_x + 220, cart_y), (cart_x + 200, cart_y + 110), (cart_x + 20, cart_y + 110)],
                 outline=(60, 60, 70), width=5)
    for gx in range(1, 6):
        draw.line([(cart_x + gx * 37, cart_y), (cart_x + 10 + gx * 33, cart_y + 110)], fill=(90, 90, 100), width=2)
    draw.line([(cart_x + 220, cart_y), (cart_x + 260, cart_y - 40)], fill=(60, 60, 70), width=6)
    for wx in (cart_x + 35, cart_x + 185):
        draw.ellipse([wx - 12, cart_y + 125, wx + 12, cart_y + 149], fill=(30, 30, 30))
    for i in range(5):
        colour = [(240, 120, 30), (60, 170, 60), (230, 210, 60), (200, 40, 40), (240, 240, 240)][i]
        draw.ellipse([cart_x + 30 + i * 34, cart_y - 30, cart_x + 70 + i * 34, cart_y + 10], fill=colour)
    return image


def truck(size: tuple[int, int]) -> Image.Image:
    """Vehicle scene: a red pickup truck on a road under a blue sky."""
    w, h = size
    image = sky(size, (110, 170, 230), (215, 235, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, h * 0.6, w, h], fill=(110, 150, 80))
    draw.rectangle([0, h * 0.68, w, h * 0.9], fill=(70, 70, 75))
    for x in range(0, w, 160):
        draw.rectangle([x, h * 0.785, x + 80, h * 0.795], fill=(240, 220, 80))
    body = (190, 30, 35)
    draw.rectangle([w * 0.2, h * 0.5, w * 0.78, h * 0.72], fill=body)
    draw.polygon([(w * 0.5, h * 0.5), (w * 0.55, h * 0.34), (w * 0.72, h * 0.34), (w * 0.78, h * 0.5)], fill=body)
    draw.polygon([(w * 0.56, h * 0.37), (w * 0.71, h * 0.37), (w * 0.75, h * 0.49), (w * 0.53, h * 0.49)],
                 fill=(160, 200, 230))
    draw.rectangle([w * 0.77, h * 0.58, w * 0.8, h * 0.64], fill=(250, 240, 180))
    for cx in (w * 0.32, w * 0.67):
        r = h * 0.09
        draw.ellipse([cx - r, h * 0.72 - r, cx + r, h * 0.72 + r], fill=(25, 25, 25))
        draw.ellipse([cx - r * 0.45, h * 0.72 - r * 0.45, cx + r * 0.45, h * 0.72 + r * 0.45], fill=(170, 170, 175))
    return image


def bench(size: tuple[int, int]) -> Image.Image:
    """Valley landscape: mountains, a river valley and a wooden bench in the foreground."""
    w, h = size
    image = sky(size, (120, 175, 235), (240, 225, 200))
    draw = ImageDraw.Draw(image)
    draw.polygon([(0, h * 0.55), (w * 0.25, h * 0.22), (w * 0.45, h * 0.5), (w * 0.7, h * 0.18), (w, h * 0.5),
                  (w, h), (0, h)], fill=(95, 110, 140))
    draw.polygon([(w * 0.2, h * 0.29), (w * 0.25, h * 0.22), (w * 0.3, h * 0.29)], fill=(245, 245, 250))
    draw.polygon([(w * 0.64, h * 0.26), (w * 0.7, h * 0.18), (w * 0.76, h * 0.26)], fill=(245, 245, 250))
    draw.polygon([(0, h * 0.6), (w * 0.35, h * 0.5), (w * 0.5, h * 0.62), (w * 0.65, h * 0.52), (w, h * 0.6),
                  (w, h), (0, h)], fill=(80, 140, 70))
    draw.polygon([(w * 0.45, h * 0.62), (w * 0.55, h * 0.62), (w * 0.75, h), (w * 0.25, h)], fill=(90, 150, 200))
    draw.rectangle([0, h * 0.8, w, h], fill=(70, 120, 55))
    wood, leg = (130, 85, 45), (60, 45, 35)
    for i in range(3):
        y = h * (0.74 + i * 0.025)
        draw.rectangle([w * 0.3, y, w * 0.7, y + h * 0.015], fill=wood)
    for i in range(2):
        y = h * (0.82 + i * 0.02)
        draw.rectangle([w * 0.28, y, w * 0.72, y + h * 0.015], fill=wood)
    for x in (w * 0.32, w * 0.67):
        draw.rectangle([x, h * 0.74, x + w * 0.015, h * 0.93], fill=leg)
    return image


IMAGES = {
    "balloon--low-res.jpeg": ((396, 380), balloon),
    "groceries--low-res.jpg": ((800, 534), groceries),
    "truck--high-res.jpg": ((1800, 1200), truck),
    "bench--high-res.jpg": ((2048, 2048), bench),
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (size, draw) in IMAGES.items():
        draw(size).save(OUT / name, "JPEG", quality=JPEG_QUALITY)
        print(f"wrote {OUT / name} ({size[0]}x{size[1]})")


if __name__ == "__main__":
    main()
