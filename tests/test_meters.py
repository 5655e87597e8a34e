"""The live-tensor meter against storages whose sizes are known by construction."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from sdvram.accounting import LiveBytes  # noqa: E402
from sdvram.allocator import AllocatorAccountant, CachingAllocator  # noqa: E402
from sdvram.meters import LiveTensorMeter  # noqa: E402


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_counts_storages_once_and_frees_them(device: str) -> None:
    with LiveTensorMeter(device, LiveBytes()) as meter:
        a = torch.empty(1000, dtype=torch.float32, device=device)  # 4,000 bytes
        assert meter.allocated() == 4000
        view = a.view(10, 100)  # a view shares the storage: nothing new
        b = a * 2  # a new storage
        assert meter.allocated() == 8000
        del a  # the view keeps the storage alive
        assert meter.allocated() == 8000
        del view
        assert meter.allocated() == 4000
        del b
        assert meter.allocated() == 0
        assert meter.take_peak().allocated == 8000
        assert meter.take_peak().allocated == 0  # a new window starts at what is live


def test_peak_sees_temporaries_that_are_already_gone() -> None:
    with LiveTensorMeter("cpu", LiveBytes()) as meter:
        x = torch.ones(256, 256)  # 262,144 bytes
        meter.take_peak()
        y = (x * 3 + 1).sum()  # x*3 and +1 are 262,144-byte temporaries; the first dies after the add
        peak = meter.take_peak().allocated
        assert peak == 3 * 262_144
        assert meter.allocated() == 262_144 + y.untyped_storage().nbytes()


def test_allocator_accountant_charges_blocks_and_reserves_segments() -> None:
    with LiveTensorMeter("meta", AllocatorAccountant(CachingAllocator())) as meter:
        keep = [torch.empty(1, dtype=torch.float16, device="meta"), torch.empty(300, device="meta")]
        assert meter.allocated() == 512 + 1536  # 2 bytes -> one 512-byte block; 1,200 bytes -> three
        assert meter.take_peak().reserved == 2 * 1024**2  # one small-pool segment
        del keep
        assert meter.allocated() == 0
        assert meter.take_peak().reserved == 2 * 1024**2  # cached, not returned


def test_a_capacity_failure_is_noted_once_and_the_run_goes_on() -> None:
    seen = []
    accountant = AllocatorAccountant(CachingAllocator(capacity=4 * 1024**2))
    with LiveTensorMeter("meta", accountant, on_failure=lambda alloc: seen.append(alloc.size) or "stage") as meter:
        a = torch.empty(3 * 1024**2, dtype=torch.uint8, device="meta")  # a 20 MiB segment: over 4 MiB
        b = torch.empty(3 * 1024**2, dtype=torch.uint8, device="meta")
        assert meter.failure is not None and meter.failure.context == "stage"
        assert seen == [3 * 1024**2] and meter.allocated() == 6 * 1024**2
        del a, b


# -- CudaMeter's logic on the CPU, through its seam (tests/fake_cuda.py) ----------------------------------------

from sdvram.engine import StageRecorder  # noqa: E402
from sdvram.meters import CudaMeter  # noqa: E402

from .fake_cuda import FakeCuda, FakeNvml, FakeProcess  # noqa: E402

MIB = 1024**2


def test_cuda_meter_cuts_peaks_per_stage() -> None:
    """Each stage's peak is the allocator's max_memory_allocated since the stage began: the meter resets the peak
    statistics at every boundary, so a large temporary of one stage does not show in the next."""
    cuda = FakeCuda()
    meter = CudaMeter(torch.device("cuda", 0), cuda=cuda, nvml=FakeNvml())
    recorder = StageRecorder(meter)
    with meter:
        with recorder.stage("load"):
            weights = cuda.malloc(100 * MIB)  # a 100 MiB segment of its own
        with recorder.stage("vae_decode"):
            scratch = cuda.malloc(300 * MIB)
            cuda.free(scratch)
        with recorder.stage("safety_checker"):
            small = cuda.malloc(4 * MIB)  # a 20 MiB segment for requests of 1 to 10 MiB
            cuda.free(small)
    load, decode, checker = recorder.stages
    assert (load.allocated_start, load.peak_allocated, load.allocated_end) == (0, 100 * MIB, 100 * MIB)
    assert decode.peak_allocated == 400 * MIB and decode.allocated_end == 100 * MIB
    assert checker.peak_allocated == 104 * MIB  # not the decoder's 400 MiB: the peak was reset
    # reserved: the freed 300 MiB segment stays cached, and the checker's 4 MiB request is carved from it (the
    # smallest free block of the large pool that holds it): no new segment, reserved stays at 400 MiB
    assert decode.peak_reserved == checker.peak_reserved == 400 * MIB
    assert recorder.peak_allocated == 400 * MIB and recorder.peak_reserved == 400 * MIB
    assert cuda.calls.count("reset_peak_memory_stats") >= 4  # on entering, then after each stage's peak is read
    del weights


def test_cuda_meter_samples_nvml_for_the_device_and_this_process() -> None:
    cuda, nvml = FakeCuda(), FakeNvml(used=1000 * MIB)
    with CudaMeter(torch.device("cuda"), cuda=cuda, nvml=nvml) as meter:
        nvml.sampled()
        nvml.used = 3000 * MIB  # the device's memory.used rises (another process, or this one)
        nvml.processes = [FakeProcess(os.getpid() + 1, 9000 * MIB), nvml.me(None)]  # another pid; no figure yet
        nvml.sampled()
        nvml.processes = [nvml.me(2500 * MIB)]
        nvml.sampled()
        nvml.used, nvml.processes = 1500 * MIB, [nvml.me(1200 * MIB)]  # falls again: the peaks stay
        nvml.sampled()
    assert meter.device_peak() == 3000 * MIB  # the largest memory.used seen
    assert meter.process_peak == 2500 * MIB  # this process only, not the other pid's 9000 MiB
    assert nvml.handles == ["uuid"] and nvml.shut_down
    env = meter.environment()
    assert (env["gpu_name"], env["gpu_total_memory"], env["compute_capability"]) == ("NVIDIA Scripted GPU",
                                                                                      8 * 1024**3, "8.6")
    assert env["driver"] == "580.159.04" and env["nvml_error"] is None


def test_cuda_meter_finds_nvml_s_device_by_index_when_the_uuid_is_unknown() -> None:
    nvml = FakeNvml(known_uuid=None)
    with CudaMeter(torch.device("cuda", 0), cuda=FakeCuda(), nvml=nvml):
        pass
    assert nvml.handles == ["index 0"]


def test_cuda_meter_without_nvml_still_measures_the_allocator() -> None:
    cuda = FakeCuda()
    with CudaMeter(torch.device("cuda"), cuda=cuda, nvml=FakeNvml(fail_init=True)) as meter:
        block = cuda.malloc(30 * MIB)
        peak = meter.take_peak()
    assert (peak.allocated, peak.reserved) == (30 * MIB, 30 * MIB)
    assert meter.device_peak() is None and meter.process_peak is None
    assert meter.nvml_error == "NVML unavailable: NVML Shared Library Not Found"
    assert meter.environment()["driver"] is None
    cuda.free(block)


def test_a_failed_nvml_sample_loses_that_sample_not_the_run() -> None:
    nvml = FakeNvml(used=700 * MIB, fail_samples=1)
    with CudaMeter(torch.device("cuda"), cuda=FakeCuda(), nvml=nvml) as meter:  # the first sample fails
        nvml.sampled()
    assert meter.device_peak() == 700 * MIB
    assert meter.nvml_error == "NVML sampling failed: GPU is lost"


def test_cuda_meter_timeline_reads_the_allocator_trace() -> None:
    cuda = FakeCuda()
    with CudaMeter(torch.device("cuda"), timeline=True, cuda=cuda, nvml=FakeNvml()) as meter:
        assert meter.timeline_position() == 0
        a = cuda.malloc(2 * MIB)
        b = cuda.malloc(512)
        cuda.free(a)
        assert meter.timeline_position() == 5  # a segment and a request, twice, then a free
    assert not cuda.memory.recording  # the history is switched off on leaving
    series = meter.timeline_series()
    # 2 MiB is a large request under 10 MiB -> a 20 MiB segment; 512 bytes a small one -> a 2 MiB segment of the
    # small pool. The series is the allocator's counts after each event (a segment_alloc changes nothing yet:
    # the model makes the segment with the request that needs it)
    assert series == [(0, 0), (2 * MIB, 20 * MIB), (2 * MIB, 20 * MIB), (2 * MIB + 512, 22 * MIB),
                      (512, 22 * MIB)]
    cuda.free(b)


# -- meta kernels written out (metakernels.py) against PyTorch's own ------------------------------------------
def _described(outputs: tuple) -> list[tuple]:
    return [(tuple(t.shape), t.stride(), t.dtype, t.storage_offset(), t.untyped_storage().nbytes()) for t in outputs]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 320, 64, 48), (1, 32, 1, 1), (2, 64, 77), (3, 128, 1, 9), (1, 4, 5, 6, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_the_group_norm_meta_kernel_gives_what_pytorch_s_gives(dtype: str, shape: tuple, affine: bool) -> None:
    from sdvram.metakernels import native_group_norm

    kind = getattr(torch, dtype)
    groups = 4 if shape[1] % 32 else 32
    weight = torch.empty(shape[1], dtype=kind, device="meta") if affine else None
    for layout, x in _layouts(shape, kind).items():  # ours answers the contiguous input, and where it answers
        inner = x.numel() // (shape[0] * shape[1])  # another, gives what PyTorch gives
        arguments = (x, weight, weight, shape[0], shape[1], inner, groups, 1e-5)
        ours = native_group_norm(*arguments)
        assert ours is not None or layout != "contiguous"
        if ours is not None:
            assert _described(ours) == _described(torch.ops.aten.native_group_norm.default(*arguments)), layout


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize(("shape", "normalized"), [((2, 4096, 320), (320,)), ((1, 77, 768), (768,)),
                                                   ((2, 1, 64), (64,)), ((3, 5, 7, 8), (7, 8)), ((9,), (9,))])
@pytest.mark.parametrize("affine", [True, False])
def test_the_layer_norm_meta_kernel_gives_what_pytorch_s_gives(dtype: str, shape: tuple, normalized: tuple,
                                                              affine: bool) -> None:
    from sdvram.metakernels import native_layer_norm

    kind = getattr(torch, dtype)
    weight = torch.empty(normalized, dtype=kind, device="meta") if affine else None
    for layout, x in _layouts(shape, kind).items():
        ours = native_layer_norm(x, list(normalized), weight, weight, 1e-5)
        assert ours is not None or layout != "contiguous"
        if ours is not None:
            theirs = torch.ops.aten.native_layer_norm.default(x, list(normalized), weight, weight, 1e-5)
            assert _described(ours) == _described(theirs), layout


def _layouts(shape: tuple, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One shape in the layouts a pipeline hands pointwise ops: contiguous, channels-last, a transposed view, a
    slice of a wider tensor (GEGLU's gate), an expanded tensor, and a permuted view."""
    wide = list(shape)
    wide[-1] *= 2
    layouts = {"contiguous": torch.empty(shape, dtype=dtype, device="meta"),
               "transposed": torch.empty(shape[::-1], dtype=dtype, device="meta").permute(
                   *reversed(range(len(shape)))),
               "slice": torch.empty(wide, dtype=dtype, device="meta").chunk(2, -1)[1],
               "expanded": torch.empty((1, *shape[1:]), dtype=dtype, device="meta").expand(shape)}
    if len(shape) == 4:
        layouts["channels_last"] = layouts["contiguous"].to(memory_format=torch.channels_last)
    if 1 in shape:  # contiguous, with other strides on the dimensions of size 1 (PyTorch's kernels disagree there)
        odd = [7 * s if n == 1 else s for n, s in zip(shape, layouts["contiguous"].stride(), strict=True)]
        layouts["odd size-1 strides"] = layouts["contiguous"].as_strided(shape, odd)
        if len(shape) == 4 and shape[0] == 1:  # channels-last, the batch's stride that of one pixel (SDXL's VAE)
            last = layouts["channels_last"].stride()
            layouts["odd channels_last"] = layouts["channels_last"].as_strided(shape, (last[3], *last[1:]))
    if len(shape) == 3:
        layouts["permuted"] = torch.empty((shape[0], shape[2], shape[1]), dtype=dtype, device="meta").transpose(1, 2)
    return layouts


