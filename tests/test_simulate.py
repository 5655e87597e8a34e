"""`sdvram simulate`: the real pipeline on meta. It follows a real run to the byte: on the CPU against
`profile --device cpu` (tiny configuration), and on the H200 against the committed measurements
(tests/test_measurements.py). Here: the replay is exact, SD v1.5's weights and kernels, --explain, fit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.choices import Architecture, DType, Kernel, Offload, Weights  # noqa: E402
from sdvram.errors import InputError  # noqa: E402
from sdvram.gpus import CPU, GPUS, custom_gpu  # noqa: E402
from sdvram.profiler import profile  # noqa: E402
from sdvram.requests import ProfileOptions, RunRequest, Settings  # noqa: E402
from sdvram.simulate import SimulateOptions, Simulator, simulate  # noqa: E402

# docs/facts.md, "Parameter counts": fp16 bytes of each component, buffers included
FACTS_FP16_BYTES = {"unet": 1_719_041_928, "vae": 167_307_726, "text_encoder": 246_121_576,
                    "safety_checker": 607_965_232}
GIB = 1024**3
# On the CPU target a few host values the simulation keeps on the host are device tensors in the real CPU
# run (the tokenizer's ids and attention mask, the scheduler's timesteps): measured here, the residue is
# 4 to 1,900 bytes. Four 512-byte blocks bound it; mis-modelling any real tensor of these runs (the smallest
# feature map is 6 KB) would exceed it.
CROSS_CHECK_TOLERANCE = 4 * 512


def tiny(height: int, width: int, **settings) -> RunRequest:
    return RunRequest(height=height, width=width, prompt="a photo of a cat", architecture=Architecture.tiny,
                      settings=Settings(**settings))


def test_cpu_target_follows_a_real_cpu_run(tiny_profile) -> None:
    measured = tiny_profile.record
    simulated = simulate(tiny(128, 192, steps=10, safety_checker=True), SimulateOptions(CPU))
    assert [s.name for s in simulated.stages] == [s.name for s in measured.stages]
    for real, sim in zip(measured.stages, simulated.stages, strict=True):
        assert abs(sim.allocated_start - real.allocated_start) <= CROSS_CHECK_TOLERANCE, real.name
        assert abs(sim.peak_allocated - real.peak_allocated) <= CROSS_CHECK_TOLERANCE, real.name
        assert (sim.unet_calls, sim.peak_call) == (real.unet_calls, real.peak_call)
    assert abs(simulated.peak_allocated - measured.peak_allocated) <= CROSS_CHECK_TOLERANCE


def test_cpu_target_follows_batch_2_without_guidance() -> None:
    request = tiny(64, 96, batch=2, guidance=1.0, steps=10, strength=0.5)
    measured = profile(request, ProfileOptions(device="cpu", weights=Weights.random)).record
    simulated = simulate(request, SimulateOptions(CPU))
    for real, sim in zip(measured.stages, simulated.stages, strict=True):
        assert abs(sim.peak_allocated - real.peak_allocated) <= CROSS_CHECK_TOLERANCE, real.name


def test_replaying_unet_calls_sends_the_allocator_the_same_events() -> None:
    request = RunRequest(height=64, width=64, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=20, strength=0.5))
    simulator = Simulator(Architecture.tiny, DType.float16)
    replayed = simulator.run(request, SimulateOptions(GPUS["t4"]))
    every_call = simulator.run(request, SimulateOptions(GPUS["t4"], replay=False))
    assert replayed.simulation.unet_calls_replayed == 10 and every_call.simulation.unet_calls_replayed == 0
    summary = [(s.name, s.allocated_start, s.peak_allocated, s.allocated_end, s.peak_reserved, s.peak_call)
               for s in replayed.stages]
    assert summary == [(s.name, s.allocated_start, s.peak_allocated, s.allocated_end, s.peak_reserved, s.peak_call)
                       for s in every_call.stages]
    assert replayed.simulation.attention_calls == every_call.simulation.attention_calls


def test_replaying_tiled_vae_calls_changes_no_figure() -> None:
    """With VAE tiling the tiles' encoder and decoder calls and their blending are replayed; a blend of new
    shapes runs its first row and replays that row's window for the others, once a whole blend here has shown
    its rows to be one window each. Every figure must be what running every call gives."""
    simulator = Simulator(Architecture.tiny, DType.float16)
    for height, width in [(256, 320), (320, 456), (384, 256)]:
        request = RunRequest(height=height, width=width, architecture=Architecture.tiny, dtype=DType.float16,
                             settings=Settings(steps=4, strength=1.0, vae_tiling=True))
        replayed = simulator.run(request, SimulateOptions(GPUS["t4"]))
        every_call = Simulator(Architecture.tiny, DType.float16).run(request, SimulateOptions(GPUS["t4"],
                                                                                             replay=False))
        assert replayed.simulation.unet_calls_replayed > 0 and every_call.simulation.unet_calls_replayed == 0
        replayed.simulation.unet_calls_replayed = 0  # the one figure that says what was replayed
        assert figures(replayed) == figures(every_call), (height, width)
    assert ("one window per row", "vae.blend_v") in simulator._calls


def test_the_views_let_pass_the_meter_change_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slices a tiled VAE cuts its tiles with pass the meter unseen (``meters.UNSEEN_VIEWS``): every figure of
    a run must be what the same run gives with the meter seeing them, tiled or not, with offload, explain, and on
    the CPU target; and the meter must not have seen one (else this would compare a run with itself)."""
    from sdvram import meters

    cases = [(tiny(256, 320, steps=3, strength=1.0, vae_tiling=True), SimulateOptions(GPUS["t4"])),
             (tiny(320, 456, steps=3, vae_tiling=True, offload=Offload.sequential), SimulateOptions(GPUS["t4"])),
             (tiny(384, 256, steps=3, vae_tiling=True), SimulateOptions(GPUS["t4"], explain=True)),
             (tiny(128, 192, steps=3, vae_tiling=True), SimulateOptions(CPU)),
             (tiny(192, 128, steps=3), SimulateOptions(GPUS["t4"]))]
    dispatch, views = meters.LiveTensorMeter.__torch_dispatch__, meters.UNSEEN_VIEWS
    slices = [0]

    def counting(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202 -- the mode's own
        slices[0] += func in views
        return dispatch(self, func, types, args, kwargs)

    def run(request: RunRequest, options: SimulateOptions) -> dict:
        simulator = Simulator(Architecture.tiny, request.resolved_dtype(options.gpu.is_cuda))
        return figures(simulator.run(request, options))

    monkeypatch.setattr(meters.LiveTensorMeter, "__torch_dispatch__", counting)
    unseen = [run(r, o) for r, o in cases]
    assert slices[0] == 0
    monkeypatch.setattr(meters, "UNSEEN_VIEWS", ())
    seen = [run(r, o) for r, o in cases]
    assert slices[0] > 100  # the tiles were cut, and the meter saw each cut
    assert unseen == seen


def test_a_run_whose_split_replay_meets_a_release_is_simulated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay split by pool that meets a cudaMalloc the capacity refuses raises ``ReplayConflict``: the run is
    simulated again, each call's events as they came, and its record is what a run without the split gives."""
    from sdvram.allocator import AllocatorAccountant, ReplayConflict

    request = RunRequest(height=256, width=320, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=8, strength=1.0))
    expected = Simulator(Architecture.tiny, DType.float16).run(request, SimulateOptions(GPUS["t4"]))
    split = AllocatorAccountant._replay_split
    splits: list[bool] = []

    def conflicting(self, program, plan, blocks, refused):  # noqa: ANN001, ANN202 -- the method's own
        splits.append(self.split)
        if len(splits) == 5:
            raise ReplayConflict()
        return split(self, program, plan, blocks, refused)

    monkeypatch.setattr(AllocatorAccountant, "_replay_split", conflicting)
    again = Simulator(Architecture.tiny, DType.float16).run(request, SimulateOptions(GPUS["t4"]))
    assert len(splits) == 5  # the second run never splits
    assert figures(again) == figures(expected)


