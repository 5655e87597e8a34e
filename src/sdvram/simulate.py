"""``simulate()``: predict a GPU's per-stage peak memory by running the real diffusers pipeline on ``meta``.

The same pipeline classes, built from the shipped configs on the ``meta`` device (shapes and dtypes, no
data), run through the same stage instrumentation as ``profile`` with a third meter: live storages rounded
the way the CUDA caching allocator rounds them. What differs from a real run is modelled explicitly:

- attention: ``scaled_dot_product_attention`` is replaced by what the chosen GPU's kernel allocates
  (``attention.py``), since on ``meta`` PyTorch would run the math path;
- the scheduler's timesteps stay on the host (``meta`` tensors cannot be read back), a few hundred bytes;
- the safety checker's host-side steps (PIL and numpy) are skipped; what it allocates on the device is
  allocated (the feature extractor's pixels in fp32 and in the run's dtype, the CLIP vision tower, the
  concept distances).

Not modelled (see ``NOT_MODELLED``): the CUDA context, cuDNN and cuBLAS workspaces, allocator caching.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance
from torch.utils._pytree import tree_flatten

from sdvram.attention import (
    BACKENDS,
    CPU_FLASH,
    FLASH,
    MATH,
    AttentionCall,
    choose_backend,
    needs_flash_padding,
    needs_output_accumulator,
)
from sdvram.gpus import GpuSpec
from sdvram.meters import CUDA_ALLOCATOR_ROUNDING, LiveTensorMeter, Snapshot, call_key, template_of
from sdvram.pipeline import build_pipeline
from sdvram.profiler import (
    DEFAULT_PROMPT,
    ProfileRequest,
    Progress,
    StageRecorder,
    finish_record,
    new_record,
    patched,
    resolve_inputs,
    run_instrumented,
    track_weights,
)
from sdvram.record import Record

FIT_ALLOWANCE = 1024**3  # 1 GiB kept free for what the simulation cannot see: the CUDA context (hundreds of
# MiB), cuBLAS/cuDNN workspaces and allocator fragmentation. An allowance, not a measurement.
EXPLAIN_TENSORS = 4  # largest tensors shown per group
NOT_MODELLED = (
    "The CUDA context (runtime, kernels, cuBLAS/cuDNN handles): hundreds of MiB that nvidia-smi/NVML show but "
    "torch.cuda.memory_allocated does not.",
    "cuDNN convolution and cuBLAS matmul workspaces: allocated through the caching allocator during a kernel, "
    "so a GPU's measured peak allocated includes them; the simulation does not see them.",
    "Allocator caching and fragmentation: torch.cuda.memory_reserved exceeds memory_allocated by what the "
    "caching allocator keeps in its pools, and a cached block reused for a request under 1 MiB smaller than "
    "it is counted whole in memory_allocated (CUDACachingAllocator.cpp, should_split).",
    "The scheduler's timesteps, kept on the host in the simulation (a few hundred bytes on the GPU).",
)


@dataclass(frozen=True)
class SimulateOptions:
    """What ``simulate`` adds to a profile request: the GPU, which attention kernels may run, explain."""

    gpu: GpuSpec
    attention: str = "auto"  # "auto" (PyTorch's choice), or "flash"/"efficient"/"math" to allow only that
    explain: bool = False


class Simulator:
    """The pipeline built once on ``meta``, run for as many requests as wanted (sweeps build once)."""

    def __init__(self, architecture: str = "sd15", dtype: str = "float16", safety_checker: bool = True) -> None:
        self.architecture, self.dtype, self.safety_checker = architecture, dtype, safety_checker
        self.pipe = build_pipeline(device="meta", dtype=dtype, architecture=architecture, safety_checker=safety_checker)
        self.names: dict[int, str] = {}
        for component, module in self.pipe.components.items():
            if isinstance(module, torch.nn.Module):
                for name, sub in module.named_modules():
                    self.names[id(sub)] = f"{component}.{name}" if name else component
        self._op_cache: dict[Any, Any] = {}  # shared by every run: meta output shapes by input metadata

    def run(self, request: ProfileRequest, options: SimulateOptions, progress: Progress | None = None) -> Record:
        """Simulate one request. ``request.dtype``, ``architecture`` and ``safety_checker`` must match the
        simulator's build."""
        build = (request.architecture, request.dtype, request.settings.safety_checker)
        if build != (self.architecture, self.dtype, self.safety_checker):
            raise ValueError(f"this simulator was built for {(self.architecture, self.dtype, self.safety_checker)}, "
                             f"not {build}")
        formula, picture = resolve_inputs(request)
        stack: list[str] = []
        meter = LiveTensorMeter(
            "meta",
            granularity=CUDA_ALLOCATOR_ROUNDING if options.gpu.is_cuda else 1,  # the CPU allocator does not round
            cache=self._op_cache,
            explain=options.explain,
            owner=lambda: stack[-1] if stack else "pipeline",
        )
        record = new_record("simulate", request, formula, picture)
        recorder = StageRecorder(meter)
        attention = AttentionModel(options.gpu, options.attention)
        scheduler_tables = self._fresh_scheduler(host_is_device=not options.gpu.is_cuda)  # before the patches
        with ExitStack() as exits:
            exits.enter_context(meter)
            if options.explain:  # global module hooks cost time on every forward call: only when asked
                exits.enter_context(self._module_stack(stack))
            exits.enter_context(attention)
            exits.enter_context(self._meta_patches(host_is_device=not options.gpu.is_cuda))
            # --explain runs every UNet call: a replayed call has no intermediates to show.
            replay = None if options.explain else UNetReplay(meter, attention)
            if replay is not None:
                exits.enter_context(patched([(self.pipe.unet, "forward", replay.wrap)]))
            with recorder.stage("load"):
                weights = track_weights(meter, self.pipe)
                for tensor in scheduler_tables:
                    meter.track(tensor, owner="scheduler state", resident=True)
            run_instrumented(
                self.pipe,
                picture,
                formula.prompt or DEFAULT_PROMPT,
                request.settings,
                recorder,
                progress,
                output_type="pt",
            )
        finish_record(record, recorder, formula)
        record.environment.update(
            {
                "device": "meta",
                "simulated_gpu": options.gpu.name,
                "simulated_gpu_key": options.gpu.key,
                "compute_capability": ".".join(map(str, options.gpu.compute_capability or ())) or None,
                "gpu_total_memory": options.gpu.memory,
                "allocator_granularity": meter.granularity,
            }
        )
        record.settings["attention"] = options.attention
        record.extra["weights"] = weights
        record.extra["unet_calls_replayed"] = replay.replayed if replay else 0
        record.extra["attention_calls"] = attention.summary()
        record.extra["not_modelled"] = list(NOT_MODELLED)
        record.extra["fit"] = fit_verdict(record.peak_allocated, options.gpu.memory)
        if options.explain:
            record.extra["explain"] = {name: explain(snapshot) for name, snapshot in recorder.snapshots.items()}
        return record

    def _fresh_scheduler(self, host_is_device: bool) -> list[torch.Tensor]:
        """Give the pipeline a new scheduler, as a new process has: the scheduler keeps state between calls
        (``add_noise`` moves ``alphas_cumprod`` to the device and keeps it there). For a CPU target the host
        is the measured device, so its tables (betas, alphas, ...) are made on meta and returned, to be
        counted; for a GPU they stay on the host, as they do on a GPU."""
        old = self.pipe.scheduler
        self.pipe.scheduler = scheduler = type(old).from_config(old.config)
        if not host_is_device:
            return []
        tables = [
            name for name, value in vars(scheduler).items() if isinstance(value, torch.Tensor) and name != "timesteps"
        ]
        for name in tables:
            setattr(scheduler, name, getattr(scheduler, name).to("meta"))
        return [getattr(scheduler, name) for name in tables]

    @contextmanager
    def _module_stack(self, stack: list[str]) -> Iterator[None]:
        """Keep ``stack`` naming the module whose forward is running (global forward hooks)."""
        names = self.names

        def push(module: torch.nn.Module, args: Any) -> None:
            stack.append(names.get(id(module), type(module).__name__))

        def pop(module: torch.nn.Module, args: Any, output: Any) -> None:
            if stack:
                stack.pop()

        hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(push),
            torch.nn.modules.module.register_module_forward_hook(pop, always_call=True),
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            stack.clear()

    @contextmanager
    def _meta_patches(self, host_is_device: bool) -> Iterator[None]:
        """The two pipeline steps that read data back to the host, made meta-safe (see the module doc).
        ``host_is_device`` (a CPU target): the preprocessed image is made on the device, as on a CPU the
        pipeline's later ``.to(device)`` is a no-op and the tensor stays alive for the whole call."""
        pipe = self.pipe

        def image_on_device(original: Callable[..., Any]) -> Callable[..., Any]:
            def preprocess(*args: Any, **kwargs: Any) -> Any:
                return original(*args, **kwargs).to("meta")

            return preprocess

        def host_timesteps(original: Callable[..., Any]) -> Callable[..., Any]:
            def set_timesteps(num_inference_steps: int, device: Any = None, **kwargs: Any) -> Any:
                return original(num_inference_steps, device="cpu", **kwargs)

            return set_timesteps

        def device_safety_checker(original: Callable[..., Any]) -> Callable[..., Any]:
            def run_safety_checker(image: torch.Tensor, device: Any, dtype: torch.dtype) -> Any:
                checker = pipe.safety_checker
                if checker is None:
                    return image, None
                pipe.image_processor.postprocess(image, output_type="pt")  # denormalised copy for the PIL step
                pixels = torch.empty((image.shape[0], 3, 224, 224), dtype=torch.float32, device=device)
                clip_input = pixels.to(dtype)  # BatchFeature.to(device) keeps the fp32 pixels alive too
                pooled = checker.vision_model(clip_input)[1]
                embeds = checker.visual_projection(pooled)
                cosine_distance(embeds, checker.special_care_embeds)
                cosine_distance(embeds, checker.concept_embeds)
                del pixels, clip_input
                return image, [False] * image.shape[0]

            return run_safety_checker

        patches = [
            (pipe.scheduler, "set_timesteps", host_timesteps),
            (pipe, "run_safety_checker", device_safety_checker),
        ]
        if host_is_device:
            patches.append((pipe.image_processor, "preprocess", image_on_device))
        with patched(patches):
            yield


