"""``simulate()``: predict a GPU's memory without one, by running the real diffusers pipeline on ``meta``.

The same pipeline classes, built from the shipped configs on the ``meta`` device (shapes and dtypes, no
data), run through the same run engine as ``profile`` (``engine.py``) with the live-tensor meter, whose
accountant is the model of PyTorch's CUDA caching allocator (``allocator.py``): each storage is a request,
and the model's ``allocated``, ``reserved`` and ``requested`` are what ``torch.cuda`` would report. What a
GPU does that ``meta`` does not is modelled explicitly:

- attention: ``scaled_dot_product_attention`` is replaced by what the kernel PyTorch would choose on the
  GPU allocates (``attention.py``), since on ``meta`` PyTorch would run the math path;
- cuBLAS and cuBLASLt keep workspaces from the first matrix multiply on, and cuDNN holds a workspace while
  each convolution runs (``workspaces.py``): allocated through the allocator model in the order the GPU
  makes them (after the op's output);
- the input image (and an inpainting mask) stays on the host: its preprocessed tensor is a host stand-in of the
  right shape that holds one value (a zero-dim tensor expanded), so that what the pipeline does with it on the
  host runs on the host, and what it copies to the device is allocated there; the scheduler's timesteps stay on
  the host too (``meta`` tensors cannot be read back);
- a module converted in place (SDXL's VAE cast to float32 for decoding and back: ``Module._apply``) allocates each
  new tensor and frees the one it replaces, as the caching allocator does when the module drops it;
- the safety checker's host-side steps (PIL and numpy) are skipped; what it allocates on the device is
  allocated (the feature extractor's pixels in fp32 and in the run's dtype, the CLIP vision tower, the
  concept distances).

"Does it fit" is the allocator model run with the card's capacity (its memory less the CUDA context): the
first request that cannot be met, even after the cached segments are released, is where a real run would
stop with an out-of-memory error; the simulation notes it and goes on, to show what the run would need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

from sdvram.accounting import Accountant, LiveBytes
from sdvram.allocator import (
    K_LARGE_BUFFER,
    K_SMALL_BUFFER,
    AllocatorAccountant,
    AllocatorOutOfMemory,
    CachingAllocator,
    ReplayConflict,
)
from sdvram.attention import (
    CPU_FLASH,
    CUDNN,
    CUDNN_WORKSPACE,
    EFFICIENT,
    FLASH,
    MATH,
    AttentionCall,
    allowed_backends,
    choose_backend,
    needs_flash_padding,
    needs_output_accumulator,
)
from sdvram.choices import Architecture, DType, Kernel, Offload
from sdvram.collector import long_lived
from sdvram.engine import (
    Progress,
    StageRecorder,
    build_timeline,
    finish_record,
    new_record,
    patched,
    resolve,
    run_instrumented,
)
from sdvram.errors import InputError
from sdvram.gpus import GpuSpec
from sdvram.meters import (
    Allocation,
    EventLog,
    LiveTensorMeter,
    Snapshot,
    StopRun,
    call_key,
    op_tensors,
    repeated_windows,
    strided_nbytes,
    template_of,
)
from sdvram.pipeline import (  # diffusers' classes through sdvram.pipeline, which imports diffusers as it should
    BasicTransformerBlock,
    ResnetBlock2D,
    Transformer2DModel,
    apply_switches,
    build_order,
    build_pipeline,
    cosine_distance,
    reset_switches,
)
from sdvram.pipelines import DEFAULT, IMAGE_AND_MASK, Family, find_family
from sdvram.record import Fit, Record, Simulation
from sdvram.requests import RunRequest, Settings, SimulateOptions
from sdvram.stages import label
from sdvram.twins import mark, signature
from sdvram.verdicts import DOES_NOT_FIT, judge, margin_for
from sdvram.workspaces import Conv, conv_workspace, cublas_workspaces

EXPLAIN_TENSORS = 4  # largest tensors shown per group
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "_addmm_activation"}  # aten ops cuBLAS runs


Build = tuple[str, Architecture, DType, bool, "str | None"]  # family, architecture, dtype, safety checker, VAE


def build_of(request: RunRequest, gpu: GpuSpec) -> Build:
    """What a simulator must have been built as to run ``request`` on ``gpu``."""
    return (request.pipeline, request.architecture, request.resolved_dtype(gpu.is_cuda),
            request.settings.safety_checker, request.vae)


class Simulator:
    """The pipeline built once on ``meta``, run for as many requests as wanted (sweeps build once)."""

    def __init__(self, architecture: Architecture = Architecture.full, dtype: DType = DType.float16,
                 safety_checker: bool = False, pipeline: str = DEFAULT, vae: str | None = None) -> None:
        self.family: Family = find_family(pipeline)
        self.build: Build = (self.family.name, architecture, dtype, safety_checker, vae)
        self.dtype = dtype
        # Built under a meter that logs every allocation and free, so that each run's load stage makes them
        # again in the order a GPU would (the order of construction, temporaries included).
        builder = LiveTensorMeter("meta", LiveBytes())
        with builder, builder.recording() as log:
            self.pipe = build_pipeline(self.family, device="meta", dtype=dtype.value, architecture=architecture.value,
                                       safety_checker=safety_checker, vae=vae)
        self.build_log = log
        self.weights: dict[str, dict[str, int]] = {}
        self.bindings: list[tuple[Any, int, str]] = []
        for component in build_order(self.family, safety_checker):
            module = getattr(self.pipe, component, None)
            if isinstance(module, torch.nn.Module):
                tensors = [*module.parameters(), *module.buffers()]
                keys = builder.live_keys(tensors)
                assert keys is not None, "every weight is made while the builder logs"
                owner = f"{component} weights"
                self.bindings += [(t.untyped_storage(), key, owner) for t, key in zip(tensors, keys, strict=True)]
                self.weights[component] = {"bytes": sum(t.numel() * t.element_size() for t in tensors),
                                           "tensors": len(tensors)}
        self.names: dict[int, str] = {}
        for component, module in self.pipe.components.items():
            if isinstance(module, torch.nn.Module):
                for name, sub in module.named_modules():
                    self.names[id(sub)] = f"{component}.{name}" if name else component
        # the UNet's and the VAE's blocks that come in twins (CallReplay.wrap_twin), the outer before the inner
        self.blocks = [block for model in (self.pipe.unet, self.pipe.vae) for block in model.modules()
                       if isinstance(block, TWIN_BLOCKS)]
        self._unet_blocks = {block for block in self.pipe.unet.modules() if isinstance(block, TWIN_BLOCKS)}
        self._op_cache: dict[Any, Any] = {}  # shared by every run: meta output shapes by input metadata
        self._calls: dict[Any, Any] = {}  # shared by every run: module calls' logs (CallReplay)
        self._signatures: dict[Any, Any] = {}  # shared by every run: the twin blocks' signatures (CallReplay)
        self._device: list[Any] = []  # the pipeline's _execution_device, once read (_device_asked_once)

    def depends_on_history(self, settings: Settings) -> bool:
        """Whether a run with ``settings`` is known to depend on what this simulator ran before: under sequential
        offload, a VAE cast to float32 around its decode (SDXL's ``force_upcast`` in a float16 pipeline), whose
        weights the simulation binds differently in a run whose decoder call is replayed (docs/simulate.md, the
        strict xfail in tests/test_simulate.py). Until that is mended, ``fit`` takes no other run's result for one
        of these."""
        return settings.offload is Offload.sequential and self.family.upcasts_vae and self.dtype is DType.float16 \
            and bool(self.pipe.vae.config.get("force_upcast", False))

    def _twins(self, request: RunRequest) -> list[torch.nn.Module]:
        """The blocks whose twins a run replays (``CallReplay.wrap_twin``): not the VAE's under sequential offload,
        where the simulator's binding of the VAE's weights is known to depend on what ran before (SDXL's upcast VAE,
        docs/simulate.md): a replayed block there leaves other storages bound, and it moved the peak reserved of an
        SDXL fit's answer by 2 MiB. Until that is mended, those blocks run."""
        if request.settings.offload is Offload.sequential:
            return [block for block in self.blocks if block in self._unet_blocks]
        return self.blocks

    def accepts(self, request: RunRequest, gpu: GpuSpec) -> bool:
        """Was this simulator built for what ``request`` runs?"""
        return build_of(request, gpu) == self.build

    def run(self, request: RunRequest, options: SimulateOptions, progress: Progress | None = None) -> Record:
        """Simulate one request on ``options.gpu``; the simulator must have been built for it (``accepts``).
        A replay split by pool that meets a release it cannot order (``ReplayConflict``) has the run simulated
        again, every call replayed as its events came."""
        if not self.accepts(request, options.gpu):
            raise ValueError(f"this simulator was built for {self.build}, not {build_of(request, options.gpu)}")
        try:
            return self._run(request, options, progress, split=True)
        except ReplayConflict:
            return self._run(request, options, progress, split=False)

    def _run(self, request: RunRequest, options: SimulateOptions, progress: Progress | None, split: bool) -> Record:
        gpu = options.gpu
        family = self.family
        formula = resolve(request)
        stack: list[str] = []
        allocator = CachingAllocator(capacity=gpu.capacity) if gpu.is_cuda else None
        accountant: Accountant = AllocatorAccountant(allocator, split) if allocator is not None else LiveBytes()
        recorder_box: list[StageRecorder] = []
        libraries = GpuLibraries(gpu) if gpu.is_cuda else None
        meter = LiveTensorMeter(
            "meta", accountant, cache=self._op_cache, explain=options.explain,
            owner=lambda: stack[-1] if stack else "pipeline",
            library=libraries,
            on_failure=lambda allocation: recorder_box[0].stage_name, stop_at_failure=options.stop_at_failure,
            timeline=options.timeline,
        )
        record = new_record("simulate", request, formula, device="meta", dtype=self.dtype.value, weights="random",
                            model=None, attention=options.attention.value)
        recorder = StageRecorder(meter)
        recorder_box.append(recorder)
        attention = AttentionModel(gpu, options.attention)
        batch = request.settings.batch
        height, width = formula.seed.height - formula.seed.height % 8, formula.seed.width - formula.seed.width % 8
        images = batch if family.image_per_output else 1  # the preprocessed images the pipeline is given
        scheduler_state = self._fresh_scheduler(host_is_device=not gpu.is_cuda)  # before the patches
        with ExitStack() as exits:
            exits.enter_context(_stopped_runs(recorder))
            exits.enter_context(meter)
            if options.explain:  # global module hooks cost time on every forward call: only when asked
                exits.enter_context(self._module_stack(stack))
            exits.enter_context(attention)
            image = mask = None
            if family.takes_image:
                image = self._stand_in((images, 3, height, width), host_is_device=not gpu.is_cuda)
            if family.inputs == IMAGE_AND_MASK:
                mask = self._stand_in((images, 1, height, width), host_is_device=not gpu.is_cuda)
            exits.enter_context(self._meta_patches(image, mask, not gpu.is_cuda, batch))
            exits.enter_context(_conversions(meter, self.pipe))
            # what shapes a module call's events beyond its arguments (CallReplay): the GPU's kernels, the switches
            # that change a call, the owners explain names. A timeline keeps its own logs: a replayed call's steps
            # show the reserved bytes where the call began (its own new segments appear after it), so a run's
            # timeline would differ with what ran before it.
            context = (gpu.sm if gpu.is_cuda else None, options.attention, request.settings.attention_slicing,
                       request.settings.offload, options.explain)
            memo = None if options.timeline else self._calls
            replay = CallReplay(meter, attention, options.replay, memo, context, libraries)
            replay.signatures = self._signatures
            vae = self.pipe.vae
            encoders = [(name, module) for name in ("text_encoder", "text_encoder_2")
                        if isinstance(module := getattr(self.pipe, name, None), torch.nn.Module)]
            # the VAE's 1 x 1 convolutions beside its encoder and decoder, called once a tile as they are (a tiled
            # run at 15,900 px on the H200 calls each 1,764 times: 12% of its time when each ran on meta)
            convs = [(f"vae.{name}", module) for name in ("quant_conv", "post_quant_conv")
                     if isinstance(module := getattr(vae, name, None), torch.nn.Module)]
            exits.enter_context(patched([(self.pipe.unet, "forward", replay.wrap("unet")),
                                         *[(module, "forward", replay.wrap(name)) for name, module in encoders],
                                         *[(module, "forward", replay.wrap(name)) for name, module in convs],
                                         (vae.encoder, "forward", replay.wrap("vae.encoder")),
                                         (vae.decoder, "forward", replay.wrap("vae.decoder")),
                                         (vae, "blend_v", replay.wrap_inplace("vae.blend_v", 1, rows=2)),
                                         (vae, "blend_h", replay.wrap_inplace("vae.blend_h", 1, rows=3)),
                                         *[(block, "forward", replay.wrap_twin(block))
                                           for block in self._twins(request)]]))
            exits.enter_context(self._switches(request.settings))
            exits.enter_context(_device_asked_once(self.pipe, self._device))
            offload = CpuOffload(self.pipe, meter, request.settings.offload) if gpu.is_cuda else None
            with recorder.stage("load"):
                if options.warm_process and libraries is not None:
                    libraries.warm(meter)
                if offload is None or not offload.active:
                    meter.replay_resident(self.build_log, self.bindings)
                else:  # the models start on the CPU; the excluded safety checker is moved to the GPU at once
                    offload.load()
                for name in scheduler_state:  # counted while the scheduler holds them (set_timesteps replaces some)
                    meter.track(getattr(self.pipe.scheduler, name), owner="scheduler state")
                if self._scheduler_temporaries:  # the pipeline builds its scheduler last, after the models
                    meter.transient(self._scheduler_temporaries, "scheduler's temporaries")
            if offload is not None and offload.active:
                exits.enter_context(offload.hooks())
            run_instrumented(self.pipe, family, image, formula.prompt or "", request.settings, recorder, progress,
                             output_type="pt", height=height, width=width, mask=mask)
        finish_record(record, recorder, formula, request.settings)
        record.environment.update({"device": "meta", "simulated_gpu": gpu.name})
        record.simulation = Simulation(
            gpu=gpu.key, gpu_name=gpu.name,
            compute_capability=".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else None,
            gpu_memory=gpu.memory, weights=self.weights, unet_calls_replayed=replay.replayed["unet"],
            attention_calls=attention.summary(), peak_requested=recorder.peak_requested,
            context=gpu.context if gpu.is_cuda else None, context_source=gpu.context_source if gpu.is_cuda else None,
            workspaces=libraries.largest if libraries is not None else {},
            assumptions=gpu.assumptions(),
            fit=_fit(gpu, meter, recorder.peak_allocated, recorder.peak_reserved),
            explain={name: explain(s) for name, s in recorder.snapshots.items()} if options.explain else None,
        )
        if meter.series is not None:
            record.timeline = build_timeline(meter.series, recorder.marks, record.simulation.explain)
        meter.forget()
        return record

    def _fresh_scheduler(self, host_is_device: bool) -> list[str]:
        """Give the pipeline a new scheduler, as a new process has: the scheduler keeps state between calls
        (``add_noise`` moves ``alphas_cumprod`` to the device and keeps it there). For a CPU target the host
        is the measured device, so every tensor its constructor made (betas, alphas, ..., the initial timesteps
        and sigmas, which ``torch.from_numpy`` makes through ``aten::lift_fresh``, so a real CPU run counts them)
        is remade on meta, a view as a view of what it views; their names are returned, to be counted while the
        scheduler holds them. For a GPU they stay on the host, as they do on a GPU."""
        old = self.pipe.scheduler
        self._host_tables: dict[str, torch.Tensor] = {}
        self._scheduler_temporaries = 0
        if not host_is_device:
            self.pipe.scheduler = type(old).from_config(old.config)
            return []
        probe = LiveTensorMeter("cpu", LiveBytes())  # what its constructor allocates on the host, the CPU target
        with probe:
            self.pipe.scheduler = scheduler = type(old).from_config(old.config)
        # the most it held at once beyond what it keeps (Euler's float64 timesteps before their float32 copy)
        self._scheduler_temporaries = probe.take_peak().allocated - probe.allocated()
        names = [name for name, value in vars(scheduler).items() if isinstance(value, torch.Tensor)]
        self._host_tables = {name: getattr(scheduler, name) for name in names}
        on_meta: dict[int, torch.Tensor] = {}  # host storage -> its meta copy
        for name in names:
            tensor = getattr(scheduler, name)
            base = on_meta.get(tensor.untyped_storage().data_ptr())
            if base is None:
                on_meta[tensor.untyped_storage().data_ptr()] = moved = tensor.to("meta")
            else:  # final_alpha_cumprod = alphas_cumprod[0]: no storage of its own
                moved = base.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())
            setattr(scheduler, name, moved)
        return names

    @contextmanager
    def _switches(self, settings: Settings) -> Iterator[None]:
        """diffusers' VAE and attention switches, turned on on the meta pipeline (the real code paths: tiled
        and sliced VAE calls, SlicedAttnProcessor) and off again after the run."""
        apply_switches(self.pipe, replace(settings, offload=Offload.none), "meta")
        try:
            yield
        finally:
            reset_switches(self.pipe, settings)

    @staticmethod
    def _stand_in(shape: tuple[int, ...], host_is_device: bool) -> torch.Tensor:
        """A stand-in for a preprocessed input (the image, an inpainting mask): its shape, float32, sides rounded
        down to multiples of 8. For a GPU it is a host tensor of one value expanded to the shape (no host memory):
        the pipeline's host-side work on it runs on the host, and its copies to the device are allocated there.
        For the CPU target the host is the measured device: a meta tensor, which ``preprocess`` makes counted."""
        with _disable_current_modes():
            if host_is_device:
                return torch.empty(shape, dtype=torch.float32, device="meta")
            return torch.zeros((), dtype=torch.float32).expand(shape)

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
    def _meta_patches(self, image: torch.Tensor | None, mask: torch.Tensor | None, host_is_device: bool,
                      batch: int) -> Iterator[None]:
        """The pipeline steps that touch host data, made meta-safe (see the module doc)."""
        pipe = self.pipe
        on_device: list[torch.Tensor] = []  # the GPU copies of host values the pipeline keeps to its end

        def preprocessed(original: Callable[..., Any]) -> Callable[..., Any]:
            def preprocess(given: Any, *args: Any, **kwargs: Any) -> Any:
                if not isinstance(given, torch.Tensor) or (given is not image and given is not mask):
                    return original(given, *args, **kwargs)
                if host_is_device:  # the preprocessed pixels are made on the measured device, here
                    return torch.empty(given.shape, dtype=given.dtype, device="meta")
                return given

            return preprocess

        def host_timesteps(original: Callable[..., Any]) -> Callable[..., Any]:
            def set_timesteps(num_inference_steps: int, device: Any = None, **kwargs: Any) -> Any:
                scheduler = pipe.scheduler
                # For the CPU target the tables are on meta, but set_timesteps reads their values (Euler's sigmas
                # through numpy): the host's are lent for the call, and the meta ones put back where unchanged
                lent = {name: getattr(scheduler, name) for name in self._host_tables}
                for name, table in self._host_tables.items():
                    setattr(scheduler, name, table)
                try:
                    result = original(num_inference_steps, device="cpu", **kwargs)  # read back: kept on the host
                finally:
                    for name, table in self._host_tables.items():
                        if getattr(scheduler, name) is table:
                            setattr(scheduler, name, lent[name])
                if not host_is_device:  # ... but a real run has them on the GPU too
                    steps = pipe.scheduler.timesteps
                    on_device.append(torch.empty(steps.shape, dtype=steps.dtype, device="meta"))
                return result

            return set_timesteps

        def device_latent_timestep(original: Callable[..., Any]) -> Callable[..., Any]:
            def get_timesteps(*args: Any, **kwargs: Any) -> Any:
                timesteps, steps = original(*args, **kwargs)
                # __call__ then makes latent_timestep = timesteps[:1].repeat(batch), on the GPU in a real run
                on_device.append(torch.empty((batch,), dtype=timesteps.dtype, device="meta"))
                return timesteps, steps

            return get_timesteps

        def device_safety_checker(original: Callable[..., Any]) -> Callable[..., Any]:
            def run_safety_checker(output: torch.Tensor, device: Any, dtype: torch.dtype) -> Any:
                checker = pipe.safety_checker
                if checker is None:
                    return output, None
                pipe.image_processor.postprocess(output, output_type="pt")  # denormalised copy for the PIL step
                pixels = torch.empty((output.shape[0], 3, 224, 224), dtype=torch.float32, device=device)
                clip_input = pixels.to(dtype)  # BatchFeature.to(device) keeps the fp32 pixels alive too
                pooled = checker.vision_model(clip_input)[1]
                embeds = checker.visual_projection(pooled)
                cosine_distance(embeds, checker.special_care_embeds)
                cosine_distance(embeds, checker.concept_embeds)
                del pixels, clip_input
                return output, [False] * output.shape[0]

            return run_safety_checker

        patches = [(pipe.image_processor, "preprocess", preprocessed),
                   (pipe.scheduler, "set_timesteps", host_timesteps)]
        if getattr(pipe, "mask_processor", None) is not None:
            patches.append((pipe.mask_processor, "preprocess", preprocessed))
        if hasattr(pipe, "run_safety_checker"):
            patches.append((pipe, "run_safety_checker", device_safety_checker))
        if not host_is_device and hasattr(pipe, "get_timesteps"):
            patches.append((pipe, "get_timesteps", device_latent_timestep))
        with patched(patches):
            yield
        on_device.clear()