def figures(record) -> dict:
    """A record as JSON without the stages' wall times (the one figure that is not a function of the request)."""
    data = record.to_json()
    for stage in data["stages"]:
        del stage["wall_s"]
    return data


# Settings whose module calls log differently (tiles, per-layer offload, sliced attention, explain's owners, the
# timeline's steps): each is run in a fresh simulator and in one that ran all the others first, sizes in common.
SHARED_RUNS = [
    ({"vae_tiling": True}, (256, 320), {}),
    ({"offload": Offload.sequential}, (64, 96), {}),
    ({"offload": Offload.model, "vae_tiling": True}, (256, 320), {}),
    ({"attention_slicing": "auto"}, (64, 96), {"explain": True}),
    ({}, (64, 96), {"timeline": True}),
    ({}, (256, 320), {"attention": Kernel.math}),
]


@pytest.mark.parametrize("target", ["t4", "cpu"])
def test_runs_that_share_a_simulator_give_what_a_fresh_one_gives(target: str) -> None:
    """A simulator keeps its module calls' logs across runs (``CallReplay``'s memo) and its op cache: a run's record
    must not depend on what the simulator ran before it."""
    gpu = CPU if target == "cpu" else GPUS[target]
    runs = [(settings, size, options) for settings, size, options in SHARED_RUNS
            if gpu.is_cuda or "offload" not in settings]

    def request(settings: dict, size: tuple[int, int]) -> RunRequest:
        return RunRequest(height=size[0], width=size[1], architecture=Architecture.tiny, dtype=DType.float16,
                          settings=Settings(steps=4, strength=1.0, **settings))

    shared = Simulator(Architecture.tiny, DType.float16)
    for settings, size, options in runs:  # every setting once, so that each later run finds logs of the others
        shared.run(request(settings, size), SimulateOptions(gpu, **options))
    for settings, size, options in runs:
        options = SimulateOptions(gpu, **options)
        fresh = Simulator(Architecture.tiny, DType.float16).run(request(settings, size), options)
        again = shared.run(request(settings, size), options)
        assert figures(again) == figures(fresh), (settings, size, options)


