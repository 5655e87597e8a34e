"""The seed formula: the VRAM model of the seed document (``docs/seed/sd15-vram-architecture.md``, section
"VRAM Formula Derivation"), implemented exactly as written, simplifications included.

Pure Python on purpose: ``sdvram estimate`` must never import torch. Every figure is in bytes.
Where the real pipeline differs from this model, ``sdvram profile`` and ``sdvram simulate`` report the
difference; this module does not correct it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdvram.architecture import (
    LATENT_CHANNELS,
    RGB_CHANNELS,
    SAFETY_CHECKER_PARAMS,
    TEXT_ENCODER_PARAMS,
    UNET_PARAMS,
    VAE_PARAMS,
    VAE_SCALE_FACTOR,
)
from sdvram.stages import ACTIVATION_TERMS

BYTES_PER_VALUE = 2  # fp16: the seed counts every weight and activation at 2 bytes
TEMP_COPIES = 3  # the seed's "3x temp tensors" held by the VAE, and its 3x factor on UNet channel memory
UNET_MEAN_CHANNELS = 745  # seed document: mean of the 320/640/1280 channel levels, (320+640+1280)/3 ~ 745
# seed document: "1.2 overhead factor" for CUDA workspaces, allocator fragmentation, caches and framework
# structures; kept as the exact fraction 6/5 so the total is computed in integers.
OVERHEAD_NUMERATOR, OVERHEAD_DENOMINATOR = 6, 5



@dataclass(frozen=True)
class SeedEstimate:
    """The seed formula's figures for one image size and prompt length, in bytes.

    ``total`` is ``(base + peak) x 1.2`` rounded up to a whole byte; ``overhead`` is the 0.2 part of it.
    """

    height: int
    width: int
    tokens: int
    batch: int
    safety_checker: bool
    base: int
    vae_encode: int
    unet: int
    vae_decode: int
    peak_stage: str
    overhead: int
    total: int

    @property
    def peak_activation(self) -> int:
        """The largest of the three activation stages (the one ``peak_stage`` names)."""
        return int(getattr(self, self.peak_stage))

    def stage_bytes(self) -> dict[str, int]:
        """Base and the three activation stages, in pipeline order."""
        return {"base": self.base, **{name: int(getattr(self, name)) for name in ACTIVATION_TERMS}}


def base_bytes(safety_checker: bool = False) -> int:
    """Stage 1: (UNet + VAE + text encoder parameters) x 2 bytes; ``safety_checker`` adds its parameters,
    which the seed's component table lists but its formula leaves out."""
    params = UNET_PARAMS + VAE_PARAMS + TEXT_ENCODER_PARAMS
    if safety_checker:
        params += SAFETY_CHECKER_PARAMS
    return params * BYTES_PER_VALUE


def vae_encode_bytes(height: int, width: int) -> int:
    """Stage 2: input image + 3 temporary copies of it + the latent."""
    image = height * width * RGB_CHANNELS * BYTES_PER_VALUE
    latent = _latent_pixels(height, width) * LATENT_CHANNELS * BYTES_PER_VALUE
    return image + TEMP_COPIES * image + latent


def unet_bytes(height: int, width: int, tokens: int) -> int:
    """Stage 3: channel memory (latent pixels x 745 channels x 2 bytes x 3) + cross-attention memory
    (latent pixels x prompt tokens x 2 bytes)."""
    pixels = _latent_pixels(height, width)
    channels = pixels * UNET_MEAN_CHANNELS * BYTES_PER_VALUE * TEMP_COPIES
    attention = pixels * tokens * BYTES_PER_VALUE
    return channels + attention


def vae_decode_bytes(height: int, width: int) -> int:
    """Stage 4: the latent + the output image + 3 temporary copies of it."""
    latent = _latent_pixels(height, width) * LATENT_CHANNELS * BYTES_PER_VALUE
    image = height * width * RGB_CHANNELS * BYTES_PER_VALUE
    return latent + image + TEMP_COPIES * image


def seed_estimate(
    height: int, width: int, tokens: int, *, batch: int = 1, safety_checker: bool = False
) -> SeedEstimate:
    """Evaluate the seed formula. ``batch`` multiplies every activation stage, as the seed's scaling table
    says ("Multiplies all activation memory"); inputs are assumed valid (see ``inputs.py``)."""
    base = base_bytes(safety_checker)
    stages = {
        "vae_encode": vae_encode_bytes(height, width) * batch,
        "unet": unet_bytes(height, width, tokens) * batch,
        "vae_decode": vae_decode_bytes(height, width) * batch,
    }
    # Ties go to the earliest stage in pipeline order (the encoder and decoder are always equal).
    peak_stage = max(ACTIVATION_TERMS, key=lambda name: stages[name])
    subtotal = base + stages[peak_stage]
    total = -(-subtotal * OVERHEAD_NUMERATOR // OVERHEAD_DENOMINATOR)  # ceiling division
    return SeedEstimate(
        height=height,
        width=width,
        tokens=tokens,
        batch=batch,
        safety_checker=safety_checker,
        base=base,
        peak_stage=peak_stage,
        overhead=total - subtotal,
        total=total,
        **stages,
    )


def _latent_pixels(height: int, width: int) -> int:
    """(H/8) x (W/8), with the seed's H/8 read as whole latent pixels (floor), as the pipeline rounds down."""
    return (height // VAE_SCALE_FACTOR) * (width // VAE_SCALE_FACTOR)
