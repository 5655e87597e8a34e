"""The model of PyTorch's CUDA caching allocator: its rules one by one with sizes worked by hand from
CUDACachingAllocator.cpp's constants, then the proof: real allocator traces from an H200 (SD v1.5 and every
other pipeline family) replayed through it, every block at the real address and the segments and final snapshot
equal."""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import random
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdvram import allocator as allocator_module
from sdvram.allocator import (
    FEW_EVENTS,
    AllocatorAccountant,
    AllocatorOutOfMemory,
    Block,
    CachingAllocator,
    Program,
    ReplayConflict,
    Trajectory,
    _most_beside,
    _Plan,
    _shrink_bound,
    get_allocation_size,
    round_size,
    should_split,
)
from sdvram.errors import InputError
from sdvram.meters import Allocation, repeated_windows
from sdvram.traces import load_trace, replay

from .conftest import MEASURED_FAMILIES

DATA = Path(__file__).parent / "data"
MIB = 1024**2


def test_round_size() -> None:
    assert [round_size(n) for n in (1, 511, 512, 513, 1536, 1537)] == [512, 512, 512, 1024, 1536, 2048]


def test_segment_sizes() -> None:
    assert get_allocation_size(512) == get_allocation_size(MIB) == 2 * MIB  # small pool: 2 MiB segments
    assert get_allocation_size(MIB + 512) == get_allocation_size(10 * MIB - 512) == 20 * MIB  # 1 to 10 MiB
    assert get_allocation_size(10 * MIB) == 10 * MIB  # from 10 MiB: rounded up to 2 MiB
    assert get_allocation_size(11 * MIB) == 12 * MIB


def test_should_split() -> None:
    assert should_split(2 * MIB, 2 * MIB - 512, small=True)  # 512 left in the small pool: split
    assert not should_split(2 * MIB, 2 * MIB - 256, small=True)
    assert not should_split(12 * MIB, 11 * MIB, small=False)  # exactly 1 MiB left in the large pool: whole
    assert should_split(12 * MIB, 11 * MIB - 512, small=False)


def test_small_requests_share_a_2_mib_segment() -> None:
    model = CachingAllocator()
    a, b = model.malloc(100), model.malloc(1000)
    assert (model.allocated, model.reserved, model.requested) == (512 + 1024, 2 * MIB, 1100)
    assert b.addr == a.addr + 512 and a.segment == b.segment


def test_an_unsplit_block_counts_whole_in_allocated() -> None:
    model = CachingAllocator()
    big = model.malloc(11 * MIB)  # a 12 MiB segment; 1 MiB left is not split off
    assert big.size == 12 * MIB and model.allocated == 12 * MIB and model.requested == 11 * MIB
    model.free(big)
    again = model.malloc(11 * MIB - 512)  # reuses the cached 12 MiB block; 1 MiB + 512 left: split
    assert again.size == 11 * MIB - 512 and model.reserved == 12 * MIB


def test_best_fit_then_lowest_address_and_merging() -> None:
    model = CachingAllocator()
    blocks = [model.malloc(4 * MIB) for _ in range(4)]  # one 20 MiB segment, 16 MiB used
    model.free(blocks[1])
    model.free(blocks[3])  # merges with the 4 MiB tail: a free 8 MiB block
    small_fit = model.malloc(4 * MIB)  # the 4 MiB hole fits exactly: chosen over the 8 MiB block
    assert small_fit.addr == blocks[1].addr
    model.free(small_fit)
    model.free(blocks[2])  # 4 + 4 + 8 merge into one 16 MiB free block
    assert [(b.size) for b in model.free_blocks()] == [16 * MIB]


def test_capacity_releases_cached_segments_then_runs_out() -> None:
    model = CachingAllocator(capacity=64 * MIB)
    first = model.malloc(40 * MIB)
    model.free(first)  # cached: reserved stays 40 MiB
    assert model.reserved == 40 * MIB and model.allocated == 0
    second = model.malloc(50 * MIB)  # 40 + 50 > 64: the free 40 MiB segment is released, then it fits
    assert model.reserved == 50 * MIB and model.cuda_frees == 1
    with pytest.raises(AllocatorOutOfMemory):
        model.malloc(20 * MIB)  # 50 + 20 > 64 and nothing cached to release
    assert second.allocated


def test_peaks_and_reset() -> None:
    model = CachingAllocator()
    block = model.malloc(30 * MIB)
    model.free(block)
    assert model.peak_allocated == 30 * MIB and model.allocated == 0
    model.reset_peaks()
    assert model.peak_allocated == 0 and model.peak_reserved == 30 * MIB


