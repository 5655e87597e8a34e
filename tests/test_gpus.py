"""The GPU table behind `simulate --gpu`."""

from __future__ import annotations

import pytest

from sdvram.errors import InputError
from sdvram.gpus import CPU, GPUS, find_gpu

REQUIRED = {"t4": (7, 5), "rtx3060": (8, 6), "rtx4090": (8, 9), "a10g": (8, 6), "l4": (8, 9),
            "a100-40gb": (8, 0), "a100-80gb": (8, 0), "h100": (9, 0), "h200": (9, 0)}


def test_the_issue_s_gpus_are_all_there_with_their_compute_capability() -> None:
    for key, capability in REQUIRED.items():
        assert GPUS[key].compute_capability == capability
        assert GPUS[key].memory and GPUS[key].memory > 10 * 1024**3


@pytest.mark.parametrize(("name", "key"), [("H100", "h100"), ("nvidia h200", "h200"), ("RTX 4090", "rtx4090"),
                                           ("a100", "a100-80gb"), ("A100-40GB", "a100-40gb"), ("cpu", "cpu")])
def test_names_are_forgiving(name: str, key: str) -> None:
    assert find_gpu(name).key == key


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"Unknown GPU 'v100'; known: t4, rtx3060, .*h200, cpu\."):
        find_gpu("v100")
    assert not CPU.is_cuda
