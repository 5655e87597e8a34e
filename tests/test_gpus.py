"""The GPU table behind `simulate --gpu`."""

from __future__ import annotations

import pytest

from sdvram.errors import InputError
from sdvram.gpus import CPU, GPUS, custom_gpu, find_gpu

REQUIRED = {"t4": (7, 5), "rtx3060": (8, 6), "rtx4090": (8, 9), "a10g": (8, 6), "l4": (8, 9),
            "a100-40gb": (8, 0), "a100-80gb": (8, 0), "h100": (9, 0), "h200": (9, 0)}


def test_the_issue_s_gpus_are_all_there_with_their_compute_capability() -> None:
    for key, capability in REQUIRED.items():
        assert GPUS[key].compute_capability == capability
        assert GPUS[key].memory and GPUS[key].memory > 10 * 1024**3


@pytest.mark.parametrize(("name", "key"), [("H100", "h100"), ("nvidia h200", "h200"), ("RTX 4090", "rtx4090"),
                                           ("a100", "a100-80gb"), ("A100-40GB", "a100-40gb"), ("cpu", "cpu"),
                                           ("GeForce RTX 3060 Ti 8 GB", "rtx3060ti"), ("v100", "v100-16gb")])
def test_names_are_forgiving(name: str, key: str) -> None:
    assert find_gpu(name).key == key


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"Unknown gpu 'voodoo5'; known: rtx2060, .*h200, cpu; or give vram"):
        find_gpu("voodoo5")
    assert not CPU.is_cuda


CARDS_PEOPLE_OWN = {  # the issue's list: memory class (GB) and compute capability
    "rtx2060": (6, (7, 5)), "rtx2080ti": (11, (7, 5)), "rtx3060ti": (8, (8, 6)), "rtx3070": (8, (8, 6)),
    "rtx3080": (10, (8, 6)), "rtx3060": (12, (8, 6)), "rtx4060": (8, (8, 9)), "rtx4060ti16": (16, (8, 9)),
    "rtx4070": (12, (8, 9)), "rtx4080": (16, (8, 9)), "rtx4090": (24, (8, 9)), "a4000": (16, (8, 6)),
    "a5000": (24, (8, 6)), "a6000": (48, (8, 6)), "l40s": (48, (8, 9)), "v100-16gb": (16, (7, 0)),
    "v100-32gb": (32, (7, 0)),
}


@pytest.mark.parametrize(("key", "spec"), CARDS_PEOPLE_OWN.items())
def test_cards_people_own_are_tabled(key: str, spec: tuple[int, tuple[int, int]]) -> None:
    gb, capability = spec
    gpu = GPUS[key]
    assert gpu.compute_capability == capability and gpu.memory_source
    assert 0.9 * gb * 1024**3 <= gpu.memory <= 1.02 * gb * 1024**3  # the driver reports a little less


def test_capacity_is_the_memory_less_the_cuda_context() -> None:
    h200 = GPUS["h200"]
    assert h200.memory == 150_109_880_320  # torch's total_memory on the lent H200
    assert h200.capacity == 150_109_880_320 - 721_420_288


@pytest.mark.parametrize(("vram", "arch", "memory", "sm"), [
    ("8GB", None, 8 * 10**9, 86), ("12GiB", "sm89", 12 * 1024**3, 89), ("8192MiB", "sm_75", 8 * 1024**3, 75),
    ("10", "SM90", 10 * 1024**3, 90), ("32GB", "sm100", 32 * 10**9, 100), ("32GB", "sm_121", 32 * 10**9, 121)])
def test_any_other_card_by_its_memory(vram: str, arch: str | None, memory: int, sm: int) -> None:
    gpu = custom_gpu(vram, arch)
    assert (gpu.memory, gpu.sm) == (memory, sm)
    assert gpu.compute_capability == (sm // 10, sm % 10)  # sm100 is 10.0, not 1.0


@pytest.mark.parametrize(("vram", "arch", "message"), [
    ("0", None, r"vram must be at least 1 MiB; got '0'"), ("-1", None, r"vram must be a size such as 8GB"),
    ("8XB", None, r"vram must be a size such as 8GB, 12GiB or 8192MiB; got '8XB'"),
    ("8GB", "sm1", r"arch must be a CUDA compute capability such as sm75"), ("8GB", "sm99", r"got 'sm99'"),
])
def test_bad_card_values_are_one_sentence(vram: str, arch: str | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        custom_gpu(vram, arch)