@pytest.mark.parametrize("name", ["trace-decode-2048.pkl.gz", "trace-decode-1200x1800.pkl.gz",
                                  "trace-512-steps10.pkl.gz"])
def test_real_traces_replay_exactly(name: str) -> None:
    result = replay(load_trace(DATA / name))
    assert result.misplaced == 0  # every one of the real requests got the block at the real address
    assert result.segments_equal and result.final_blocks_equal
    assert result.exact


@pytest.mark.parametrize("path", sorted((MEASURED_FAMILIES / "families").glob("trace-*.pkl.gz")),
                         ids=lambda path: path.name.removeprefix("trace-").removesuffix(".pkl.gz"))
def test_every_family_s_trace_replays_exactly(path: Path) -> None:
    """The allocator traces of the other pipelines (SD v1.5 txt2img and inpainting, SD 2.1, SDXL with its float32
    VAE upcast and with the fp16-fix VAE), measured on the H200 after the model was written."""
    result = replay(load_trace(path))
    assert result.misplaced == 0 and result.segments_equal and result.final_blocks_equal and result.exact
    record = json.loads(path.with_name(path.name.removeprefix("trace-").replace(".pkl.gz", ".json")).read_text())
    # the same run's profile record: its whole-run peaks (the model's are never reset)
    assert (result.model.peak_allocated, result.model.peak_reserved) == (record["peak_allocated"],
                                                                         record["peak_reserved"])


def test_decode_trace_peaks_equal_the_gpu_s_own_statistics() -> None:
    # memory_stats() of that run (VAE built, one decode at 2048 x 2048), whole-run peaks
    result = replay(load_trace(DATA / "trace-decode-2048.pkl.gz"))
    assert result.model.peak_allocated == result.stats["allocated_bytes.all.peak"] == 10_411_121_152
    assert result.model.peak_reserved == result.stats["reserved_bytes.all.peak"] == 18_205_376_512
    assert result.model.peak_requested == result.stats["requested_bytes.all.peak"] == 10_404_686_433


def test_pipeline_trace_peak_equals_the_profile_record() -> None:
    # The same run's profile record (docs/measurements/h200-2026-11-26/profiles/512x512-steps10-traced.json)
    # measured a whole-run peak of 3,452,370,432 bytes allocated and 3,718,250,496 reserved.
    result = replay(load_trace(DATA / "trace-512-steps10.pkl.gz"))
    assert (result.model.peak_allocated, result.model.peak_reserved) == (3_452_370_432, 3_718_250_496)


def test_a_file_that_is_not_a_trace_is_one_sentence(tmp_path: Path) -> None:
    text = tmp_path / "notes.pkl.gz"
    text.write_bytes(b"not gzip")
    with pytest.raises(InputError, match=r"notes.pkl.gz: not an allocator trace"):
        load_trace(text)
    other = tmp_path / "other.pkl.gz"
    with gzip.open(other, "wb") as handle:
        pickle.dump({"device_traces": "nope"}, handle)
    with pytest.raises(InputError, match=r"no device_traces and segments"):
        load_trace(other)
    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as handle:
        pickle.dump(Path("x"), handle)  # a class instance: refused without being constructed
    with pytest.raises(InputError, match=r"plain data only"):
        load_trace(evil)


def test_malloc_follows_round_size_and_should_split_on_a_random_sequence() -> None:
    """``malloc`` writes the rules out for speed: every block it hands out is the request rounded, or a whole
    free block whose remainder ``should_split`` would not keep."""
    rng = random.Random(7)
    allocator, live = CachingAllocator(), []
    for _ in range(3000):
        if live and rng.random() < 0.45:
            allocator.free(live.pop(rng.randrange(len(live))))
            continue
        size = rng.choice([rng.randrange(1, 4096), rng.randrange(1, 2 * MIB), rng.randrange(1, 40 * MIB)])
        block = allocator.malloc(size)
        rounded = round_size(size)
        assert block.size == rounded or not should_split(block.size, rounded, rounded <= MIB)
        live.append(block)
    assert allocator.allocated == sum(b.size for b in live)


def events_with_repeated_windows(rng: random.Random) -> list[tuple]:
    """A call's log: allocations kept, then 30 pixel-row windows (each frees all it makes), then more."""
    events: list[tuple] = []
    key = iter(range(1, 10**6))

    def alloc(size: int) -> int:
        k = next(key)
        events.append(("alloc", k, Allocation(size, 0, "", (), "bytes", "tensor")))
        return k

    kept = [alloc(rng.randrange(1, 30 * MIB)) for _ in range(20)]
    for _ in range(30):
        a, b = alloc(3 * MIB), alloc(700_000)
        events.append(("free", a))
        c = alloc(5 * MIB)
        events += [("free", b), ("free", c)]
    for k in kept[::2]:
        events.append(("free", k))
    kept += [alloc(rng.randrange(1, 30 * MIB)) for _ in range(5)]
    return events


