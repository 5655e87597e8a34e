"""Scripted stand-ins for ``torch.cuda`` and ``pynvml``, at the seam ``CudaMeter(cuda=..., nvml=...)``, so that the
meter's own logic (peaks reset per stage, the statistics it reads, the NVML sampling and the process figure) runs
on a machine without a GPU.

The fake ``torch.cuda`` keeps its statistics with sdvram's model of the caching allocator (``allocator.py``, itself
checked against real allocator traces), so ``memory_allocated``, ``max_memory_allocated`` and
``max_memory_reserved`` move as the real ones would for the same requests; its trace records an ``alloc`` or
``free_completed`` event per request, as ``torch.cuda.memory._record_memory_history`` does. The fake NVML answers
from a script: the device's ``memory.used`` and the processes' ``usedGpuMemory`` as a test sets them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sdvram.allocator import Block, CachingAllocator


class FakeCudaMemory:
    """``torch.cuda.memory``: the allocator's history, when it is being recorded."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.recording = False

    def _record_memory_history(self, enabled: Any = "all", context: Any = None, max_entries: int = 0,
                               device: Any = None) -> None:
        self.recording = enabled is not None
        if self.recording:
            self.cuda.events = []

    def _snapshot(self, device: Any = None) -> dict[str, Any]:
        return {"device_traces": [list(self.cuda.events)], "segments": []}


class FakeCuda:
    """``torch.cuda`` for one device, driven by ``malloc``/``free`` calls a test makes."""

    def __init__(self, name: str = "NVIDIA Scripted GPU", total: int = 8 * 1024**3,
                 capability: tuple[int, int] = (8, 6), uuid: str | None = "00000000-1111-2222-3333-444444444444"
                 ) -> None:
        self.allocator = CachingAllocator()
        self.props = SimpleNamespace(name=name, total_memory=total, major=capability[0], minor=capability[1],
                                     uuid=uuid)
        self.memory = FakeCudaMemory(self)
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []  # the functions the meter called, in order

    # what a program does
    def malloc(self, size: int) -> Block:
        segments = len(self.allocator.segments)
        block = self.allocator.malloc(size)
        if self.memory.recording:
            if len(self.allocator.segments) > segments:  # a new cudaMalloc, recorded before the block it serves
                segment = self.allocator.segments[block.segment]
                self.events.append({"action": "segment_alloc", "addr": segment.addr, "size": segment.size,
                                    "stream": 0})
            self.events.append({"action": "alloc", "addr": block.addr, "size": size, "stream": 0})
        return block

    def free(self, block: Block) -> None:
        size = block.requested
        self.allocator.free(block)
        if self.memory.recording:
            self.events.append({"action": "free_completed", "addr": block.addr, "size": size, "stream": 0})

    # torch.cuda's functions that CudaMeter calls
    def synchronize(self, device: Any = None) -> None:
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.calls.append("reset_peak_memory_stats")
        self.allocator.reset_peaks()

    def memory_allocated(self, device: Any = None) -> int:
        return self.allocator.allocated

    def max_memory_allocated(self, device: Any = None) -> int:
        self.calls.append("max_memory_allocated")
        return self.allocator.peak_allocated

    def max_memory_reserved(self, device: Any = None) -> int:
        self.calls.append("max_memory_reserved")
        return self.allocator.peak_reserved

    def current_device(self) -> int:
        return 0

    def get_device_properties(self, device: Any = None) -> Any:
        return self.props


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None  # noqa: N815  (NVML's field name)


@dataclass
class FakeNvml:
    """``pynvml``: the device's used memory and the running processes, as the test scripts them. ``fail_init`` makes
    ``nvmlInit`` raise (no NVML in the driver), ``fail_samples`` the next that many samples."""

    used: int = 0
    processes: list[FakeProcess] = field(default_factory=list)
    driver: bytes = b"580.159.04"
    known_uuid: str | None = "GPU-00000000-1111-2222-3333-444444444444"
    fail_init: bool = False
    fail_samples: int = 0
    handles: list[str] = field(default_factory=list)  # how each handle was looked up
    shut_down: bool = False
    samples: int = 0  # memory-info calls answered
    NVMLError = FakeNvmlError

    def nvmlInit(self) -> None:  # noqa: N802  (pynvml's names)
        if self.fail_init:
            raise FakeNvmlError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        if uuid != self.known_uuid:
            raise FakeNvmlError("Not Found")
        self.handles.append("uuid")
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        self.handles.append(f"index {index}")
        return "handle"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:  # noqa: N802
        if self.fail_samples:
            self.fail_samples -= 1
            raise FakeNvmlError("GPU is lost")
        self.samples += 1
        return SimpleNamespace(used=self.used, total=0, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[FakeProcess]:  # noqa: N802
        return list(self.processes)

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return self.driver

    def sampled(self) -> None:
        """Wait until the meter's sampling thread has read the device at least twice more (the current script)."""
        target = self.samples + 2
        deadline = time.monotonic() + 5
        while self.samples < target and time.monotonic() < deadline:
            time.sleep(0.001)
        assert self.samples >= target, "the NVML sampling thread did not run"

    def me(self, used: int | None) -> FakeProcess:
        """This process, as NVML lists it."""
        return FakeProcess(os.getpid(), used)
