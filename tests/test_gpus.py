"""The GPU table behind `simulate --gpu`."""

from __future__ import annotations

import pytest

from sdvram.errors import InputError
from sdvram.gpus import CPU, GPUS, custom_gpu, find_gpu, parse_reserve, parse_vram, with_reserve

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


def test_unknown_gpu_lists_the_known_ones_or_suggests_the_nearest() -> None:
    with pytest.raises(InputError, match=r"Unknown gpu 'voodoo5'; known: gtx1050ti, .*h200, cpu; or give vram"):
        find_gpu("voodoo5")
    with pytest.raises(InputError, match=r"Unknown gpu 'RTX 4070 Super Ti'; did you mean .*rtx4070tisuper"):
        find_gpu("RTX 4070 Super Ti")
    assert not CPU.is_cuda


CARDS_PEOPLE_OWN = {  # the issue's list: memory class (GB) and compute capability
    "rtx2060": (6, (7, 5)), "rtx2080ti": (11, (7, 5)), "rtx3060ti": (8, (8, 6)), "rtx3070": (8, (8, 6)),
    "rtx3080": (10, (8, 6)), "rtx3060": (12, (8, 6)), "rtx4060": (8, (8, 9)), "rtx4060ti16": (16, (8, 9)),
    "rtx4070": (12, (8, 9)), "rtx4080": (16, (8, 9)), "rtx4090": (24, (8, 9)), "a4000": (16, (8, 6)),
    "a5000": (24, (8, 6)), "a6000": (48, (8, 6)), "l40s": (48, (8, 9)), "v100-16gb": (16, (7, 0)),
    "v100-32gb": (32, (7, 0)),
    # laptop GPUs, the GTX 10 and 16 series, RTX 50 (issue 16)
    "rtx3050laptop4": (4, (8, 6)), "rtx3050laptop6": (6, (8, 6)), "rtx3060laptop": (6, (8, 6)),
    "rtx4050laptop": (6, (8, 9)), "rtx4060laptop": (8, (8, 9)), "rtx4070laptop": (8, (8, 9)),
    "rtx4080laptop": (12, (8, 9)), "rtx4090laptop": (16, (8, 9)), "gtx1060": (6, (6, 1)), "gtx1080ti": (11, (6, 1)),
    "gtx1650": (4, (7, 5)), "gtx1660super": (6, (7, 5)), "rtx5060": (8, (12, 0)), "rtx5070": (12, (12, 0)),
    "rtx5090": (32, (12, 0)),
}


@pytest.mark.parametrize(("key", "spec"), CARDS_PEOPLE_OWN.items())
def test_cards_people_own_are_tabled(key: str, spec: tuple[int, tuple[int, int]]) -> None:
    gb, capability = spec
    gpu = GPUS[key]
    assert gpu.compute_capability == capability and gpu.memory_source
    # the driver reports at most a little less; a data-centre card's ECC takes up to about 6% (the V100's 16,160
    # MiB of 16 GiB, the L40S's 46,068 MiB of 48)
    low = 0.93 if gpu.kind == "data centre" else 0.99
    assert low * gb * 1024**3 <= gpu.memory <= gb * 1024**3
    assert ("laptop" in key) == (gpu.kind == "laptop")


def test_capacity_is_the_memory_less_the_cuda_context_and_what_others_hold() -> None:
    h200 = GPUS["h200"]
    assert h200.memory == 150_109_880_320  # torch's total_memory on the lent H200
    assert h200.capacity == 150_109_880_320 - 721_420_288  # a data-centre card: nothing else on it
    rtx3060 = GPUS["rtx3060"]
    assert rtx3060.capacity == 12_288 * 1024**2 - 721_420_288 - 512 * 1024**2  # a desktop session's 512 MiB
    assert with_reserve(rtx3060, 0).capacity == 12_288 * 1024**2 - 721_420_288
    assert parse_reserve("1.5GB") == 1.5 * 1024**3 and parse_reserve("0") == 0


@pytest.mark.parametrize(("vram", "arch", "memory", "sm"), [
    ("8GB", None, 8 * 1024**3, 86), ("8gb", None, 8 * 1024**3, 86), ("8 GB", None, 8 * 1024**3, 86),
    ("8G", None, 8 * 1024**3, 86), ("8", None, 8 * 1024**3, 86), ("8GiB", None, 8 * 1024**3, 86),
    ("8000MB", None, 8 * 10**9, 86), ("8192MiB", "sm_75", 8 * 1024**3, 75), ("8589934592B", "8.9", 8 * 1024**3, 89),
    ("12GiB", "sm89", 12 * 1024**3, 89), ("10", "SM90", 10 * 1024**3, 90), ("32GB", "sm100", 32 * 1024**3, 100),
    ("32GB", "sm_121", 32 * 1024**3, 121), ("16GB", "12.0", 16 * 1024**3, 120)])
def test_any_other_card_by_its_memory(vram: str, arch: str | None, memory: int, sm: int) -> None:
    """Cards are sold in binary sizes: GB, G and a bare number are GiB; MB is 10^6 bytes."""
    gpu = custom_gpu(vram, arch)
    assert (gpu.memory, gpu.sm) == (memory, sm)
    assert gpu.compute_capability == (sm // 10, sm % 10)  # sm100 is 10.0, not 1.0


def test_how_a_size_was_read_is_said() -> None:
    assert parse_vram("8GB")[1].startswith("--vram 8GB read as 8 GiB = 8,589,934,592 B")
    assert parse_vram("8192MiB")[1] == "--vram 8192MiB = 8,589,934,592 B"
    assert custom_gpu("8GB").memory == GPUS["rtx3070"].memory  # an 8 GB card is 8 GiB


@pytest.mark.parametrize(("vram", "arch", "message"), [
    ("0", None, r"vram must be from 1 MiB to 1 TiB; got '0'"), ("-1", None, r"vram must be a size such as 8GB"),
    ("8XB", None, r"vram must be a size such as 8GB \(read as 8 GiB\), 12GiB, 8192MiB or 8000MB; got '8XB'"),
    ("9" * 400 + "GB", None, r"vram must be a size such as 8GB"), ("2000GB", None, r"from 1 MiB to 1 TiB"),
    ("8GB", "sm1", r"arch must be a CUDA compute capability such as sm86, sm_89 or 8.9"),
    ("8GB", "sm99", r"got 'sm99'"),
])
def test_bad_card_values_are_one_sentence(vram: str, arch: str | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        custom_gpu(vram, arch)
