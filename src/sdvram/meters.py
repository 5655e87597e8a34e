"""How memory is measured. One small interface, one implementation per device, so that the stage
instrumentation in ``profiler.py`` is the same code whatever the device:

- ``CudaMeter``: the CUDA caching allocator's own statistics (``torch.cuda.memory_allocated``,
  ``max_memory_allocated``, ``max_memory_reserved``), plus NVML's view of the device (what nvidia-smi shows).
- ``LiveTensorMeter``: a ``TorchDispatchMode`` that sees every tensor an aten op returns and tracks the live
  storages (weakref finalizers), for the CPU, where torch keeps no allocator statistics, and for the ``meta``
  device, where nothing is allocated at all (``simulate``). ``granularity`` rounds each storage up the way the
  CUDA caching allocator rounds a request (512 bytes), so that a simulated figure reads as ``memory_allocated``.

Import this module only on the profile/simulate paths: it imports torch.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_ALLOCATOR_ROUNDING = 512  # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, every request rounds up to it
NVML_SAMPLE_SECONDS = 0.005  # NVML's memory counters update about this often; finer sampling sees no more


@dataclass(frozen=True)
class Peak:
    """The most memory held since the meter's previous ``take_peak()``."""

    allocated: int  # bytes in live tensors (for CUDA: max_memory_allocated)
    reserved: int | None  # bytes the allocator held from the device (CUDA only; None where not applicable)


class Meter(Protocol):
    """What the stage instrumentation needs from a device's memory accounting."""

    kind: str

    def __enter__(self) -> Meter: ...

    def __exit__(self, *exc: object) -> None: ...

    def allocated(self) -> int:
        """Bytes held by live tensors now."""
        ...

    def take_peak(self) -> Peak:
        """The peak since the previous call (or since entering), then start a new peak window."""
        ...

    def device_peak(self) -> int | None:
        """The device-level peak over the whole run (NVML; CUDA context included), where there is one."""
        ...

    def environment(self) -> dict[str, Any]:
        """What the figures were measured on: device name, memory, driver and the like."""
        ...


class CudaMeter:
    """CUDA allocator statistics for one device, and NVML's used memory sampled in a background thread.

    ``allocated()`` is ``torch.cuda.memory_allocated()``; ``take_peak()`` returns
    ``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` since the previous call, then
    ``torch.cuda.reset_peak_memory_stats()``; ``device_peak()`` is the largest ``memory.used`` of the device
    that nvidia-smi would have shown while the meter was entered (``nvmlDeviceGetMemoryInfo``), and
    ``process_peak`` the largest ``usedGpuMemory`` NVML listed for this process.
    """

    kind = "cuda"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_handle: Any = None
        self._nvml: Any = None
        self.nvml_error: str | None = None
        self._device_peak = 0
        self.process_peak: int | None = None

    def __enter__(self) -> CudaMeter:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start_nvml()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            self._sample()
            self._nvml.nvmlShutdown()

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def take_peak(self) -> Peak:
        torch.cuda.synchronize(self.device)
        peak = Peak(
            int(torch.cuda.max_memory_allocated(self.device)), int(torch.cuda.max_memory_reserved(self.device))
        )
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def device_peak(self) -> int | None:
        return self._device_peak if self._nvml is not None else None

    def environment(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.device)
        env: dict[str, Any] = {
            "device": "cuda",
            "gpu_name": props.name,
            "gpu_total_memory": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": None,
            "nvml_error": self.nvml_error,
        }
        if self._nvml is not None:
            env["driver"] = _text(self._nvml.nvmlSystemGetDriverVersion())
        return env

    def _start_nvml(self) -> None:
        try:
            import pynvml
        except ImportError:
            self.nvml_error = "the pynvml module (package nvidia-ml-py) is not installed"
            return
        try:
            pynvml.nvmlInit()
            handle = _nvml_handle(pynvml, self.device)
        except Exception as exc:  # NVML missing from the driver, no permission: measure without it
            self.nvml_error = f"NVML unavailable: {exc}"
            return
        self._nvml, self._nvml_handle = pynvml, handle
        self._sample()
        self._thread = threading.Thread(target=self._poll, name="sdvram-nvml", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(NVML_SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        nvml, handle = self._nvml, self._nvml_handle
        try:
            self._device_peak = max(self._device_peak, int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    self.process_peak = max(self.process_peak or 0, int(proc.usedGpuMemory))
        except Exception as exc:  # a transient NVML failure loses one sample, not the run
            self.nvml_error = f"NVML sampling failed: {exc}"


class LiveTensorMeter(TorchDispatchMode):
    """Tracks the storages of every tensor returned by an aten op while entered, and frees them when their
    last reference goes (a weakref finalizer on the storage). ``allocated()`` is the sum of the live storages'
    sizes, each rounded up to ``granularity`` bytes; the peak is the largest that sum has been.

    Ground truth it follows: on the CPU, the bytes of live tensors (what a GPU's ``memory_allocated`` would
    count for the same ops); on ``meta``, the same bookkeeping for tensors that have shapes but no data.
    Not visible to it: memory a kernel allocates and frees inside itself (workspaces), and tensors made
    outside torch's dispatcher (``torch.from_numpy``) until an op returns a new tensor from them.
    """

    def __init__(self, kind: str = "cpu", granularity: int = 1, on_allocate: Any = None) -> None:
        super().__init__()
        self.kind = kind
        self.granularity = granularity
        self._live: dict[int, int] = {}
        self._allocated = 0
        self._peak = 0
        self._on_allocate = on_allocate  # called with (storage key, bytes) for each new storage

    def __enter__(self) -> LiveTensorMeter:
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage while it lives (once, however many views share it)."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        size = self.round(storage.nbytes())
        self._live[key] = size
        self._allocated += size
        self._peak = max(self._peak, self._allocated)
        weakref.finalize(storage, self._free, key)
        if self._on_allocate is not None:
            self._on_allocate(key, size)

    def round(self, nbytes: int) -> int:
        """``nbytes`` rounded up to the allocator's granularity (zero stays zero)."""
        return -(-nbytes // self.granularity) * self.granularity

    def _free(self, key: int) -> None:
        self._allocated -= self._live.pop(key, 0)

    def allocated(self) -> int:
        return self._allocated

    def take_peak(self) -> Peak:
        peak = self._peak
        self._peak = self._allocated
        return Peak(peak, None)

    def device_peak(self) -> int | None:
        return None

    def environment(self) -> dict[str, Any]:
        return {"device": self.kind, "allocator_granularity": self.granularity}


def _nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """The NVML handle of the CUDA device torch calls ``device``: matched by UUID, since CUDA's and NVML's
    device numbers differ when CUDA_VISIBLE_DEVICES reorders or hides devices."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