@pytest.mark.parametrize("capacity", [None, 400 * MIB], ids=["unlimited", "tight"])
def test_replaying_a_program_equals_allocating_one_by_one(capacity: int | None) -> None:
    """``replay_events`` runs a repeated net-zero window once (again only while it changes the segments): the
    allocator must end exactly where allocating every event one by one leaves it, with the same peaks."""
    events = events_with_repeated_windows(random.Random(3))
    program = repeated_windows(events)
    assert program[0] == ("events", events[:20])  # the 20 kept allocations
    assert ("repeat", program[1][1], 30) == program[1]  # the 30 rows are one item

    def prepared() -> tuple[CachingAllocator, AllocatorAccountant]:
        allocator = CachingAllocator(capacity)
        accountant = AllocatorAccountant(allocator)
        for i in range(8):  # fragments to start from
            accountant.alloc(("pre", i), (i + 1) * 3 * MIB)
        for i in range(0, 8, 2):
            accountant.free(("pre", i))
        return allocator, accountant

    one, by_one = prepared()
    for event in events:
        if event[0] == "alloc":
            by_one.alloc(event[1], event[2].size)
        else:
            by_one.free(event[1])
    other, at_once = prepared()
    left, peaks = at_once.replay_events(program, iter(range(10**6, 2 * 10**6)), lambda info, exc: None)
    assert len(left) == len(by_one._blocks) - 4
    state = [(b.addr, b.size) for b in one.free_blocks()], dict(one.segments), one.allocated, one.reserved
    assert state == ([(b.addr, b.size) for b in other.free_blocks()], dict(other.segments), other.allocated,
                     other.reserved)
    assert (one.peak_allocated, one.peak_reserved, one.peak_requested) == peaks
    assert (one.cuda_frees > 0) == (capacity is not None)  # the tight card released cached segments


@pytest.mark.parametrize("room", [True, False], ids=["charged", "run"])
def test_a_repeated_window_of_the_small_pool_charges_what_its_rows_run_would(room: bool) -> None:
    """Rows of a tile's blending (small temporaries, each row a window that frees all it makes): where the small pool's
    largest free block holds a row's allocations together, the rows are charged without running; else they run and
    cudaMalloc a segment. Either way the allocator ends where the rows one by one leave it, with the same peaks."""
    events: list[tuple] = []
    for row in range(40):
        a, b = 100 * row + 1, 100 * row + 2
        events += [("alloc", a, Allocation(3_000, 0, "", (), "bytes", "tensor")),
                   ("alloc", b, Allocation(6_100, 0, "", (), "bytes", "tensor")), ("free", a), ("free", b)]
    program = repeated_windows(events)
    assert len(program) == 1 and program[0][0] == "repeat"

    def prepared() -> AllocatorAccountant:
        accountant = AllocatorAccountant(CachingAllocator())
        accountant.alloc("large", 30 * MIB)
        if room:  # a small segment with free room beside what it keeps
            accountant.alloc("kept", 700_000)
        return accountant

    by_one, at_once = prepared(), prepared()
    made = at_once.allocator.cuda_mallocs
    by_one.allocator.reset_peaks()
    for event in events:
        if event[0] == "alloc":
            by_one.alloc(event[1], event[2].size)
        else:
            by_one.free(event[1])
    runs: list[int] = []
    run_indexed = at_once._run_indexed
    at_once._run_indexed = lambda *args: (runs.append(1), run_indexed(*args))[1]  # type: ignore[method-assign]
    left, peaks = at_once.replay_events(program, iter(range(10**6, 2 * 10**6)), lambda info, exc: None)
    assert bool(runs) is not room  # charged where there was room, run where there was none
    one, other = by_one.allocator, at_once.allocator
    assert left == {} and peaks == (one.peak_allocated, one.peak_reserved, one.peak_requested)
    assert peaks[0] == one.allocated + 3_072 + 6_144  # a row's two blocks at once, rounded
    assert ([(b.addr, b.size) for b in one.free_blocks()], one.segments, one.cuda_mallocs) == \
        ([(b.addr, b.size) for b in other.free_blocks()], other.segments, other.cuda_mallocs)
    assert other.cuda_mallocs - made == (0 if room else 1)  # without room the rows made the small pool's segment


