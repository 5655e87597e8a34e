"""The stages of an SD v1.5 img2img run: one table that the seed formula, the run records and every
renderer share. Pure Python.

``formula`` names the seed formula's term for the stage (its "Stage 1" to "Stage 4"); the text encoder and
the safety checker have none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # the key in records and JSON
    label: str  # what tables print
    formula: str | None  # the seed formula's term for this stage, if it has one


STAGES = (
    Stage("load", "weights (load)", "base"),
    Stage("text_encoder", "text encoder", None),
    Stage("vae_encode", "VAE encoder", "vae_encode"),
    Stage("unet", "UNet loop", "unet"),
    Stage("vae_decode", "VAE decoder", "vae_decode"),
    Stage("safety_checker", "safety checker", None),
)
BY_NAME = {stage.name: stage for stage in STAGES}
BY_TERM = {stage.formula: stage for stage in STAGES if stage.formula}
ACTIVATION_TERMS = ("vae_encode", "unet", "vae_decode")  # the formula's three activation stages, in order


def label(name: str | None) -> str:
    """The printed label of a stage name (the name itself when it is not a stage)."""
    if name is None:
        return "?"
    stage = BY_NAME.get(name)
    return stage.label if stage else name


def term_label(term: str) -> str:
    """The printed label of a seed-formula term ("base" reads as the load stage's label)."""
    return BY_TERM[term].label