POINTWISE_CALLS = [  # (op, arguments beyond the tensors, keyword arguments, how many tensors)
    ("add.Tensor", (), {}, 2), ("add.Tensor", (2.0,), {}, 1), ("add.Tensor", (), {"alpha": 3}, 2),
    ("sub.Tensor", (), {}, 2), ("sub.Tensor", (1,), {"alpha": 0.5}, 1), ("mul.Tensor", (), {}, 2),
    ("mul.Tensor", (0.18215,), {}, 1), ("mul.Tensor", (2,), {}, 1), ("div.Tensor", (), {}, 2),
    ("div.Tensor", (2.0,), {}, 1), ("div.Tensor", (3,), {}, 1), ("silu.default", (), {}, 1),
    ("gelu.default", (), {}, 1), ("gelu.default", (), {"approximate": "tanh"}, 1),
    ("clamp.default", (-1.0, 1.0), {}, 1), ("clamp.default", (0, 255), {}, 1), ("clamp.default", (None, 1.0), {}, 1),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(2, 320, 12, 10), (2, 4096, 320), (1, 4, 1, 1), (3, 1, 5, 7), (7,), (5, 6),
                                   (1, 512, 6, 4), (1, 77, 768)])
def test_the_pointwise_meta_kernels_give_what_pytorch_s_give(dtype: str, shape: tuple) -> None:
    """Every pair of layouts of one shape (and each layout alone, with a number), each op: ours, where it answers,
    describes the output PyTorch's own kernel makes; contiguous inputs (the strides ``torch.empty`` gives) it
    always answers."""
    from sdvram.metakernels import KERNELS

    kind = getattr(torch, dtype)
    layouts = _layouts(shape, kind)
    for name, extra, kwargs, tensors in POINTWISE_CALLS:
        op = getattr(getattr(torch.ops.aten, name.split(".")[0]), name.split(".")[1])
        pairs = [(a,) for a in layouts] if tensors == 1 else [(a, b) for a in layouts for b in layouts]
        for pair in pairs:
            arguments = (*(layouts[p] for p in pair), *extra)
            ours = KERNELS[op](*arguments, **kwargs)
            if set(pair) == {"contiguous"}:
                assert ours is not None, (name, pair)
            if ours is not None:
                assert _described((ours,)) == _described((op(*arguments, **kwargs),)), (name, pair, extra, kwargs)


