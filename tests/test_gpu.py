"""On a CUDA GPU: profile the real SD v1.5 architecture (random weights, fp16) at 512x512. Skipped without
CUDA; run on a GPU machine with `python -m pytest tests/test_gpu.py`."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FACTS_FP16_BYTES_WITHOUT_SAFETY = 1_719_041_928 + 167_307_726 + 246_121_576  # docs/facts.md


@pytest.fixture(scope="module")
def record():
    from sdvram.choices import Weights
    from sdvram.compare import profile_and_simulate
    from sdvram.requests import ProfileOptions, RunRequest

    return profile_and_simulate(RunRequest(height=512, width=512), ProfileOptions(weights=Weights.random)).record


def test_weights_resident_after_load_are_the_allocator_model_s(record) -> None:
    load = record.stage("load")
    # Each weight, in the order the models are built, as PyTorch's caching allocator holds it: the model's
    # figure from the exact fp16 sizes, not the raw parameter bytes (docs/facts.md) plus rounding.
    assert load.allocated_end > FACTS_FP16_BYTES_WITHOUT_SAFETY
    assert load.allocated_end == record.compared.stage("load").allocated_end


def test_every_stage_recorded_with_41_unet_calls(record) -> None:
    assert [s.name for s in record.stages] == ["load", "text_encoder", "vae_encode", "unet", "vae_decode"]  # no checker
    assert record.stage("unet").unet_calls == 41
    assert all(s.activation > 0 for s in record.stages)


def test_device_level_figures_exceed_the_allocator_peak(record) -> None:
    assert record.peak_reserved >= record.peak_allocated
    if record.device_peak is not None:  # NVML present: the CUDA context comes on top
        assert record.device_peak > record.peak_allocated
    assert record.environment["gpu_name"]


def test_profile_carries_the_simulation_of_the_same_settings(record) -> None:
    sim = record.compared
    assert sim is not None and sim.kind == "simulate"
    assert [s.name for s in sim.stages] == [s.name for s in record.stages]
    for real, predicted in zip(record.stages, sim.stages, strict=True):
        assert abs(predicted.peak_allocated - real.peak_allocated) <= 0.02 * real.peak_allocated, real.name
