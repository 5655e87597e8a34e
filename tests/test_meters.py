"""The live-tensor meter against storages whose sizes are known by construction."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sdvram.meters import CUDA_ALLOCATOR_ROUNDING, LiveTensorMeter  # noqa: E402


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_counts_storages_once_and_frees_them(device: str) -> None:
    with LiveTensorMeter(device) as meter:
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
    with LiveTensorMeter("cpu") as meter:
        x = torch.ones(256, 256)  # 262,144 bytes
        meter.take_peak()
        y = (x * 3 + 1).sum()  # x*3 and +1 are 262,144-byte temporaries; the first dies after the add
        peak = meter.take_peak().allocated
        assert peak == 3 * 262_144
        assert meter.allocated() == 262_144 + y.untyped_storage().nbytes()


def test_granularity_rounds_like_the_cuda_allocator() -> None:
    with LiveTensorMeter("meta", granularity=CUDA_ALLOCATOR_ROUNDING) as meter:
        keep = [torch.empty(1, dtype=torch.float16, device="meta"), torch.empty(300, device="meta")]
        assert meter.allocated() == 512 + 1536  # 2 bytes -> one 512-byte block; 1,200 bytes -> three
        del keep
        assert meter.allocated() == 0


def test_rounding_arithmetic() -> None:
    meter = LiveTensorMeter("meta", granularity=512)
    assert [meter.round(n) for n in (0, 1, 511, 512, 513, 1200)] == [0, 512, 512, 512, 1024, 1536]
