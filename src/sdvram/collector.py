"""Python's cyclic garbage collector while a command loads its libraries and builds its pipeline.

Importing torch, diffusers and transformers makes about half a million objects that live as long as the process, and
building a pipeline on meta many more. Python's collector walks every one of them at each full collection: the
imports alone set off six, 0.67 s of their 3.6 s on the 2-core development machine (``benchmarks/imports.py`` prints
F with the collector paused beside F), and the first simulated run after a build one more, 0.2 s. Loading makes
almost no cyclic garbage (those collections found 10 to 50 objects each). So a load runs with the collector paused,
and what it made is then frozen (``gc.freeze``: moved to a generation no collection walks), as Python's ``gc``
documentation suggests for what a program keeps for its whole life; the collector then walks only what the runs
make.

A search (``fit``, ``sweep``) then runs dozens of simulations, and each leaves its calls' logs in the simulator for
the runs after it (``CallReplay``): hundreds of thousands of objects by the end of a fit, which the full collections
among the runs walked again and again, 0.85 s of a 12 s search. So a search freezes what each run leaves
(``settle``). The run's own garbage is gone by then: its meter, the one cycle a run makes, is taken apart at its end
(``LiveTensorMeter.forget``), and what a frozen run might still hold in a cycle stays until the process ends (20 MB
over a fit's 48 runs here).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived() -> Iterator[None]:
    """Run the block with the collector paused, then freeze every object so far (the block's among them) and let
    the collector go on as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def settle() -> None:
    """After a run of a search: what it left for the runs after it lives as long as they do (see above)."""
    gc.freeze()