def test_the_pointwise_meta_kernels_leave_other_inputs_to_pytorch() -> None:
    from sdvram.metakernels import KERNELS

    aten = torch.ops.aten
    x = torch.empty(2, 3, device="meta", dtype=torch.float16)
    assert KERNELS[aten.add.Tensor](x, torch.empty(3, device="meta", dtype=torch.float16)) is None  # a broadcast
    assert KERNELS[aten.add.Tensor](x, torch.empty(2, 3, device="meta")) is None  # two dtypes: promotion
    assert KERNELS[aten.mul.Tensor](torch.empty(2, 3, device="meta", dtype=torch.int64), 0.5) is None  # to float
    assert KERNELS[aten.mul.Tensor](x, True) is None
    assert KERNELS[aten.add.Tensor](x, torch.empty(2, 3, dtype=torch.float16)) is None  # a CPU tensor
    assert KERNELS[aten.add.Tensor](x, torch.empty((), device="meta", dtype=torch.float16)) is None  # a 0-dim one
    assert KERNELS[aten.div.Tensor](torch.empty(2, 3, dtype=torch.float16), 2.0) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize(("bias", "transposed"), [((1280,), True), ((1280,), False), ((6, 1280), False),
                                                  ((1, 1280), True)])
def test_the_addmm_meta_kernel_gives_what_pytorch_s_gives(dtype: str, bias: tuple, transposed: bool) -> None:
    from sdvram.metakernels import addmm

    kind = getattr(torch, dtype)
    mat1 = torch.empty(6, 320, dtype=kind, device="meta")
    mat2 = (torch.empty(1280, 320, dtype=kind, device="meta").t() if transposed
            else torch.empty(320, 1280, dtype=kind, device="meta"))
    b = torch.empty(bias, dtype=kind, device="meta")
    ours = addmm(b, mat1, mat2)
    assert ours is not None
    assert _described((ours,)) == _described((torch.ops.aten.addmm.default(b, mat1, mat2),))
    assert addmm(b, mat1, mat2, beta=0.5) is None
    assert addmm(torch.empty(7, dtype=kind, device="meta"), mat1, mat2) is None


