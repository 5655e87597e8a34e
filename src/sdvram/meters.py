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
from collections.abc import Iterator
from contextlib import contextmanager
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
    snapshot: Snapshot | None = None  # what was live at the peak, where the meter keeps it


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


@dataclass(frozen=True)
class Allocation:
    """One live storage as the live-tensor meter saw it created."""

    size: int  # bytes, rounded to the meter's granularity
    owner: str  # the module whose forward created it ("pipeline" outside any module)
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Snapshot:
    """What was live at a peak: the activations one by one, the resident weights summed per owner."""

    allocations: tuple[Allocation, ...]
    resident: tuple[tuple[str, int, int], ...]  # (owner, bytes, tensors)

    @property
    def total(self) -> int:
        return sum(a.size for a in self.allocations) + sum(size for _, size, _ in self.resident)


class LiveTensorMeter(TorchDispatchMode):
    """Tracks the storages of every tensor an aten op returns on ``device`` while entered, and frees them when
    their last reference goes (a weakref finalizer on the storage). ``allocated()`` is the sum of the live
    storages' sizes, each rounded up to ``granularity`` bytes; the peak is the largest that sum has been.

    Ground truth it follows: on the CPU, the bytes of live tensors (what a GPU's ``memory_allocated`` would
    count for the same ops); on ``meta``, the same bookkeeping for tensors that have shapes but no data.
    Not visible to it: memory a kernel allocates and frees inside itself (workspaces), and tensors made
    outside torch's dispatcher (``torch.from_numpy``) until an op returns a new tensor from them.

    ``cache`` (meta only; a dict several meters may share) reuses the output shapes of an op already seen
    with the same input shapes, strides, dtypes and arguments, instead of running its Python meta kernel
    again: meta kernels are pure functions of that metadata, and only ops whose outputs were seen to be
    fresh storages are cached, so the bookkeeping is unchanged.
    ``explain=True`` remembers who created each storage (``owner``) and keeps a ``Snapshot`` of the live
    storages at each peak.
    """

    def __init__(self, device: str = "cpu", granularity: int = 1, cache: dict[Any, Any] | None = None,
                 explain: bool = False, owner: Any = None) -> None:
        super().__init__()
        self.kind = device
        self.granularity = granularity
        self.explain = explain
        self.owner = owner or (lambda: "pipeline")  # a callable naming the creator of a new storage
        self._live: dict[int, Allocation] = {}
        self._resident: dict[int, Allocation] = {}
        self._resident_by_owner: dict[str, list[int]] = {}
        self._allocated = 0
        self._peak = 0
        self._snapshot: Snapshot | None = None
        self._cache = cache
        self._cacheable: dict[Any, bool] = {}
        self._probes: list[list[int]] = []  # open probes: [highest allocated seen]

    def __enter__(self) -> LiveTensorMeter:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:  # the Meter protocol's signature, over the mode's own
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        key = self._cache_key(func, args, kwargs) if self._cache is not None else None
        if key is not None:
            template = self._cache.get(key)  # type: ignore[union-attr]
            if template is not None:
                out = _build(template)
                self._track_all(out)
                return out
        out = func(*args, **kwargs)
        if key is not None and _fresh(out, args, kwargs):
            self._cache[key] = template_of(out)  # type: ignore[index]
        self._track_all(out)
        return out

    def track(self, tensor: torch.Tensor, owner: str | None = None, resident: bool = False) -> None:
        """Count ``tensor``'s storage while it lives (once, however many views share it). ``resident``
        storages (weights) are summed per owner in snapshots rather than listed."""
        if tensor.device.type != self.kind:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live or key in self._resident:
            if resident and key in self._live:  # a weight made during loading: move it to the resident set
                self._add_resident(key, self._live.pop(key), owner)
            return
        size = self.round(storage.nbytes())
        alloc = Allocation(size, owner or (self.owner() if self.explain else ""),
                           tuple(tensor.shape) if self.explain else (), str(tensor.dtype).removeprefix("torch."))
        if resident:
            self._add_resident(key, alloc, owner)
        else:
            self._live[key] = alloc
        self._allocated += size
        self._reach(self._allocated)
        weakref.finalize(storage, self._free, key)

    def snapshot(self) -> Snapshot:
        """The live storages now."""
        resident = tuple(
            (owner, sum(self._resident[k].size for k in keys), len(keys))
            for owner, keys in self._resident_by_owner.items() if keys
        )
        return Snapshot(tuple(self._live.values()), resident)

    @contextmanager
    def probe(self) -> Iterator[list[int]]:
        """Yield a one-element list holding the highest ``allocated()`` seen while the block runs."""
        probe = [self._allocated]
        self._probes.append(probe)
        try:
            yield probe
        finally:
            self._probes.remove(probe)

    def replay(self, peak_delta: int, template: Any) -> Any:
        """Stand for a call already measured: raise the peak to ``allocated() + peak_delta`` as the call did,
        then create its outputs from ``template`` (see ``template_of``)."""
        self._reach(self._allocated + peak_delta)
        out = _build(template)
        self._track_all(out)
        return out

    def round(self, nbytes: int) -> int:
        """``nbytes`` rounded up to the allocator's granularity (zero stays zero)."""
        return -(-nbytes // self.granularity) * self.granularity

    def allocated(self) -> int:
        return self._allocated

    def take_peak(self) -> Peak:
        peak = Peak(self._peak, None, self._snapshot)
        self._peak = self._allocated
        self._snapshot = self.snapshot() if self.explain else None
        return peak

    def device_peak(self) -> int | None:
        return None

    def environment(self) -> dict[str, Any]:
        return {"device": self.kind, "allocator_granularity": self.granularity}

    def _reach(self, level: int) -> None:
        """Memory held has reached ``level`` bytes: raise the open probes and the peak (with its snapshot)."""
        for probe in self._probes:
            probe[0] = max(probe[0], level)
        if level > self._peak:
            self._peak = level
            if self.explain:
                self._snapshot = self.snapshot()

    def _add_resident(self, key: int, alloc: Allocation, owner: str | None) -> None:
        alloc = Allocation(alloc.size, owner or alloc.owner, alloc.shape, alloc.dtype)
        self._resident[key] = alloc
        self._resident_by_owner.setdefault(alloc.owner, []).append(key)

    def _track_all(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.track(out)
            return
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)

    def _free(self, key: int) -> None:
        alloc = self._live.pop(key, None)
        if alloc is None:
            alloc = self._resident.pop(key, None)
            if alloc is None:
                return
            self._resident_by_owner[alloc.owner].remove(key)
        self._allocated -= alloc.size

    def _cache_key(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        cacheable = self._cacheable.get(func)
        if cacheable is None:
            schema = func._schema
            cacheable = not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
            self._cacheable[func] = cacheable
        if not cacheable:
            return None
        parts: list[Any] = [func]
        if not _key_parts(parts, args) or not _key_parts(parts, tuple(kwargs.items())):
            return None
        return tuple(parts)


_SCALARS = (int, float, bool, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


def _key_parts(parts: list[Any], values: Any, any_device: bool = False) -> bool:
    """Append a hashable description of ``values`` (tensors by metadata only); False when one cannot be.
    Tensors must be on meta unless ``any_device`` (a host tensor's values are then ignored)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.device.type != "meta" and not any_device:
                return False
            offset = value.storage_offset() if value.device.type == "meta" else None  # a host view's place
            parts.append((value.device.type, value.shape, value.stride(), value.dtype, offset))
        elif isinstance(value, (tuple, list)):
            parts.append(("(", len(value)))
            if not _key_parts(parts, value, any_device):
                return False
        elif value is None or isinstance(value, _SCALARS):
            parts.append((type(value), value))
        else:
            return False
    return True


def call_key(args: Any, kwargs: dict[str, Any]) -> Any:
    """A hashable description of a call's arguments, tensors by metadata only (device, shape, strides,
    dtype), or None when an argument cannot be described so."""
    parts: list[Any] = []
    if not _key_parts(parts, args, any_device=True) or not _key_parts(parts, tuple(kwargs.items()), True):
        return None
    return tuple(parts)


def template_of(out: Any) -> Any:
    """The structure of ``out`` with meta tensors replaced by their shape, strides and dtype."""
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), tuple(out.stride()), out.dtype)
    if isinstance(out, (tuple, list)):
        return (type(out), tuple(template_of(v) for v in out))
    return ("V", out)


def _build(template: Any) -> Any:
    tag = template[0]
    if tag == "T":
        return torch.empty_strided(template[1], template[2], dtype=template[3], device="meta")
    if tag == "V":
        return template[1]
    return tag(_build(v) for v in template[1])


def _fresh(out: Any, args: Any, kwargs: dict[str, Any]) -> bool:
    """True when every tensor ``out`` holds is on meta with a storage of its own (no input aliased, no
    output shared): only then can a cached template stand in for the op."""
    inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
    seen: set[int] = set()
    for value in tree_flatten(out)[0]:
        if isinstance(value, torch.Tensor):
            key = value.untyped_storage()._cdata
            if value.device.type != "meta" or key in inputs or key in seen or value.storage_offset():
                return False
            if value.untyped_storage().nbytes() != _strided_nbytes(value):  # storage larger than its view
                return False
            seen.add(key)
    return True


def _strided_nbytes(tensor: torch.Tensor) -> int:
    """Bytes ``torch.empty_strided`` allocates for the tensor's size and strides."""
    if tensor.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return span * tensor.element_size()


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
