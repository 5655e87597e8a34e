"""How memory is measured. One small interface, one implementation per device, so that the run engine
(``engine.py``) is the same code whatever the device:

- ``CudaMeter``: the CUDA caching allocator's own statistics (``torch.cuda.memory_allocated``,
  ``max_memory_allocated``, ``max_memory_reserved``), plus NVML's view of the device (what nvidia-smi shows).
- ``LiveTensorMeter``: a ``TorchDispatchMode`` that sees every tensor an aten op returns and tracks the live
  storages (weak references), for the CPU, where torch keeps no allocator statistics, and for the ``meta``
  device, where nothing is allocated at all (``simulate``). It reports each allocation and free to an
  accountant (``accounting.py``): live bytes for the CPU, the caching-allocator model for a simulated GPU.

Import this module only on the profile/simulate paths: it imports torch.
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import SUPPORTED_NODES, tree_flatten, tree_unflatten

from sdvram.accounting import Accountant
from sdvram.allocator import AllocatorOutOfMemory, Program, window_bounds, window_end
from sdvram.metakernels import KERNELS as META_KERNELS

NVML_SAMPLE_SECONDS = 0.005  # NVML's memory counters update about this often; finer sampling sees no more
# The allocator trace's ring buffer for a GPU timeline: a whole 512 x 512 run at 10 steps made 43,544 events on
# the H200, so a reference run of 50 steps makes about 200,000; room for five times that (about 100 bytes each).
TRACE_ENTRIES = 1_000_000
# The views a meter on meta lets pass without seeing them (``LiveTensorMeter.__enter__``): the slices a tiled VAE cuts
# its tiles with and crops them to (``AutoencoderKL._tiled_encode``, ``tiled_decode``: 14,000 a run at 15,900 px on the
# H200), and ``as_strided``, which a slice is made of on meta. A view the meter sees only has its output tracked, and
# that output's storage is its input's, known already (a /tmp check over every pipeline, four sets of switches, the CPU
# target, explain and a whole H200 fit: 167,000 slices, none of an unknown storage); each is a round trip from C++
# into Python for nothing, about 6 us, 8% of a fit's search.
UNSEEN_VIEWS: tuple[Any, ...] = (torch.ops.aten.slice.Tensor, torch.ops.aten.as_strided.default)


@dataclass(frozen=True)
class Peak:
    """The most memory held since the meter's previous ``take_peak()``."""

    allocated: int  # bytes in live tensors (for CUDA: max_memory_allocated)
    reserved: int | None  # bytes the allocator held from the device (None where there is no such thing)
    snapshot: Snapshot | None = None  # what was live at the peak, where the meter keeps it
    requested: int | None = None  # the largest sum of live requests as made (where the meter knows it)


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

    def timeline_position(self) -> int | None:
        """Where the run's timeline is now, in steps (None: the meter keeps none)."""
        ...

    def timeline_series(self) -> list[tuple[int, int | None]] | None:
        """(allocated, reserved) at each step of the run's timeline (None: the meter keeps none)."""
        ...