def test_repeated_windows_keeps_what_is_not_a_window() -> None:
    small, large = Allocation(512, 0, "", (), "bytes", "tensor"), Allocation(4096, 0, "", (), "bytes", "tensor")
    events = [("alloc", 1, small), ("alloc", 3, small), ("free", 3), ("alloc", 4, small), ("free", 4),
              ("alloc", 5, large), ("free", 5), ("free", 99)]
    program = repeated_windows(events)
    # 1 is kept (a call's output): a plain event; the windows of 3 and 4 make the same request (one item,
    # twice); 5's is another, once: its events, with the free of 99, made before the log (a call's input)
    assert program == [("events", events[:1]), ("repeat", events[1:3], 2), ("events", events[5:])]


def call_like_events(rng: random.Random, key: Iterator[int]) -> list[tuple]:
    """A module call's log as the UNet's looks: large activations kept a few layers, small temporaries freed at
    once (net-zero windows in the small pool), a small embedding kept for the whole call, and two outputs left
    live, one in each pool."""
    events: list[tuple] = []

    def alloc(size: int) -> int:
        k = next(key)
        events.append(("alloc", k, Allocation(size, 0, "", (), "bytes", "tensor")))
        return k

    embedding = alloc(rng.randrange(1, 20_000))
    live: list[int] = []
    for _ in range(40):
        live.append(alloc(rng.choice([3 * MIB, 12 * MIB, 30 * MIB]) + rng.randrange(512)))
        a, b = alloc(rng.randrange(1, 4096)), alloc(rng.randrange(1, 300_000))
        events += [("free", b), ("free", a)]
        if len(live) > 3:
            events.append(("free", live.pop(0)))
    alloc(200_000)  # the outputs: a small one and a large one
    alloc(5 * MIB)
    events += [("free", k) for k in [*live, embedding]]
    return events


@pytest.mark.parametrize("capacity", [None, 220 * MIB], ids=["unlimited", "tight"])
def test_a_program_replayed_pool_by_pool_ends_where_its_events_end(capacity: int | None) -> None:
    """``replay_events`` keeps, per pool, where a ``Program``'s blocks went from each start (a trajectory) and
    applies it when it finds that pool so again, running the other pool alone, and charges without running the
    small pool's windows that fit its largest free block. Between calls, something is kept in one pool or the
    other or in neither (as the scheduler's steps keep their outputs), so that each case comes. After every call
    the allocator must be exactly where the same events one by one leave it, with the same peaks; where the
    split meets a release it cannot order it must say so (``ReplayConflict``), never go on: on the tight card
    (220 MiB) it does, after 45 calls, at a call where the events one by one release cached segments or run
    out."""
    rng = random.Random(11)
    events = call_like_events(rng, iter(range(1, 10**6)))
    split, one_by_one = Program(repeated_windows(events)), repeated_windows(events)
    assert split.plan() is not None

    def prepared(split_pools: bool) -> AllocatorAccountant:
        accountant = AllocatorAccountant(CachingAllocator(capacity), split=split_pools)
        for i in range(8):
            accountant.alloc(("pre", i), (i + 1) * 3 * MIB)
        for i in range(0, 8, 2):
            accountant.free(("pre", i))
        return accountant

    fast, slow = prepared(True), prepared(False)
    keys = iter(range(10**6, 10**7))
    calls = 0
    for call in range(60):
        first = next(keys)
        try:
            left, peaks = fast.replay_events(split, iter(range(first, first + 10)), lambda info, exc: None)
        except ReplayConflict:
            releases = slow.allocator.cuda_frees
            with contextlib.suppress(AllocatorOutOfMemory):
                slow.replay_events(one_by_one, iter(range(first, first + 10)), lambda info, exc: None)
                assert slow.allocator.cuda_frees > releases  # the capacity did refuse a cudaMalloc there
            break
        calls += 1
        expected = slow.replay_events(one_by_one, iter(range(first, first + 10)), lambda info, exc: None)
        assert (left, peaks) == expected, call
        state = [([(b.addr, b.size, b.small) for b in a.allocator.free_blocks()], dict(a.allocator.segments),
                  a.allocator.allocated, a.allocator.reserved, a.allocator.requested) for a in (fast, slow)]
        assert state[0] == state[1], call
        for key in left.values():  # the outputs are where they are in both
            assert (fast._blocks[key].addr, fast._blocks[key].size) == (slow._blocks[key].addr, slow._blocks[key].size)
        kept = rng.choice(["small", "large", "none"])  # what the step between calls keeps; it frees the outputs
        for accountant in (fast, slow):
            if kept != "none":
                accountant.alloc(("step", call), 100_000 if kept == "small" else 2 * MIB)
            for key in left.values():
                accountant.free(key)
    assert split.applied > 30 and split.charged_windows > 100
    assert calls == (60 if capacity is None else 45)


