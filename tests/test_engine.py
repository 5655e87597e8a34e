"""The run engine and the accounting seam, driven by scripted fakes: no pipeline, milliseconds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sdvram.accounting import LiveBytes
from sdvram.engine import StageRecorder


@dataclass
class Peak:
    allocated: int
    reserved: int | None = None
    snapshot: object = None
    requested: int | None = None


class ScriptedMeter:
    """A meter whose readings are set by the test: ``now`` bytes held, ``peaks`` the next windows' peaks."""

    def __init__(self) -> None:
        self.now = 0
        self.peaks: list[int] = []

    def allocated(self) -> int:
        return self.now

    def take_peak(self) -> Peak:
        return Peak(self.peaks.pop(0) if self.peaks else self.now, self.now + 100)

    def timeline_position(self) -> None:
        return None  # keeps no timeline


def test_stages_take_their_own_peaks_and_the_run_the_highest() -> None:
    meter = ScriptedMeter()
    recorder = StageRecorder(meter)
    meter.now = 1000
    recorder.begin("load")  # checkpoint before the stage: a window with nothing in it
    meter.peaks = [5000]
    meter.now = 4000
    recorder.begin("vae_encode")  # closes load: its window peaked at 5000
    meter.peaks = [9000]
    meter.now = 4100
    recorder.end()
    load, encode = recorder.stages
    assert (load.name, load.allocated_start, load.peak_allocated, load.allocated_end) == ("load", 1000, 5000, 4000)
    assert (encode.allocated_start, encode.peak_allocated, encode.allocated_end) == (4000, 9000, 4100)
    assert encode.activation == 5000
    assert recorder.peak_allocated == 9000
    assert recorder.peak_reserved == 4200  # the reserved reading of the last window
    assert load.peak_reserved == 4100


def test_unet_stage_counts_calls_and_finds_the_peak_call() -> None:
    meter = ScriptedMeter()
    recorder = StageRecorder(meter)
    recorder.begin("unet")
    recorder.unet_call_peaks = [10, 30, 20]
    recorder.end()
    (unet,) = recorder.stages
    assert (unet.unet_calls, unet.peak_call) == (3, 2)


def test_stage_name_between_stages() -> None:
    recorder = StageRecorder(ScriptedMeter())
    assert recorder.stage_name == "between stages"
    recorder.begin("text_encoder")
    assert recorder.stage_name == "text_encoder"


def test_live_bytes_accountant_rounds_and_sums() -> None:
    acct = LiveBytes(granularity=512)
    assert acct.alloc("a", 1) == 512 and acct.alloc("b", 513) == 1024
    assert (acct.allocated, acct.requested) == (1536, 514)
    acct.free("a")
    assert (acct.allocated, acct.requested) == (1024, 513)


class RecordingAccountant(LiveBytes):
    """Live bytes, and every call the meter makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.sizes: dict[object, int] = {}

    def alloc(self, key, size: int) -> int:
        self.calls.append(("alloc", size))
        self.sizes[key] = size
        return super().alloc(key, size)

    def free(self, key) -> None:
        self.calls.append(("free", self.sizes.pop(key)))
        super().free(key)


def test_meter_reports_allocations_and_frees_in_order() -> None:
    torch = pytest.importorskip("torch")
    from sdvram.meters import LiveTensorMeter

    acct = RecordingAccountant()
    with LiveTensorMeter("meta", acct) as meter:
        x = torch.empty(1000, device="meta")  # 4,000 bytes
        y = (x * 2).view(10, 100)  # a new storage; the view shares it
        del x
        meter.transient(777, "a workspace")
        meter.keep(64, "a library's buffer")
        z = torch.empty(0, device="meta")  # PyTorch allocates nothing for an empty storage
        del y, z
    assert acct.calls == [("alloc", 4000), ("alloc", 4000), ("free", 4000), ("alloc", 777), ("free", 777),
                          ("alloc", 64), ("free", 4000)]


def test_replaying_a_log_sends_the_same_events_and_binds_the_outputs() -> None:
    torch = pytest.importorskip("torch")
    from sdvram.meters import LiveTensorMeter, template_of

    def call(a):
        tmp = a * 3
        out = torch.cat([tmp, a])
        return (out + 1,)

    acct = RecordingAccountant()
    with LiveTensorMeter("meta", acct) as meter:
        a = torch.empty(256, device="meta")
        with meter.recording() as log:
            first = call(a)
        run_calls = acct.calls[1:]
        outputs = meter.live_keys(first)
        acct.calls.clear()
        second = meter.replay(log, template_of(first), outputs)
        assert acct.calls == run_calls  # the same allocations and frees, in the same order
        assert second[0].shape == first[0].shape and meter.allocated() == 1024 + 2 * 2048
        del second
        assert meter.allocated() == 1024 + 2048  # the replayed output is freed with its tensor
