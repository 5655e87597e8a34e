"""Meta kernels written out for the ops whose own are slow: GroupNorm's, LayerNorm's, the pointwise arithmetic and
activations, and ``addmm``.

A simulation runs every aten op on PyTorch's meta device, where an op's kernel computes only its outputs' shapes,
strides and dtypes (``meters.py``'s op cache then replays each op met again at the same shapes). Most meta kernels
are C++ or a few lines of Python. ``native_group_norm``'s and ``native_layer_norm``'s are PyTorch's reference
implementations (``torch/_refs/__init__.py``), which run the whole normalisation, some forty prims, in Python:
1.3 ms a call on the 2-core development machine, where a C++ kernel takes 0.02 ms. A fit search meets hundreds of
them at new shapes (the VAE's edge tiles, the UNet at each size): 9% of its time.

The functions here give the same outputs directly, read off those reference implementations:
- ``native_group_norm``: the normalised input in the input's dtype, contiguous; the mean and the reciprocal
  standard deviation ``(N, groups)`` in the input's dtype (its last lines convert all three back to it).
- ``native_layer_norm``: the normalised input in the input's dtype, contiguous (the reference makes its input
  contiguous first); the mean and the reciprocal standard deviation keep the normalised dimensions as ones and
  stay in the computation dtype (float32 for float16 and bfloat16) off the CPU.
- The pointwise ops a pipeline calls most (``add``, ``sub``, ``mul``, ``div``, ``silu``, ``gelu``, ``clamp``), whose
  meta kernels are mostly references too (``_prim_elementwise_meta``: type promotion, broadcasting and the output's
  strides worked out in Python, 0.1 to 1.4 ms a call): for contiguous inputs of one floating dtype and one shape,
  with Python numbers beside them, a contiguous output of that dtype and shape. Any other layout is left to
  PyTorch, whose kernels differ there (a reference keeps a dense input's strides, a C++ kernel renormalises those
  of dimensions of size 1: SDXL's VAE divides such a tensor by a number).
- ``addmm`` (a ``Linear`` with a bias on a 2-D input), a decomposition on meta (``torch/_decomp``: ``mm``, then the
  bias added, 0.3 ms): a contiguous (rows of ``mat1``, columns of ``mat2``) output in the inputs' dtype (its
  comment: "the output of aten.addmm is contiguous").

Each answers only inputs on the meta device whose sizes agree with the op's other arguments (else None: the op's
own kernel runs, and raises where they disagree). ``tests/test_meters.py`` compares each with PyTorch's kernels
over shapes, dtypes, layouts and optional arguments; a simulation with them gives the same record as one without.
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
    # the reference makes its input contiguous first, which keeps a contiguous one's strides as they are
    if (not _real_meta(input) or (input.is_contiguous() and not _plain(input)) or not normalized or axis < 0
            or tuple(input.shape[axis:]) != normalized
            or any(t is not None and tuple(t.shape) != normalized for t in (weight, bias))):
        return None
    stats = (*input.shape[:axis], *(1 for _ in normalized_shape))
    computation = torch.float32 if input.dtype in LOW_PRECISION else input.dtype
    return (torch.empty(input.shape, dtype=input.dtype, device="meta"),
            torch.empty(stats, dtype=computation, device="meta"),
            torch.empty(stats, dtype=computation, device="meta"))


def _plain(tensor: torch.Tensor) -> bool:
    """A real-valued tensor on meta with the strides ``torch.empty`` gives its shape."""
    return _real_meta(tensor) and tensor.stride() == contiguous_strides(tensor.shape)


def _real_meta(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "meta" and not tensor.is_complex()


NUMBERS = (int, float)  # a Python number beside a floating tensor leaves the result in the tensor's dtype (type
# promotion ranks a dimensioned tensor above a number of the same kind or lower); a bool is left to PyTorch


def pointwise(options: frozenset[str] = frozenset()) -> Callable[..., torch.Tensor | None]:
    """The kernel of a pointwise op whose keyword arguments may be ``options`` (``alpha``, ``approximate``)."""
    def kernel(*args: Any, **kwargs: Any) -> torch.Tensor | None:
        if not kwargs.keys() <= options:
            return None
        tensors = []
        for value in args:
            if isinstance(value, torch.Tensor):
                tensors.append(value)
            elif value is not None and type(value) not in NUMBERS:
                return None
        if not tensors or any(type(v) not in NUMBERS and type(v) is not str for v in kwargs.values()):
            return None
        first = tensors[0]
        shape, dtype = first.shape, first.dtype
        if not dtype.is_floating_point or not first.is_meta:
            return None
        strides = contiguous_strides(shape)
        for tensor in tensors:
            if tensor.shape != shape or tensor.dtype != dtype or not tensor.is_meta or tensor.stride() != strides:
                return None
        return torch.empty(shape, dtype=dtype, device="meta")
    return kernel


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides ``torch.empty`` gives ``shape`` (a dimension of size 1 or 0 steps over what follows it as if
    it had size 1). A tensor can be contiguous with other strides on its dimensions of size 1, and PyTorch's
    kernels do not agree on what such an input's output gets (the C++ ones renormalise them, the references
    keep a dense input's strides): the kernels here answer only inputs with these."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def addmm(bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, **kwargs: Any) -> torch.Tensor | None:
    """``mm``'s output is made whatever the inputs' layouts; the bias is added to it, so its layout decides."""
    if kwargs or mat1.ndim != 2 or mat2.ndim != 2 or mat1.shape[1] != mat2.shape[0]:
        return None
    rows, columns, dtype = mat1.shape[0], mat2.shape[1], mat1.dtype
    if (bias.shape not in ((columns,), (rows, columns), (1, columns)) or not dtype.is_floating_point
            or any(t.dtype != dtype or t.device.type != "meta" for t in (bias, mat2)) or mat1.device.type != "meta"):
        return None
    return torch.empty((rows, columns), dtype=dtype, device="meta")


KERNELS: dict[Any, Callable[..., Any]] = {
    aten.native_group_norm.default: native_group_norm,
    aten.native_layer_norm.default: native_layer_norm,
    aten.add.Tensor: pointwise(frozenset({"alpha"})),
    aten.sub.Tensor: pointwise(frozenset({"alpha"})),
    aten.mul.Tensor: pointwise(),
    aten.div.Tensor: pointwise(),
    aten.silu.default: pointwise(),
    aten.gelu.default: pointwise(frozenset({"approximate"})),
    aten.clamp.default: pointwise(),
    aten.addmm.default: addmm,
}