def test_the_op_cache_changes_no_figure() -> None:
    """The meter's op cache stands a cached output template in for an op whose inputs have the same metadata: views
    at other places in their storage (the VAE's tile blending cuts one row at a time) and pointwise ops with other
    float scalars (each row's blend weight) share entries. Without the cache every op runs its meta kernel."""
    request = RunRequest(height=256, width=320, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=4, strength=1.0, vae_tiling=True, attention_slicing="auto"))
    cached = Simulator(Architecture.tiny, DType.float16)
    uncached = Simulator(Architecture.tiny, DType.float16)
    uncached._op_cache = None  # every op through its kernel
    options = SimulateOptions(GPUS["t4"], replay=False)
    assert figures(cached.run(request, options)) == figures(uncached.run(request, options))
    assert len(cached._op_cache) > 0


@pytest.fixture(scope="module")
def sd15_512(sd15_with_checker):
    request = RunRequest(height=512, width=512, settings=Settings(safety_checker=True))
    return sd15_with_checker.run(request, SimulateOptions(GPUS["h100"], explain=True))


def test_sd15_weights_equal_the_facts_byte_counts(sd15_512) -> None:
    weights = sd15_512.simulation.weights
    assert {name: w["bytes"] for name, w in weights.items()} == FACTS_FP16_BYTES
    load = sd15_512.stage("load")
    # resident after loading: each tensor in its allocator block, measured on the H200: 2,777,415,680 bytes
    assert load.allocated_end == 2_777_415_680


def test_sd15_on_sm90_runs_cudnn_attention_except_the_vae(sd15_512) -> None:
    kernels = {(c["backend"], c["head_dim"]) for c in sd15_512.simulation.attention_calls}
    assert {("cudnn", 40), ("cudnn", 80), ("cudnn", 160), ("cudnn", 64), ("efficient", 512)} == kernels
    assert sd15_512.stage("unet").unet_calls == 41


