"""Replaying a real CUDA caching-allocator trace through the model (``allocator.py``), to check the model
against the allocator it models. Pure Python.

A trace is what ``torch.cuda.memory._record_memory_history()`` records and ``torch.cuda.memory._snapshot()``
returns, saved as a gzipped pickle of ``{"device_traces": [[event, ...]], "segments": [...], "stats": {...}}``
(``tools/trace_on_gpu.py`` writes them). Events, in order: ``alloc`` (``size``: the request as made; ``addr``:
the block it got), ``free_requested``, ``free_completed`` (the block goes back to the pool),
``segment_alloc``, ``segment_free``. The replay makes each request of the model in the same order and frees
at ``free_completed``; each new segment is placed at the address the trace gives it (cudaMalloc's choice,
which breaks ties between equal free blocks), so every block must land at the same address as in the trace.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdvram.allocator import Block, CachingAllocator
from sdvram.errors import InputError

EVENTS = ("alloc", "free_requested", "free_completed", "segment_alloc", "segment_free")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickle plain data only (dicts, lists, strings, numbers, OrderedDict): a trace file is data, and an
    unrestricted pickle can run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict

            return OrderedDict
        raise pickle.UnpicklingError(f"a trace holds plain data only, not {module}.{name}")


@dataclass
class Replay:
    """What the model did with a trace, beside what the real allocator did."""

    events: int
    allocs: int
    misplaced: int  # allocations the model put at another address than the trace
    segments_equal: bool  # the same segments (sizes, in creation order) as the trace made
    final_blocks_equal: bool  # the final segments' blocks (address, size, state) as in the trace's snapshot
    model: CachingAllocator
    stats: dict[str, int] = field(default_factory=dict)  # the trace's torch.cuda.memory_stats()

    @property
    def exact(self) -> bool:
        return self.misplaced == 0 and self.segments_equal and self.final_blocks_equal


def load_trace(path: str | Path) -> dict[str, Any]:
    """A trace file, checked to hold what a trace holds; an InputError in one sentence otherwise."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            data = _PlainUnpickler(handle).load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give a trace written by tools/trace_on_gpu.py.") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"{path}: not an allocator trace (a gzipped pickle of torch.cuda.memory._snapshot(); "
                         f"{type(exc).__name__}: {exc}).") from None
    if not (isinstance(data, dict) and isinstance(data.get("device_traces"), list) and data["device_traces"]
            and isinstance(data["device_traces"][0], list) and isinstance(data.get("segments"), list)):
        raise InputError(f"{path}: not an allocator trace (no device_traces and segments).")
    events = data["device_traces"][0]
    if not all(isinstance(e, dict) and e.get("action") in (*EVENTS, "oom", "snapshot") for e in events[:100]):
        raise InputError(f"{path}: not an allocator trace (its events are not alloc/free/segment events).")
    return data


def replay(data: dict[str, Any]) -> Replay:
    """Replay the trace's requests through the model; compare each block's address, the segments made, and
    the final snapshot's blocks. The trace's alloc events give the request, not the block: when every
    request lands at the trace's address within the same segments, and the final blocks (sizes, states)
    equal the snapshot's, each request held the same block as on the GPU, so the model's ``allocated``
    equals the real one after every event; the trace's ``memory_stats()`` peaks check it independently."""
    events = data["device_traces"][0]
    bases = iter([e["addr"] for e in events if e["action"] == "segment_alloc"])
    model = CachingAllocator(segment_address=lambda size: next(bases))
    blocks: dict[int, Block] = {}
    misplaced = allocs = 0
    for event in events:
        action = event["action"]
        if action == "alloc":
            allocs += 1
            block = model.malloc(event["size"])
            if block.addr != event["addr"]:
                misplaced += 1
            blocks[event["addr"]] = block
        elif action == "free_completed":
            model.free(blocks.pop(event["addr"]))
    real_segments = [e["size"] for e in events if e["action"] == "segment_alloc"]
    made = [s.size for s in sorted(model.segments.values(), key=lambda s: s.index)]
    real_blocks = sorted((b["address"], b["size"], b["state"] != "inactive")
                         for s in data["segments"] for b in s["blocks"])
    mine = sorted([(b.addr, b.size, False) for b in model.free_blocks()]
                  + [(b.addr, b.size, True) for b in blocks.values()])
    return Replay(len(events), allocs, misplaced, made == real_segments, mine == real_blocks, model,
                  dict(data.get("stats", {})))


def allocation_series(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(allocated, reserved) after each event of a trace, as the allocator counted them: the requests replayed
    through the model with the trace's segment addresses (exact where ``replay`` is, which the committed traces
    show); a trace records requests, not the rounded blocks ``memory_allocated`` counts. Events of a trace that
    began mid-run (a free of a block it never saw allocated) are skipped."""
    bases = iter([e["addr"] for e in events if e["action"] == "segment_alloc"])
    model = CachingAllocator(segment_address=lambda size: next(bases))
    blocks: dict[int, Block] = {}
    series = []
    for event in events:
        action = event["action"]
        if action == "alloc":
            blocks[event["addr"]] = model.malloc(event["size"])
        elif action == "free_completed" and event["addr"] in blocks:
            model.free(blocks.pop(event["addr"]))
        series.append((model.allocated, model.reserved))
    return series
