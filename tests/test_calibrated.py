"""The calibrated estimate (``calibrated.py``): its features worked by hand from diffusers' code, what it declines,
and its figures against the simulator it was fitted to, on settings drawn here (not the tool's)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from sdvram.calibrated import (
    DOES_NOT_FIT,
    FITS,
    STAGE_NAMES,
    SWITCH_SETS,
    Calibrated,
    calibrate,
    features,
    relative_error,
    tiled,
    unet_levels,
    verdict,
)
from sdvram.choices import DType
from sdvram.gpus import GPUS
from sdvram.requests import RunRequest, Settings
from sdvram.verdicts import margin_for

# Random settings checked against the simulator, beside the fixed table of every combination below (which
# covers what the draws were there to reach; 50 draws reached 34 of the 120 combinations)
SETTINGS = 6
TOLERANCE = 0.03  # the promise: every stage's peak allocated within 3% of simulate


def test_unet_levels_round_up_at_each_halving() -> None:
    # 1000 x 520 px -> latent 125 x 65; each stride-2 convolution (padding 1) gives ceil(n / 2): 63 x 33,
    # then 32 x 17, then 16 x 9
    assert unet_levels(125, 65) == [125 * 65, 63 * 33, 32 * 17, 16 * 9]


def test_tile_features_follow_diffusers_tiling() -> None:
    # 1024 x 600 px -> latent 128 x 75. Tiles start every 48 latent px and are 64 wide where the image allows:
    # rows at 0, 48, 96 -> 64, 64 and 32 tall; columns at 0, 48 -> 64 and 27 wide. Summed areas 160 x 91, the
    # first (largest) tile 64 x 64, 3 x 2 tiles.
    row = features("vae_tiling", "vae_decode", 1024, 600)
    assert row == [1.0, *map(float, unet_levels(128, 75)), 160 * 91, 64 * 64, 6]
    # the VAE tiles when a side is over one tile of 512 px (autoencoder_kl.py's _encode and _decode)
    assert not tiled("vae_tiling", 512, 512) and tiled("vae_tiling", 520, 512) and not tiled("none", 1024, 1024)
    assert features("vae_tiling", "unet", 1024, 600) == [1.0, *map(float, unet_levels(128, 75))]


def test_score_terms_only_with_attention_slicing() -> None:
    levels = unet_levels(64, 64)
    assert features("attention_slicing", "unet", 512, 512)[-2:] == [float(levels[0]) ** 2, float(levels[1]) ** 2]
    assert len(features("none", "unet", 512, 512)) == 1 + len(levels)


def test_stages_before_the_image_have_no_size_term() -> None:
    assert features("none", "load", 4096, 64) == features("none", "text_encoder", 64, 64) == [1.0]
    small, large = (calibrate(side, side, dtype="float16", sm=86) for side in (64, 4096))
    assert isinstance(small, Calibrated) and isinstance(large, Calibrated)
    assert small.stages["load"] == large.stages["load"]


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"safety_checker": True}, "safety checker"),
    ({"batch": 5}, "batches 1 to 4"),
    ({"switches": ("vae_tiling", "model_offload")}, "one switch at a time"),
    ({"switches": ("attention_slicing",), "attention_slicing": 2}, "only attention slicing at auto"),
    ({"dtype": "bfloat16"}, "not calibrated for bfloat16"),
    ({"sm": 100}, "not calibrated for sm100"),
])
def test_declines_what_was_not_fitted(kwargs: dict[str, object], says: str) -> None:
    answer = calibrate(512, 512, **kwargs)  # type: ignore[arg-type]
    assert isinstance(answer, str) and says in answer


def test_sides_outside_the_fitted_sizes_are_flagged_as_extrapolated() -> None:
    inside = calibrate(1024, 768, batch=2, dtype="float32", sm=75, switches=("vae_slicing",))
    assert isinstance(inside, Calibrated) and not inside.extrapolated
    for height, width in ((8192, 64), (64, 4104), (56, 512)):
        answer = calibrate(height, width, sm=90)
        assert isinstance(answer, Calibrated) and answer.extrapolated, (height, width)


def test_within_three_percent_of_the_simulator_on_random_settings() -> None:
    """6 settings drawn uniformly (the tool fitted on log-uniform sides, with its own seed): any size from 64 to
    4096 px, batch 1 to 4, fp16 or fp32, no switch or one, any card of the table. Each is simulated on its card's
    architecture without a memory limit (what the run needs, which is what the calibration predicts), and again
    on the card itself where that need exceeds the card (near its capacity the allocator releases its cache, so
    what fits is the card's run to say). Every stage's peak allocated and the run's are within 3%; the peak
    reserved within the error the tool recorded for those settings (reserved follows the allocator's caching,
    which no closed form tracks exactly); and the verdict on the card never contradicts the simulation's."""
    from sdvram.simulate import SimulateOptions, simulate

    rng = random.Random(11)
    misses, verdicts = [], []
    for _ in range(SETTINGS):
        height, width = rng.randrange(64, 4097, 8), rng.randrange(64, 4097, 8)
        batch, dtype = rng.randint(1, 4), rng.choice(["float16", "float32"])
        switch_set, gpu = rng.choice(list(SWITCH_SETS)), rng.choice(list(GPUS.values()))
        settings = Settings(batch=batch, **SWITCH_SETS[switch_set])
        answer = calibrate(height, width, batch=batch, dtype=dtype, sm=gpu.sm, switches=settings.switches,
                           attention_slicing=settings.attention_slicing)
        assert isinstance(answer, Calibrated), answer
        request = RunRequest(height=height, width=width, dtype=DType(dtype), settings=settings)
        need = simulate(request, SimulateOptions(replace(gpu, memory=None)))
        assert gpu.capacity is not None and need.peak_reserved is not None
        simulated = {s.name: s.peak_allocated for s in need.stages}
        allocated = max(TOLERANCE, answer.allocated_error)  # the printed error, where it is over 3%
        pairs = [(name, answer.stages[name], simulated[name], allocated) for name in STAGE_NAMES]
        pairs += [("peak allocated", answer.peak_allocated, need.peak_allocated, allocated),
                  ("peak reserved", answer.peak_reserved, need.peak_reserved, max(TOLERANCE, answer.reserved_error))]
        fits = need.peak_reserved <= gpu.capacity
        if not fits:  # the card's own run: the allocator may make room by releasing its cache
            on_card = simulate(request, SimulateOptions(gpu)).simulation
            assert on_card is not None and on_card.fit is not None
            fits = on_card.fit.fits
        said = verdict(answer, gpu.capacity, margin_for(gpu).of(answer.peak_reserved))
        verdicts.append(said)
        where = f"{width}x{height} b{batch} {dtype} {switch_set} {gpu.key}"
        misses += [f"{where} {name}: {relative_error(mine, theirs):+.2%}"
                   for name, mine, theirs, allowed in pairs if abs(relative_error(mine, theirs)) > allowed]
        if said == (DOES_NOT_FIT if fits else FITS):
            misses.append(f"{where}: the simulation {'fits' if fits else 'does not fit'}, the verdict {said}")
    assert not misses, "\n".join(misses)
    assert FITS in verdicts and DOES_NOT_FIT in verdicts  # the draw reaches both answers


# -- every calibrated combination, at a size the calibration was not fitted on -------------------------------


def _combinations() -> list[tuple[str, tuple[int, ...], str, int]]:
    from sdvram.calibrated import BATCHES, _document

    return [(e["dtype"], tuple(e["sms"]), e["switches"], batch) for e in _document()["entries"] for batch in BATCHES]


COMBINATIONS = _combinations()


def _unseen_sizes() -> dict[tuple[str, tuple[int, ...], str, int], tuple[int, int]]:
    """One size per combination, drawn here (sides uniform in 64..3072 px, multiples of 8) and redrawn while it is
    one of the points tools/calibrate.py fitted that combination on."""
    from .conftest import load_tool

    groups: dict[str, list[list[int]]] = {}
    for dtype, sms, _, _ in COMBINATIONS:
        if list(sms) not in groups.setdefault(dtype, []):
            groups[dtype].append(list(sms))
    fitted = {(arch, job[1:]) for role, arch, job in load_tool("calibrate").design(groups) if role == "fit"}
    rng = random.Random(20261129)
    chosen = {}
    for dtype, sms, switch_set, batch in COMBINATIONS:
        while True:
            size = (8 * rng.randrange(8, 385), 8 * rng.randrange(8, 385))
            if (sms, (dtype, switch_set, batch, *size)) not in fitted:
                break
        chosen[(dtype, sms, switch_set, batch)] = size
    return chosen


def _simulate_table(chosen: list[tuple[tuple[str, tuple[int, ...], str, int], tuple[int, int]]],
                    tick: object) -> dict:
    """Each combination simulated at its size on one card of its group (each batch another, where the group has
    several) without a memory limit: every stage's peak allocated, the run's, and its peak reserved."""
    from sdvram.gpus import GpuSpec
    from sdvram.simulate import SimulateOptions, simulate

    results = {}
    for (dtype, sms, switch_set, batch), (height, width) in chosen:
        sm = sms[(batch - 1) % len(sms)]
        unlimited = GpuSpec(f"sm{sm}", f"an sm{sm} card without a memory limit", divmod(sm, 10), None)
        record = simulate(RunRequest(height=height, width=width, dtype=DType(dtype),
                                     settings=Settings(batch=batch, **SWITCH_SETS[switch_set])),
                          SimulateOptions(unlimited))
        results[(dtype, sms, switch_set, batch)] = (sm, {s.name: s.peak_allocated for s in record.stages},
                                                    record.peak_allocated, record.peak_reserved)
    return results


@pytest.fixture(scope="module")
def table() -> dict:
    """The 120 simulations of the table, in two forked workers (sdvram.parallel, as fit runs its searches)."""
    pytest.importorskip("diffusers")
    from functools import partial

    from sdvram.parallel import run_side_by_side
    from sdvram.simulate import Simulator  # noqa: F401 -- torch and diffusers imported before the fork

    chosen = list(_unseen_sizes().items())
    halves = [chosen[0::2], chosen[1::2]]
    results: dict = {}
    for part in run_side_by_side([partial(_simulate_table, half) for half in halves], lambda: None, workers=2):
        results.update(part)
    return {"sizes": dict(chosen), "simulated": results}


@pytest.mark.parametrize("combination", COMBINATIONS,
                         ids=[f"{d}-sm{'/'.join(map(str, a))}-{s}-b{b}" for d, a, s, b in COMBINATIONS])
def test_every_calibrated_combination_holds_its_printed_errors(combination: tuple[str, tuple[int, ...], str, int],
                                                               table: dict) -> None:
    """Each combination the calibration ships (dtype, group of compute capabilities, switch, batch), the default of
    `sdvram estimate` (float16, sm90, no switch, batch 1) among them, at a size it was not fitted on, simulated on
    one card of its group without a memory limit: every stage's peak allocated and the run's within the allocated
    error the output prints for that setting, and the peak reserved within the reserved error it prints."""
    dtype, sms, switch_set, batch = combination
    height, width = table["sizes"][combination]
    sm, stages, peak_allocated, peak_reserved = table["simulated"][combination]
    settings = Settings(batch=batch, **SWITCH_SETS[switch_set])
    answer = calibrate(height, width, batch=batch, dtype=dtype, sm=sm, switches=settings.switches,
                       attention_slicing=settings.attention_slicing)
    assert isinstance(answer, Calibrated), answer
    pairs = [(name, answer.stages[name], stages[name], answer.allocated_error) for name in STAGE_NAMES]
    pairs += [("peak allocated", answer.peak_allocated, peak_allocated, answer.allocated_error),
              ("peak reserved", answer.peak_reserved, peak_reserved, answer.reserved_error)]
    wrong = [f"{width}x{height} sm{sm} {name}: {relative_error(mine, theirs):+.3%}, printed within {allowed:.3%}"
             for name, mine, theirs, allowed in pairs if abs(relative_error(mine, theirs)) > allowed]
    assert not wrong, "\n".join(wrong)
