"""Gatekeeping for the optional extras: one clear sentence and exit code 4 instead of an ImportError."""

from __future__ import annotations

import importlib
import importlib.util
import signal
import threading

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


# What the commands that run the pipeline import before they start: torch, diffusers and transformers through the
# project's own modules (diffusers imports its models lazily, on first use).
HEAVY_MODULES = ("sdvram.pipeline", "sdvram.simulate", "sdvram.profiler")


def import_uninterrupted(modules: tuple[str, ...] = HEAVY_MODULES) -> None:
    """Import ``modules`` with Ctrl-C held back until they are loaded, then raise the KeyboardInterrupt it asked
    for. A KeyboardInterrupt inside an import leaves a half-initialised module behind (numpy's lazy ``dtypes``
    then recurses until a RecursionError), so an interrupt during the seconds torch takes to import became a
    traceback instead of "interrupted"."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        for module in modules:
            importlib.import_module(module)
        return
    asked: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: asked.append(signum))
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        signal.signal(signal.SIGINT, previous)
    if asked:
        raise KeyboardInterrupt
