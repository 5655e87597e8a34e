"""Which kernel ``torch.nn.functional.scaled_dot_product_attention`` runs on a given device, and what it
allocates. Pure Python: the rules alone, so they can be tested case by case.

On ``meta`` (``simulate``) SDPA would fall back to the math path and materialise the N x N score matrix,
which a GPU does not do. So the simulation asks ``choose_backend`` what PyTorch would pick and allocates
what that kernel allocates (``allocations``).

Sources (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, and what was measured on the H200):
- Backend order: flash, then memory-efficient, then math (``torch._C._get_sdp_priority_order()`` on the
  CPU build here: [1, 2, 0, 3, 4]), except where ``check_prefer_cudnn_attention`` puts cuDNN attention first:
  compute capability 9.x or 10.x with a cuDNN runtime newer than 9.15. The H200 measurements (torch 2.11,
  cuDNN 9.19) show it: every UNet and CLIP attention call there allocates cuDNN's pattern (below), none
  flash's log-sum-exp. The simulation therefore puts cuDNN first on sm90 and sm100, as a current PyTorch
  with its bundled cuDNN does.
- cuDNN (``can_use_cudnn_attention``): sm80 to sm121; fp16 or bf16; head dims multiples of 8, at most 128
  (``check_cudnn_tensor_shapes``; 256 on sm90/sm100 with the newer cuDNN frontends: the H200 trace shows SD's
  head dim 160 on cuDNN); a key length other than 1. It allocates a philox seed and offset (8 bytes each)
  before the output, then the output laid out (B, N, H, D), then a 256-byte workspace for the call
  (the trace of a 512 x 512 run), and frees the seed and offset when it returns; no log-sum-exp without
  gradients.
- Flash (``can_use_flash_attention``): sm80 to sm121; fp16 or bf16; q, k and v with the same head dim, at
  most 256; no explicit attention mask (``is_causal`` is fine). A head dim that is not a multiple of 8 is
  padded (copies of q, k, v). It returns the output, laid out (B, N, H, D), and a log-sum-exp
  ``softmax_lse`` of (B, H, N) fp32 (``mha_fwd`` in ``cuda/flash_attn/flash_api.h``), dropped at once.
- Memory-efficient (``can_use_mem_efficient_attention``): sm50 to sm121; fp32, fp16, or bf16 (bf16 from
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

CUDNN, FLASH, EFFICIENT, MATH, CPU_FLASH = "cudnn", "flash", "efficient", "math", "cpu_flash"
BACKENDS = (FLASH, EFFICIENT, MATH)  # PyTorch's default order
CUDNN_FIRST = (CUDNN, FLASH, EFFICIENT, MATH)  # check_prefer_cudnn_attention: sm90 / sm100, cuDNN > 9.15
CUDNN_PREFERRED_MAJORS = (9, 10)
FLASH_SM_RANGE = (80, 121)  # sdp_utils.cpp: check_flash_attention_hardware_support
CUDNN_SM_RANGE = (80, 121)  # sdp_utils.cpp: check_cudnn_hardware_support
CUDNN_MAX_HEAD_DIM = 128  # check_cudnn_tensor_shapes' head_dim_limit
CUDNN_MAX_HEAD_DIM_SM90 = 256  # the same on sm90 / sm10x with newer cuDNN (the H200 trace: head dim 160)
CUDNN_WORKSPACE = 256  # bytes cuDNN's attention plan asked for in every call of the H200 trace at 512 x 512
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
    key_length: int = 0  # the keys' sequence length (0: not given; cuDNN refuses 1)


def allowed_backends(kernel: str) -> tuple[str, ...] | None:
    """The backends a choice allows: "auto" (None) PyTorch's own order for the GPU; a name, that one alone
    (as ``torch.nn.attention.sdpa_kernel([backend])`` does)."""
    return None if kernel == "auto" else (kernel,)


def priority(target: GpuSpec) -> tuple[str, ...]:
    """The order PyTorch tries the backends in on ``target``."""
    major = target.sm // 10
    return CUDNN_FIRST if major in CUDNN_PREFERRED_MAJORS else BACKENDS


def choose_backend(target: GpuSpec, call: AttentionCall, allowed: tuple[str, ...] | None = None) -> str | None:
    """The backend PyTorch would run ``call`` with on ``target``, trying ``allowed`` in priority order
    (flash, memory-efficient, math; math accepts everything); None when no allowed backend can run it, where
    PyTorch raises "No available kernel". On the CPU (the ``profile --device cpu`` cross-check) the choice
    is the CPU's own."""
    if not target.is_cuda:
        return CPU_FLASH if call.q_head_dim == call.k_head_dim == call.v_head_dim else MATH
    checks = {CUDNN: can_use_cudnn, FLASH: can_use_flash, EFFICIENT: can_use_efficient}
    for backend in priority(target) if allowed is None else allowed:
        if backend == MATH or checks[backend](target, call):
            return backend
    return None


def can_use_cudnn(target: GpuSpec, call: AttentionCall) -> bool:
    low, high = CUDNN_SM_RANGE
    limit = CUDNN_MAX_HEAD_DIM_SM90 if target.sm // 10 in CUDNN_PREFERRED_MAJORS else CUDNN_MAX_HEAD_DIM
    return (
        low <= target.sm <= high
        and call.dtype in SIXTEEN_BIT
        and call.q_head_dim % 8 == 0 and call.v_head_dim % 8 == 0
        and max(call.q_head_dim, call.v_head_dim) <= limit
        and call.key_length != 1
    )


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
