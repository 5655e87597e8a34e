"""Replay a CUDA caching-allocator trace through sdvram's allocator model and say whether it is exact.

usage: python tools/replay_trace.py TRACE.pkl.gz [...]

A trace is written on a GPU by tools/gpu_trace.py (torch.cuda.memory._record_memory_history). For each
file this prints the events and allocations replayed, how many blocks the model placed elsewhere than the
real allocator, whether the segments and the final blocks agree, and the model's peaks beside the trace's
memory_stats(). Exit 0 when every trace replays exactly, 1 when one does not, 2 when a file is not a trace.
"""

from __future__ import annotations

import sys

from sdvram.errors import InputError
from sdvram.traces import load_trace, replay


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python tools/replay_trace.py TRACE.pkl.gz [...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            data = load_trace(path)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        result = replay(data)
        model, stats = result.model, result.stats
        print(f"{path}: {result.events:,} events, {result.allocs:,} allocations; misplaced {result.misplaced}; "
              f"segments {'equal' if result.segments_equal else 'DIFFER'}; final blocks "
              f"{'equal' if result.final_blocks_equal else 'DIFFER'}; {'exact' if result.exact else 'NOT exact'}")
        print(f"  model: peak allocated {model.peak_allocated:,}, peak reserved {model.peak_reserved:,}, "
              f"peak requested {model.peak_requested:,}; trace's memory_stats(): peak allocated "
              f"{stats.get('allocated_bytes.all.peak', 0):,}, peak reserved {stats.get('reserved_bytes.all.peak', 0):,}"
              " (peaks reset by a profiler cover its last stage only)")
        status = status or (0 if result.exact else 1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
