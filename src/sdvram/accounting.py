"""The accounting seam: a tracker of tensors (``meters.LiveTensorMeter``) reports every allocation and free
to an accountant, which decides what they cost. Pure Python.

- ``LiveBytes`` sums the live bytes, each request rounded up to a granularity: the CPU (granularity 1), or
  the CUDA allocator's 512-byte rounding without its caching.
- ``allocator.AllocatorAccountant`` runs the model of PyTorch's CUDA caching allocator: block splitting,
  segments, ``reserved``.

A transient (a kernel's workspace) is an ``alloc`` followed by a ``free``: its cost depends on what the
accountant holds at that moment, as on a GPU.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol


class Accountant(Protocol):
    """What the trackers report to. ``allocated`` is what ``torch.cuda.memory_allocated()`` would show,
    ``reserved`` what ``memory_reserved()`` would (None where there is no such thing), ``requested`` the
    sum of the live requests as made."""

    @property
    def allocated(self) -> int: ...

    @property
    def reserved(self) -> int | None: ...

    @property
    def requested(self) -> int: ...

    def alloc(self, key: Hashable, size: int) -> int:
        """Account a request of ``size`` bytes (> 0) under ``key``; return the bytes it is charged."""
        ...

    def free(self, key: Hashable) -> None: ...

    def charged(self, key: Hashable) -> int:
        """What the live allocation ``key`` is charged now."""
        ...

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: give cached, wholly free memory back (nothing to do without a cache)."""
        ...


class LiveBytes:
    """Live bytes, each allocation rounded up to ``granularity``."""

    reserved = None

    def __init__(self, granularity: int = 1) -> None:
        self.granularity = granularity
        self.allocated = 0
        self.requested = 0
        self._sizes: dict[Hashable, tuple[int, int]] = {}

    def alloc(self, key: Hashable, size: int) -> int:
        charged = -(-size // self.granularity) * self.granularity
        self._sizes[key] = (charged, size)
        self.allocated += charged
        self.requested += size
        return charged

    def free(self, key: Hashable) -> None:
        charged, size = self._sizes.pop(key)
        self.allocated -= charged
        self.requested -= size

    def charged(self, key: Hashable) -> int:
        return self._sizes[key][0]

    def empty_cache(self) -> None:
        pass  # nothing is cached