def test_the_layer_norm_meta_kernel_takes_a_permuted_input_as_pytorch_s_does() -> None:
    """The Transformer2DModel's norm gets the convolution's output viewed as (batch, pixels, channels)."""
    from sdvram.metakernels import native_layer_norm

    x = torch.empty(2, 320, 12, 10, dtype=torch.float16, device="meta").permute(0, 2, 3, 1).reshape(2, 120, 320)
    assert not x.is_contiguous()
    weight = torch.empty(320, dtype=torch.float16, device="meta")
    ours = native_layer_norm(x, [320], weight, weight, 1e-5)
    assert ours is not None
    assert _described(ours) == _described(torch.ops.aten.native_layer_norm.default(x, [320], weight, weight, 1e-5))


def test_the_meta_kernels_leave_other_inputs_to_pytorch() -> None:
    from sdvram.metakernels import native_group_norm, native_layer_norm

    channels_last = torch.empty(2, 32, 8, 8, device="meta").to(memory_format=torch.channels_last)
    assert native_group_norm(channels_last, None, None, 2, 32, 64, 32, 1e-5) is None
    assert native_group_norm(torch.empty(2, 32, 8, 8), None, None, 2, 32, 64, 32, 1e-5) is None  # a CPU tensor
    assert native_layer_norm(torch.empty(4, 8, device="meta"), [9], None, None, 1e-5) is None  # a wrong shape
    wrong = torch.empty(9, device="meta")
    assert native_layer_norm(torch.empty(4, 8, device="meta"), [8], wrong, None, 1e-5) is None  # PyTorch's raises
    assert native_group_norm(torch.empty(2, 32, 8, 8, device="meta"), None, None, 2, 32, 60, 32, 1e-5) is None


