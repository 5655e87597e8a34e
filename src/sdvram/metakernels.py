"""Meta kernels written out for the two ops whose own are slow: GroupNorm's and LayerNorm's.

A simulation runs every aten op on PyTorch's meta device, where an op's kernel computes only its outputs' shapes,
strides and dtypes (``meters.py``'s op cache then replays each op met again at the same shapes). Most meta kernels
are C++ or a few lines of Python. ``native_group_norm``'s and ``native_layer_norm``'s are PyTorch's reference
implementations (``torch/_refs/__init__.py``), which run the whole normalisation, some forty prims, in Python:
1.3 ms a call on the 2-core development machine, where a C++ kernel takes 0.02 ms. A fit search meets hundreds of
them at new shapes (the VAE's edge tiles, the UNet at each size): 9% of its time.

The functions here give the same outputs directly, read off those reference implementations:
- ``native_group_norm``: the normalised input in the input's dtype, contiguous; the mean and the reciprocal
  standard deviation ``(N, groups)`` in the input's dtype (its last lines convert all three back to it).
- ``native_layer_norm``: the normalised input in the input's dtype, contiguous; the mean and the reciprocal
  standard deviation keep the normalised dimensions as ones and stay in the computation dtype (float32 for
  float16 and bfloat16) off the CPU.

Each answers only a contiguous input on the meta device whose sizes agree with the op's other arguments (else
None: the op's own kernel runs, and raises where they disagree), so the memory format rules of the reference never
come into it. ``tests/test_meters.py`` compares both with PyTorch's kernels
over shapes, dtypes and optional weights; a simulation with them gives the same record as one without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten
LOW_PRECISION = (torch.float16, torch.bfloat16)  # computed in float32 by the reference (get_computation_dtype)


def native_group_norm(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, batch: int,
                      channels: int, inner: int, groups: int, eps: float) -> tuple[torch.Tensor, ...] | None:
    if not _plain(input) or input.ndim < 2 or channels % groups or batch * channels * inner != input.numel():
        return None
    return (torch.empty(input.shape, dtype=input.dtype, device="meta"),
            torch.empty((batch, groups), dtype=input.dtype, device="meta"),
            torch.empty((batch, groups), dtype=input.dtype, device="meta"))


def native_layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, ...] | None:
    axis, normalized = input.ndim - len(normalized_shape), tuple(normalized_shape)
    if (not _plain(input) or not normalized or axis < 0 or tuple(input.shape[axis:]) != normalized
            or any(t is not None and tuple(t.shape) != normalized for t in (weight, bias))):
        return None
    stats = (*input.shape[:axis], *(1 for _ in normalized_shape))
    computation = torch.float32 if input.dtype in LOW_PRECISION else input.dtype
    return (torch.empty(input.shape, dtype=input.dtype, device="meta"),
            torch.empty(stats, dtype=computation, device="meta"),
            torch.empty(stats, dtype=computation, device="meta"))


def _plain(tensor: torch.Tensor) -> bool:
    """A real-valued contiguous tensor on meta."""
    return tensor.device.type == "meta" and tensor.is_contiguous() and not tensor.is_complex()


KERNELS: dict[Any, Callable[..., tuple[torch.Tensor, ...] | None]] = {
    aten.native_group_norm.default: native_group_norm,
    aten.native_layer_norm.default: native_layer_norm,
}
