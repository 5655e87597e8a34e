"""`sdvram simulate`: the real pipeline on meta. The proof that it follows a real run is the cross-check
against `profile --device cpu` on the tiny configuration; the SD v1.5 runs check weights, kernels and
--explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.cli import app  # noqa: E402
from sdvram.gpus import CPU, GPUS  # noqa: E402
from sdvram.pipeline import RunSettings  # noqa: E402
from sdvram.profiler import ProfileRequest, profile  # noqa: E402
from sdvram.simulate import SimulateOptions, Simulator, simulate  # noqa: E402

runner = CliRunner()
# shared/FACTS.md, "Parameter counts": fp16 bytes of each component, buffers included
FACTS_FP16_BYTES = {"unet": 1_719_041_928, "vae": 167_307_726, "text_encoder": 246_121_576,
                    "safety_checker": 607_965_232}
# The simulation keeps a few host-side things off the device that a CPU run counts (the scheduler's 51
# timesteps, 408 bytes; the tokenizer's ids and the text encoder's mask, under 2 KB): measured here, the
# residue is at most 1,900 bytes. Four 512-byte allocator blocks bound it; mis-modelling any real tensor of
# these runs (the smallest feature map is 6 KB) would exceed it.
CROSS_CHECK_TOLERANCE = 4 * 512


@pytest.mark.parametrize(
    ("height", "width", "settings"),
    [
        (128, 192, RunSettings()),
        (64, 96, RunSettings(batch=2, guidance=1.0, steps=10, strength=0.5, safety_checker=False)),
    ],
)
def test_simulation_follows_a_real_cpu_run(height: int, width: int, settings: RunSettings) -> None:
    request = ProfileRequest(height=height, width=width, device="cpu", weights="random", architecture="tiny",
                             prompt="a photo of a cat", settings=settings)
    measured = profile(request)
    simulated = simulate(request, SimulateOptions(CPU))
    assert [s.name for s in simulated.stages] == [s.name for s in measured.stages]
    for real, sim in zip(measured.stages, simulated.stages, strict=True):
        assert abs(sim.peak_allocated - real.peak_allocated) <= CROSS_CHECK_TOLERANCE, real.name
        assert abs(sim.allocated_start - real.allocated_start) <= CROSS_CHECK_TOLERANCE, real.name
        assert sim.unet_calls == real.unet_calls
        assert sim.peak_call == real.peak_call
    assert abs(simulated.peak_allocated - measured.peak_allocated) <= CROSS_CHECK_TOLERANCE
    assert simulated.peak_stage == measured.peak_stage


def test_replaying_identical_unet_calls_changes_nothing() -> None:
    request = ProfileRequest(height=64, width=64, weights="random", architecture="tiny", dtype="float16",
                             settings=RunSettings(steps=20, strength=0.5))
    simulator = Simulator("tiny", "float16", True)
    replayed = simulator.run(request, SimulateOptions(GPUS["t4"]))
    every_call_run = simulator.run(request, SimulateOptions(GPUS["t4"], explain=True))  # explain runs them all
    assert [(s.name, s.allocated_start, s.peak_allocated, s.allocated_end, s.peak_call)
            for s in replayed.stages] == [(s.name, s.allocated_start, s.peak_allocated, s.allocated_end,
                                           s.peak_call) for s in every_call_run.stages]
    assert replayed.extra["attention_calls"] == every_call_run.extra["attention_calls"]


@pytest.fixture(scope="module")
def sd15() -> Simulator:
    return Simulator("sd15", "float16", True)


@pytest.fixture(scope="module")
def sd15_512(sd15: Simulator):
    request = ProfileRequest(height=512, width=512, weights="random", dtype="float16")
    return sd15.run(request, SimulateOptions(GPUS["h100"], explain=True))


def test_sd15_weights_equal_the_facts_byte_counts(sd15_512) -> None:
    weights = sd15_512.extra["weights"]
    assert {name: w["bytes"] for name, w in weights.items()} == FACTS_FP16_BYTES
    load = sd15_512.stage("load")
    assert load.allocated_end >= sum(FACTS_FP16_BYTES.values())
    # each of the ~1,500 tensors rounds up to the allocator's 512-byte blocks, never by a whole block
    assert load.allocated_end - sum(FACTS_FP16_BYTES.values()) < 512 * sum(w["tensors"] for w in weights.values())


def test_sd15_on_h100_runs_flash_in_the_unet_and_efficient_in_the_vae(sd15_512) -> None:
    kernels = {(c["backend"], c["head_dim"]) for c in sd15_512.extra["attention_calls"]}
    assert {("flash", 40), ("flash", 80), ("flash", 160), ("efficient", 512)} <= kernels
    unet = sd15_512.stage("unet")
    assert unet.unet_calls == 41


def test_explain_adds_up_to_each_peak(sd15_512) -> None:
    explained = sd15_512.extra["explain"]
    assert explained["overall"]["total"] == sd15_512.peak_allocated
    for stage in sd15_512.stages:
        data = explained[stage.name]
        assert data["total"] == stage.peak_allocated
        assert sum(group["bytes"] for group in data["groups"]) == stage.peak_allocated
    activations = [g for g in explained["vae_decode"]["groups"] if not g["module"].endswith(" weights")]
    assert activations[0]["module"].startswith("vae.decoder.up_blocks.")  # full-resolution feature maps


def test_2048_does_not_materialise_attention_scores_on_an_h100(sd15: Simulator) -> None:
    request = ProfileRequest(height=2048, width=2048, weights="random", dtype="float16")
    record = sd15.run(request, SimulateOptions(GPUS["h100"]))
    # The math path would hold N x N scores for N = 65,536 latent pixels: 516 GiB (FACTS.md).
    assert record.peak_allocated < 16 * 1024**3
    assert record.extra["fit"]["verdict"] == "fits"


def test_math_fallback_score_matrix_appears_in_explain() -> None:
    request = ProfileRequest(height=64, width=64, weights="random", architecture="tiny", dtype="float16",
                             settings=RunSettings(steps=2, strength=1.0, safety_checker=False))
    record = simulate(request, SimulateOptions(GPUS["h100"], attention="math", explain=True))
    assert {c["backend"] for c in record.extra["attention_calls"]} == {"math"}
    # The tiny UNet's self-attention over 8 x 8 latent pixels at its second level (N = 4 x 4 = 16) and the VAE's
    # over 8 x 8: a math path holds (batch x heads, N, N) scores; look for a square last pair of dims.
    shapes = [tuple(t["shape"]) for data in record.extra["explain"].values() for g in data["groups"]
              for t in g["tensors"]]
    assert any(len(s) >= 3 and s[-1] == s[-2] and s[-1] >= 16 for s in shapes)


def test_cli_simulate_json_matches_profile_record_format(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    result = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", "--architecture", "tiny", "--gpu", "t4",
                                 "--steps", "2", "--strength", "1", "--json", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "simulated" in result.stdout and "Not modelled:" in result.stdout
    assert "NVIDIA Tesla T4 16 GB: predicted peak" in result.stdout
    record = json.loads(path.read_text())
    assert record["kind"] == "simulate"
    profile_keys = set(profile(ProfileRequest(height=64, width=64, device="cpu", weights="random",
                                              architecture="tiny",
                                              settings=RunSettings(steps=2, strength=1.0))).to_json())
    assert set(record) == profile_keys
    assert record["environment"]["simulated_gpu_key"] == "t4"


def test_cli_bad_gpu_lists_known_ones_and_exits_2() -> None:
    result = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", "--gpu", "voodoo5"])
    assert result.exit_code == 2
    assert "Unknown GPU 'voodoo5'; known: t4, rtx3060, rtx4090, a10g, l4, a100-40gb, a100-80gb, h100, h200, cpu." \
        in result.stderr