class CudaMeter:
    """CUDA allocator statistics for one device, and NVML's used memory sampled in a background thread.

    ``allocated()`` is ``torch.cuda.memory_allocated()``; ``take_peak()`` returns
    ``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` since the previous call, then
    ``torch.cuda.reset_peak_memory_stats()``; ``device_peak()`` is the largest ``memory.used`` of the device
    that nvidia-smi would have shown while the meter was entered (``nvmlDeviceGetMemoryInfo``; command line
    equivalent ``nvidia-smi --query-gpu=memory.used``), and ``process_peak`` the largest ``usedGpuMemory`` NVML
    listed for this process (``nvidia-smi --query-compute-apps=pid,used_memory``).

    The seam: ``cuda`` is the ``torch.cuda`` module and ``nvml`` the ``pynvml`` module unless given (the tests
    give scripted fakes with the same functions, so that this logic runs on a machine without a GPU);
    ``nvml=None`` imports pynvml when the meter is entered, and measures without it where it is missing.
    """

    kind = "cuda"

    def __init__(self, device: torch.device, timeline: bool = False, cuda: Any = None, nvml: Any = None) -> None:
        self.device = device
        self.timeline = timeline
        self.cuda = torch.cuda if cuda is None else cuda
        self._nvml_module = nvml
        self.trace: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml_handle: Any = None
        self._nvml: Any = None
        self.nvml_error: str | None = None
        self._device_peak = 0
        self.process_peak: int | None = None

    def __enter__(self) -> CudaMeter:
        self.cuda.synchronize(self.device)
        self.cuda.reset_peak_memory_stats(self.device)
        if self.timeline:  # the allocator's own trace of every alloc and free, without stacks (cheaper)
            self.cuda.memory._record_memory_history(context=None, max_entries=TRACE_ENTRIES, device=self.device)
        self._start_nvml()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timeline:
            self.trace = self.cuda.memory._snapshot(self.device)
            self.cuda.memory._record_memory_history(enabled=None, device=self.device)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nvml is not None:
            self._sample()
            self._nvml.nvmlShutdown()

    def allocated(self) -> int:
        return int(self.cuda.memory_allocated(self.device))

    def timeline_position(self) -> int | None:
        """How many allocator events the trace holds so far (None without a timeline)."""
        if not self.timeline:
            return None
        return len(self.cuda.memory._snapshot(self.device)["device_traces"][self._index()])

    def timeline_series(self) -> list[tuple[int, int | None]] | None:
        """(allocated, reserved) after each allocator event of the run, from its trace."""
        if self.trace is None:
            return None
        from sdvram.traces import allocation_series

        return list(allocation_series(self.trace["device_traces"][self._index()]))

    def _index(self) -> int:
        return self.device.index if self.device.index is not None else int(self.cuda.current_device())

    def take_peak(self) -> Peak:
        self.cuda.synchronize(self.device)
        peak = Peak(int(self.cuda.max_memory_allocated(self.device)), int(self.cuda.max_memory_reserved(self.device)))
        self.cuda.reset_peak_memory_stats(self.device)
        return peak

    def device_peak(self) -> int | None:
        return self._device_peak if self._nvml is not None else None

    def environment(self) -> dict[str, Any]:
        props = self.cuda.get_device_properties(self.device)
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
        pynvml = self._nvml_module
        if pynvml is None:
            try:
                pynvml = importlib.import_module("pynvml")
            except ImportError:
                self.nvml_error = "the pynvml module (package nvidia-ml-py) is not installed"
                return
        try:
            pynvml.nvmlInit()
            handle = _nvml_handle(pynvml, self.cuda, self.device)
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


class Allocation(NamedTuple):
    """One live allocation as the live-tensor meter saw it made (a named tuple: hundreds of thousands are made
    per simulated run, and a tuple is made four times faster than a frozen dataclass)."""

    size: int  # bytes requested
    charged: int  # bytes the accountant charged for it (the allocator's block)
    owner: str  # the module whose forward made it ("pipeline" outside any module)
    shape: tuple[int, ...]
    dtype: str
    kind: str = "tensor"  # "tensor", "weights" (resident) or a workspace's name


def _charged(info: Allocation, charged: int) -> Allocation:
    """``info`` with the bytes the accountant charged for it: made anew, not with ``_replace``, which is five times
    slower and runs for every allocation and every output of a replayed call."""
    return Allocation(info.size, charged, info.owner, info.shape, info.dtype, info.kind)


@dataclass(frozen=True)
class Snapshot:
    """What was live at a peak: the allocations one by one, the resident weights summed per owner."""

    allocations: tuple[Allocation, ...]
    resident: tuple[tuple[str, int, int], ...]  # (owner, bytes charged, tensors)

    @property
    def total(self) -> int:
        return sum(a.charged for a in self.allocations) + sum(size for _, size, _ in self.resident)


@dataclass
class Failure:
    """The first allocation an accountant with a capacity could not make."""

    allocation: Allocation
    error: Exception
    context: Any = None  # what the meter's ``on_failure`` callback returned (the stage, for the engine)


class StopRun(Exception):
    """Raised by a meter with ``stop_at_failure`` at the first allocation that does not fit."""