class GpuLibraries:
    """What a CUDA build of PyTorch allocates around an op beyond the op's outputs, as the meter's
    ``library``: the cuBLAS and cuBLASLt workspaces at the first matrix multiply (kept); a cuDNN workspace
    during each convolution (``workspaces.py``); GroupNorm's two fp32 (N, C) scale and shift temporaries
    (``GroupNormKernelImplInternal`` in ``aten/src/ATen/native/cuda/group_norm_kernel.cu``, for H x W > 1);
    LayerNorm's contiguous copy of a non-contiguous input (``layer_norm_cuda`` calls
    ``input.expect_contiguous()`` before allocating its output: diffusers' transformer blocks hand it a
    permuted view). Each is allocated where the CUDA code allocates it, relative to the op's outputs."""

    def __init__(self, gpu: GpuSpec) -> None:
        self.cublas, self.cublaslt = cublas_workspaces(gpu.sm)
        self.blas_ready = False
        self.largest: dict[str, int] = {}  # the largest workspace of each kind so far (the record's "workspaces")
        self.upsampled: int | None = None  # the storage of the last nearest-neighbour upsample's output

    @contextmanager
    def noting(self) -> Iterator[dict[str, int]]:
        """The largest workspace of each kind that the block allocates (a logged call's, for its replays in later
        runs, ``merge``), added to ``largest`` afterwards."""
        noted: dict[str, int] = {}
        outer, self.largest = self.largest, noted
        try:
            yield noted
        finally:
            self.largest = outer
            self.merge(noted)

    def merge(self, noted: dict[str, int]) -> None:
        for kind, size in noted.items():
            self.largest[kind] = max(self.largest.get(kind, 0), size)

    def warm(self, meter: LiveTensorMeter) -> None:
        """Hold the cuBLAS workspaces now, as a process that already ran a matrix multiply holds them."""
        if not self.blas_ready:
            self.blas_ready = True
            meter.keep(self.cublas, "cuBLAS workspace")
            meter.keep(self.cublaslt, "cuBLASLt workspace")
            self.largest["cublas"], self.largest["cublaslt"] = self.cublas, self.cublaslt

    def acts_on(self, func: Any) -> bool:
        """Whether ``before_op`` or ``after_op`` may do anything for ``func``: the meter calls neither for a view op
        that they do not act on (``LiveTensorMeter.__torch_dispatch__``). An op either hook comes to act on belongs
        here too."""
        name = func._overloadpacket.__name__
        return name in ("native_layer_norm", "convolution") or name in MATMULS or name.startswith("upsample_nearest")

    def before_op(self, meter: LiveTensorMeter, func: Any, args: Any) -> tuple[int | None, ...]:
        if func._overloadpacket.__name__ == "native_layer_norm":
            x = args[0]
            if isinstance(x, torch.Tensor) and not x.is_contiguous():
                return (meter.hold(x.numel() * x.element_size(), "LayerNorm's contiguous input"),)
        return ()

    def after_op(self, meter: LiveTensorMeter, func: Any, args: Any, out: Any) -> None:
        name = func._overloadpacket.__name__
        if name in MATMULS and not self.blas_ready:
            self.warm(meter)
        elif name.startswith("upsample_nearest") and isinstance(out, torch.Tensor):
            self.upsampled = out.untyped_storage()._cdata
        elif name == "convolution" and isinstance(out, torch.Tensor):
            x, weight = args[0], args[1]
            after_upsample, self.upsampled = self.upsampled == x.untyped_storage()._cdata, None
            if x.dim() != 4 or args[6]:  # 2-d, not transposed
                return
            n, c_in, h, w = x.shape
            _, c_out, h_out, w_out = out.shape
            conv = Conv(n, c_in, h, w, c_out, h_out, w_out, tuple(weight.shape[2:]), args[8], x.element_size(),
                        tuple(args[3]), tuple(args[4]), after_upsample)
            # cuDNN takes a contiguous input: a strided view (a VAE tile cut from the image) is copied for the
            # call, after the output is allocated (ConvShared.cpp: input.contiguous(memory_format))
            copy = meter.hold(x.numel() * x.element_size(), "convolution's contiguous input") \
                if not x.is_contiguous() else None
            size = conv_workspace(conv)
            if size:
                meter.transient(size, "cuDNN workspace")
                self.largest["cudnn"] = max(self.largest.get("cudnn", 0), size)
            meter.release(copy)
        elif name == "native_group_norm":
            n, c, hxw = args[3], args[4], args[5]
            if hxw > 1 and args[1] is not None:
                scale = meter.hold(n * c * 4, "GroupNorm's fp32 scale")  # kAccType: float for 16-bit inputs
                shift = meter.hold(n * c * 4, "GroupNorm's fp32 shift")
                meter.release(shift)
                meter.release(scale)


