"""Stand-ins for modules that diffusers, transformers and torch's meta kernels load, of which a run of sdvram needs only
a few answers: each is loaded only where something asks it for more. Nothing sdvram runs is compiled or traced, and
every size on ``meta`` is a plain Python int, so those answers are known without the module.

``defer()`` puts, in ``sys.modules``, before diffusers and transformers are imported (torch 2.13.0, diffusers 0.42.1,
transformers 5.24.0; figures from ``benchmarks/imports.py`` on the 2-core development machine):

- **torch._dynamo**, the front end of ``torch.compile`` (0.25 to 0.3 s). diffusers and transformers import it as they
  load only to mark functions for compilers (diffusers: ``utils.torch_utils``, its hooks' ``@torch.compiler.disable``;
  transformers: ``integrations.deepgemm``'s ``@torch._dynamo.assume_constant_result``, ``masking_utils``), and a
  pipeline's ``register_modules`` asks whether each model is a compiled one (``is_compiled_module``). Where nothing
  compiles (``torch/_dynamo/decorators.py``, ``eval_frame.py``): ``disable(fn)`` and ``allow_in_graph(fn)`` give
  ``fn`` itself (called without one, the decorator that does); ``assume_constant_result(fn)`` marks ``fn`` and gives
  it back; ``is_compiling()`` is False; ``eval_frame.OptimizedModule``, the class of what ``torch.compile`` returns for
  a module, is a class nothing is an instance of. accelerate puts off the same import for its hooks
  (``_compiler_disable`` in ``accelerate/hooks.py``).
- **torch.fx.experimental.symbolic_shapes**, the symbolic sizes of tracing (0.3 s with sympy, which it imports).
  torch's Python meta kernels and references (``torch._refs``, ``torch._prims_common``, ``torch._meta_registrations``)
  import helpers from it at each call: ``guard_or_false(b)``, ``sym_eq(x, y)`` and the like, which decide what a
  symbolic size would; and ``torch._check`` imports ``expect_true``. Given plain bools and ints, each gives what the
  plain operation does (``symbolic_shapes.py``): the bool itself, ``x == y``, ``and``, a hint that is the value.
  ``SHAPE_ANSWERS`` gives those for plain values and hands anything else (a ``SymInt``, a ``SymBool``, a value of
  the wrong type, which raises there) to the real module.
- **sympy**: ``torch._prims_common.elementwise_dtypes``, which every elementwise meta kernel calls, imports it to ask
  whether an argument is a ``sympy.Basic``, a symbolic expression. Nothing is one before sympy is loaded: the
  stand-in's ``Basic`` is a class nothing is an instance of.

Anything else asked of a stand-in loads the real module in its place (``load``) and is answered from it; the
stand-in then holds the real module's attributes too, for code that kept it. Submodules load from the real
package's folder as they always do (transformers imports ``torch._dynamo._trace_wrapped_higher_order_op``).

And transformers is told that torch.distributed is not there (``is_torch_distributed_available``): its model loading
(``core_model_loading``, which ``modeling_utils`` imports) imports ``torch.distributed.tensor`` (DTensor and its
sharding rules, 0.16 s, and the two modules above) for tensor-parallel loading of checkpoints across processes.
sdvram runs one process on one device and loads no checkpoint that way.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import operator
import sys
import types
from collections.abc import Callable
from typing import Any

DYNAMO = "torch._dynamo"
SHAPES = "torch.fx.experimental.symbolic_shapes"
SYMPY = "sympy"


def _unchanged(fn: Any = None, *_args: Any, **_kwargs: Any) -> Any:
    """``disable`` and ``allow_in_graph`` where nothing compiles: the function itself, or (called without one) the
    decorator that gives it back."""
    return fn if fn is not None else _unchanged


def _assume_constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]  # what the real one does, and all it does
    return fn


class OptimizedModule:
    """Stands in for ``torch._dynamo.eval_frame.OptimizedModule``: no module is one until Dynamo is loaded."""


class Basic:
    """Stands in for ``sympy.Basic``: nothing is a sympy expression until sympy is loaded."""


EAGER: dict[str, Any] = {
    "disable": _unchanged,
    "allow_in_graph": _unchanged,
    "assume_constant_result": _assume_constant_result,
    "is_compiling": lambda: False,
    "eval_frame": types.SimpleNamespace(OptimizedModule=OptimizedModule),
}


def _real(name: str) -> Callable[..., Any]:
    """The real symbolic_shapes' function ``name``, loaded when first called."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(load(SHAPES), name)(*args, **kwargs)
    return call


def _bool_itself(name: str) -> Callable[..., Any]:
    """A guard that gives a plain bool back as it is (the real one's branch for anything not a SymBool)."""
    real = _real(name)

    def guard(a: Any, *args: Any, **kwargs: Any) -> Any:
        return a if type(a) is bool and not args and not kwargs else real(a, *args, **kwargs)
    guard.__name__ = name
    return guard


def _plain(x: Any) -> bool:
    return type(x) is int or type(x) is bool