def tile_like_events(rng: random.Random, key: Iterator[int]) -> list[tuple]:
    """A VAE tile's call as the decoder's looks: large activations, small temporaries, and two outputs left live,
    a large one (1.5 MiB, as a 512 x 512 fp16 RGB tile) and a small one."""
    events: list[tuple] = []

    def alloc(size: int) -> int:
        k = next(key)
        events.append(("alloc", k, Allocation(size, 0, "", (), "bytes", "tensor")))
        return k

    live: list[int] = []
    for _ in range(12):
        live.append(alloc(rng.choice([2 * MIB, 9 * MIB, 24 * MIB]) + rng.randrange(512)))
        temporary = alloc(rng.randrange(1, 200_000))
        events.append(("free", temporary))
        if len(live) > 2:
            events.append(("free", live.pop(0)))
    alloc(3 * 512 * 512 * 2)
    alloc(rng.randrange(600, 60_000))
    events += [("free", k) for k in live]
    return events


@pytest.mark.parametrize("seed", [3, 5, 8])
def test_a_program_replayed_from_a_pool_with_a_block_moved_or_shrunk_ends_where_its_events_end(seed: int) -> None:
    """Each tile's outputs are kept, carved from the low end of a free block the tile before it found: no tile finds
    a pool as one before it left it, and ``replay_events`` applies a trajectory remembered from a start where that one
    block was larger or elsewhere, where its events' choices hold (``_moved``, ``_shrink_bound``). After every call
    the allocator must be exactly where the same events one by one leave it, with the same peaks. A row of tiles
    ends with all its outputs freed; the free blocks that leaves differ from row to row."""
    rng = random.Random(seed)
    events = tile_like_events(rng, iter(range(1, 10**6)))
    split, one_by_one = Program(repeated_windows(events)), repeated_windows(events)
    assert split.plan() is not None

    def prepared(split_pools: bool) -> AllocatorAccountant:
        accountant = AllocatorAccountant(CachingAllocator(), split=split_pools)
        sizes = [11 * MIB + 512, 7 * MIB, 40 * MIB, 3 * MIB, 64 * MIB, 300_000, 900_000, 150_000]
        for i, size in enumerate(sizes):
            accountant.alloc(("pre", i), size)
            accountant.alloc(("wall", i), 4096 if size < MIB else 2 * MIB)  # keeps the freed blocks apart
        for i in range(len(sizes)):
            accountant.free(("pre", i))
        return accountant

    fast, slow = prepared(True), prepared(False)
    keys = iter(range(10**6, 10**8))
    row: list[int] = []
    for call in range(80):
        first = next(keys)
        fresh = iter(range(first * 10, first * 10 + 10))
        left, peaks = fast.replay_events(split, fresh, lambda info, exc: None)
        expected = slow.replay_events(one_by_one, iter(range(first * 10, first * 10 + 10)), lambda info, exc: None)
        assert (left, peaks) == expected, call
        state = [([(b.addr, b.size, b.small) for b in a.allocator.free_blocks()], dict(a.allocator.segments),
                  a.allocator.allocated, a.allocator.reserved, a.allocator.requested) for a in (fast, slow)]
        assert state[0] == state[1], call
        for key in left.values():
            assert (fast._blocks[key].addr, fast._blocks[key].size) == (slow._blocks[key].addr, slow._blocks[key].size)
        row += left.values()
        if call % 16 == 15:  # the row's end: its outputs go
            for accountant in (fast, slow):
                for key in row:
                    accountant.free(key)
            row = []
    assert split.moved > 20, split.moved


def choices_from(plan: _Plan, small: bool, blocks: list[tuple[int, int]]) -> list[tuple[int, int, int]] | None:
    """The pool's events of ``plan`` run from free blocks (address, size), each a segment of its own: for each
    allocation, which block it was carved from, where in it and how large (None where one needed a cudaMalloc)."""
    allocator = CachingAllocator(capacity=0)
    allocator.guarded = True
    allocator._free[small] = sorted(size << 64 | addr for addr, size in blocks)
    for segment, (addr, size) in enumerate(blocks):
        allocator._free_blocks[addr] = Block(addr, size, small, segment)
    made, taken = {}, []
    for i in plan.indices[small]:
        event = plan.events[i]
        if event[0] == "free":
            allocator.free(made.pop(event[1]))
            continue
        try:
            block = made[event[1]] = allocator.malloc(event[2].size)
        except ReplayConflict:
            return None
        taken.append((block.segment, block.addr - blocks[block.segment][0], block.size))
    return taken


