"""The SDPA backend rules of sdvram.attention, case by case, against PyTorch's rules as cited there."""

from __future__ import annotations

import pytest

from sdvram.attention import (
    CPU_FLASH,
    CUDNN,
    EFFICIENT,
    FLASH,
    MATH,
    AttentionCall,
    choose_backend,
    needs_flash_padding,
    needs_output_accumulator,
)
from sdvram.gpus import CPU, GPUS


def call(dtype: str, dim: int, v_dim: int | None = None, mask: bool = False, keys: int = 77) -> AttentionCall:
    return AttentionCall(dtype, dim, dim, v_dim if v_dim is not None else dim, mask, keys)


@pytest.mark.parametrize(
    ("gpu", "attention", "expected"),
    [
        # SD v1.5 on sm90 (the H200 trace): cuDNN attention first, for the UNet's head dims 40/80/160 and
        # CLIP's 64; the VAE's one 512-wide head is above cuDNN's and flash's 256 and runs memory-efficient.
        ("h100", call("float16", 40), CUDNN),
        ("h200", call("float16", 80), CUDNN),
        ("h100", call("float16", 160), CUDNN),
        ("h100", call("float16", 256), CUDNN),
        ("h100", call("float16", 512), EFFICIENT),
        ("h100", call("float16", 36), FLASH),  # not a multiple of 8: cuDNN refuses, flash pads
        ("h100", call("float16", 64, keys=1), FLASH),  # cuDNN refuses a key length of 1
        # sm80 to sm89 keep PyTorch's default order: flash first
        ("a100-40gb", call("bfloat16", 64), FLASH),
        ("rtx4090", call("float16", 160), FLASH),
        # sm75 has no flash: everything memory-efficient (FACTS.md: "on a T4 both run memory-efficient")
        ("t4", call("float16", 40), EFFICIENT),
        ("t4", call("float16", 512), EFFICIENT),
        # bf16 needs sm80 for both fused kernels
        ("t4", call("bfloat16", 40), MATH),
        # flash needs 16-bit types; fp32 goes memory-efficient when the head dim is a multiple of 4
        ("h100", call("float32", 40), EFFICIENT),
        ("h100", call("float32", 42), MATH),
        # 16-bit memory-efficient needs a multiple of 8
        ("t4", call("float16", 36), MATH),
        # an explicit mask rules flash out
        ("rtx4090", call("float16", 64, mask=True), EFFICIENT),
        # different q and v head dims rule flash out
        ("l4", call("float16", 64, v_dim=128), EFFICIENT),
    ],
)
def test_backend_choice(gpu: str, attention: AttentionCall, expected: str) -> None:
    assert choose_backend(GPUS[gpu], attention) == expected


def test_flash_pads_head_dims_that_are_not_multiples_of_8() -> None:
    assert choose_backend(GPUS["h100"], call("float16", 36)) == FLASH
    assert needs_flash_padding(call("float16", 36))
    assert not needs_flash_padding(call("float16", 40))


def test_output_accumulator_above_128_for_16_bit_only() -> None:
    assert needs_output_accumulator(call("float16", 512))
    assert needs_output_accumulator(call("bfloat16", 160))
    assert not needs_output_accumulator(call("float16", 128))
    assert not needs_output_accumulator(call("float32", 512))


def test_allowed_backends_restrict_the_choice() -> None:
    assert choose_backend(GPUS["h100"], call("float16", 40), allowed=(MATH,)) == MATH
    assert choose_backend(GPUS["h100"], call("float16", 40), allowed=(EFFICIENT,)) == EFFICIENT
    assert choose_backend(GPUS["h100"], call("float16", 40), allowed=(FLASH,)) == FLASH
    # as torch.nn.attention.sdpa_kernel([FLASH]) raises "No available kernel": nothing to choose
    assert choose_backend(GPUS["t4"], call("float16", 40), allowed=(FLASH,)) is None
    assert choose_backend(GPUS["h100"], call("float16", 512), allowed=(FLASH,)) is None


def test_cpu_runs_its_flash_kernel_for_equal_head_dims() -> None:
    assert choose_backend(CPU, call("float32", 32)) == CPU_FLASH
    assert choose_backend(CPU, call("float32", 32, v_dim=16)) == MATH


def test_default_priority_order_matches_the_installed_torch() -> None:
    # The CPU build has no cuDNN, so check_prefer_cudnn_attention leaves the default order; sm80-sm89 cards
    # get that order in the simulation too.
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend

    order = [SDPBackend(i) for i in torch._C._get_sdp_priority_order()]
    fused_and_math = [b for b in order if b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                SDPBackend.MATH)]
    assert fused_and_math == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def test_cpu_kernel_outputs_match_what_the_simulation_allocates() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen.append((str(func), out))
            return out

    q = torch.randn(2, 100, 4, 8).transpose(1, 2)  # (B, H, N, D) over a (B, N, H, D) buffer, as diffusers does
    with torch.no_grad(), Spy():
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    (name, (out, lse)), = [(n, o) for n, o in seen if "flash_attention_for_cpu" in n]
    assert out.shape == (2, 4, 100, 8) and out.stride() == (3200, 8, 32, 1)  # laid out (B, N, H, D)
    assert lse.shape == (2, 4, 100) and lse.dtype == torch.float32 and lse.stride() == (400, 1, 4)


def test_a_cudnn_attention_call_requests_what_the_h200_trace_shows() -> None:
    """The UNet's first attention at 512 x 512 on the H200 (batch 2 for guidance, 8 heads of 40, 4,096 tokens), as
    its allocator trace recorded the requests: the philox seed and offset (8 bytes each), the output
    (2 x 4096 x 8 x 40 fp16), the plan's workspace; then the workspace, the seed and the offset freed. The
    simulated kernel makes the same requests in the same order."""
    import gzip
    import pickle
    from pathlib import Path

    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from sdvram.accounting import LiveBytes
    from sdvram.gpus import GPUS
    from sdvram.meters import LiveTensorMeter
    from sdvram.simulate import AttentionModel

    output = 2 * 4096 * 8 * 40 * 2
    with gzip.open(Path(__file__).parent / "data" / "trace-512-steps10.pkl.gz", "rb") as handle:
        events = pickle.load(handle)["device_traces"][0]
    allocs = [e["size"] for e in events if e["action"] == "alloc"]
    at = next(i for i in range(len(allocs) - 3) if allocs[i:i + 3] == [8, 8, output])
    traced = allocs[at:at + 4]
    q = torch.empty((2, 8, 4096, 40), dtype=torch.float16, device="meta")
    with LiveTensorMeter("meta", LiveBytes()) as meter, meter.recording() as log, AttentionModel(GPUS["h200"]):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    simulated = [event[2].size for event in log.events if event[0] == "alloc"]
    assert simulated == traced == [8, 8, output, 256]