@contextmanager
def _conversions(meter: LiveTensorMeter, pipe: Any) -> Iterator[None]:
    """A pipeline's module converted in place while it runs (``module.to(dtype)``: SDXL casts its VAE to float32
    for the encode and decode and back) goes through ``Module._apply``, which makes each new tensor and then
    drops the one it replaces: the new one is an allocation the meter sees; the old one, a resident weight whose
    storage the simulation keeps, is freed here when its replacement exists, as the caching allocator frees it
    when the module lets it go. A module whose weights are not on the device (CPU offload) converts on the host:
    nothing is counted. Afterwards every converted tensor is put back, so that the next run starts from the
    weights as built."""
    original_apply = torch.nn.Module._apply
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(parameter) -> (it, its data as built)
    buffers: dict[tuple[int, str], tuple[torch.nn.Module, str, torch.Tensor]] = {}  # Module._apply replaces them
    components = {id(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module)}

    def _apply(module: torch.nn.Module, fn: Callable[..., Any], recurse: bool = True) -> Any:
        if id(module) not in components:
            return original_apply(module, fn, recurse)
        for parameter in module.parameters():
            kept.setdefault(id(parameter), (parameter, parameter.data))
        for sub in module.modules():
            for key, buffer in sub._buffers.items():
                if buffer is not None:
                    buffers.setdefault((id(sub), key), (sub, key, buffer))

        def convert(tensor: torch.Tensor) -> torch.Tensor:
            keys = meter.live_keys([tensor])
            if keys is None:  # not on the device: a host-side conversion
                with _disable_current_modes():
                    return fn(tensor)
            converted = fn(tensor)
            if converted.untyped_storage()._cdata != tensor.untyped_storage()._cdata:
                meter.offload([tensor], keys)  # the replaced tensor is dropped by the module
            return converted

        return original_apply(module, convert, recurse)

    torch.nn.Module._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module._apply = original_apply  # type: ignore[method-assign]
        for parameter, data in kept.values():
            if parameter.data is not data:
                parameter.data = data
        for sub, key, buffer in buffers.values():
            sub._buffers[key] = buffer


