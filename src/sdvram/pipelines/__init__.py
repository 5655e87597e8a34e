"""The pipeline families sdvram builds, profiles and simulates, in one ordered table (as diffusers'
``auto_pipeline.py`` keeps its name -> class tables): one module per family, each a list of ``Family`` records.
Adding a family is one module here and one folder of configs in ``data/``. Pure Python.
"""

from __future__ import annotations

from sdvram.errors import InputError
from sdvram.pipelines import sd15, sd21, sdxl
from sdvram.pipelines.family import IMAGE, IMAGE_AND_MASK, TEXT, Component, Defaults, Family, StageHook

FAMILIES: dict[str, Family] = {family.name: family for family in (*sd15.FAMILIES, *sd21.FAMILIES, *sdxl.FAMILIES)}
DEFAULT = sd15.IMG2IMG.name  # the seed's pipeline


def find_family(name: str) -> Family:
    """The family called ``name``, or one sentence listing the ones that exist."""
    family = FAMILIES.get(name.strip().lower())
    if family is None:
        raise InputError("Unknown {pipeline} '{got}'; the pipelines are {known}.", params=("pipeline",),
                         got=name, known=", ".join(FAMILIES))
    return family


__all__ = ["DEFAULT", "FAMILIES", "IMAGE", "IMAGE_AND_MASK", "TEXT", "Component", "Defaults", "Family", "StageHook",
           "find_family"]
