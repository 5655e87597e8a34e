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

FACTS_FP16_BYTES_WITHOUT_SAFETY = 1_719_041_928 + 167_307_726 + 246_121_576  # shared/FACTS.md


@pytest.fixture(scope="module")
def record():
    from sdvram.pipeline import RunSettings
    from sdvram.profiler import ProfileRequest, profile

    return profile(ProfileRequest(height=512, width=512, device="cuda", weights="random",
                                  settings=RunSettings(safety_checker=False)))


def test_weights_resident_after_load_equal_the_fp16_parameter_bytes(record) -> None:
    load = record.stage("load")
    # The allocator rounds each tensor up to 512 bytes: allow that much per parameter tensor (~1,100 of them).
    assert FACTS_FP16_BYTES_WITHOUT_SAFETY <= load.allocated_end <= FACTS_FP16_BYTES_WITHOUT_SAFETY + 1_200 * 512


def test_every_stage_recorded_with_41_unet_calls(record) -> None:
    assert [s.name for s in record.stages] == ["load", "text_encoder", "vae_encode", "unet", "vae_decode"]
    assert record.stage("unet").unet_calls == 41
    assert all(s.activation > 0 for s in record.stages)


def test_device_level_figures_exceed_the_allocator_peak(record) -> None:
    assert record.peak_reserved >= record.peak_allocated
    if record.device_peak is not None:  # NVML present: the CUDA context comes on top
        assert record.device_peak > record.peak_allocated
    assert record.environment["gpu_name"]


def test_profile_carries_the_simulation_of_the_same_settings(record) -> None:
    sim = record.simulation
    assert sim is not None and sim.kind == "simulate"
    assert [s.name for s in sim.stages] == [s.name for s in record.stages]
    # The weights are the same tensors, each rounded to 512-byte blocks by the caching allocator and by the
    # simulation alike: the resident bytes after loading must agree to the byte.
    assert sim.stage("load").allocated_end == record.stage("load").allocated_end