@pytest.mark.parametrize("seed", [3, 5, 8])
def test_a_block_may_lose_its_shrink_bound_with_every_choice_made_again(seed: int) -> None:
    """``_shrink_bound``: with each free block of a start shrunk at its low end by its bound (or by any multiple of
    512 bytes below it), a tile's events choose the same blocks, take the same places in them and split them alike,
    as a run of the pool's events from each start says."""
    rng = random.Random(seed)
    plan = Program(repeated_windows(tile_like_events(rng, iter(range(1, 10**6))))).plan()
    assert plan is not None
    starts = {False: [11 * MIB + 512, 7 * MIB, 40 * MIB, 3 * MIB, 64 * MIB, 26 * MIB],
              True: [300_032, 900_096, 150_016, 1_048_576, 65_536]}
    bounded = 0
    for small, sizes in starts.items():
        blocks = [((i + 1) << 32, size) for i, size in enumerate(sizes)]  # far apart: never neighbours
        start = tuple(sorted(size << 64 | addr for addr, size in blocks))
        expected = choices_from(plan, small, blocks)
        assert expected is not None
        for index, (addr, size) in enumerate(blocks):
            bound = _shrink_bound(plan, small, start, addr)
            assert 0 <= bound < size
            for shrink in {bound // 512 * 512, rng.randrange(bound + 1) // 512 * 512}:
                shrunk = [*blocks[:index], (addr + shrink, size - shrink), *blocks[index + 1:]]
                assert choices_from(plan, small, shrunk) == expected, (small, size, bound, shrink)
            bounded += bound >= 512
    assert bounded >= 4  # the test saw blocks that may shrink, not only bounds of 0


@pytest.mark.parametrize("seed", [3, 5, 8, 13])
def test_a_bound_read_from_a_runs_picks_is_the_walks(seed: int) -> None:
    """``Trajectory.picks``: a run of the pool's events from a start notes what each took and left
    (``_run_indexed``), and ``_shrink_bound`` reads its choices there instead of walking the pool's events again:
    for every block of the start, and starts where blocks are taken whole, split and merged back into the tail, the
    bound is the walk's. The run is the accountant's own, each start block a segment of its own, as a walk has it."""
    rng = random.Random(seed)
    plan = Program(repeated_windows(tile_like_events(rng, iter(range(1, 10**6))))).plan()
    assert plan is not None
    requests = {small: [rounded for _, rounded in plan.requests(small) if rounded] for small in (True, False)}
    compared = nonzero = 0
    for small in (True, False):
        for _ in range(10):  # blocks of about the pool's request sizes: some are taken whole, some split
            sizes = [rng.choice(requests[small]) + rng.choice([0, 512, 4096, MIB, 2 * MIB, 9 * MIB]) * (not small)
                     + rng.choice([0, 512, 1024]) * small for _ in range(rng.randrange(3, 8))]
            blocks = [((i + 1) << 32, size) for i, size in enumerate(sizes)]
            allocator = CachingAllocator(capacity=0)
            allocator.guarded = True  # a cudaMalloc raises ReplayConflict: no trajectory, no bound
            allocator._free[small] = sorted(size << 64 | addr for addr, size in blocks)
            for segment, (addr, size) in enumerate(blocks):
                allocator._free_blocks[addr] = Block(addr, size, small, segment)
            picks = [0] * len(plan.events)
            try:
                AllocatorAccountant(allocator)._run_indexed(plan.events, plan.indices[small], {}, None,
                                                            lambda info, exc: None, picks)
            except ReplayConflict:
                continue
            start = tuple(sorted(size << 64 | addr for addr, size in blocks))
            own = [picks[i] for i in plan.indices[small]]
            for addr, _ in blocks:
                walked = _shrink_bound(plan, small, start, addr)
                assert _shrink_bound(plan, small, start, addr, own) == walked, (small, sizes, addr)
                compared += 1
                nonzero += walked > 0
    assert compared >= 20 and nonzero >= 4  # bounds of both kinds were compared, not only zeros


def stretch_like_events(rng: random.Random, key: Iterator[int]) -> list[tuple]:
    """A tile's small pool as a VAE block's make it: stretches of windows of a few shapes repeated in turn (GroupNorm's
    scale and shift, a convolution's workspace), each stretch ended by an allocation kept (an output)."""
    events: list[tuple] = []

    def alloc(size: int) -> int:
        k = next(key)
        events.append(("alloc", k, Allocation(size, 0, "", (), "bytes", "tensor")))
        return k

    shapes = [[rng.randrange(1, 300_000) for _ in range(rng.randrange(1, 4))] for _ in range(3)]
    for _ in range(4):  # the same shapes in each stretch, as blocks alike make them: the pool differs between stretches
        for _ in range(rng.randrange(4, 9)):
            sizes = rng.choice(shapes)
            made = [alloc(size) for size in sizes]
            events += [("free", k) for k in reversed(made)]
        alloc(rng.randrange(512, 400_000))  # kept: the stretch ends
    return events


@pytest.mark.parametrize("seed", [3, 5, 8, 13])
def test_a_walk_passes_over_a_window_repeated_in_its_stretch(seed: int, monkeypatch) -> None:
    """``_Plan.walked``: the small pool's windows that repeat one before them in a stretch of windows are not walked
    again by ``_shrink_bound``, which must give the bound a walk of every request gives, and a bound with which a start
    shrunk so makes every choice again (``choices_from``)."""
    rng = random.Random(seed)
    plan = Program([("events", stretch_like_events(rng, iter(range(1, 10**6))))]).plan()
    assert plan is not None
    requests = plan.requests(True)
    assert len(plan.walked(True)) < 0.75 * len(requests)  # repetitions passed over: the case this tests
    sizes_seen = [rounded for _, rounded in requests if rounded]
    compared = nonzero = 0
    for _ in range(12):  # blocks of one to three requests' sizes and a little more: some taken whole, some split
        sizes = [sum(rng.sample(sizes_seen, rng.randrange(1, 4))) + rng.choice([0, 512, 1024, 65_536])
                 for _ in range(rng.randrange(4, 9))]
        blocks = [((i + 1) << 32, size) for i, size in enumerate(sizes)]
        start = tuple(sorted(size << 64 | addr for addr, size in blocks))
        expected = choices_from(plan, True, blocks)
        if expected is None:  # a cudaMalloc: no trajectory, no bound
            continue
        for index, (addr, size) in enumerate(blocks):
            bound = _shrink_bound(plan, True, start, addr)
            with monkeypatch.context() as patch:
                patch.setattr(_Plan, "walked", _Plan.requests)
                assert _shrink_bound(plan, True, start, addr) == bound, (sizes, addr)
            shrunk = [*blocks[:index], (addr + bound // 512 * 512, size - bound // 512 * 512), *blocks[index + 1:]]
            assert choices_from(plan, True, shrunk) == expected, (sizes, addr, bound)
            compared += 1
            nonzero += bound > 0
    assert compared >= 10 and nonzero >= 4  # bounds of both kinds were compared, not only zeros


def test_a_trajectory_is_not_moved_past_a_block_of_the_same_size(monkeypatch) -> None:
    """Among free blocks of one size the lowest address is chosen. A trajectory remembered where block A (4 MiB) was
    below block C (4 MiB) and took A does not hold where A has gone and a block of A's size has come above C: the
    request takes C. Each 12 MiB request gets a segment of its own, placed where the test says. (The program of one
    event is split as a long program is: ``FEW_EVENTS`` lowered.)"""
    monkeypatch.setattr(allocator_module, "FEW_EVENTS", -1)
    def accountant() -> AllocatorAccountant:
        places = iter([0x1000_0000, 0x2000_0000, 0x3000_0000])
        made = AllocatorAccountant(CachingAllocator(segment_address=lambda size: next(places)))
        for name in ("s1", "s2", "s3"):
            made.alloc(name, 12 * MIB)
        for name in ("s1", "s2"):  # each segment: 8 MiB kept at its low end, 4 MiB free above
            made.free(name)
            made.alloc(name + " low", 8 * MIB)
        return made

    events = [("alloc", 1, Allocation(4 * MIB, 0, "", (), "bytes", "tensor"))]
    program = Program([("events", events)])
    fast, slow = accountant(), accountant()
    a, c, a_moved = 0x1000_0000 + 8 * MIB, 0x2000_0000 + 8 * MIB, 0x3000_0000 + 8 * MIB
    left, _ = fast.replay_events(program, iter([10]), lambda info, exc: None)
    assert fast._blocks[10].addr == a
    fast.free(10)  # the call's output goes: both are as they were
    for made in (fast, slow):
        made.alloc("took a", 4 * MIB)  # A is gone
        made.free("s3")
        made.alloc("s3 low", 8 * MIB)  # a free block of A's size above C
    assert {(b.addr, b.size) for b in fast.allocator.free_blocks() if not b.small} == {(c, 4 * MIB), (a_moved, 4 * MIB)}
    fast.replay_events(program, iter([11]), lambda info, exc: None)
    slow.replay_events([("events", events)], iter([11]), lambda info, exc: None)
    assert fast._blocks[11].addr == slow._blocks[11].addr == c
    assert program.moved == 0


def test_a_split_replay_refuses_to_release_segments_it_cannot_order() -> None:
    """A replay split by pool runs one pool alone: where a cudaMalloc of it does not fit, the real allocator would
    release cached segments of both pools in the middle of the other's events. The model raises instead."""
    allocator = CachingAllocator(capacity=30 * MIB)
    allocator.free(allocator.malloc(20 * MIB))  # a cached 20 MiB segment: releasable
    allocator.guarded = True
    with pytest.raises(ReplayConflict):
        allocator.malloc(25 * MIB)  # no free block holds it, and a 26 MiB segment would take 46 MiB of 30
    assert allocator.reserved == 20 * MIB and allocator.cuda_frees == 0  # nothing was released


def test_a_program_of_no_events_replays_to_nothing_however_often(monkeypatch) -> None:
    """A logged call that allocated nothing (a blend of no rows) is remembered for both pools at once: its later
    replays apply two empty trajectories and reach no peak (split as a long program is: ``FEW_EVENTS`` lowered)."""
    monkeypatch.setattr(allocator_module, "FEW_EVENTS", -1)
    allocator = CachingAllocator()
    accountant = AllocatorAccountant(allocator)
    accountant.alloc("kept", 3 * MIB)
    empty = Program([("events", [])])
    for _ in range(3):
        assert accountant.replay_events(empty, iter(range(10)), lambda info, exc: None) == ({}, (3 * MIB, 20 * MIB,
                                                                                                3 * MIB))
    assert empty.applied == 4  # the second and third replays, each both pools


def test_a_program_of_few_events_is_run_event_by_event_and_ends_where_they_end() -> None:
    """A program of at most ``FEW_EVENTS`` events (a VAE tile's 1 x 1 convolution) is not split: no trajectory is
    remembered or applied, and each replay leaves the allocator, the outputs and the peaks where the same events
    sent one by one leave them."""
    events = [("alloc", 1, Allocation(70_000, 0, "", (), "bytes", "tensor")),
              ("alloc", 2, Allocation(3 * MIB, 0, "", (), "bytes", "tensor")), ("free", 2)]
    assert len(events) <= FEW_EVENTS
    program = Program([("events", events)])
    fast, slow = AllocatorAccountant(CachingAllocator()), AllocatorAccountant(CachingAllocator(), split=False)
    for call in range(4):
        keys = range(10 * call, 10 * call + 10)
        assert fast.replay_events(program, iter(keys), lambda info, exc: None) == \
            slow.replay_events([("events", events)], iter(keys), lambda info, exc: None)
        assert [(b.addr, b.size) for b in fast.allocator.free_blocks()] == \
            [(b.addr, b.size) for b in slow.allocator.free_blocks()]
    assert program.applied == 0 and not program.pools[True] and not program.pools[False]


def test_the_peak_of_a_program_is_looked_for_after_an_allocation_that_a_free_or_the_end_follows() -> None:
    """``_Plan.rises``: each event moves one pool's bytes, up at an allocation and down at a free, so the two pools'
    sum is at its most after an allocation that no allocation follows. Worked by hand: a, b, free a, c, free b, d."""
    def alloc(key: int) -> tuple:
        return ("alloc", key, Allocation(4096 * key, 0, "", (), "bytes", "tensor"))

    events = [alloc(1), alloc(2), ("free", 1), alloc(3), ("free", 2), alloc(4)]
    plan = _Plan.of([("events", events)])
    assert plan is not None and plan.rises == [1, 3, 5]


def test_two_trajectories_peak_is_not_taken_from_another_that_had_the_same_id() -> None:
    """``_most_beside`` keeps the peak of two trajectories by the other's id: an id is reused once its trajectory is
    forgotten, so the kept entry must be that very trajectory's. The sums worked by hand: 1 + 10, 5 + 1."""
    small = Trajectory([], array("q", [1, 5]), 0, 0)
    large = Trajectory([], array("q", [10, 1]), 0, 0)
    forgotten = Trajectory([], array("q", [0, 0]), 0, 0)
    small.beside[id(large)] = (forgotten, 999)  # as a forgotten trajectory whose id this one reuses left it
    assert _most_beside(small, large) == 11
    assert small.beside[id(large)] == (large, 11)