def test_sd15_on_a_t4_runs_memory_efficient_attention() -> None:
    request = RunRequest(height=256, width=256, settings=Settings(steps=5))
    record = simulate(request, SimulateOptions(GPUS["t4"]))
    assert {c["backend"] for c in record.simulation.attention_calls} == {"efficient"}
    assert record.simulation.workspaces["cublas"] == 8_519_680  # CublasHandlePool.cpp's default off sm90


def test_explain_adds_up_to_each_peak(sd15_512) -> None:
    explained = sd15_512.simulation.explain
    assert explained["overall"]["total"] == sd15_512.peak_allocated
    for stage in sd15_512.stages:
        data = explained[stage.name]
        assert data["total"] == stage.peak_allocated
        assert sum(group["bytes"] for group in data["groups"]) == stage.peak_allocated
    groups = explained["vae_decode"]["groups"]
    workspace = [g for g in groups if g["kind"] == "cuDNN workspace"]
    assert len(workspace) == 1 and workspace[0]["module"].startswith("vae.decoder.up_blocks.")
    tensors = [g for g in groups if g["kind"] == "tensors"]
    assert tensors[0]["module"].startswith("vae.decoder.up_blocks.")  # full-resolution feature maps


def test_2048_does_not_materialise_attention_scores(sd15_with_checker) -> None:
    """On meta, SDPA would run the math path and hold N x N scores for N = 65,536 latent pixels: 516 GiB
    (docs/facts.md). The H100 runs the same kernels as the H200 (sm90), whose 2048 x 2048 UNet stage peaked at
    the bytes of its profile record; 5 steps instead of 50 change no shape of a UNet call."""
    import json

    from .conftest import MEASURED

    request = RunRequest(height=2048, width=2048, settings=Settings(safety_checker=True))
    record = sd15_with_checker.run(request, SimulateOptions(GPUS["h100"]))
    measured = json.loads((MEASURED / "profiles" / "2048x2048.json").read_text())
    unet = next(s for s in measured["stages"] if s["name"] == "unet")
    assert record.stage("unet").peak_allocated == unet["peak_allocated"]
    assert record.simulation.fit.fits


def test_a_card_too_small_runs_out_of_memory_in_the_stage_that_overflows(sd15_with_checker) -> None:
    request = RunRequest(height=2048, width=2048, settings=Settings(steps=5, safety_checker=True))
    record = sd15_with_checker.run(request, SimulateOptions(GPUS["rtx3060"]))  # 12 GiB
    fit = record.simulation.fit
    # The encoder's 9.3 GB fit in 11.3 GiB; the decoder's upsampler at full resolution asks cuDNN for NHWC copies
    # of its 1 x 256 x 2048 x 2048 fp16 input and output and its 256 x 256 x 3 x 3 filters (+147 bytes)
    assert not fit.fits and fit.failed_stage == "vae_decode"
    assert fit.failed_what == "a cuDNN workspace"
    assert fit.failed_request == 2 * (256 * 2048 * 2048 * 2) + 256 * 256 * 9 * 2 + 147
    # the card's 12,288 MiB less the CUDA context and a desktop session's 512 MiB (a consumer card's default)
    assert fit.capacity == 12_288 * 1024**2 - 721_420_288 - 512 * 1024**2
    assert record.peak_allocated > fit.capacity  # the run goes on to show what it would need
    # what it was decided on: what the allocator held when the request failed, with the segment it needed (the
    # request rounded up to 2 MiB: a request of 10 MiB or more gets a segment of its own)
    segment = -(-fit.failed_request // 2**21) * 2**21
    assert fit.verdict == "does not fit" and fit.decided_on > fit.capacity and fit.decided_on % 2**21 == 0
    assert fit.decided_on - segment <= fit.capacity


def test_weights_alone_too_large_fail_in_the_load_stage() -> None:
    request = RunRequest(height=64, width=64, settings=Settings(steps=2, strength=1.0))
    record = simulate(request, SimulateOptions(custom_gpu("2GiB", "sm86")))
    assert record.simulation.fit.failed_stage == "load"


def test_math_fallback_score_matrix_appears_in_explain() -> None:
    request = RunRequest(height=64, width=64, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=2, strength=1.0))
    record = simulate(request, SimulateOptions(GPUS["h100"], attention=Kernel.math, explain=True))
    assert {c["backend"] for c in record.simulation.attention_calls} == {"math"}
    shapes = [tuple(t["shape"]) for data in record.simulation.explain.values() for g in data["groups"]
              for t in g["tensors"]]
    assert any(len(s) >= 3 and s[-1] == s[-2] and s[-1] >= 16 for s in shapes)  # (.., N, N) scores


