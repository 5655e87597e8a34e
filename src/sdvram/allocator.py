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

from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import add
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


def _split(pool: list[int], free_blocks: dict[int, Block], block: Block, rounded: int, remaining_size: int) -> Block:
    """``should_split`` said yes: the free ``block``'s low ``rounded`` bytes as a block of their own (returned), its
    remaining ``remaining_size`` bytes back in ``pool``."""
    remaining = block
    block = Block(remaining.addr, rounded, remaining.small, remaining.segment)
    block.prev = prev = remaining.prev
    block.next = remaining
    if prev is not None:
        prev.next = block
    remaining.prev = block
    remaining.addr += rounded
    remaining.size = remaining_size
    insort(pool, remaining_size << ADDRESS_BITS | remaining.addr)
    free_blocks[remaining.addr] = remaining
    return block


def _merge(pool: list[int], free_blocks: dict[int, Block], block: Block) -> None:
    """``free_block``: a freed ``block`` back in ``pool``, merged with the free neighbours of its segment
    (``try_merge_blocks``)."""
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


class ReplayConflict(Exception):
    """A replay split by pool (``AllocatorAccountant.replay_events``) came to a cudaMalloc the capacity refuses:
    the allocator would release cached segments of both pools, which the split cannot order. The run is to be
    simulated again without the split."""


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
        self.guarded = False  # set while a replay split by pool runs: a refused cudaMalloc raises ReplayConflict

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
            block = _split(pool, self._free_blocks, block, rounded, remaining_size)
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
        _merge(self._free[block.small], self._free_blocks, block)

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
            if self.guarded:
                raise ReplayConflict()
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


FEW_EVENTS = 8  # a program this short runs event by event, not split (``replay_events``): a split replay's fixed cost
# (both pools' free blocks copied and looked up, the remembered trajectories tried) is some 20 us, an event run 1 to 2;
# the VAE's tiles' 1 x 1 convolutions (quant_conv, post_quant_conv: one to three events) are 3,500 calls of a tiled
# run at 15,900 px
POOL_MEMO = 4  # start states remembered per program and pool: a UNet call mostly finds its large pool as the
# call before it left it (40 of the 44 calls of a run at 1904 x 1904 px on 12 GB); a few more cover the VAE's tiles


WINDOW_CHARGES = 1024  # repeated windows whose charge is kept (``AllocatorAccountant._charged_window``): a tiled run
# blends with a few dozen; the cache is emptied when full, so that it keeps no window alive for long

BESIDE_MEMO = 2 * POOL_MEMO  # sums kept per trajectory (``Trajectory.beside``): the large pool's remembered starts,
# and as many again while they are replaced


class Program(list):  # type: ignore[type-arg]
    """A replay program (``AllocatorAccountant.replay_events``) that keeps what its replays learned: for each
    pool, where the program's blocks went from each recent start state of that pool (``Trajectory``). A plain
    list is replayed event by event."""

    __slots__ = ("_plan", "pools", "applied", "moved", "charged_windows", "bounded")

    def __init__(self, items: Sequence[tuple[Any, ...]] = ()) -> None:
        super().__init__(items)
        self._plan: _Plan | None | bool = False  # False: not worked out yet; None: the program cannot be split
        self.pools: dict[bool, dict[tuple[int, ...], Trajectory]] = {True: {}, False: {}}
        self.applied = 0  # trajectories applied instead of their events (for tests and benchmarks)
        self.moved = 0  # of those, applied to a start with one free block moved or shrunk (``_moved``)
        self.charged_windows = 0  # small-pool windows charged instead of run
        self.bounded = False  # a shrunk block's bound was worked out for one of its trajectories (``_moved``): its
        # runs note their picks from then on (``Trajectory.picks``), which the next bounds read

    def plan(self) -> _Plan | None:
        if self._plan is False:
            self._plan = _Plan.of(self)
        return self._plan  # type: ignore[return-value]

    def remember(self, small: bool, start: tuple[int, ...], trajectory: Trajectory) -> None:
        memo = self.pools[small]
        if len(memo) >= POOL_MEMO:
            del memo[next(iter(memo))]
        memo[start] = trajectory


