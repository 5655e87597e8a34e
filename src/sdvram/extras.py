"""Gatekeeping for the optional extras: one clear sentence and exit code 4 instead of an ImportError."""

from __future__ import annotations

import importlib.util

PROFILE_MODULES = ("torch", "diffusers", "transformers")  # what `pip install 'sdvram[profile]'` brings
OFFLOAD_MODULES = ("accelerate",)  # the profile extra's too; only a real run with CPU offload needs it
PLOT_MODULES = ("matplotlib",)  # the plot extra: --png, --timeline, sdvram plot


def require_profile_extra(modules: tuple[str, ...] = PROFILE_MODULES, extra: str = "profile") -> None:
    """Raise ``MissingExtraError`` naming the first of ``modules`` (of ``extra``) that cannot be imported."""
    from sdvram.errors import MissingExtraError

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None  # finds without importing (torch takes seconds)
        except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
            found = False
        if not found:
            raise MissingExtraError(extra, module)
