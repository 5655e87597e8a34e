"""Which kernel ``torch.nn.functional.scaled_dot_product_attention`` runs on a given device, and what it
allocates. Pure Python: the rules alone, so they can be tested case by case.

On ``meta`` (``simulate``) SDPA would fall back to the math path and materialise the N x N score matrix,
which a GPU does not do. So the simulation asks ``choose_backend`` what PyTorch would pick and allocates
what that kernel allocates (``allocations``).

Sources, torch 2.13 (the installed build; re-check when torch changes):
- Backend order: ``torch._C._get_sdp_priority_order()`` returns [1, 2, 0, 3, 4] here, i.e.
  ``SDPBackend.FLASH_ATTENTION``, ``EFFICIENT_ATTENTION``, ``MATH``, ``CUDNN_ATTENTION``, ``OVERRIDEABLE``:
  flash first, then memory-efficient, then math; cuDNN attention is never reached by default because math
  always accepts.
- Flash (``sdp::can_use_flash_attention`` in aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, declared
  in the installed ``torch/include/ATen/native/transformers/cuda/sdp_utils.h``): compute capability sm80 to
  sm90 for the GPUs tabled here; fp16 or bf16; q, k and v with the same head dim, at most 256; no explicit
  attention mask (``is_causal`` is fine). A head dim that is not a multiple of 8 is padded (copies of q, k, v).
  It returns the output, laid out (B, N, H, D), and a log-sum-exp ``softmax_lse`` of (B, H, N) fp32
  (``mha_fwd`` in the installed ``cuda/flash_attn/flash_api.h``), which the SDPA wrapper drops at once.
- Memory-efficient (``can_use_mem_efficient_attention``): sm50 or newer; fp32, fp16, or bf16 (bf16 from
  sm80); the q and v head dims divisible by the alignment, 8 elements for 16-bit types and 4 for fp32; no
  upper bound on the head dim; masks allowed. Its kernels (``cuda/mem_eff_attention/kernels/cutlassF.h``)
  keep the output in registers up to a head dim of 128; above that the 65536-wide kernel accumulates in
  fp32, and ``kernel_forward.h`` (``kNeedsOutputAccumulatorBuffer``) then needs an fp32 buffer the size of
  the output for 16-bit inputs. Without gradients it computes no log-sum-exp (an empty tensor).
- Math (``_scaled_dot_product_attention_math``): a composite of ordinary ops, so the simulation runs it
  as it is and sees its score matrix.
- CPU (the ``profile --device cpu`` cross-check): ``_scaled_dot_product_flash_attention_for_cpu`` for
  equal head dims (observed here for fp32, fp16 and bf16, with and without masks), returning the output
  laid out (B, N, H, D) and a (B, N, H) fp32 log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdvram.gpus import GpuSpec

FLASH, EFFICIENT, MATH, CPU_FLASH = "flash", "efficient", "math", "cpu_flash"
BACKENDS = (FLASH, EFFICIENT, MATH)
FLASH_SM_RANGE = (80, 90)  # sdp_utils.cpp: check_flash_attention_hardware_support (sm80 .. sm90 here)
FLASH_MAX_HEAD_DIM = 256  # sdp_utils.cpp: check_head_dim_size_flash
EFFICIENT_MIN_SM = 50  # sdp_utils.cpp: check_mem_efficient_hardware_support
EFFICIENT_BF16_MIN_SM = 80  # bf16 tensor cores arrived with Ampere
EFFICIENT_REGISTER_MAX_HEAD_DIM = 128  # cutlassF.h: the widest kernel that keeps the output in registers
SIXTEEN_BIT = ("float16", "bfloat16")


@dataclass(frozen=True)
class AttentionCall:
    """What decides the kernel: the dtype, head dims and whether an explicit mask is passed."""

    dtype: str  # "float16", "bfloat16" or "float32"
    q_head_dim: int
    k_head_dim: int
    v_head_dim: int
    has_mask: bool = False


def choose_backend(target: GpuSpec, call: AttentionCall, allowed: tuple[str, ...] = BACKENDS) -> str:
    """The backend PyTorch would run ``call`` with on ``target``, trying ``allowed`` in priority order
    (flash, memory-efficient, math); math accepts everything."""
    if not target.is_cuda:
        return CPU_FLASH if call.q_head_dim == call.k_head_dim == call.v_head_dim else MATH
    if FLASH in allowed and can_use_flash(target, call):
        return FLASH
    if EFFICIENT in allowed and can_use_efficient(target, call):
        return EFFICIENT
    return MATH


def can_use_flash(target: GpuSpec, call: AttentionCall) -> bool:
    low, high = FLASH_SM_RANGE
    return (
        low <= target.sm <= high
        and call.dtype in SIXTEEN_BIT
        and call.q_head_dim == call.k_head_dim == call.v_head_dim
        and call.q_head_dim <= FLASH_MAX_HEAD_DIM
        and not call.has_mask
    )


def can_use_efficient(target: GpuSpec, call: AttentionCall) -> bool:
    alignment = 8 if call.dtype in SIXTEEN_BIT else 4  # elements per 16 bytes
    if call.dtype == "bfloat16" and target.sm < EFFICIENT_BF16_MIN_SM:
        return False
    return (
        target.sm >= EFFICIENT_MIN_SM
        and call.q_head_dim == call.k_head_dim
        and call.q_head_dim % alignment == 0
        and call.v_head_dim % alignment == 0
    )


def needs_flash_padding(call: AttentionCall) -> bool:
    """Flash pads q, k and v to a head dim that is a multiple of 8, copying them."""
    return call.q_head_dim % 8 != 0


def needs_output_accumulator(call: AttentionCall) -> bool:
    """The memory-efficient kernel's fp32 output buffer: 16-bit inputs with a head dim above 128."""
    return call.dtype in SIXTEEN_BIT and max(call.q_head_dim, call.v_head_dim) > EFFICIENT_REGISTER_MAX_HEAD_DIM