@dataclass
class EventLog:
    """Allocations and frees in order, for replaying a call exactly: ``("alloc", key, Allocation)``,
    ``("free", key)``."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    _left: dict[int, Allocation] | None = None
    steps: list[int] | None = None  # with a timeline: allocated at each step of the call, less where it began
    _program: list[tuple[Any, ...]] | None = None

    @property
    def program(self) -> list[tuple[Any, ...]]:
        """The events grouped for a fast replay (``repeated_windows``; worked out once, like ``left``)."""
        if self._program is None:
            self._program = Program(repeated_windows(self.events))
        return self._program

    @property
    def left(self) -> dict[int, Allocation]:
        """The allocations the logged events leave live, by their keys in the log, in the order made (worked
        out once: read it only when the log is complete)."""
        if self._left is None:
            live: dict[int, Allocation] = {}
            for event in self.events:
                if event[0] == "alloc":
                    live[event[1]] = event[2]
                else:
                    live.pop(event[1], None)
            self._left = live
        return self._left


def repeated_windows(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``events`` as a program of ``("events", [event, ...])`` and ``("repeat", window, count)`` items, where a window
    is a run of events that frees every allocation it makes and nothing else (a net-zero window, as short as
    it can be), and ``count`` (2 or more) consecutive windows make the same requests in the same order (the
    same sizes, each free naming the same place in its window). The VAE's tile blending is such a program: one
    window per pixel row, the same for every row. Linear in the events."""
    index, freed = window_bounds(events)
    items: list[tuple[Any, ...]] = []
    previous: tuple[Any, ...] | None = None
    i, n = 0, len(events)
    while i < n:
        end = window_end(events, index, freed, i)
        if end is None:
            items.append(("event", events[i]))
            previous = None
            i += 1
            continue
        window = events[i:end + 1]
        signature = _signature(window)
        if previous is not None and previous == signature:
            items[-1] = ("repeat", items[-1][1], items[-1][2] + 1)
        else:
            items.append(("repeat", window, 1))
            previous = signature
        i = end + 1
    # a window that does not repeat is replayed as its events; consecutive events make one item
    program: list[tuple[Any, ...]] = []
    for item in items:
        if item[0] == "repeat" and item[2] > 1:
            program.append(item)
            continue
        events = [item[1]] if item[0] == "event" else item[1]
        if program and program[-1][0] == "events":
            program[-1][1].extend(events)
        else:
            program.append(("events", list(events)))
    return program