def _sym_and(x: Any, *others: Any) -> Any:
    if not all(type(v) is bool for v in (x, *others)):
        return _real("sym_and")(x, *others)
    return functools.reduce(operator.and_, others, x)


def _sym_or(x: Any, *others: Any) -> Any:
    if not all(type(v) is bool for v in (x, *others)):
        return _real("sym_or")(x, *others)
    return functools.reduce(operator.or_, others, x)


def _plain_ints(x: Any) -> bool:
    """An int, or a list or tuple of such (sizes and strides, as meta kernels compare them)."""
    return type(x) is int or isinstance(x, (tuple, list)) and all(_plain_ints(v) for v in x)


def _sym_eq(x: Any, y: Any) -> Any:
    """``==``, element by element for lists and tuples (False for different lengths), of plain ints."""
    if not (_plain_ints(x) and _plain_ints(y)) or isinstance(x, (tuple, list)) != isinstance(y, (tuple, list)):
        return _real("sym_eq")(x, y)  # (an int against a list raises there)
    if isinstance(x, (tuple, list)):
        if len(x) != len(y):
            return False
        pairs = [_sym_eq(a, b) for a, b in zip(x, y, strict=True)]  # all of them, as the real reduce: one may raise
        return all(pairs)
    return x == y


def _guarding_hint_or_throw(a: Any) -> Any:
    return a if _plain(a) else _real("guarding_hint_or_throw")(a)


def _has_guarding_hint(a: Any) -> Any:
    import torch

    return True if not isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)) else _real("has_guarding_hint")(a)


def _is_nested_int(s: Any) -> Any:
    import torch

    return False if not isinstance(s, torch.SymInt) else _real("is_nested_int")(s)


SHAPE_ANSWERS: dict[str, Any] = {
    **{name: _bool_itself(name) for name in ("expect_true", "guard_or_false", "guard_or_true", "guard_size_oblivious",
                                             "statically_known_true")},
    "sym_and": _sym_and,
    "sym_or": _sym_or,
    "sym_eq": _sym_eq,
    "guarding_hint_or_throw": _guarding_hint_or_throw,
    "has_guarding_hint": _has_guarding_hint,
    "is_nested_int": _is_nested_int,
}
ANSWERS: dict[str, dict[str, Any]] = {DYNAMO: EAGER, SHAPES: SHAPE_ANSWERS, SYMPY: {"Basic": Basic}}


class Deferred(types.ModuleType):
    """A stand-in module (see the module's docstring): its answers are its attributes; anything else loads the real
    module."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # what a module without a file lacks (inspect asks for __file__)
            raise AttributeError(name)
        return getattr(load(self.__name__), name)


def defer() -> None:
    """Put the stand-ins in place, each unless its module is loaded already (or is not there), and tell transformers
    that torch.distributed is not there."""
    for name, answers in ANSWERS.items():
        _stand_in(name, answers)
    _without_distributed()


def _stand_in(name: str, answers: dict[str, Any]) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = Deferred(name)
    stand_in.__spec__ = spec  # what ``importlib.util.find_spec`` gives for a module already in sys.modules
    if spec.submodule_search_locations is not None:
        stand_in.__path__ = list(spec.submodule_search_locations)  # its submodules load from their own files
        stand_in.__package__ = name
    else:
        stand_in.__package__ = name.rpartition(".")[0]
    vars(stand_in).update(answers)
    sys.modules[name] = stand_in


def _without_distributed() -> None:
    """transformers' ``is_torch_distributed_available`` answers False, in its module and where ``transformers.utils``
    names it for the modules that import it from there, unless one that acts on it is loaded already."""
    if "transformers.core_model_loading" in sys.modules or importlib.util.find_spec("transformers") is None:
        return
    import transformers.utils
    import transformers.utils.import_utils as import_utils

    @functools.cache
    def is_torch_distributed_available() -> bool:
        return False

    for module in (import_utils, transformers.utils):
        if hasattr(module, "is_torch_distributed_available"):
            module.is_torch_distributed_available = is_torch_distributed_available  # type: ignore[attr-defined]


def loaded(name: str = DYNAMO) -> bool:
    """Is the real module ``name`` loaded (not its stand-in)?"""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, Deferred)


def load(name: str = DYNAMO) -> types.ModuleType:
    """The real module ``name``, loaded in its stand-in's place (with the submodules loaded meanwhile). The stand-in
    takes on the real module's attributes, for code that kept a reference to it."""
    stand_in = sys.modules.get(name)
    if not isinstance(stand_in, Deferred):
        return importlib.import_module(name)
    del sys.modules[name]
    try:
        real = importlib.import_module(name)
    except BaseException:
        sys.modules[name] = stand_in
        raise
    for attribute, value in vars(stand_in).items():  # submodules loaded under the stand-in: reachable as attributes
        if isinstance(value, types.ModuleType) and not hasattr(real, attribute):
            setattr(real, attribute, value)
    vars(stand_in).update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    return real
