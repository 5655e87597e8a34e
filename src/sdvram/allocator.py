"""A model of PyTorch's CUDA caching allocator, in pure Python (no torch needed to use it).

It follows ``DeviceCachingAllocator`` in PyTorch's ``c10/cuda/CUDACachingAllocator.cpp`` (2.x, default
settings: no ``PYTORCH_CUDA_ALLOC_CONF``, so ``max_split_size`` is unlimited, expandable segments and
garbage collection are off, one stream, no CUDA graphs). Names mirror the functions they model:

- ``round_size``: a request is rounded up to a multiple of 512 bytes (kMinBlockSize); below 512 to 512.
- ``get_pool``: a rounded size of at most 1 MiB (kSmallSize) is served from the small pool, else the large.
- ``get_allocation_size``: a new segment (one cudaMalloc) is 2 MiB (kSmallBuffer) for the small pool, 20 MiB
  (kLargeBuffer) for requests under 10 MiB (kMinLargeAlloc), else the request rounded up to 2 MiB
  (kRoundLarge).
- ``get_free_block``: the smallest free block of the pool that holds the request, the lowest address among
  equal sizes (the pool is a set ordered by stream, size, address; ``lower_bound``).
- ``should_split``: the block is split when the remainder is at least 512 bytes (small pool) or more than
  1 MiB (large pool); otherwise the whole block is handed out, and ``allocated`` counts all of it
  (``requested`` counts the request). The request takes the block's low end; the remainder stays free.
- ``free_block``: a freed block merges with free neighbours of its segment (``try_merge_blocks``).
- ``alloc_block`` / ``release_cached_blocks``: when no free block fits, a segment is cudaMalloc'd; if that
  fails (here: ``reserved`` + the segment would exceed ``capacity``), every wholly free segment is released
  (cudaFree) and the cudaMalloc retried once; if that fails too, out of memory.

``allocated``, ``reserved`` and ``requested`` are what ``torch.cuda.memory_stats()`` calls
``allocated_bytes.all.current`` (``torch.cuda.memory_allocated()``), ``reserved_bytes.all.current``
(``memory_reserved()``) and ``requested_bytes.all.current``; their ``peak_*`` are the ``.peak`` values,
which ``reset_peaks`` resets as ``torch.cuda.reset_peak_memory_stats()`` does.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1_048_576  # kSmallSize: the largest "small" allocation is 1 MiB
K_SMALL_BUFFER = 2_097_152  # kSmallBuffer: "small" allocations are packed in 2 MiB segments
K_LARGE_BUFFER = 20_971_520  # kLargeBuffer: allocations between 1 and 10 MiB share 20 MiB segments
K_MIN_LARGE_ALLOC = 10_485_760  # kMinLargeAlloc: from 10 MiB a request gets a segment of its own size
K_ROUND_LARGE = 2_097_152  # kRoundLarge: large segments are rounded up to 2 MiB
# A pool is a list of free blocks sorted by size, then address, as the allocator's BlockPool set is ordered
# (BlockComparatorSize); each is kept as one integer, size << ADDRESS_BITS | address, which sorts the same and
# compares faster than a pair. Device addresses are below 2**64.
ADDRESS_BITS = 64
ADDRESS_MASK = (1 << ADDRESS_BITS) - 1
SEGMENT_ALIGNMENT = K_ROUND_LARGE  # where the model places segments when no address is given (cudaMalloc
# returns addresses aligned to at least 256 bytes; 2 MiB keeps the model's addresses readable)


def round_size(size: int) -> int:
    """``round_size``: the bytes a request of ``size`` takes."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    return K_MIN_BLOCK_SIZE * ((size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)