def _signature(window: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    order: dict[int, int] = {}
    parts: list[Any] = []
    for event in window:
        if event[0] == "alloc":
            order[event[1]] = len(order)
            parts.append(event[2].size)
        else:
            parts.append(-1 - order[event[1]])
    return tuple(parts)


class LiveTensorMeter(TorchDispatchMode):
    """Tracks the storages of every tensor an aten op returns on ``device`` while entered, and reports each
    to ``accountant`` when made and when its last reference goes (a weak reference's callback on the storage).
    ``allocated()`` and ``reserved()`` are the accountant's; the peak is the largest ``allocated`` seen.

    Ground truth it follows: on the CPU, the bytes of live tensors (what a GPU's ``memory_allocated`` would
    count for the same ops); on ``meta``, the same bookkeeping for tensors that have shapes but no data.
    Not visible to it: memory a kernel allocates and frees inside itself (workspaces: ``after_op`` may add
    them with ``transient`` and ``keep``), tensors made outside torch's dispatcher (``torch.from_numpy``)
    until an op returns a new tensor from them, and zero-byte storages (PyTorch allocates nothing for them).

    ``cache`` (meta only; a dict several meters may share) reuses the output shapes of an op already seen
    with the same input shapes, strides, dtypes and arguments, instead of running its Python meta kernel
    again: meta kernels are pure functions of that metadata, and only ops whose outputs were seen to be
    fresh storages are cached, so the bookkeeping is unchanged.
    ``explain=True`` remembers who made each allocation (``owner``) and keeps a ``Snapshot`` at each peak.
    ``on_failure(allocation)`` is called once, for the first allocation the accountant refused (an
    ``AllocatorOutOfMemory`` from a capacity); the accountant's capacity is then lifted so that the run goes
    on and shows what it would need, or, with ``stop_at_failure``, ``StopRun`` ends the run there.
    ``timeline=True`` keeps ``series``: after every op, the most allocated (and reserved) since the previous op.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Not for this mode: ``TorchDispatchMode`` wraps a subclass's ``__torch_dispatch__`` in
        ``torch._disable_dynamo`` (so that a ``torch.compile`` never traces into it) unless this says False. Nothing
        is compiled under the meter, and the wrapper costs about 8 us a call on the development machine, on every
        op: a tenth of a fit search's time."""
        return False

    def __init__(self, device: str, accountant: Accountant, cache: dict[Any, Any] | None = None,
                 explain: bool = False, owner: Any = None, library: Any = None, on_failure: Any = None,
                 stop_at_failure: bool = False, timeline: bool = False) -> None:
        super().__init__()
        self.series: list[tuple[int, int | None]] | None = [] if timeline else None
        self._window = 0
        self._window_reserved: int | None = None
        self.kind = device
        self._on_meta = device == "meta"  # ``track`` asks Tensor.is_meta then, not .device (a new object, 0.3 us)
        self.accountant = accountant
        self.explain = explain
        self.owner = owner or (lambda: "pipeline")  # a callable naming the maker of a new allocation
        # What a device's libraries allocate around an op: library.before_op(meter, func, args) returns the
        # keys of allocations to free after it; library.after_op(meter, func, args, out) runs after it.
        self.library = library
        self.on_failure = on_failure
        self.stop_at_failure = stop_at_failure
        self.failure: Failure | None = None
        self.log: EventLog | None = None  # while set, every allocation and free is appended to it
        self._keys: dict[int, int] = {}  # storage _cdata -> allocation key
        self._watch: dict[int, weakref.ref[Any]] = {}  # allocation key -> the weak reference that frees it
        self._live: dict[int, Allocation] = {}
        self._resident: set[int] = set()
        self._next = count(1)
        self._peak = 0
        self._peak_reserved: int | None = None
        self._peak_requested = 0
        self._snapshot: Snapshot | None = None
        self._cache = cache
        self._cacheable: dict[Any, tuple[bool, bool]] = {}  # op -> (cached at all, pointwise)
        self._views: dict[Any, bool] = {}  # op -> only views, no hook (``_plain_view``)
        self._unseen: torch.library.Library | None = None  # the views let pass while entered (``_let_pass``)

    def __enter__(self) -> LiveTensorMeter:
        super().__enter__()
        self._unseen = self._let_pass(UNSEEN_VIEWS) if self._on_meta and self.series is None else None
        return self

    def __exit__(self, *exc: object) -> None:  # the Meter protocol's signature, over the mode's own
        if self._unseen is not None:
            self._unseen._destroy()
            self._unseen = None
        super().__exit__(*exc)

    def _let_pass(self, views: tuple[Any, ...]) -> torch.library.Library | None:
        """Let ``views`` pass this mode unseen while it is entered: a fallthrough kernel at the Python dispatch key,
        which a ``TorchDispatchMode`` is reached through, so that the dispatcher goes on to the op's own kernel
        (``torch.library.fallthrough_kernel``). Only views the mode would pass on with nothing done but their output
        tracked (``_plain_view``); not in a timeline, whose steps are ops, views too."""
        passed = [view for view in views if self._plain_view(view)]
        if not passed:
            return None
        library = torch.library.Library("aten", "IMPL")
        try:
            for view in passed:
                library.impl(view, torch.library.fallthrough_kernel, "Python")
        except RuntimeError:  # let pass already (a meter entered inside another): this one sees them, as it may
            library._destroy()
            return None
        return library

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        view = self._views.get(func)
        if view is None:
            view = self._views[func] = self._plain_view(func)
        if view and self.series is None:  # a view (a VAE tile cut from the image: 14,000 a tiled run at 15,900 px)
            out = func(*args, **kwargs) if kwargs else func(*args)
            self._track_all(out)
            return out
        kwargs = kwargs or {}
        held = self.library.before_op(self, func, args) if self.library is not None else ()
        key = self._cache_key(func, args, kwargs) if self._cache is not None else None
        template = self._cache.get(key) if key is not None else None  # type: ignore[union-attr]
        if template is not None:
            out = _build(template)
        else:
            kernel = META_KERNELS.get(func)
            out = kernel(*args, **kwargs) if kernel is not None else None
            if out is None:
                out = func(*args, **kwargs)
            if key is not None and _fresh(out, args, kwargs):
                self._cache[key] = template_of(out)  # type: ignore[index]
        self._track_all(out)
        if self.library is not None:
            for held_key in held:
                self._free(held_key)
            self.library.after_op(self, func, args, out)
        if self.series is not None:
            self.sample()
        return out

    def _plain_view(self, func: Any) -> bool:
        """Does ``func`` only return views of its inputs (it mutates nothing, every output aliases an input: no bytes
        to count, nothing to cache), with no library hook or meta kernel of ours for it? Such an op needs nothing
        of ``__torch_dispatch__`` but its outputs tracked (their storages are known already: a no-op)."""
        schema = func._schema
        return (not schema.is_mutable and bool(schema.returns) and all(r.alias_info is not None for r in schema.returns)
                and func not in META_KERNELS and (self.library is None or not self.library.acts_on(func)))

    def sample(self) -> None:
        """Close a step of the timeline: the most allocated and reserved since the previous step."""
        assert self.series is not None
        self.series.append((self._window, self._window_reserved))
        self._window, self._window_reserved = self.accountant.allocated, self.accountant.reserved

    def timeline_position(self) -> int | None:
        """The steps so far, the current one closed (None without a timeline)."""
        if self.series is None:
            return None
        self.sample()
        return len(self.series)

    def timeline_series(self) -> list[tuple[int, int | None]] | None:
        return self.series

    # -- what is tracked -----------------------------------------------------------------------------------
    def track(self, tensor: torch.Tensor, owner: str | None = None, resident: bool = False) -> None:
        """Count ``tensor``'s storage while it lives (once, however many views share it). ``resident``
        storages (weights) are summed per owner in snapshots rather than listed."""
        if not tensor.is_meta if self._on_meta else tensor.device.type != self.kind:
            return
        storage = tensor.untyped_storage()
        known = self._keys.get(storage._cdata)
        if known is not None:
            if resident and known not in self._resident:  # a weight made during loading: now resident
                self._resident.add(known)
                alloc = self._live[known]
                self._live[known] = Allocation(alloc.size, alloc.charged, owner or alloc.owner, alloc.shape,
                                               alloc.dtype, "weights")
            return
        nbytes = storage.nbytes()
        if nbytes == 0:  # PyTorch's allocators hand out nothing for an empty storage
            return
        info = Allocation(nbytes, 0, owner or (self.owner() if self.explain else ""),
                          tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                          "weights" if resident else "tensor")
        key = self._alloc(info)
        if resident:
            self._resident.add(key)
        self._bind(storage, key)

    def transient(self, nbytes: int, kind: str) -> None:
        """An allocation made and freed inside a kernel (a workspace): it reaches the peak, then goes."""
        self.release(self.hold(nbytes, kind))

    def hold(self, nbytes: int, kind: str) -> int | None:
        """An allocation a kernel makes for its duration (freed with ``release``); its key, None for 0 bytes."""
        if nbytes <= 0:
            return None
        return self._alloc(Allocation(nbytes, 0, self.owner() if self.explain else "", (), "bytes", kind))

    def release(self, key: int | None) -> None:
        if key is not None:
            self._free(key)

    def keep(self, nbytes: int, kind: str, owner: str | None = None) -> None:
        """An allocation a library makes once and keeps for the rest of the process (cuBLAS's workspace)."""
        if nbytes > 0:
            key = self._alloc(Allocation(nbytes, 0, owner or kind, (), "bytes", kind))
            self._resident.add(key)

    def kept(self, keys: Any) -> tuple[int, ...]:
        """Those of ``keys`` that a library holds for the rest of the process (``keep``; not weights, which a
        module's move to the device binds to its storages)."""
        return tuple(key for key in keys if key in self._resident and self._live[key].kind != "weights")

    # -- reading -------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The live allocations now."""
        resident: dict[str, list[int]] = {}
        listed = []
        for key, alloc in self._live.items():
            if key in self._resident:
                entry = resident.setdefault(alloc.owner, [0, 0])
                entry[0] += alloc.charged
                entry[1] += 1
            else:
                listed.append(alloc)
        return Snapshot(tuple(listed), tuple((owner, size, n) for owner, (size, n) in resident.items()))

    @contextmanager
    def recording(self) -> Iterator[EventLog]:
        """Log every allocation and free made while the block runs (nested logs are not supported)."""
        log = EventLog()
        self.log = log
        first, base = (len(self.series), self.accountant.allocated) if self.series is not None else (0, 0)
        try:
            yield log
        finally:
            self.log = None
            if self.series is not None:  # the call's timeline, relative to where it began, for its replays
                log.steps = [allocated - base for allocated, _ in self.series[first:]]

    def replay(self, log: EventLog, template: Any, outputs: list[int], kept: tuple[int, ...] = ()) -> Any:
        """Stand for a call already logged: make and free its allocations in the same order, then create
        its outputs from ``template`` (see ``template_of``), bound to the allocations the call left live
        (``outputs``: their keys in the log, in the order of the outputs' tensors); ``kept``: the keys of what the
        call left held for the rest of the process (``keep``: cuBLAS's workspaces at its first matrix multiply)."""
        stepped = self.series is not None and bool(log.steps)
        if stepped:  # the timeline of the logged call, from where this one begins
            assert self.series is not None and log.steps is not None
            base, reserved = self.accountant.allocated, self.accountant.reserved
            self.series.extend((base + step, reserved) for step in log.steps)
        fresh = self._replay_events(log)
        if stepped:  # the call's steps are in the timeline already: the next step starts after it
            self._window, self._window_reserved = self.accountant.allocated, self.accountant.reserved
        for old in kept:
            self._resident.add(fresh.pop(old))
        if template is None:  # a call that returns nothing it made
            return None
        # the outputs' storages are the logged ones, not new allocations: made with no mode seeing them (PyTorch's C++
        # guard; _disable_current_modes pops and pushes the mode stack in Python, 8 us a call against 2, and a tiled
        # run at 15,900 px replays some 10,000 calls)
        with torch._C._DisableTorchDispatch():
            out = _build(template)
        if template[0] == "T":  # one tensor, as most calls return: not flattened
            self._bind(out.untyped_storage(), fresh.pop(outputs[0]))
            return out
        tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for tensor, old in zip(tensors, outputs, strict=True):
            self._bind(tensor.untyped_storage(), fresh.pop(old))
        return out

    def _replay_events(self, log: EventLog) -> dict[int, int]:
        """Make and free ``log``'s allocations in order: in one call to an accountant that can take them so
        (``_replay_fast``), else one by one (as ``explain`` wants, for a snapshot at each peak, and a log being
        recorded, which takes every event). Returns the log's keys of what is left live -> their new keys."""
        fast = getattr(self.accountant, "replay_events", None)
        if fast is not None and not self.explain and self.log is None:
            return self._replay_fast(log, fast)
        fresh: dict[int, int] = {}
        for event in log.events:
            if event[0] == "alloc":
                fresh[event[1]] = self._alloc(event[2])
            else:
                self._free(fresh.pop(event[1]))
        return fresh

    def _replay_fast(self, log: EventLog, fast: Any) -> dict[int, int]:
        """The events of ``log`` sent to the accountant in one call (``replay_events``), for an accountant that
        can take them so: the same allocations and frees in the same order, without a meter entry for each
        transient. Returns the log's keys of what the call left live -> their new keys here."""
        keys, peaks = fast(log.program, self._next, self._refused)
        self._peak = max(self._peak, peaks[0])
        self._window = max(self._window, peaks[0])
        if peaks[1] is not None:
            self._peak_reserved = peaks[1] if self._peak_reserved is None else max(self._peak_reserved, peaks[1])
            self._window_reserved = max(self._window_reserved or 0, peaks[1])
        self._peak_requested = max(self._peak_requested, peaks[2])
        fresh = {}
        for old, info in log.left.items():
            key = fresh[old] = keys[old]
            charged = self.accountant.charged(key)
            self._live[key] = info if info.charged == charged else _charged(info, charged)  # (frozen: shared)
        return fresh

    def _refused(self, info: Allocation, exc: AllocatorOutOfMemory) -> None:
        """A capacity refused an allocation: note the first, stop the run if asked, else lift the capacity."""
        if self.failure is None:
            # Without its traceback: the frames it holds would keep every tensor of the failed call's callers
            # alive (a frame references its caller), and the run goes on after the failure.
            self.failure = Failure(info, exc.with_traceback(None), self.on_failure(info) if self.on_failure else None)
            if self.stop_at_failure:
                raise StopRun() from exc
        self.accountant.lift_capacity()  # type: ignore[attr-defined]  # only the allocator has a capacity

    def replay_resident(self, log: EventLog, bindings: list[tuple[Any, int, str]]) -> None:
        """Make and free a logged construction's allocations in order, then hold the ones it left live as
        resident weights: ``bindings`` gives each one's storage, its key in the log, and its owner. The
        storages outlive the run, so no finalizer is set. The events go as a replayed call's do
        (``_replay_events``: a fit search loads the weights forty times)."""
        fresh = self._replay_events(log)
        for storage, old, owner in bindings:
            key = fresh.pop(old)
            self._keys[storage._cdata] = key
            self._resident.add(key)
            alloc = self._live[key]
            self._live[key] = Allocation(alloc.size, alloc.charged, owner, alloc.shape, alloc.dtype, "weights")
        for key in fresh.values():  # made while building and kept, but not a weight (none in SD v1.5)
            self._resident.add(key)

    def onload(self, tensors: list[torch.Tensor], owner: str) -> list[int]:
        """Allocate ``tensors`` as a module's ``.to(device)`` would, in that order (a model moved onto the GPU
        by CPU offload), and bind their storages; return the keys for ``offload``."""
        keys = []
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.nbytes() == 0:
                continue
            key = self._alloc(Allocation(storage.nbytes(), 0, owner, tuple(tensor.shape),
                                         str(tensor.dtype).removeprefix("torch."), "weights"))
            self._keys[storage._cdata] = key
            self._resident.add(key)
            keys.append(key)
        return keys

    def offload(self, tensors: list[torch.Tensor], keys: list[int]) -> None:
        """Free what ``onload`` allocated (the module moved back to the CPU)."""
        for tensor in tensors:
            self._keys.pop(tensor.untyped_storage()._cdata, None)
        for key in keys:
            self._free(key)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()`` as a library calls it (accelerate's offload hooks)."""
        self.accountant.empty_cache()

    def live_keys(self, tensors: Any) -> list[int] | None:
        """The allocation keys of ``tensors``' storages, in order (None if one is not tracked)."""
        keys = []
        for tensor in tree_flatten(tensors)[0]:
            if isinstance(tensor, torch.Tensor):
                key = self._keys.get(tensor.untyped_storage()._cdata)
                if key is None:
                    return None
                keys.append(key)
        return keys

    def allocated(self) -> int:
        return self.accountant.allocated

    def take_peak(self) -> Peak:
        peak = Peak(self._peak, self._peak_reserved, self._snapshot, self._peak_requested)
        self._peak = self.accountant.allocated
        self._peak_reserved = self.accountant.reserved
        self._peak_requested = self.accountant.requested
        self._snapshot = self.snapshot() if self.explain else None
        return peak

    def device_peak(self) -> int | None:
        return None

    def environment(self) -> dict[str, Any]:
        return {"device": self.kind}

    # -- the events ------------------------------------------------------------------------------------------
    def _alloc(self, info: Allocation) -> int:
        key = next(self._next)
        try:
            charged = self.accountant.alloc(key, info.size)
        except AllocatorOutOfMemory as exc:  # a capacity refused it: note the first, lift the capacity, go on
            self._refused(info, exc)
            charged = self.accountant.alloc(key, info.size)
        info = _charged(info, charged)
        self._live[key] = info
        if self.log is not None:
            self.log.events.append(("alloc", key, info))
        self._reach()
        return key

    def _free(self, key: int) -> None:
        if self._live.pop(key, None) is None:
            return
        self._resident.discard(key)
        self.accountant.free(key)
        if self.log is not None:
            self.log.events.append(("free", key))

    def _bind(self, storage: Any, key: int) -> None:
        """Free ``key`` when ``storage`` goes: a weak reference's callback, called where the storage is
        deallocated (what ``weakref.finalize`` does, without its registry: a third of the cost, on every
        allocation). The reference is kept until then."""
        cdata = storage._cdata
        self._keys[cdata] = key
        self._watch[key] = weakref.ref(storage, partial(self._release, cdata, key))

    def forget(self) -> None:
        """Stop following the storages still alive (their weak references go, callbacks uncalled): after a run,
        whose figures are taken. The references' callbacks hold the meter, which holds them, a cycle that only
        the garbage collector would free."""
        self._watch.clear()
        self._keys.clear()

    def _release(self, cdata: int, key: int, _: Any = None) -> None:
        del self._watch[key]
        if self._keys.get(cdata) == key:
            del self._keys[cdata]
        self._free(key)

    def _reach(self) -> None:
        """An allocation was made: raise the peaks (with the snapshot)."""
        acct = self.accountant
        level = acct.allocated
        if level > self._peak:
            self._peak = level
            if self.explain:
                self._snapshot = self.snapshot()
        if level > self._window:
            self._window = level
        reserved = acct.reserved
        if reserved is not None and (self._window_reserved is None or reserved > self._window_reserved):
            self._window_reserved = reserved
        if reserved is not None and (self._peak_reserved is None or reserved > self._peak_reserved):
            self._peak_reserved = reserved
        if acct.requested > self._peak_requested:
            self._peak_requested = acct.requested

    def _track_all(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.track(out)
            return
        for value in op_tensors(out):
            self.track(value)

    def _cache_key(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """The op cache's key for a call of ``func`` (None: not cached). Only an op that mutates nothing and
        returns no alias of an input is cached: its outputs are new storages, whose shapes and strides follow
        its inputs' shapes, strides and dtypes, not where a view starts in its storage (so rows cut from one
        tensor share an entry: the VAE's tile blending is one such op per pixel row); and a pointwise op's
        float scalars decide only values, and by their type the result's dtype (type promotion looks at a
        scalar's kind, never its value), so a scale that changes from row to row shares an entry too."""
        kind = self._cacheable.get(func)
        if kind is None:
            schema = func._schema
            kind = self._cacheable[func] = (not schema.is_mutable and all(r.alias_info is None for r in schema.returns),
                                            torch.Tag.pointwise in func.tags)
        cacheable, pointwise = kind
        if not cacheable:
            return None
        parts: list[Any] = [func]
        floats = not pointwise
        if (not _key_parts(parts, args, offsets=False, floats=floats)
                or kwargs and not _key_parts(parts, tuple(kwargs.items()), offsets=False, floats=floats)):
            return None
        return tuple(parts)


_SCALARS = (int, float, bool, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


def _key_parts(parts: list[Any], values: Any, any_device: bool = False, offsets: bool = True,
               floats: bool = True) -> bool:
    """Append a hashable description of ``values`` (tensors by metadata only); False when one cannot be.
    Tensors must be on meta unless ``any_device`` (a host tensor's values are then ignored). ``offsets``: a
    view's place in its storage is part of it. ``floats``: a float's value is part of it (else its type only)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            meta = value.is_meta  # not .device.type: that makes a device object, 0.3 us, at every op and call
            if not meta and not any_device:
                return False
            offset = value.storage_offset() if offsets and meta else None
            parts.append(("meta" if meta else value.device.type, value.shape, value.stride(), value.dtype, offset))
        elif isinstance(value, (tuple, list)):
            parts.append(("(", len(value)))
            if not _key_parts(parts, value, any_device, offsets, floats):
                return False
        elif isinstance(value, dict):  # SDXL's added_cond_kwargs: {"text_embeds": ..., "time_ids": ...}
            parts.append(("{", len(value)))
            if not _key_parts(parts, tuple(value.items()), any_device, offsets, floats):
                return False
        elif type(value) is float and not floats:
            parts.append(float)
        elif value is None or isinstance(value, _SCALARS):
            parts.append((type(value), value))
        else:
            return False
    return True


def call_key(args: Any, kwargs: dict[str, Any]) -> Any:
    """A hashable description of a call's arguments, tensors by metadata only (device, shape, strides,
    dtype; not where a view starts in its storage), or None when an argument cannot be described so."""
    parts: list[Any] = []
    if (not _key_parts(parts, args, any_device=True, offsets=False)
            or kwargs and not _key_parts(parts, tuple(kwargs.items()), True, offsets=False)):
        return None
    return tuple(parts)


def template_of(out: Any) -> Any:
    """The structure of ``out`` with meta tensors replaced by their shape, strides and dtype. Beyond tuples and
    lists, a container PyTorch's pytree knows (transformers' ModelOutput, which a text encoder returns) is kept
    as its tree spec and the templates of its leaves."""
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), tuple(out.stride()), out.dtype)
    if isinstance(out, (tuple, list)):
        return (type(out), tuple(template_of(v) for v in out))
    if type(out) in SUPPORTED_NODES:
        leaves, spec = tree_flatten(out)
        return ("P", spec, tuple(template_of(leaf) for leaf in leaves))
    return ("V", out)


def _build(template: Any) -> Any:
    tag = template[0]
    if tag == "T":
        return torch.empty_strided(template[1], template[2], dtype=template[3], device="meta")
    if tag == "V":
        return template[1]
    if tag == "P":
        return tree_unflatten([_build(leaf) for leaf in template[2]], template[1])
    return tag(_build(v) for v in template[1])


def _fresh(out: Any, args: Any, kwargs: dict[str, Any]) -> bool:
    """True when every tensor ``out`` holds is on meta with a storage of its own (no input aliased, no
    output shared): only then can a cached template stand in for the op."""
    inputs = {t.untyped_storage()._cdata for t in op_tensors((args, kwargs))}
    seen: set[int] = set()
    for value in op_tensors(out):
        key = value.untyped_storage()._cdata
        if not value.is_meta or key in inputs or key in seen or value.storage_offset():
            return False
        if value.untyped_storage().nbytes() != strided_nbytes(value):  # storage larger than its view
            return False
        seen.add(key)
    return True


def op_tensors(values: Any) -> list[torch.Tensor]:
    """The tensors in an aten op's arguments or outputs (a tensor, or tuples, lists and dicts of them and of
    scalars), in ``tree_flatten``'s order, without its generality: this runs for every op the op cache meets for
    the first time. Any other container is flattened by pytree."""
    found: list[torch.Tensor] = []
    _gather(values, found)
    return found


def _gather(value: Any, found: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (tuple, list)):  # a namedtuple too: its fields, in order
        for item in value:
            _gather(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _gather(item, found)
    elif type(value) in SUPPORTED_NODES:
        for item in tree_flatten(value)[0]:
            _gather(item, found)


def strided_nbytes(tensor: torch.Tensor) -> int:
    """Bytes ``torch.empty_strided`` allocates for the tensor's size and strides."""
    if tensor.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return span * tensor.element_size()


def _nvml_handle(pynvml: Any, cuda: Any, device: torch.device) -> Any:
    """The NVML handle of the CUDA device torch calls ``device``: matched by UUID, since CUDA's and NVML's
    device numbers differ when CUDA_VISIBLE_DEVICES reorders or hides devices."""
    index = device.index if device.index is not None else cuda.current_device()
    uuid = getattr(cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