class UNetReplay:
    """Replays a UNet call whose arguments have the same metadata as a call already run, instead of running
    its ~1,700 ops again. Exact, not approximate: on ``meta`` the UNet's ops and shapes depend only on that
    metadata (no data-dependent branch; the timestep's value never shapes a tensor), so the call allocates
    and frees the same storages in the same order. It is memoised only after a run shows the call left
    nothing behind but its output; a replay raises the meter's peak by the measured rise and creates the
    output. The 41 calls of a run cost one. ``tests/test_simulate.py`` checks runs with and without it agree.
    """

    def __init__(self, meter: LiveTensorMeter, attention: AttentionModel) -> None:
        self.meter, self.attention = meter, attention
        self.memo: dict[Any, tuple[int, Any, Counter[tuple[str, int, int, str]]]] = {}
        self.replayed = 0

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            key = call_key(args, kwargs)
            if key is not None and key in self.memo:
                rise, template, calls = self.memo[key]
                self.replayed += 1
                self.attention.calls.update(calls)
                return self.meter.replay(rise, template)
            start, before = self.meter.allocated(), Counter(self.attention.calls)
            with self.meter.probe() as probe:
                out = original(*args, **kwargs)
            outputs = sum(self.meter.round(t.untyped_storage().nbytes()) for t in tree_flatten(out)[0]
                          if isinstance(t, torch.Tensor))
            if key is not None and self.meter.allocated() - start == outputs:
                self.memo[key] = (probe[0] - start, template_of(out), self.attention.calls - before)
            return out

        return forward


