"""The live-tensor meter against storages whose sizes are known by construction."""

from __future__ import annotations

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
