"""Twins: two modules of one model whose calls on arguments of the same metadata make the same allocations.

A UNet calls many blocks built alike: SD v1.5's has two cross-attention transformers in each down block and three
in each up block, made with the same configuration and fed hidden states of the same shape, and pairs of residual
blocks alike; SDXL's transformers stack up to ten identical layers. On ``meta`` (``simulate.py``) a block's ops and
their shapes follow from its code, what its constructor stored and its tensors' metadata, and the arguments'
metadata, never from values: two blocks alike in all of these make the same allocations and frees in the same
order when called alike, so a call of one can be replayed from the other's (``CallReplay.wrap_twin``). The first
call of a UNet at a new size runs only the first of each set of twins.

``signature(module)`` is that "alike": for the module and each module inside it, its class, its parameters' and
buffers' names and metadata, and every other attribute its constructor or diffusers' switches set (the attention
processor and what it holds, the hooks registered on it, flags and sizes such as an attention's heads), described
by value. A value it cannot describe makes the module have no signature (never replayed from another).
"""

from __future__ import annotations

import enum
import types
from typing import Any

import torch

DEPTH = 4  # objects held by attributes (an attention processor, what it holds) are described this deep
SKIPPED = frozenset({"_modules", "_parameters", "_buffers"})  # described apart, in order, with their names
HOOK_TABLES = ("hooks", "hooks_with_kwargs", "hooks_always_called")  # torch.nn.Module's dicts keyed by handle id


WRAPPER = "sdvram_twin_wrapper"  # marks the function ``CallReplay.wrap_twin`` puts in place of a block's forward


def mark(wrapper: Any) -> Any:
    """Mark ``wrapper`` as the simulation's stand-in for a block's ``forward`` (``signature`` passes over it: it is
    the same code for every block, and the run's, not the block's)."""
    setattr(wrapper, WRAPPER, True)
    return wrapper


class Unsignable(Exception):
    """An attribute's value has no description here."""


def signature(module: torch.nn.Module) -> tuple[Any, ...] | None:
    """What makes a call of ``module`` what it is, beyond its arguments (None: a value could not be described)."""
    try:
        return tuple((name, type(sub), _attributes(sub), _tensors(sub)) for name, sub in module.named_modules())
    except Unsignable:
        return None


def _tensors(module: torch.nn.Module) -> tuple[Any, ...]:
    return tuple((kind, name, None if t is None else _tensor(t))
                 for kind, held in (("p", module._parameters), ("b", module._buffers)) for name, t in held.items())


def _tensor(t: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(t.shape), t.stride(), t.dtype, t.device.type, t.requires_grad)


def _attributes(module: torch.nn.Module) -> tuple[Any, ...]:
    """Each attribute but the submodules and tensors; a hook table by its hooks alone, in order (its keys are
    the handles' numbers, which differ from module to module)."""
    return tuple((name, _describe(tuple(value.values()) if name.endswith(HOOK_TABLES) else value, DEPTH))
                 for name, value in sorted(vars(module).items()) if name not in SKIPPED)


def _describe(value: Any, depth: int) -> Any:
    if value is None or type(value) in (bool, int, float, str, complex):
        return (type(value), value)
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout, enum.Enum)):
        return (type(value), str(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", _tensor(value))
    if isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value), tuple(_describe(v, depth) for v in items))
    if isinstance(value, dict):
        return (type(value), tuple((_describe(k, depth), _describe(v, depth)) for k, v in value.items()))
    if isinstance(value, types.FunctionType):
        if getattr(value, WRAPPER, False):  # the simulation's own wrapper of a block's forward, for the run
            return ("wrapper",)
        if value.__closure__:  # a closure holds what its name does not show
            raise Unsignable
        return ("function", value.__module__, value.__qualname__)
    if isinstance(value, types.BuiltinFunctionType):
        return ("builtin", getattr(value, "__module__", None), value.__qualname__)
    if isinstance(value, (torch.nn.Module, types.MethodType)):  # a module outside this one's tree, a bound method
        raise Unsignable
    if depth > 0 and hasattr(value, "__dict__"):
        return ("object", type(value), tuple((k, _describe(v, depth - 1)) for k, v in sorted(vars(value).items())))
    raise Unsignable