def get_allocation_size(rounded: int) -> int:
    """``get_allocation_size``: the size of the segment cudaMalloc'd for a request that no free block holds."""
    if rounded <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if rounded < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((rounded + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def should_split(block_size: int, rounded: int, small: bool) -> bool:
    """``should_split``: is the remainder worth keeping as a free block of its own?"""
    remaining = block_size - rounded
    return remaining >= K_MIN_BLOCK_SIZE if small else remaining > K_SMALL_SIZE


class Block:
    """A block of a segment: allocated, or free in its pool. ``prev``/``next`` are its neighbours in the
    segment (None at the segment's ends)."""

    __slots__ = ("addr", "size", "requested", "allocated", "small", "segment", "prev", "next")

    def __init__(self, addr: int, size: int, small: bool, segment: int) -> None:
        self.addr, self.size, self.small, self.segment = addr, size, small, segment
        self.requested = 0
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


@dataclass(frozen=True)
class Segment:
    """One cudaMalloc: where it is and how large, for reports and trace comparison."""

    index: int
    addr: int
    size: int
    small: bool


class AllocatorOutOfMemory(Exception):
    """No free block holds the request and no segment can be cudaMalloc'd within the capacity, even after
    releasing every wholly free cached segment."""

    def __init__(self, request: int, segment: int, allocated: int, reserved: int, capacity: int) -> None:
        super().__init__(f"out of memory: a request of {request} bytes needs a {segment}-byte segment; "
                         f"{allocated} allocated, {reserved} reserved of {capacity}")
        self.request, self.segment, self.allocated, self.reserved, self.capacity = (
            request, segment, allocated, reserved, capacity)


class CachingAllocator:
    """The allocator's state and statistics. ``capacity`` (bytes cudaMalloc may hand out in all; None for
    unlimited) makes ``malloc`` raise ``AllocatorOutOfMemory`` where the real allocator would.
    ``segment_address(size)`` may give the address of each new segment (a trace's ``segment_alloc``
    addresses, to compare block placements); by default segments are placed one above the other."""

    def __init__(self, capacity: int | None = None, segment_address: Callable[[int], int] | None = None) -> None:
        self.capacity = capacity
        self._segment_address = segment_address
        self._next_address = SEGMENT_ALIGNMENT
        self._free: dict[bool, list[int]] = {True: [], False: []}  # pool -> sorted size << ADDRESS_BITS | addr
        self._free_blocks: dict[int, Block] = {}  # addr -> free block
        self.segments: dict[int, Segment] = {}  # live segments by index
        self._segment_count = 0
        self.allocated = self.reserved = self.requested = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = 0
        self.cuda_mallocs = self.cuda_frees = 0

    # -- the two calls a program makes -------------------------------------------------------------------
    def malloc(self, size: int) -> Block:
        """``DeviceCachingAllocator::malloc`` for a request of ``size`` bytes (size > 0). The hot path of every
        simulation: ``round_size``, ``get_pool``, ``get_free_block``, ``should_split`` and the pool insert are
        written out here rather than called."""
        rounded = K_MIN_BLOCK_SIZE if size < K_MIN_BLOCK_SIZE else \
            (size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE * K_MIN_BLOCK_SIZE
        small = rounded <= K_SMALL_SIZE
        pool = self._free[small]
        at = bisect_left(pool, rounded << ADDRESS_BITS)
        block = self._free_blocks.pop(pool.pop(at) & ADDRESS_MASK) if at < len(pool) else \
            self._alloc_block(rounded, small)
        remaining_size = block.size - rounded
        if remaining_size >= K_MIN_BLOCK_SIZE if small else remaining_size > K_SMALL_SIZE:
            remaining = block
            block = Block(remaining.addr, rounded, small, remaining.segment)
            block.prev = prev = remaining.prev
            block.next = remaining
            if prev is not None:
                prev.next = block
            remaining.prev = block
            remaining.addr += rounded
            remaining.size = remaining_size
            insort(pool, remaining_size << ADDRESS_BITS | remaining.addr)
            self._free_blocks[remaining.addr] = remaining
        block.allocated = True
        block.requested = size
        self.allocated += block.size
        self.requested += size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        return block

    def free(self, block: Block) -> None:
        """``free`` then ``free_block``: the block returns to its pool, merged with free neighbours (the pool
        updates written out, as in ``malloc``)."""
        if not block.allocated:
            raise ValueError("block is not allocated")
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        block.requested = 0
        pool, free_blocks = self._free[block.small], self._free_blocks
        prev, after = block.prev, block.next
        if prev is not None and not prev.allocated:
            del pool[bisect_left(pool, prev.size << ADDRESS_BITS | prev.addr)]
            del free_blocks[prev.addr]
            block.addr = prev.addr
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
            block.size += prev.size
        if after is not None and not after.allocated:
            del pool[bisect_left(pool, after.size << ADDRESS_BITS | after.addr)]
            del free_blocks[after.addr]
            block.next = after.next
            if after.next is not None:
                after.next.prev = block
            block.size += after.size
        insort(pool, block.size << ADDRESS_BITS | block.addr)
        free_blocks[block.addr] = block

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: release every wholly free segment (``release_cached_blocks``)."""
        self._release_cached_blocks()

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``: each peak restarts from the current value."""
        self.peak_allocated, self.peak_reserved, self.peak_requested = self.allocated, self.reserved, self.requested

    # -- the allocator's own steps -----------------------------------------------------------------------
    def _alloc_block(self, rounded: int, small: bool) -> Block:
        segment_size = get_allocation_size(rounded)
        if not self._fits(segment_size):
            self._release_cached_blocks()  # release_available_cached_blocks does nothing by default
            if not self._fits(segment_size):
                raise AllocatorOutOfMemory(rounded, segment_size, self.allocated, self.reserved,
                                           self.capacity or 0)
        if self._segment_address is not None:
            addr = self._segment_address(segment_size)
        else:
            addr = self._next_address
            self._next_address += -(-segment_size // SEGMENT_ALIGNMENT) * SEGMENT_ALIGNMENT
        index = self._segment_count
        self._segment_count += 1
        self.segments[index] = Segment(index, addr, segment_size, small)
        self.reserved += segment_size
        self.cuda_mallocs += 1
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
        return Block(addr, segment_size, small, index)

    def _fits(self, segment_size: int) -> bool:
        return self.capacity is None or self.reserved + segment_size <= self.capacity

    def _release_cached_blocks(self) -> None:
        """Free every cached block that is a whole segment (``release_blocks`` on both pools)."""
        for small in (False, True):
            for key in list(self._free[small]):
                block = self._free_blocks[key & ADDRESS_MASK]
                if not block.is_split():
                    self._remove_free(block)
                    del self.segments[block.segment]
                    self.reserved -= block.size
                    self.cuda_frees += 1

    def _remove_free(self, block: Block) -> None:
        pool = self._free[block.small]
        del pool[bisect_left(pool, block.size << ADDRESS_BITS | block.addr)]
        del self._free_blocks[block.addr]

    # -- views ---------------------------------------------------------------------------------------------
    def free_blocks(self) -> list[Block]:
        """Every cached free block, by address."""
        return sorted(self._free_blocks.values(), key=lambda b: b.addr)


class AllocatorAccountant:
    """The accounting seam's view of the model: allocations and frees by the caller's key."""

    def __init__(self, allocator: CachingAllocator) -> None:
        self.allocator = allocator
        self._blocks: dict[Hashable, Block] = {}

    @property
    def allocated(self) -> int:
        return self.allocator.allocated

    @property
    def reserved(self) -> int | None:
        return self.allocator.reserved

    @property
    def requested(self) -> int:
        return self.allocator.requested

    def alloc(self, key: Hashable, size: int) -> int:
        block = self.allocator.malloc(size)
        self._blocks[key] = block
        return block.size

    def free(self, key: Hashable) -> None:
        self.allocator.free(self._blocks.pop(key))

    def charged(self, key: Hashable) -> int:
        return self._blocks[key].size

    def empty_cache(self) -> None:
        self.allocator.empty_cache()

    def replay_events(self, program: list[tuple[Any, ...]], keys: Iterator[int],
                      refused: Callable[[Any, AllocatorOutOfMemory], None]) -> tuple[dict[int, int], tuple[int, ...]]:
        """Make and free a logged sequence of allocations in one call: what a tracker would report one by one,
        without its bookkeeping per event. ``program`` holds ``("events", [event, ...])``, each event
        ``("alloc", log_key, info)`` or ``("free", log_key)``, and ``("repeat", window, count)``
        (``meters.repeated_windows``: a window frees all it allocates). A window that cudaMalloc'd and released
        nothing leaves the allocator as it found it (the free blocks are the maximal free runs between the
        allocated blocks, which are the same again), so a repetition of it would do exactly what it did: it is
        run once, or again only while it changes the segments. ``refused(info, error)`` is called where the
        capacity refuses an allocation (it may raise; else the allocation is retried). Returns the log keys of
        what is left live -> new keys from ``keys``, and the peaks (allocated, reserved, requested) reached
        meanwhile."""
        allocator = self.allocator
        saved = allocator.peak_allocated, allocator.peak_reserved, allocator.peak_requested
        allocator.reset_peaks()
        malloc, free = allocator.malloc, allocator.free
        blocks: dict[int, Block] = {}

        def run(events: Sequence[tuple[Any, ...]]) -> None:
            for event in events:
                if event[0] == "alloc":
                    try:
                        blocks[event[1]] = malloc(event[2].size)
                    except AllocatorOutOfMemory as exc:
                        refused(event[2], exc)
                        blocks[event[1]] = malloc(event[2].size)
                else:
                    free(blocks.pop(event[1]))

        try:
            for item in program:
                if item[0] == "events":
                    run(item[1])
                    continue
                for _ in range(item[2]):
                    segments = allocator.cuda_mallocs, allocator.cuda_frees
                    run(item[1])
                    if (allocator.cuda_mallocs, allocator.cuda_frees) == segments:
                        break
        finally:
            peaks = allocator.peak_allocated, allocator.peak_reserved, allocator.peak_requested
            allocator.peak_allocated, allocator.peak_reserved, allocator.peak_requested = (
                max(a, b) for a, b in zip(saved, peaks, strict=True))
        left = {}
        for log_key, block in blocks.items():
            key = left[log_key] = next(keys)
            self._blocks[key] = block
        return left, peaks

    def lift_capacity(self) -> None:
        """Let the run go on past an out-of-memory, to show what it would need."""
        self.allocator.capacity = None