@contextmanager
def _device_asked_once(pipe: Any, found: list[Any]) -> Iterator[None]:
    """diffusers' ``_execution_device`` walks every module of every model for offload hooks each time it is read
    (twice a run, 5 ms each); nothing on the meta pipeline moves, in a run or between runs (offload is modelled,
    not installed: no module gets accelerate's ``_hf_hook`` or diffusers' group-offloading hooks), so it is read
    once and kept in ``found`` (the simulator's: a fit makes some 45 runs)."""

    def once(original: Any) -> Any:  # a property, not a callable
        def read(self: Any) -> Any:
            if self is not pipe:
                return original.fget(self)
            if not found:
                found.append(original.fget(self))
            return found[0]

        return property(read)

    with patched([(type(pipe), "_execution_device", once)]):
        yield


@contextmanager
def _stopped_runs(recorder: StageRecorder) -> Iterator[None]:
    """A run stopped at its first failure ends there: the stage it died in is closed as not completed."""
    try:
        yield
    except StopRun:
        recorder.end(completed=False)


def apply_order(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors of ``module`` in the order ``module.to(device)`` moves them (``Module._apply``: each
    child's first, depth first, then the module's own parameters, then its buffers)."""
    tensors: list[torch.Tensor] = []
    for child in module.children():
        tensors += apply_order(child)
    tensors += [p for p in module._parameters.values() if p is not None]
    tensors += [b for b in module._buffers.values() if b is not None]
    return tensors


class CpuOffload:
    """accelerate's CPU offload as diffusers sets it up, as allocations and frees of the weights.

    Model offload (``enable_model_cpu_offload``: ``cpu_offload_with_hook`` along ``model_cpu_offload_seq``,
    "text_encoder->image_encoder->unet->vae"): a model is moved to the GPU when it is called (``forward``, and
    the VAE's ``encode``/``decode`` through diffusers' ``apply_forward_hook``), and its hook first moves the
    previous model of the chain back to the CPU; ``maybe_free_model_hooks`` at the end of the call moves all
    back. The safety checker is excluded (``_exclude_from_cpu_offload``) and moved to the GPU at once.
    Sequential offload (``enable_sequential_cpu_offload``: accelerate's ``cpu_offload`` with an
    ``AlignDevicesHook`` on every module holding tensors of its own): a module's own parameters and buffers
    are on the GPU only while its forward runs."""

    def __init__(self, pipe: Any, meter: LiveTensorMeter, mode: Offload) -> None:
        self.pipe, self.meter, self.mode = pipe, meter, mode
        self.active = mode is not Offload.none
        names = [n for n in pipe.model_cpu_offload_seq.split("->")
                 if isinstance(getattr(pipe, n, None), torch.nn.Module)]
        self.chain = [(name, getattr(pipe, name)) for name in names]
        self.excluded = [(name, module) for name, module in pipe.components.items()
                         if isinstance(module, torch.nn.Module) and name in pipe._exclude_from_cpu_offload]
        self.loaded: dict[str, list[int]] = {}

    def load(self) -> None:
        for name, module in self.excluded:
            self.meter.onload(apply_order(module), f"{name} weights")

    def _onload(self, name: str, module: torch.nn.Module) -> None:
        if name not in self.loaded:
            self.loaded[name] = self.meter.onload(apply_order(module), f"{name} weights")

    def _offload(self, name: str) -> bool:
        keys = self.loaded.pop(name, None)
        if keys is not None:
            self.meter.offload(apply_order(dict(self.chain)[name]), keys)
        return keys is not None

    @contextmanager
    def hooks(self) -> Iterator[None]:
        if self.mode is Offload.model:
            with self._model_hooks():
                yield
        else:
            with self._sequential_hooks():
                yield

    @contextmanager
    def _model_hooks(self) -> Iterator[None]:
        def hooked(index: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            name, module = self.chain[index]

            def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    # CpuOffload.pre_forward: the previous model of the chain goes back first, and if it was on
                    # the GPU, clear_device_cache() (torch.cuda.empty_cache) follows
                    if index > 0 and self._offload(self.chain[index - 1][0]):
                        self.meter.empty_cache()
                    self._onload(name, module)
                    return original(*args, **kwargs)

                return call

            return wrap

        def free_all(original: Callable[..., Any]) -> Callable[..., Any]:
            def maybe_free_model_hooks(*args: Any, **kwargs: Any) -> Any:
                # enable_model_cpu_offload again: self.to("cpu"), then empty_device_cache
                for name, _ in self.chain:
                    self._offload(name)
                self.meter.empty_cache()
                return original(*args, **kwargs)

            return maybe_free_model_hooks

        patches: list[Any] = [(self.pipe, "maybe_free_model_hooks", free_all)]
        for index, (name, module) in enumerate(self.chain):
            methods = ("encode", "decode") if name == "vae" else ("forward",)
            patches += [(module, method, hooked(index)) for method in methods]
        with patched(patches):
            yield
        for name, _ in self.chain:
            self._offload(name)

    @contextmanager
    def _sequential_hooks(self) -> Iterator[None]:
        owners: dict[int, str] = {}
        for name, model in self.chain:
            for sub_name, sub in model.named_modules():
                if any(t is not None for t in (*sub._parameters.values(), *sub._buffers.values())):
                    owners[id(sub)] = f"{name}.{sub_name}" if sub_name else name
        held: dict[int, list[int]] = {}

        def own(module: torch.nn.Module) -> list[torch.Tensor]:
            return [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]

        def pre(module: torch.nn.Module, args: Any) -> None:
            if id(module) in owners and id(module) not in held:
                held[id(module)] = self.meter.onload(own(module), f"{owners[id(module)]} weights")

        def post(module: torch.nn.Module, args: Any, output: Any) -> None:
            keys = held.pop(id(module), None)
            if keys is not None:
                self.meter.offload(own(module), keys)

        handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
                   torch.nn.modules.module.register_module_forward_hook(post, always_call=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class CallReplay:
    """Replays a call of a module whose arguments have the same metadata as a call already run, instead of running
    its ops again: the UNet's (41 calls a run, ~1,700 ops each), the text encoders' (the prompt's and the negative
    prompt's) and the VAE encoder's and decoder's (one call each, or one per tile with VAE tiling), and the tiles'
    blending (``wrap_inplace``). Exact, not approximate: on ``meta`` the ops and
    shapes depend only on that metadata (no data-dependent branch; the timestep's value never shapes a tensor; a
    text encoder's token ids are a tensor of 77 whatever they hold), so the call makes and frees
    the same allocations in the same order; the replay sends that logged sequence to the accountant again, so
    any accountant (the allocator model too) sees what the call would have made it see. A call is memoised only
    when its log shows it left nothing behind but its outputs, each a fresh storage, and what the process keeps
    from then on (the cuBLAS workspaces the text encoder's first matrix multiply makes: a replay holds them too,
    and marks them made). The 41 UNet calls of a run cost one; ``tests/test_simulate.py`` checks runs with and
    without it agree.

    The logs outlive the run (``memo``, the simulator's): the runs of one process (a fit search, a sweep, the advice
    after a failed run) replay each other's calls too: the text encoders' (the same prompt every run), every VAE
    tile of one size, the UNet at a size tried before. A log is kept under everything else that shapes the call's
    events: ``context`` (the run's settings that change what a call does: the GPU's kernels, the attention choice,
    attention slicing, offload, explain's owners) and whether the cuBLAS workspaces are held when the call starts
    (``libraries``); with it are kept the attention calls and the largest workspaces the call made, which a replay
    adds to the run's record. ``replayed`` counts what the run's own earlier calls would have let it replay, so that
    a record does not depend on what the process ran before it.
    """

    def __init__(self, meter: LiveTensorMeter, attention: AttentionModel, enabled: bool = True,
                 memo: dict[Any, Any] | None = None, context: Any = (), libraries: GpuLibraries | None = None) -> None:
        self.meter, self.attention, self.enabled = meter, attention, enabled
        # key -> (the log, the outputs' template, their keys in the log, the attention calls, the workspaces noted,
        # the keys of what the call left held for the process: cuBLAS's workspaces)
        # (wrap_twin's entries add whether the call leaves no upsample's output noted)
        self.memo: dict[Any, tuple[Any, ...]] = {} if memo is None else memo
        self.context, self.libraries = context, libraries
        self.called: set[Any] = set()  # the keys of this run's calls
        # the twin blocks' signatures, each as a number, by block and state, and the numbers by signature (wrap_twin;
        # the simulator's, to share)
        self.signatures: dict[Any, Any] = {}
        self.replayed: Counter[str] = Counter()

    def _key(self, name: str, args: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """The memo's key for a call (None: not to be memoised) and its memo entry (None: not logged yet). A call
        found in the memo is counted as replayed where an earlier call of this run had the same key."""
        arguments = call_key(args, kwargs) if self.enabled else None
        if arguments is None:
            return None, None
        key = (name, self.context, self.libraries.blas_ready if self.libraries is not None else None, arguments)
        entry = self.memo.get(key)  # each look-up hashes the nested key again: two, not four
        if entry is not None:
            called = len(self.called)
            self.called.add(key)
            if len(self.called) == called:
                self.replayed[name] += 1
        else:
            self.called.add(key)
        return key, entry

    def wrap(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if self.meter.log is not None:  # inside another logged call: its log holds this one's events
                    return original(*args, **kwargs)
                key, entry = self._key(name, args, kwargs)
                if entry is not None:
                    return self._replay(entry)
                before = Counter(self.attention.calls)
                with self._noting() as noted, self.meter.recording() as log:
                    out = original(*args, **kwargs)
                if key is not None:
                    self._keep(key, log, out, before, noted)
                return out

            return forward

        return wrapper

    def wrap_inplace(self, name: str, returns: int, rows: int | None = None
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """For a function that changes its argument ``returns`` in place and returns it (the VAE's tile blending,
        one small op per pixel row): a call with the same argument metadata replays the temporaries the first
        made and freed, and returns the argument (on meta there are no values to blend).

        ``rows``: the function is diffusers' ``blend_v`` (2) or ``blend_h`` (3), ``(a, b, blend_extent)``: for each
        of ``min(a.shape[rows], b.shape[rows], blend_extent)`` rows of ``b`` one expression of row-shaped
        temporaries, the same for every row. Once a call run whole in this process has shown its events to be one
        window repeated row by row (``meters.repeated_windows``), a call of new shapes runs its first row (the
        call with an extent of 1 makes exactly that row's ops) and replays that window for the others."""
        def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if self.meter.log is not None:
                    return original(*args, **kwargs)
                key, entry = self._key(name, args, kwargs)
                if entry is not None:
                    if self.libraries is not None:
                        self.libraries.merge(entry[4])
                    self.meter.replay(entry[0], None, [])
                    return args[returns]
                extent = _blend_rows(args, kwargs, rows) if key is not None and rows is not None else 0
                proven = ("one window per row", name)  # a memo entry: a whole call in this process was
                if proven in self.memo and extent > 1 and self.meter.series is None:  # a timeline keeps every op's step
                    with self._noting() as noted, self.meter.recording() as log:
                        original(args[0], args[1], 1)
                    made = {event[1] for event in log.events if event[0] == "alloc"}
                    # the row's own events (a storage dropped meanwhile by the garbage collector is not the row's)
                    window = [event for event in log.events if event[0] == "alloc" or event[1] in made]
                    if not _one_window(window):  # the proof says otherwise: the blend's code is not as it was
                        raise AssertionError(f"{name}: a row of a blend shown to be one window per row was not one")
                    self.meter.replay(EventLog(_windows(window, 1, extent)), None, [])
                    if len(window) == len(log.events):
                        self.memo[key] = (EventLog(_windows(window, 0, extent)), None, [], Counter(), noted, ())
                    return args[returns]
                with self._noting() as noted, self.meter.recording() as log:
                    out = original(*args, **kwargs)
                if key is not None and out is args[returns] and _self_contained(log, [], None):
                    self.memo[key] = (log, None, [], Counter(), noted, ())
                    program = log.program
                    if extent > 1 and len(program) == 1 and program[0][0] == "repeat" and program[0][2] == extent \
                            and len(program[0][1]) * extent == len(log.events):
                        self.memo[proven] = True  # type: ignore[assignment]
                return out

            return call

        return wrapper

    def wrap_twin(self, module: torch.nn.Module) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """For a block of the UNet or the VAE (``twins.py``), inside a call being logged (the UNet's first call at a
        size, a VAE call of new shapes): a call alike to one already logged, its block's ``signature`` and its
        arguments' metadata the same, is replayed from that one's log, its events going into the outer call's log
        one by one; another runs, and its events, a slice of the outer log, are kept for the calls alike to it.
        Outside a logged call the block runs (its model's call is then replayed whole, or not kept at all); and in
        a timeline or an ``explain`` run, whose steps and owners a replay would not give.

        Beyond the arguments, one thing before a call can shape it: whether an argument is the output of the
        nearest-neighbour upsample just before it (``GpuLibraries.upsampled``, for the convolution after it), which
        is part of the key; and a block that leaves an upsample's output noted is not kept."""
        def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                outer = self.meter.log
                if outer is None or not self.enabled or self.meter.explain or self.meter.series is not None:
                    return original(*args, **kwargs)
                arguments = call_key(args, kwargs)
                # a block's signature is worked out once a process for each context and each dtype its weights are
                # in (SDXL's VAE is upcast for its decoder); its other attributes change only with the switches
                # the context names (the attention processors)
                # (kept as a number: a signature is a tuple of hundreds, hashed anew at every look-up)
                state = (id(module), self.context, *(p.dtype for p in module.parameters()))
                held = self.signatures.get(state, False)
                if held is False:
                    described = signature(module)
                    held = self.signatures[state] = None if described is None else \
                        self.signatures.setdefault(("signature", described), len(self.signatures))
                if arguments is None or held is None:
                    return original(*args, **kwargs)
                libraries = self.libraries
                upsampled = libraries.upsampled if libraries is not None else None
                after_upsample = upsampled is not None and any(
                    t.untyped_storage()._cdata == upsampled for t in op_tensors((args, kwargs)))
                key = ("twin", held, self.context, libraries.blas_ready if libraries is not None else None,
                       after_upsample, arguments)
                entry = self.memo.get(key)
                if entry is not None:
                    self.replayed["twin blocks"] += 1
                    if libraries is not None and entry[6]:  # the block's convolutions cleared it
                        libraries.upsampled = None
                    return self._replay(entry)
                before, start = Counter(self.attention.calls), len(outer.events)
                with self._noting() as noted:
                    out = original(*args, **kwargs)
                after = libraries.upsampled if libraries is not None else None
                if after in (None, upsampled):
                    self._keep(key, EventLog(outer.events[start:]), out, before, noted, (after is None,))
                return out

            return mark(forward)

        return wrapper

    def _replay(self, entry: tuple[Any, ...]) -> Any:
        """A memoised call again: its attention calls and workspaces into the run's record, its events to the
        meter, its outputs bound to what they left."""
        log, template, outputs, calls, noted, kept = entry[:6]
        if calls:  # most calls make none (a VAE tile's 1 x 1 convolution): Counter.update asks isinstance first
            self.attention.calls.update(calls)
        if self.libraries is not None:
            self.libraries.merge(noted)
            if kept:  # the call made cuBLAS's workspaces, which the process then keeps
                self.libraries.blas_ready = True
        return self.meter.replay(log, template, outputs, kept)

    def _keep(self, key: Any, log: EventLog, out: Any, before: Counter[tuple[str, int, int, str]],
              noted: dict[str, int], extra: tuple[Any, ...] = ()) -> None:
        """Memoise a call just logged, if its log shows it freed only what it made and left its outputs, fresh
        storages, and what the process keeps from then on (cuBLAS's workspaces); ``extra`` goes with the entry."""
        live = self.meter.live_keys(out)
        if live is None:
            return
        kept = self.meter.kept(log.left)
        if _self_contained(log, [*live, *kept], out):
            self.memo[key] = (log, template_of(out), live, self.attention.calls - before, noted, kept, *extra)

    def _noting(self) -> Any:
        """The workspaces a logged call allocates (``GpuLibraries.noting``; nothing without a GPU)."""
        return self.libraries.noting() if self.libraries is not None else nullcontext({})


TWIN_BLOCKS = (ResnetBlock2D, Transformer2DModel, BasicTransformerBlock)  # built alike many times in a UNet


def _blend_rows(args: tuple[Any, ...], kwargs: dict[str, Any], dim: int) -> int:
    """How many rows diffusers' ``blend_v``/``blend_h`` blends: ``min(a.shape[dim], b.shape[dim], blend_extent)``."""
    a, b = args[0], args[1]
    extent = args[2] if len(args) > 2 else kwargs.get("blend_extent", 0)
    return min(a.shape[dim], b.shape[dim], extent) if isinstance(extent, int) else 0


def _one_window(events: list[tuple[Any, ...]]) -> bool:
    """Are the events one net-zero window (``meters.repeated_windows``: twice over, they are one window twice)?"""
    program = repeated_windows(_windows(events, 0, 2))
    return len(program) == 1 and program[0][0] == "repeat" and program[0][2] == 2


ROW_KEYS = 1 << 40  # each copy of a window gets its keys shifted by this much: above any key a run makes


def _windows(window: list[tuple[Any, ...]], first: int, last: int) -> list[tuple[Any, ...]]:
    """Copies ``first`` to ``last - 1`` of ``window``, each with keys of its own."""
    return [(event[0], event[1] + row * ROW_KEYS, *event[2:]) for row in range(first, last) for event in window]


def _self_contained(log: EventLog, outputs: list[int], out: Any) -> bool:
    """Did the logged call free only what it made, and leave exactly its outputs, fresh storages each?"""
    made: set[int] = set()
    for event in log.events:
        if event[0] == "alloc":
            made.add(event[1])
        elif event[1] in made:
            made.discard(event[1])
        else:
            return False
    if made != set(outputs) or len(outputs) != len(made):
        return False
    return all(t.storage_offset() == 0 and t.untyped_storage().nbytes() == strided_nbytes(t)
               for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))


class AttentionModel:
    """Stands in for ``F.scaled_dot_product_attention`` while entered: allocates what the kernel PyTorch
    would choose on ``gpu`` allocates (``attention.py`` has the rules and their sources). diffusers and
    transformers look the function up in ``torch.nn.functional`` at each call, so replacing the attribute
    reaches every attention call; a TorchFunctionMode would too, at the cost of intercepting every op."""

    def __init__(self, gpu: GpuSpec, kernel: Kernel = Kernel.auto) -> None:
        self.gpu, self.kernel = gpu, kernel
        self.allowed = allowed_backends(kernel.value)
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
        call = AttentionCall(dtype, query.shape[-1], key.shape[-1], value.shape[-1], attn_mask is not None,
                             key.shape[-2])
        backend = choose_backend(self.gpu, call, self.allowed)
        if backend is None:  # as torch.nn.attention.sdpa_kernel with only this kernel raises "No available kernel"
            raise InputError(
                "{attention} {kernel}: PyTorch's {kernel} kernel cannot run this pipeline's attention with head "
                "dim {dim} ({dtype}{mask}) on {gpu}, and torch.nn.attention.sdpa_kernel would raise; use auto.",
                params=("attention",), kernel=self.kernel.value, dim=call.q_head_dim, dtype=dtype,
                mask=", with a mask" if call.has_mask else "", gpu=self.gpu.name)
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
        if backend == CUDNN:
            seeds = [torch.empty((), dtype=torch.int64, device=device) for _ in range(2)]  # philox seed, offset
            out = torch.empty((*batch, length, heads, head_dim_v), dtype=query.dtype, device=device)
            transient.append(torch.empty(CUDNN_WORKSPACE, dtype=torch.uint8, device=device))
            del transient[:], seeds
        elif backend == CPU_FLASH:
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
            assert backend == EFFICIENT
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


# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: one segment per pool that grows by mapping pages, kLargeBuffer
# (20 MiB) for the large pool and kSmallBuffer (2 MiB) for the small (CUDACachingAllocator.cpp, ExpandableSegment):
# free pages between blocks are unmapped before an out-of-memory error, so what the run needs is its peak allocated
# in whole large pages, and a partly used small page more. An estimate from the peak, not a simulation of that
# allocator.


def _fit(gpu: GpuSpec, meter: LiveTensorMeter, peak_allocated: int, peak_reserved: int | None) -> Fit | None:
    """The verdict of the allocator model run with the card's capacity (None for the CPU target)."""
    if not gpu.is_cuda or gpu.memory is None or gpu.capacity is None:
        return None
    margin = margin_for(gpu)
    expandable_need = -(-peak_allocated // K_LARGE_BUFFER) * K_LARGE_BUFFER + K_SMALL_BUFFER
    expandable = judge(expandable_need <= gpu.capacity, expandable_need, gpu.capacity, margin)
    common: dict[str, Any] = {"capacity": gpu.capacity, "card_memory": gpu.memory, "context": gpu.context,
                              "held_by_others": gpu.held_by_others, "expandable": expandable}
    failure = meter.failure
    if failure is None:
        need = peak_reserved or peak_allocated
        return Fit(judge(True, need, gpu.capacity, margin), decided_on=need, margin=margin.to_json(need), **common)
    error = failure.error
    assert isinstance(error, AllocatorOutOfMemory)
    need = error.reserved + error.segment  # what the allocator held, and the segment it could not add
    return Fit(DOES_NOT_FIT, failed_stage=str(failure.context), failed_request=failure.allocation.size,
               failed_what=describe(failure.allocation), decided_on=need, margin=margin.to_json(need),
               allocated_at_failure=error.allocated, fragmented=error.allocated + error.request <= gpu.capacity,
               **common)


def describe(allocation: Allocation) -> str:
    """An allocation in words: "a 1x256x2048x2048 float16 tensor" or "a cuDNN workspace"."""
    if allocation.kind in ("tensor", "weights"):
        shape = "x".join(map(str, allocation.shape)) or "scalar"
        what = f"a {shape} {allocation.dtype} {'weight' if allocation.kind == 'weights' else 'tensor'}"
    else:
        what = f"a {allocation.kind}"
    return what + (f" made by {allocation.owner}" if allocation.owner else "")


def explain(snapshot: Snapshot) -> dict[str, Any]:
    """The live allocations at a peak grouped by the module that made them, largest first, adding up to
    the peak (the JSON form of ``--explain``)."""
    groups: dict[str, dict[str, Any]] = {}
    for alloc in snapshot.allocations:
        kind = "tensors" if alloc.kind in ("tensor", "weights") else alloc.kind
        group = groups.setdefault(f"{alloc.owner}\0{kind}", {"module": alloc.owner, "kind": kind, "bytes": 0,
                                                              "count": 0, "tensors": []})
        group["bytes"] += alloc.charged
        group["count"] += 1
        group["tensors"].append({"shape": list(alloc.shape), "dtype": alloc.dtype, "bytes": alloc.charged})
    for owner, size, count in snapshot.resident:
        groups[owner] = {"module": owner, "kind": "weights" if owner.endswith(" weights") else "kept",
                         "bytes": size, "count": count, "tensors": []}
    ordered = sorted(groups.values(), key=lambda g: g["bytes"], reverse=True)
    for group in ordered:
        group["tensors"] = sorted(group["tensors"], key=lambda t: t["bytes"], reverse=True)[:EXPLAIN_TENSORS]
    return {"total": snapshot.total, "groups": ordered}


_SIMULATORS: dict[Build, Simulator] = {}


def simulator_for(request: RunRequest, gpu: GpuSpec) -> Simulator:
    """The simulator built for what ``request`` runs, built once per process (a build takes a second)."""
    build = build_of(request, gpu)
    if build not in _SIMULATORS:
        pipeline, architecture, dtype, safety_checker, vae = build
        with long_lived():  # the built pipeline lives as long as the process (collector.py)
            _SIMULATORS[build] = Simulator(architecture, dtype, safety_checker, pipeline, vae)
    return _SIMULATORS[build]


def simulate(request: RunRequest, options: SimulateOptions, progress: Progress | None = None) -> Record:
    """Simulate one request on ``meta`` (the pipeline built once per process)."""
    return simulator_for(request, options.gpu).run(request, options, progress)


def failure_sentence(record: Record) -> str | None:
    """Where a simulated run would run out of memory, in one sentence (None when it fits)."""
    sim = record.simulation
    fit = sim.fit if sim is not None else None
    if fit is None or fit.fits:
        return None
    return (f"out of memory in the {label(fit.failed_stage)} stage: {fit.failed_what} "
            f"({fit.failed_request:,} bytes) would not fit")