@dataclass
class _Plan:
    """A program's events in order, where each pool's are, and what does not depend on the allocator's state: the
    most bytes requested at once, less at the start (requests are counted unrounded)."""

    events: list[tuple[Any, ...]]
    requested_peak: int
    indices: dict[bool, list[int]]  # per pool: its events' places in ``events``
    small_runs: list[tuple[Any, ...]]  # the small pool's events as ``_small_runs`` groups them
    left: list[Any]  # the keys of what the events leave allocated, in the order made
    least: dict[bool, int]  # per pool: its smallest request, rounded (beyond any block where it has none)
    # the events after which the two pools' bytes together may be at their most: each event changes one pool's bytes,
    # up at an allocation (a block is at least 512 bytes) and down at a free, so the most is reached after an
    # allocation that the last event is, or a free follows (a quarter of a UNet call's events)
    rises: list[int]
    # per pool, worked out at its first bound (``requests``): its events as (key, rounded request; 0 for a free)
    _requests: dict[bool, list[tuple[Any, int]]] = field(default_factory=dict)
    _walked: dict[bool, list[tuple[Any, int]]] = field(default_factory=dict)  # ``walked``, likewise

    def requests(self, small: bool) -> list[tuple[Any, int]]:
        """The pool's events as ``_shrink_bound`` walks them: each allocation's key and rounded request, each free's
        key and 0."""
        found = self._requests.get(small)
        if found is None:
            found = self._requests[small] = [
                (event[1], round_size(event[2].size)) if event[0] == "alloc" else (event[1], 0)
                for event in (self.events[i] for i in self.indices[small])]
        return found

    def walked(self, small: bool) -> list[tuple[Any, int]]:
        """``requests`` as ``_shrink_bound`` needs them: less each of the small pool's windows (``_small_runs``) that
        repeats, request for request (the same rounded sizes, each free freeing the allocation at the same place in
        its window), a window before it with only windows between them. A window frees all it makes and nothing
        else, so the walk's pool comes out of it as it went in (the same free runs between the same allocated
        blocks; the tail, the free block ending where the followed block ends, the same again, or the walk has
        stopped at 0): every window of such a stretch finds the pool as the first found it, and a repetition makes
        the choices the earlier window made and adds nothing to the bound. A VAE tile's small pool is mostly such
        stretches (GroupNorm's temporaries and a convolution's workspace, block after block alike)."""
        found = self._walked.get(small)
        if found is not None:
            return found
        requests = self.requests(small)
        if not small:
            found = self._walked[small] = requests
            return found
        at = {i: n for n, i in enumerate(self.indices[small])}  # an event's place among the pool's requests
        found, stretch = [], set()  # the shapes of the windows walked since the last events outside a window
        for run in self.small_runs:
            if run[0] == "window":
                if run[4] in stretch:
                    continue
                stretch.add(run[4])
            else:
                stretch.clear()
            found.extend(requests[at[i]] for i in run[1])
        self._walked[small] = found
        return found

    @classmethod
    def of(cls, program: Sequence[tuple[Any, ...]]) -> _Plan | None:
        if any(item[0] != "events" for item in program):  # repeated windows: replayed once each already
            return None
        events = [event for item in program for event in item[1]]
        made: dict[Any, tuple[int, bool]] = {}
        small, level, requested = [], 0, 0
        for event in events:
            if event[0] == "alloc":
                size = event[2].size
                made[event[1]] = size, round_size(size) <= K_SMALL_SIZE
                level += size
                requested = max(requested, level)
            elif event[1] in made:
                level -= made[event[1]][0]
            else:  # frees what it did not make: not split
                return None
            small.append(made[event[1]][1])
        indices = {which: [i for i, flag in enumerate(small) if flag is which] for which in (True, False)}
        freed = {event[1] for event in events if event[0] == "free"}
        left = [event[1] for event in events if event[0] == "alloc" and event[1] not in freed]
        least = {which: min((round_size(events[i][2].size) for i in indices[which] if events[i][0] == "alloc"),
                            default=1 << ADDRESS_BITS) for which in (True, False)}
        rises = [i for i, event in enumerate(events)
                 if event[0] == "alloc" and (i + 1 == len(events) or events[i + 1][0] != "alloc")]
        return cls(events, requested, indices, _small_runs(events, indices[True]), left, least, rises)


def window_bounds(events: Sequence[tuple[Any, ...]]) -> tuple[dict[Any, int], dict[int, int]]:
    """For ``window_end``: each allocation's place in ``events`` by its key, and the place of its free by the
    allocation's place."""
    index = {e[1]: i for i, e in enumerate(events) if e[0] == "alloc"}
    freed = {index[e[1]]: i for i, e in enumerate(events) if e[0] == "free" and e[1] in index}
    return index, freed


def window_end(events: Sequence[tuple[Any, ...]], index: dict[Any, int], freed: dict[int, int],
               start: int) -> int | None:
    """The last event of the shortest net-zero window starting at ``start``: a run of events that frees every
    allocation it makes and nothing else (None if there is none)."""
    if events[start][0] != "alloc" or start not in freed:
        return None
    end, k = freed[start], start
    while k <= end:
        event = events[k]
        if event[0] == "alloc":
            if k not in freed:
                return None
            end = max(end, freed[k])
        elif index.get(event[1], -1) < start:  # frees something made before the window
            return None
        k += 1
    return end


