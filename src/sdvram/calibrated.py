"""The calibrated estimate: what ``sdvram simulate`` would say, in closed form, without torch. Pure Python.

A stage's peak is the most bytes alive at one moment, and what is alive is a sum of feature maps, workspaces and
attention buffers whose sizes are linear in the pixels of each resolution level (``features``). Which moment holds
the peak changes with the size, so a stage's peak is the largest of a few linear forms in those features. The
forms' coefficients are fitted to the simulator by ``tools/calibrate.py`` and shipped in
``data/calibration.json``, one set per batch (1 to 4), dtype, switch (none or one) and group of compute
capabilities the simulator treats alike; the tool records how far they were from the simulator on sizes it did not
fit on. Outside what was fitted (another batch, a combination of switches, the safety checker, an architecture
outside the GPU table) there is no calibrated answer, and ``calibrate`` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sdvram.architecture import VAE_SCALE_FACTOR
from sdvram.choices import Offload
from sdvram.verdicts import DOES_NOT_FIT, FITS, TIGHT

CALIBRATION_FILE = Path(__file__).parent / "data" / "calibration.json"
MIN_SIDE, MAX_SIDE = 64, 4096  # the sizes fitted (px); outside them the forms extrapolate, and say so
BATCHES = (1, 2, 3, 4)
# Each calibrated switch, as the Settings fields that turn it on. Attention slicing is calibrated at "auto", what
# pipe.enable_attention_slicing() uses when given no size.
SWITCH_SETS: dict[str, dict[str, Any]] = {
    "none": {}, "vae_slicing": {"vae_slicing": True}, "vae_tiling": {"vae_tiling": True},
    "attention_slicing": {"attention_slicing": "auto"}, "model_offload": {"offload": Offload.model},
    "sequential_offload": {"offload": Offload.sequential},
}
STAGE_NAMES = ("load", "text_encoder", "vae_encode", "unet", "vae_decode")
UNET_LEVELS = 4  # SD v1.5's UNet halves the latent three times (block_out_channels has four entries)
# diffusers' AutoencoderKL tiling (autoencoder_kl.py, sample_size 512, overlap 0.25): tiles of 64 latent px (512
# image px) every 48 (384), used when a side is larger than one tile.
TILE, TILE_STRIDE = 64, 48
FIXED_STAGES = ("load", "text_encoder")  # they run before the image is read: no term depends on its size
# Relative errors are taken against 1 MiB where the figure is smaller: with model offload nothing but a few
# scheduler tables is on the GPU after loading, and a relative error of a few kilobytes says nothing.
FLOOR = 2**20
GUARANTEE = 0.03  # the accuracy promised for the allocated peaks (issue 11), the least margin a verdict keeps
RESERVED = "peak_reserved"  # the run's, fitted as a whole: segments cached in one stage serve the next
# What is fitted for each setting: every stage's peak allocated, and the run's peak reserved. The run's peak
# allocated is the largest stage's.
QUANTITIES = (*STAGE_NAMES, RESERVED)
TILED_QUANTITIES = ("vae_encode", "vae_decode", RESERVED)  # where the VAE's tiles are alive
SCORE_QUANTITIES = ("unet", RESERVED)  # where attention slicing's score matrices are alive


def unet_levels(latent_h: int, latent_w: int) -> list[int]:
    """Pixels of each level of the UNet: the latent, then each stride-2 convolution's ceil(n / 2)."""
    return [-(-latent_h // 2**k) * -(-latent_w // 2**k) for k in range(UNET_LEVELS)]


def tiled(switch_set: str, height: int, width: int) -> bool:
    """Does the VAE tile at this size? (``_encode``/``_decode``: a side larger than one tile)."""
    return switch_set == "vae_tiling" and max(height, width) > TILE * VAE_SCALE_FACTOR


def regime(switch_set: str, height: int, width: int) -> str:
    """Sizes whose peaks follow different code paths are fitted apart."""
    return "tiled" if tiled(switch_set, height, width) else "plain"


def features(switch_set: str, quantity: str, height: int, width: int) -> list[float]:
    """The terms ``quantity`` (a stage's peak allocated, or the run's peak reserved) is linear in: 1 (weights,
    fixed buffers; all there is to the load and text encoder stages, which never see the image), the pixels of
    each UNet level (the latent's level also scales every VAE level, which are exact multiples of it); for a
    tiled VAE the sum of the tiles' areas (every decoded tile is kept until the blend), the largest tile (the
    one being worked on) and the tile count (per-tile buffers); for sliced attention the squares of the tokens
    of the two largest attention levels (``SlicedAttnProcessor`` materialises each slice's scores, N x N)."""
    if quantity in FIXED_STAGES:
        return [1.0]
    latent_h, latent_w = height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR
    levels = unet_levels(latent_h, latent_w)
    row = [1.0, *map(float, levels)]
    if quantity in TILED_QUANTITIES and tiled(switch_set, height, width):
        rows = [min(TILE, latent_h - i) for i in range(0, latent_h, TILE_STRIDE)]
        cols = [min(TILE, latent_w - j) for j in range(0, latent_w, TILE_STRIDE)]
        row += [float(sum(rows) * sum(cols)), float(rows[0] * cols[0]), float(len(rows) * len(cols))]
    if quantity in SCORE_QUANTITIES and switch_set == "attention_slicing":
        row += [float(levels[0]) ** 2, float(levels[1]) ** 2]
    return row


def predict(fits: dict[str, Any], switch_set: str, height: int, width: int) -> tuple[dict[str, int], int, int]:
    """Each stage's peak allocated, the run's peak allocated (the largest stage's) and its peak reserved (as
    fitted, never below the peak allocated: the segments hold every block), from the forms of one batch
    (``fits``: regime -> quantity -> forms)."""
    forms = fits[regime(switch_set, height, width)]
    stages = {name: evaluate(forms[name], features(switch_set, name, height, width)) for name in STAGE_NAMES}
    allocated = max(stages.values())
    return stages, allocated, max(allocated, evaluate(forms[RESERVED], features(switch_set, RESERVED, height, width)))


@dataclass(frozen=True)
class Calibrated:
    """The calibrated answer for one setting, in bytes."""

    stages: dict[str, int]  # stage name -> peak allocated
    peak_allocated: int
    peak_reserved: int
    extrapolated: bool  # a side outside MIN_SIDE..MAX_SIDE
    # the worst relative errors the tool saw for these settings' fits, on sizes it did not fit on: of the
    # allocated peaks (the stages' and the run's), and of the run's peak reserved
    allocated_error: float
    reserved_error: float

    def to_json(self) -> dict[str, Any]:
        """Figures in bytes under "bytes"; whether they are extrapolated; the checked errors (fractions)."""
        return {"bytes": {"stages": self.stages, "peak_allocated": self.peak_allocated,
                          "peak_reserved": self.peak_reserved},
                "extrapolated": self.extrapolated,
                "checked_error": {"allocated": self.allocated_error, "reserved": self.reserved_error}}


def on_card_reserved(answer: Calibrated, capacity: int) -> int:
    """The peak reserved on a card of ``capacity``: the run's as fitted, but never more than the card has (near
    its capacity the allocator releases its cached segments instead of asking for more)."""
    return min(answer.peak_reserved, capacity)


def verdict(answer: Calibrated, capacity: int, margin: int = 0) -> str:
    """Does the run fit ``capacity`` bytes (a card's usable memory), with ``margin`` bytes to spare (the card's
    margin, ``verdicts.margin_for``)? Each figure is taken at its checked error's worst (at least GUARANTEE):
    fits when the peak reserved, so taken, leaves the margin free; does not fit when the peak allocated, so taken,
    exceeds the card; tight in between (within the margin, or too close for the closed form to tell: simulate
    it). So it never says fits where the simulation fails, nor does not fit where it fits."""
    if answer.peak_reserved * (1 + max(GUARANTEE, answer.reserved_error)) + margin <= capacity:
        return FITS
    if answer.peak_allocated * (1 - max(GUARANTEE, answer.allocated_error)) > capacity:
        return DOES_NOT_FIT
    return TIGHT


def relative_error(predicted: float, target: float) -> float:
    """How far ``predicted`` is from ``target``, relative to ``target`` (to FLOOR where that is less): the measure
    of every accuracy figure of the calibration."""
    return (predicted - target) / max(target, FLOOR)


def evaluate(forms: list[list[float]], row: list[float]) -> int:
    """The largest of the linear forms at ``row``, in whole bytes."""
    return round(max(sum(c * v for c, v in zip(form, row, strict=True)) for form in forms))


@cache
def _document() -> dict[str, Any]:
    return dict(json.loads(CALIBRATION_FILE.read_text()))


def calibrated_switch_set(switches: tuple[str, ...], attention_slicing: object) -> str | None:
    """The calibrated switch set for the switches that are on (``requests.switches_on``), or None."""
    if not switches:
        return "none"
    if len(switches) > 1 or (switches[0] == "attention_slicing" and attention_slicing != "auto"):
        return None
    return switches[0]


def calibrate(height: int, width: int, *, batch: int = 1, dtype: str = "float16", sm: int = 90,
              switches: tuple[str, ...] = (), attention_slicing: object = None, safety_checker: bool = False
              ) -> Calibrated | str:
    """The calibrated peaks for an image of ``height`` x ``width`` px (rounded down to multiples of 8, as the
    pipeline does), or one sentence saying why there are none for these settings."""
    if safety_checker:
        return "not calibrated with the safety checker (simulate it)"
    if batch not in BATCHES:
        return f"calibrated for batches 1 to {BATCHES[-1]} only (simulate it)"
    switch_set = calibrated_switch_set(switches, attention_slicing)
    if switch_set is None:
        if len(switches) > 1:
            return "one switch at a time is calibrated; simulate this combination"
        return "only attention slicing at auto is calibrated; simulate it"
    entries = [e for e in _document()["entries"] if e["dtype"] == dtype and e["switches"] == switch_set]
    if not entries:
        return f"not calibrated for {dtype} (calibrated: float16 and float32)"
    entry = next((e for e in entries if sm in e["sms"]), None)
    if entry is None:
        known = ", ".join(f"sm{s}" for s in sorted(s for e in entries for s in e["sms"]))
        return f"not calibrated for sm{sm} (calibrated: {known}); simulate it"
    height, width = height - height % VAE_SCALE_FACTOR, width - width % VAE_SCALE_FACTOR
    stages, allocated, reserved = predict(entry["fits"][str(batch)], switch_set, height, width)
    label = f"{dtype} sm{'/'.join(map(str, entry['sms']))} {switch_set}"
    return Calibrated(
        stages=stages, peak_allocated=allocated, peak_reserved=reserved,
        extrapolated=not (MIN_SIDE <= min(height, width) and max(height, width) <= MAX_SIDE),
        allocated_error=_document()["check_worst_relative_error"][label]["allocated"],
        reserved_error=_document()["check_worst_relative_error"][label]["reserved"],
    )