class NotingLibrary:
    """A meter's ``library`` that notes the ops it is shown and acts on the ops named in ``acts``."""

    def __init__(self, acts: set[str]) -> None:
        self.acts, self.seen = acts, []

    def acts_on(self, func) -> bool:
        return func._overloadpacket.__name__ in self.acts

    def before_op(self, meter, func, args) -> tuple:
        self.seen.append(func._overloadpacket.__name__)
        return ()

    def after_op(self, meter, func, args, out) -> None:
        pass


@pytest.mark.parametrize(("acts", "shown"), [(set(), ["mul"]), ({"slice"}, ["slice", "slice", "mul"])])
def test_a_view_reaches_the_library_only_where_it_acts_on_that_op(acts: set[str], shown: list[str]) -> None:
    """A view op (a tile cut from an image: it allocates nothing) skips the library's hooks, unless the library acts
    on that op; either way it counts no bytes, and the op after it counts its own."""
    library = NotingLibrary(acts)
    with LiveTensorMeter("meta", AllocatorAccountant(CachingAllocator()), library=library) as meter:
        image = torch.empty(64, 64, device="meta")  # 16,384 bytes
        library.seen.clear()
        tile = image[8:16, 8:16]  # two slices
        doubled = tile * 2  # 256 bytes, a 512-byte block
        assert meter.allocated() == 16_384 + 512
    assert library.seen == shown
    del doubled


def test_a_timeline_takes_a_view_as_a_step() -> None:
    """With a timeline every op closes a step, a view's too, as it did before views skipped the hooks."""
    with LiveTensorMeter("meta", AllocatorAccountant(CachingAllocator()), timeline=True) as meter:
        image = torch.empty(64, 64, device="meta")
        before = len(meter.series)
        tile = image[8:16, 8:16]
        assert len(meter.series) == before + 2
    del tile