def _small_runs(events: list[tuple[Any, ...]], indices: list[int]) -> list[tuple[Any, ...]]:
    """The small pool's events (at ``indices``) as ``("events", indices)`` (a run of them outside any window, replayed
    in one call) and ``("window", indices, total, charged, shape)``:
    a window is a run of them that frees all it makes (net zero, as short as it can be), ``total`` the bytes its
    allocations take, ``charged`` each event's bytes (less for a free), ``shape`` its events as the allocator sees
    them (each allocation's rounded size, each free as minus one less the place in the window of the allocation it
    frees: ``_Plan.walked``).

    In the small pool a block is charged exactly its rounded request: every size there is a multiple of 512,
    so a remainder is either nothing or at least kMinBlockSize, and ``should_split`` splits it off. And a
    window whose allocations together fit in the pool's largest free block needs no new segment: requests take
    the low end of the block they are given, so the free top of that largest block shrinks by at most the
    window's allocations before each of them, and each finds a block. Such a window leaves the pool's blocks
    as they were (its blocks all freed, the same maximal free runs) and charges what ``charged`` says,
    whatever the pool's state: it need not be run."""
    own = [events[i] for i in indices]
    index, freed = window_bounds(own)
    runs: list[tuple[Any, ...]] = []
    n = 0
    while n < len(indices):
        end = window_end(own, index, freed, n)
        if end is None:
            if runs and runs[-1][0] == "events":
                runs[-1][1].append(indices[n])
            else:
                runs.append(("events", [indices[n]]))
            n += 1
            continue
        window = indices[n:end + 1]
        rounded: dict[Any, int] = {}
        places: dict[Any, int] = {}
        charged, shape = [], []
        for place, i in enumerate(window):
            event = events[i]
            if event[0] == "alloc":
                rounded[event[1]] = round_size(event[2].size)
                places[event[1]] = place
                charged.append(rounded[event[1]])
                shape.append(rounded[event[1]])
            else:  # a free gives back what its allocation took
                charged.append(-rounded[event[1]])
                shape.append(-1 - places[event[1]])
        runs.append(("window", window, sum(rounded.values()), charged, tuple(shape)))
        n = end + 1
    return runs


@dataclass
class Trajectory:
    """What a program's events did in one pool from one start state of it, when they cudaMalloc'd nothing: each
    free block of the start they carved (its address and size) and the blocks it is now, by address (address,
    size, and for a block left allocated its key in the program and its request); the pool's allocated bytes made
    by the program after each event where both pools' may be at their most (``_Plan.rises``; the other pool's
    events included); and the bytes it leaves allocated and requested."""

    changes: list[tuple[int, int, list[tuple[int, int, Any, int]]]]
    deltas: array  # type: ignore[type-arg]
    allocated: int
    requested: int
    shrinkable: dict[int, int] = field(default_factory=dict)  # start block's address -> ``_shrink_bound``
    # for ``_moved``, worked out at its first look: the start's blocks as a set, and their addresses in order
    members: frozenset[int] | None = None
    addresses: list[int] | None = None
    # the most bytes this (small pool's) trajectory and a large pool's made at once, by the large one's id (and the
    # trajectory itself, so that an id reused after it was forgotten is not taken for it): a VAE tile's call applies
    # the same two trajectories again and again, and their sum event by event is the same each time
    beside: dict[int, tuple[Trajectory, int]] = field(default_factory=dict)
    # what each of the pool's events took or left, noted as its run went (``AllocatorAccountant._run_indexed``): the
    # free block an allocation was carved from, and the block a free left once merged, each as ``size << ADDRESS_BITS
    # | address``; None where a run skipped some (``_run_small``'s windows). ``_shrink_bound`` reads its choices there
    # rather than making them again
    picks: list[int] | None = None