def test_a_kernel_that_cannot_run_is_an_error_as_sdpa_kernel_would_raise() -> None:
    request = RunRequest(height=64, width=64, settings=Settings(steps=2, strength=1.0))
    with pytest.raises(InputError, match=r"flash kernel cannot run this pipeline's attention with head dim 512"):
        simulate(request, SimulateOptions(GPUS["h100"], attention=Kernel.flash))
    with pytest.raises(InputError, match=r"on NVIDIA Tesla T4"):
        simulate(request, SimulateOptions(GPUS["t4"], attention=Kernel.flash))


def test_simulator_refuses_a_request_it_was_not_built_for() -> None:
    simulator = Simulator(Architecture.tiny, DType.float32)
    with pytest.raises(ValueError, match=r"built for"):
        simulator.run(RunRequest(height=64, width=64, architecture=Architecture.tiny, dtype=DType.float16),
                      SimulateOptions(CPU))


def test_after_running_out_of_memory_the_run_goes_on_and_frees_what_it_freed() -> None:
    """A run that overflows the card is simulated to the end (what it would need): every stage must end with
    what the same run on a card large enough ends with (the failure once kept the failed call's tensors alive
    through its traceback's frames: 5.9 GB more after the VAE decoder at 2048 x 2048)."""
    request = RunRequest(height=1024, width=1024, settings=Settings(steps=10))
    small, large = custom_gpu("4GB", "sm86"), custom_gpu("1000GB", "sm86")
    overflowed, fitted = (simulate(request, SimulateOptions(card)) for card in (small, large))
    assert not overflowed.simulation.fit.fits and fitted.simulation.fit.fits
    assert [(s.name, s.allocated_end) for s in overflowed.stages] == [(s.name, s.allocated_end) for s in fitted.stages]


def test_the_written_out_meta_kernels_change_no_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNorm and LayerNorm (metakernels.py) through the written-out kernels, and through PyTorch's own."""
    import sdvram.meters

    request = RunRequest(height=256, width=320, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=4, strength=1.0, vae_tiling=True))
    options = SimulateOptions(GPUS["t4"], replay=False)
    ours = Simulator(Architecture.tiny, DType.float16).run(request, options)
    monkeypatch.setattr(sdvram.meters, "META_KERNELS", {})
    assert figures(Simulator(Architecture.tiny, DType.float16).run(request, options)) == figures(ours)


@pytest.mark.xfail(strict=True, reason="known: with sequential offload SDXL's upcast VAE is counted on the device, and "
                   "differently in a run whose decoder call is replayed; see docs/simulate.md")
def test_an_sdxl_run_with_sequential_offload_is_the_same_again() -> None:
    """A simulator's second run of the same request must give what its first gave. SDXL with sequential offload
    does not yet: its first run at 8 x 8 peaks at 543,921,664 bytes after the VAE decode (the upcast VAE's float32
    weights and their float16 copies, counted on the device), the second at 364,170,752 (its decoder call replayed).
    Which a real run gives is not measured (the H200 runs of SDXL had no offload); a run must at least not depend on
    what its simulator ran before it."""
    simulator = Simulator(pipeline="sdxl-txt2img")
    request = RunRequest(width=8, height=8, pipeline="sdxl-txt2img",
                         settings=Settings(offload=Offload.sequential))
    first, second = (simulator.run(request, SimulateOptions(GPUS["rtx3060"])) for _ in range(2))
    assert second.peak_allocated == first.peak_allocated
