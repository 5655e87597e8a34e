"""Gatekeeping for the optional extras: one clear sentence and exit code 4 instead of an ImportError."""

from __future__ import annotations

import importlib
import importlib.util
import signal
import threading

from sdvram.collector import long_lived

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


TERMINATED: list[int] = []  # SIGTERM arrived during this command (its interruption exits 143, not Ctrl-C's 130)
# What an allocation that the host cannot serve says, from Python, libc, the C++ runtime and PyTorch's CPU allocator
HOST_OOM_SIGNS = ("cannot allocate memory", "can't allocate memory", "failed to map segment", "std::bad_alloc",
                  "out of memory", "memoryerror")


# The address space a run needs before it can even start: importing torch, diffusers and transformers reserved 0.8
# GiB here (VmPeak), a 512 x 512 simulation peaked at 1.0 GiB; under a smaller limit (ulimit -v, prlimit --as) the
# libraries fail inside C++ (std::bad_alloc aborts the process) where no sentence can be printed, so it is refused
# before they load.
ADDRESS_SPACE_FLOOR = 3 * 2**29  # 1.5 GiB


def check_address_space() -> None:
    """HostOutOfMemory when the process may not use enough memory to load the libraries (RLIMIT_AS)."""
    try:
        import resource
    except ImportError:  # not POSIX: no such limit to read
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < ADDRESS_SPACE_FLOOR:
        from sdvram.errors import HostOutOfMemory

        raise HostOutOfMemory(f"This process may use only {soft / 2**20:,.0f} MiB of memory (ulimit -v, prlimit --as); "
                              f"loading torch and running a simulation needs at least "
                              f"{ADDRESS_SPACE_FLOOR / 2**30:g} GiB of the host's memory (not the GPU's).")


def host_out_of_memory(exc: BaseException) -> bool:
    """Does ``exc`` (or the worker traceback it carries) say the host ran out of memory?"""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    # "CUDA out of memory", "CUDA error: out of memory": the GPU's, which the profile reports with its stage
    return "cuda" not in text and any(sign in text for sign in HOST_OOM_SIGNS)


def import_uninterrupted(modules: tuple[str, ...] = HEAVY_MODULES) -> None:
    """Import ``modules`` with Ctrl-C held back until they are loaded, then raise the KeyboardInterrupt it asked
    for. A KeyboardInterrupt inside an import leaves a half-initialised module behind (numpy's lazy ``dtypes``
    then recurses until a RecursionError), so an interrupt during the seconds torch takes to import became a
    traceback instead of "interrupted"."""
    check_address_space()

    def load() -> None:
        with long_lived():  # what the libraries make lives as long as the process (collector.py)
            for module in modules:
                importlib.import_module(module)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        load()
        return
    asked: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: asked.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        load()
    except (ImportError, OSError, MemoryError) as exc:  # the extras are there (checked first): a failed load is
        if host_out_of_memory(exc):  # the host's
            from sdvram.errors import HostOutOfMemory

            raise HostOutOfMemory("This machine ran out of memory loading torch (the host's RAM, not the GPU's); "
                                  "close other programs and try again.") from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked:
        if asked[0] == signal.SIGTERM:
            from sdvram.errors import Terminated

            TERMINATED.append(asked[0])
            raise Terminated()
        raise KeyboardInterrupt