class AllocatorAccountant:
    """The accounting seam's view of the model: allocations and frees by the caller's key."""

    def __init__(self, allocator: CachingAllocator, split: bool = True) -> None:
        self.allocator = allocator
        self._blocks: dict[Hashable, Block] = {}
        self.split = split  # replay a ``Program`` pool by pool where it can (``replay_events``)
        # a repeated window's charge (``_charged_window``) by the window's id, with the window (an id is reused once
        # its object is gone)
        self._window_charges: dict[int, tuple[list[tuple[Any, ...]], int | None, int, int]] = {}

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
        capacity refuses an allocation (it may raise; else the allocation is retried). A ``Program`` without
        repeated windows is replayed pool by pool where it can (``_replay_split``). Returns the log keys of
        what is left live -> new keys from ``keys``, and the peaks (allocated, reserved, requested) reached
        meanwhile."""
        plan = program.plan() if self.split and isinstance(program, Program) else None
        if plan is not None and len(plan.events) <= FEW_EVENTS:
            plan = None  # run event by event: cheaper than split (FEW_EVENTS)
        allocator = self.allocator
        saved = allocator.peak_allocated, allocator.peak_reserved, allocator.peak_requested
        allocator.reset_peaks()
        blocks: dict[int, Block] = {}
        split_peaks: tuple[int, int, int] | None = None
        try:
            if plan is not None:
                assert isinstance(program, Program)
                split_peaks = self._replay_split(program, plan, blocks, refused)
                blocks = {key: blocks[key] for key in plan.left}  # in the order made, as one by one
            else:
                self._replay_program(program, blocks, refused)
        finally:
            peaks = split_peaks or (allocator.peak_allocated, allocator.peak_reserved, allocator.peak_requested)
            allocator.peak_allocated = max(saved[0], peaks[0])  # written out: a generator costs more, every call
            allocator.peak_reserved = max(saved[1], peaks[1])
            allocator.peak_requested = max(saved[2], peaks[2])
        left = {}
        for log_key, block in blocks.items():
            key = left[log_key] = next(keys)
            self._blocks[key] = block
        return left, peaks

    def _replay_program(self, program: list[tuple[Any, ...]], blocks: dict[int, Block],
                        refused: Callable[[Any, AllocatorOutOfMemory], None]) -> None:
        allocator = self.allocator
        for item in program:
            events = item[1]
            if item[0] == "events":
                self._run_indexed(events, range(len(events)), blocks, None, refused)
                continue
            if self.split and self._charged_window(events):
                continue
            for _ in range(item[2]):
                segments = allocator.cuda_mallocs, allocator.cuda_frees
                self._run_indexed(events, range(len(events)), blocks, None, refused)
                if (allocator.cuda_mallocs, allocator.cuda_frees) == segments:
                    break

    def _charged_window(self, window: list[tuple[Any, ...]]) -> bool:
        """Charge a repeated window (the rows of a VAE tile's blending) without running it, where it can be: one of the
        small pool's whose allocations together fit in the pool's largest free block leaves the pool as it found it
        and charges each block its rounded request (``_small_runs``), so its repetitions change nothing but the peaks,
        which it raises by the most its events hold at once. False where it must run."""
        charge = self._window_charges.get(id(window))
        if charge is None or charge[0] is not window:
            if len(self._window_charges) >= WINDOW_CHARGES:
                self._window_charges.clear()
            charge = self._window_charges[id(window)] = (window, *_window_charge(window))
        _, total, most_allocated, most_requested = charge
        pool, allocator = self.allocator._free[True], self.allocator
        if total is None or not pool or pool[-1] >> ADDRESS_BITS < total:
            return False
        allocator.peak_allocated = max(allocator.peak_allocated, allocator.allocated + most_allocated)
        allocator.peak_requested = max(allocator.peak_requested, allocator.requested + most_requested)
        return True

    def _replay_split(self, program: Program, plan: _Plan, blocks: dict[int, Block],
                      refused: Callable[[Any, AllocatorOutOfMemory], None]) -> tuple[int, int, int] | None:
        """The program's events, pool by pool where a pool is known (its ``Trajectory`` from this same start).

        While no segment is cudaMalloc'd or released, a pool's blocks move only by its own requests: ``malloc``
        takes a free block of the request's pool and ``free`` merges a block with free neighbours of its segment,
        which is of the same pool. So what the events do in one pool depends on nothing but that pool's free
        blocks at the start (the blocks the program carves and frees lie inside them), and a pool found as it
        was at an earlier replay goes where it went then: its trajectory is applied at once. The other pool is
        replayed event by event (alone, in order: its cudaMallocs then are the run's only ones, as they are
        when interleaved), unless a cudaMalloc it makes would not fit, where the allocator would release cached
        segments of both pools at a moment the split has lost: ``ReplayConflict`` (the run is simulated again
        without the split). The peak allocated is the most of the two pools' bytes added event by event. Where
        neither pool is known, the events run interleaved as they came, and each pool that cudaMalloc'd nothing
        is remembered from its start. Returns the peaks where split, else None (the allocator's own)."""
        allocator = self.allocator
        pools = allocator._free
        starts = {True: tuple(pools[True]), False: tuple(pools[False])}
        # what a pool's events can see of it: its free blocks that hold their smallest request (the pool is sorted by
        # size); a smaller one is never chosen, and never merged with (a free block's neighbours are allocated)
        keys = {which: starts[which][bisect_left(starts[which], plan.least[which] << ADDRESS_BITS):]
                for which in (True, False)}
        found = {which: program.pools[which].get(keys[which]) for which in (True, False)}
        moves: dict[bool, tuple[int, int, int]] = {}
        for which in (True, False):
            if found[which] is None and program.pools[which]:
                hit = self._moved(program, plan, which, keys[which])
                if hit is not None:
                    found[which], moves[which] = hit
        segments, releases = allocator._segment_count, allocator.cuda_frees
        live = [which for which in (True, False) if found[which] is None]
        # each pool's bytes by event, made only where a pool runs (its events write its own list)
        charged = {True: [0] * len(plan.events), False: [0] * len(plan.events)} if live else {}
        # what each event took or left (``Trajectory.picks``), for a program whose bounds are asked for: noting costs
        # a tenth of a run, and most programs' trajectories are never bounded (the UNet's calls)
        picks = [0] * len(plan.events) if live and program.bounded else None
        if len(live) == 2:
            self._run_indexed(plan.events, range(len(plan.events)), blocks, charged, refused, picks)
            for which in (True, False):
                self._remember(program, which, plan, starts[which], keys[which], blocks, charged[which], picks,
                               segments, releases)
            return None
        start_allocated, start_requested = allocator.allocated, allocator.requested
        deltas: list[Any] = []
        for which in live:  # at most one
            allocator.guarded = True
            try:
                if which:
                    skipped = self._run_small(plan, blocks, charged, refused, picks)
                    program.charged_windows += skipped
                    if skipped:  # the windows charged were not run: their choices are not in ``picks``
                        picks = None
                else:
                    self._run_indexed(plan.events, plan.indices[which], blocks, charged, refused, picks)
            finally:
                allocator.guarded = False
            deltas.append(self._remember(program, which, plan, starts[which], keys[which], blocks, charged[which],
                                         picks, segments, releases))
        for which, trajectory in found.items():
            if trajectory is not None:
                self._apply(trajectory, which, blocks, moves.get(which))
                program.applied += 1
                program.moved += which in moves
                deltas.append(trajectory.deltas)
        if live:
            most = max(map(add, *deltas), default=0)  # one trajectory or run for each pool
        else:
            most = _most_beside(found[True], found[False])  # type: ignore[arg-type]
        return (start_allocated + max(0, most), allocator.peak_reserved, start_requested + plan.requested_peak)

    def _run_indexed(self, events: list[tuple[Any, ...]], indices: Sequence[int], blocks: dict[int, Block],
                     charged: dict[bool, list[int]] | None, refused: Callable[[Any, AllocatorOutOfMemory], None],
                     picks: list[int] | None = None) -> None:
        """The events at ``indices``, in order, each block's bytes noted in its pool's ``charged`` where given
        (less for a free), and in ``picks`` what each took or left (``Trajectory.picks``)."""
        malloc, free = self.allocator.malloc, self.allocator.free
        for i in indices:
            event = events[i]
            if event[0] == "alloc":
                try:
                    block = malloc(event[2].size)
                except AllocatorOutOfMemory as exc:
                    refused(event[2], exc)
                    block = malloc(event[2].size)
                blocks[event[1]] = block
                if charged is not None:
                    charged[block.small][i] = block.size
                if picks is not None:  # the free block it was carved from: the request's and, split off, the rest
                    rest = block.next  # (free blocks are never neighbours: a free one beside it is its remainder)
                    picks[i] = (block.size + rest.size if rest is not None and not rest.allocated else block.size) \
                        << ADDRESS_BITS | block.addr
            else:
                block = blocks.pop(event[1])
                if charged is not None:
                    charged[block.small][i] = -block.size
                free(block)
                if picks is not None:  # the block it left, merged with its free neighbours
                    picks[i] = block.size << ADDRESS_BITS | block.addr

    def _run_small(self, plan: _Plan, blocks: dict[int, Block], charged: dict[bool, list[int]],
                   refused: Callable[[Any, AllocatorOutOfMemory], None], picks: list[int] | None = None) -> int:
        """The small pool's events alone, a window that fits in the pool's largest free block not run but
        charged (``_small_runs``); returns how many windows were charged so."""
        pool, events, into = self.allocator._free[True], plan.events, charged[True]
        skipped = 0
        for run in plan.small_runs:
            if run[0] == "window" and pool and pool[-1] >> ADDRESS_BITS >= run[2]:
                for i, bytes_ in zip(run[1], run[3], strict=True):
                    into[i] = bytes_
                skipped += 1
            else:
                self._run_indexed(events, run[1], blocks, charged, refused, picks)
        return skipped

    def _remember(self, program: Program, small: bool, plan: _Plan, start: tuple[int, ...], key: tuple[int, ...],
                  blocks: dict[int, Block], charged: list[int], picks: list[int] | None, segments: int,
                  releases: int) -> array:  # type: ignore[type-arg]
        """The pool's allocated bytes made by the program after each event of ``plan.rises`` (``charged`` summed); and
        its trajectory from ``start`` kept under ``key`` (the start's blocks the events could choose), with what its
        events took and left (``picks``, where noted), if its events cudaMalloc'd nothing and nothing was
        released."""
        allocator = self.allocator
        made = list(accumulate(charged))  # a list: summing into an array directly takes 2.5 times as long
        deltas = array("q", [made[i] for i in plan.rises])
        if allocator.cuda_frees != releases or any(
                allocator.segments[i].small is small for i in range(segments, allocator._segment_count)
                if i in allocator.segments):
            return deltas
        before, after = set(start), set(allocator._free[small])
        carved = sorted(before - after, key=lambda k: k & ADDRESS_MASK)
        pieces: list[tuple[int, int, Any, int]] = [(k & ADDRESS_MASK, k >> ADDRESS_BITS, None, 0)
                                                   for k in after - before]
        pieces += [(b.addr, b.size, key, b.requested) for key, b in blocks.items() if b.small is small]
        pieces.sort(key=lambda piece: piece[0])
        changes: list[tuple[int, int, list[tuple[int, int, Any, int]]]] = []
        at = 0
        for k in carved:
            addr, size = k & ADDRESS_MASK, k >> ADDRESS_BITS
            inside = []
            while at < len(pieces) and pieces[at][0] < addr + size:
                inside.append(pieces[at])
                at += 1
            if not inside or inside[0][0] != addr or any(
                    p[0] + p[1] != q[0] for p, q in zip(inside, inside[1:], strict=False)) \
                    or inside[-1][0] + inside[-1][1] != addr + size:
                return deltas  # not a tiling of the carved block: never expected; nothing is remembered
            changes.append((addr, size, inside))
        if at != len(pieces):
            return deltas
        left = [p for _, _, inside in changes for p in inside if p[2] is not None]
        own = None if picks is None else [picks[i] for i in plan.indices[small]]
        program.remember(small, key, Trajectory(changes, deltas, sum(p[1] for p in left), sum(p[3] for p in left),
                                                picks=own))
        return deltas

    def _moved(self, program: Program, plan: _Plan, small: bool,
               start: tuple[int, ...]) -> tuple[Trajectory, tuple[int, int, int]] | None:
        """A trajectory of the pool remembered from a start that differs from ``start`` in one free block only, which
        has moved or shrunk: as a VAE's tiles are decoded, each tile's output is kept at the low end of the free
        block the tile before it was carved from, so no tile finds its pool as another left it (H200, 15,776 px:
        1,664 of 3,528 tile calls found their large pool so). The trajectory holds from there too, each of its
        pieces in that block moved with it, when every choice its events made is made again:

        - ``get_free_block`` picks the smallest free block that holds a request, the lowest address among equal
          sizes. Block sizes other than the changed one's are as they were; so is every address order, where no
          other free block lies between the block's old and new address (each piece stays inside its own start
          block). So a moved block of the same size changes no choice.
        - A shrunk block changes only its last piece (the free remainder at its top: a request takes a block's
          low end, and a free merges only with free neighbours), by as much as it shrank; ``_shrink_bound`` runs
          the pool's events from the remembered start and finds how much that piece may lose before a choice or a
          split (``should_split``) would change.

        Returns the trajectory and (old address, new address, bytes shrunk); None when none holds."""
        now: set[int] | None = None
        for old, trajectory in program.pools[small].items():
            if len(old) != len(start):
                continue
            now = now if now is not None else set(start)
            if trajectory.members is None:
                trajectory.members = frozenset(old)
                trajectory.addresses = sorted(k & ADDRESS_MASK for k in old)
            came = now.difference(trajectory.members)
            if len(came) != 1:
                continue
            (new,), (gone,) = came, trajectory.members.difference(now)
            addr, size, new_addr, new_size = (gone & ADDRESS_MASK, gone >> ADDRESS_BITS, new & ADDRESS_MASK,
                                              new >> ADDRESS_BITS)
            if new_size > size:
                continue
            # no other free block between the two addresses: the others are the remembered start's, whose addresses
            # are kept in order (the gone block's own is an end of the open interval, so not counted)
            low, high, addresses = min(addr, new_addr), max(addr, new_addr), trajectory.addresses
            assert addresses is not None
            if bisect_left(addresses, high) != bisect_right(addresses, low):
                continue
            if new_size < size:
                bound = trajectory.shrinkable.get(addr)
                if bound is None:
                    bound = trajectory.shrinkable[addr] = _shrink_bound(plan, small, old, addr, trajectory.picks)
                    program.bounded = True
                if size - new_size > bound:
                    continue
            return trajectory, (addr, new_addr, size - new_size)
        return None

    def _apply(self, trajectory: Trajectory, small: bool, blocks: dict[int, Block],
               move: tuple[int, int, int] | None = None) -> None:
        """Carve the pool's free blocks as ``trajectory`` says: the pool is as it was at its start, or where ``move``
        is given (``_moved``: old address, new address, bytes shrunk), so but for that one block."""
        allocator = self.allocator
        pool, free_blocks = allocator._free[small], allocator._free_blocks
        for addr, size, inside in trajectory.changes:
            if move is not None and addr == move[0]:
                addr, size, inside = _moved_pieces(addr, size, inside, *move[1:])
            carved = free_blocks.pop(addr)
            del pool[bisect_left(pool, size << ADDRESS_BITS | addr)]
            prev, after, segment = carved.prev, carved.next, carved.segment
            for piece_addr, piece_size, key, requested in inside:
                block = Block(piece_addr, piece_size, small, segment)
                block.prev = prev
                if prev is not None:
                    prev.next = block
                prev = block
                if key is None:
                    insort(pool, piece_size << ADDRESS_BITS | piece_addr)
                    free_blocks[piece_addr] = block
                else:
                    block.allocated = True
                    block.requested = requested
                    blocks[key] = block
            assert prev is not None
            prev.next = after
            if after is not None:
                after.prev = prev
        allocator.allocated += trajectory.allocated
        allocator.requested += trajectory.requested

    def lift_capacity(self) -> None:
        """Let the run go on past an out-of-memory, to show what it would need."""
        self.allocator.capacity = None


def _window_charge(window: list[tuple[Any, ...]]) -> tuple[int | None, int, int]:
    """For ``_charged_window``: the bytes the window's allocations take together, rounded (None where one is not the
    small pool's), and the most bytes allocated and requested at once along it, above where it starts."""
    sizes: dict[Any, tuple[int, int]] = {}
    total = allocated = requested = most_allocated = most_requested = 0
    for event in window:
        if event[0] == "alloc":
            size = event[2].size
            rounded = round_size(size)
            if rounded > K_SMALL_SIZE:
                return None, 0, 0
            sizes[event[1]] = rounded, size
            total += rounded
            allocated += rounded
            requested += size
            most_allocated, most_requested = max(most_allocated, allocated), max(most_requested, requested)
        else:
            rounded, size = sizes[event[1]]
            allocated -= rounded
            requested -= size
    return total, most_allocated, most_requested


def _most_beside(small: Trajectory, large: Trajectory) -> int:
    """The most bytes the two pools' trajectories made at once, event by event (``Trajectory.beside``). A moved
    trajectory's bytes are its own: its pieces are moved, and only a free one shrunk (``_moved_pieces``)."""
    known = small.beside.get(id(large))
    if known is not None and known[0] is large:
        return known[1]
    most = max(map(add, small.deltas, large.deltas), default=0)
    if len(small.beside) >= BESIDE_MEMO:
        small.beside.clear()
    small.beside[id(large)] = (large, most)
    return most


def _moved_pieces(addr: int, size: int, inside: list[tuple[int, int, Any, int]], new_addr: int,
                  shrunk: int) -> tuple[int, int, list[tuple[int, int, Any, int]]]:
    """A carved block's pieces (``Trajectory.changes``) for the block at ``new_addr``, ``shrunk`` bytes smaller:
    each moved with it, the last (free, ``_shrink_bound``) as much smaller."""
    shift = new_addr - addr
    pieces = [(piece_addr + shift, piece_size, key, requested) for piece_addr, piece_size, key, requested in inside]
    if shrunk:
        piece_addr, piece_size, key, requested = pieces[-1]
        pieces[-1] = (piece_addr, piece_size - shrunk, key, requested)
    return new_addr, size - shrunk, pieces


def _shrink_bound(plan: _Plan, small: bool, start: tuple[int, ...], addr: int, picks: list[int] | None = None) -> int:
    """How many bytes the free block at ``addr`` of the pool's ``start`` may lose at its low end (or anywhere, its
    pieces moved with it: ``AllocatorAccountant._moved``) with every choice of the pool's events from ``start``
    made again: the pool's events run on a model of that pool alone, each start block a segment of its own (a
    free block's neighbours are allocated, and a program frees only what it made), following the block's last
    piece, ``tail``. At each request of ``rounded`` bytes:

    - where the tail is chosen, the remainder left beside the request must still be split off: it may lose what it
      has beyond ``should_split``'s least; if it is not split off, nothing (the request's block would be smaller);
    - where another block of ``size`` bytes is chosen and the tail could hold the request, the tail must stay
      larger than that block (a tie is lost on address; a smaller tail would be chosen instead).

    0 when the events cudaMalloc, or take the whole tail: its remainder then is not split off, and the first rule
    above makes the bound negative at once (so the tail is never left allocated while the walk goes on).

    ``picks``: what the events took and left in a run from ``start`` (``Trajectory.picks``): the choices are read there
    and only the tail followed (``_picked_bound``), instead of running the pool's events again."""
    if picks is not None:
        return _picked_bound(plan.requests(small), picks, small, start, addr)
    # The pool's own model: ``CachingAllocator.malloc`` and ``free`` without their statistics, each request taking the
    # block its bound looked at (5,700 bounds an H200 fit, a third faster so than through the allocator's calls)
    pool = list(start)
    free_blocks: dict[int, Block] = {}
    for segment, key in enumerate(start):
        block = Block(key & ADDRESS_MASK, key >> ADDRESS_BITS, small, segment)
        free_blocks[block.addr] = block
    tail = free_blocks[addr]
    end, bound = addr + tail.size, tail.size - K_MIN_BLOCK_SIZE
    least = K_MIN_BLOCK_SIZE if small else K_SMALL_SIZE + 1  # the smallest remainder should_split keeps apart
    blocks: dict[Any, Block] = {}
    for key, rounded in plan.walked(small):
        if not rounded:  # a free
            block = blocks.pop(key)
            block.allocated = False
            _merge(pool, free_blocks, block)
            if block.addr + block.size == end:
                tail = block
            continue
        at = bisect_left(pool, rounded << ADDRESS_BITS)
        if at == len(pool):  # a cudaMalloc (a remembered trajectory made none)
            return 0
        chosen = pool.pop(at)
        if chosen & ADDRESS_MASK == tail.addr:
            bound = min(bound, tail.size - rounded - least)
        elif tail.size >= rounded:
            bound = min(bound, tail.size - (chosen >> ADDRESS_BITS) - 1)
        if bound < 0:
            return 0
        block = free_blocks.pop(chosen & ADDRESS_MASK)
        remaining_size = block.size - rounded
        if remaining_size >= K_MIN_BLOCK_SIZE if small else remaining_size > K_SMALL_SIZE:  # should_split
            block = _split(pool, free_blocks, block, rounded, remaining_size)
        block.allocated = True
        blocks[key] = block
    return bound


def _picked_bound(requests: list[tuple[Any, int]], picks: list[int], small: bool, start: tuple[int, ...],
                  addr: int) -> int:
    """``_shrink_bound`` where a run of the pool's events from ``start`` noted each one's pick: the block an allocation
    was carved from, the block a free left once merged (``_run_indexed``). That run made the choices the walk would
    make (the same start, no cudaMalloc: a trajectory is kept only then; the blocks outside ``start`` are never chosen
    nor merged with), so the walk's pool is not needed: only the tail is followed. A request carved from the tail
    leaves the rest of it as the tail (split off, as in ``_shrink_bound``); a free that leaves a block ending where the
    tail ends makes that block the tail."""
    size = next(key >> ADDRESS_BITS for key in start if key & ADDRESS_MASK == addr)
    end, tail_addr, tail_size = addr + size, addr, size
    bound = size - K_MIN_BLOCK_SIZE
    least = K_MIN_BLOCK_SIZE if small else K_SMALL_SIZE + 1  # the smallest remainder should_split keeps apart
    for (_, rounded), pick in zip(requests, picks, strict=True):
        picked_addr, picked_size = pick & ADDRESS_MASK, pick >> ADDRESS_BITS
        if not rounded:  # a free
            if picked_addr + picked_size == end:
                tail_addr, tail_size = picked_addr, picked_size
            continue
        if picked_addr == tail_addr:
            bound = min(bound, tail_size - rounded - least)
            tail_addr, tail_size = tail_addr + rounded, tail_size - rounded
        elif tail_size >= rounded:
            bound = min(bound, tail_size - picked_size - 1)
        if bound < 0:
            return 0
    return bound