class AttentionModel:
    """Stands in for ``F.scaled_dot_product_attention`` while entered: allocates what the kernel PyTorch
    would choose on ``gpu`` allocates (``attention.py`` has the rules and their sources). diffusers and
    transformers look the function up in ``torch.nn.functional`` at each call, so replacing the attribute
    reaches every attention call; a TorchFunctionMode would too, at the cost of intercepting every op."""

    def __init__(self, gpu: GpuSpec, attention: str = "auto") -> None:
        self.gpu = gpu
        self.allowed = BACKENDS if attention == "auto" else (attention, MATH)
        self.calls: Counter[tuple[str, int, int, str]] = Counter()
        self._original: Any = None

    def __enter__(self) -> AttentionModel:
        self._original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self.sdpa  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        F.scaled_dot_product_attention = self._original

    def sdpa(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        dtype = str(query.dtype).removeprefix("torch.")
        call = AttentionCall(dtype, query.shape[-1], key.shape[-1], value.shape[-1], attn_mask is not None)
        backend = choose_backend(self.gpu, call, self.allowed)
        self.calls[(backend, call.q_head_dim, query.shape[-2], dtype)] += 1
        if backend == MATH:
            out, _ = torch.ops.aten._scaled_dot_product_attention_math(
                query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa
            )
            return out
        *batch, heads, length, _ = query.shape
        head_dim_v = value.shape[-1]
        device = query.device
        transient: list[torch.Tensor] = []
        if backend == CPU_FLASH:
            out = torch.empty((*batch, length, heads, head_dim_v), dtype=query.dtype, device=device)
            transient.append(torch.empty((*batch, length, heads), dtype=torch.float32, device=device))
        elif backend == FLASH:
            padded = -(-head_dim_v // 8) * 8
            if needs_flash_padding(call):
                transient += [
                    torch.empty((*t.shape[:-1], padded), dtype=t.dtype, device=device) for t in (query, key, value)
                ]
            out = torch.empty((*batch, length, heads, padded), dtype=query.dtype, device=device)
            transient.append(torch.empty((*batch, heads, length), dtype=torch.float32, device=device))
        else:  # EFFICIENT
            out = torch.empty((*batch, length, heads, head_dim_v), dtype=query.dtype, device=device)
            transient.append(torch.empty((*batch, heads, 0), dtype=torch.float32, device=device))  # no lse
            if needs_output_accumulator(call):
                transient.append(torch.empty(out.shape, dtype=torch.float32, device=device))
        del transient  # the log-sum-exp, padding copies and accumulator die with the kernel call
        result = out.transpose(-3, -2)  # (..., heads, length, dim) over a (..., length, heads, dim) buffer
        return result[..., :head_dim_v] if result.shape[-1] != head_dim_v else result

    def summary(self) -> list[dict[str, Any]]:
        """Calls per (backend, head dim, query length, dtype), for the record."""
        return [
            {"backend": backend, "head_dim": dim, "query_length": length, "dtype": dtype, "calls": count}
            for (backend, dim, length, dtype), count in sorted(self.calls.items())
        ]


def explain(snapshot: Snapshot) -> dict[str, Any]:
    """The live storages at a peak grouped by the module that created them, largest first, adding up to
    the peak (the JSON form of ``--explain``)."""
    groups: dict[str, dict[str, Any]] = {}
    for alloc in snapshot.allocations:
        group = groups.setdefault(alloc.owner, {"module": alloc.owner, "bytes": 0, "count": 0, "tensors": []})
        group["bytes"] += alloc.size
        group["count"] += 1
        group["tensors"].append({"shape": list(alloc.shape), "dtype": alloc.dtype, "bytes": alloc.size})
    for owner, size, count in snapshot.resident:
        groups[owner] = {"module": owner, "bytes": size, "count": count, "tensors": []}
    ordered = sorted(groups.values(), key=lambda g: g["bytes"], reverse=True)
    for group in ordered:
        group["tensors"] = sorted(group["tensors"], key=lambda t: t["bytes"], reverse=True)[:EXPLAIN_TENSORS]
    return {"total": snapshot.total, "groups": ordered}


def fit_verdict(peak: int, capacity: int | None) -> dict[str, Any] | None:
    """Does the predicted peak fit the card? ``tight`` within the FIT_ALLOWANCE of its capacity."""
    if capacity is None:
        return None
    if peak + FIT_ALLOWANCE <= capacity:
        verdict = "fits"
    elif peak <= capacity:
        verdict = "tight"
    else:
        verdict = "does not fit"
    return {
        "verdict": verdict,
        "peak": peak,
        "capacity": capacity,
        "allowance": FIT_ALLOWANCE,
        "share": peak / capacity,
    }


def simulate(request: ProfileRequest, options: SimulateOptions, progress: Progress | None = None) -> Record:
    """Build the pipeline on ``meta`` and simulate one request."""
    dtype = request.dtype or ("float16" if options.gpu.is_cuda else "float32")
    request = replace(request, dtype=dtype)
    simulator = Simulator(request.architecture, dtype, request.settings.safety_checker)
    return simulator.run(request, options, progress)
