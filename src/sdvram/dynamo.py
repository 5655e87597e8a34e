"""``torch._dynamo``, the front end of ``torch.compile``, loaded only where something needs more of it than its answers
for code that runs eagerly, as all of sdvram's does: nothing is ever compiled.

diffusers and transformers import Dynamo as they load (diffusers 0.42.1: ``utils.torch_utils``, its hooks'
``@torch.compiler.disable`` and ``DiffusionPipeline``'s; transformers 5.24.0: ``integrations.deepgemm``'s
``@torch._dynamo.assume_constant_result``, ``masking_utils``), and a pipeline's ``register_modules`` asks whether each
model is a compiled one (``is_compiled_module``). Loading Dynamo for that took 0.25 to 0.3 s of every command that
runs diffusers on the 2-core development machine (``benchmarks/imports.py``), most of which is Dynamo's own modules
(its tracer, its rules, its variable trackers).

``defer`` puts a stand-in module in ``sys.modules`` in its place, which gives the answers those calls get from the real
one where nothing compiles (torch 2.13.0, ``torch/_dynamo/decorators.py`` and ``eval_frame.py``):

- ``disable(fn)`` wraps ``fn`` to run with Dynamo's frame evaluation off, which is off already while no compiled code
  runs: ``fn`` itself (and ``disable()`` or ``disable(recursive=False)`` the decorator that gives ``fn`` back);
- ``allow_in_graph(fn)`` notes ``fn`` in Dynamo's tracing rules and returns it: ``fn``;
- ``assume_constant_result(fn)`` marks ``fn`` and returns it: the same;
- ``is_compiling()``: False;
- ``eval_frame.OptimizedModule``, the class of what ``torch.compile`` returns for a module: a class of which nothing is
  an instance, as nothing can be compiled before Dynamo is loaded.

Anything else asked of it (``torch._dynamo.config``, say) loads the real module in its place and is answered from it;
what was marked before is left as it was, which only a compiler would look at. Submodules (transformers imports
``torch._dynamo._trace_wrapped_higher_order_op``) load from Dynamo's own folder as they always do.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

NAME = "torch._dynamo"


def _unchanged(fn: Any = None, *_args: Any, **_kwargs: Any) -> Any:
    """``disable`` and ``allow_in_graph`` where nothing compiles: the function itself, or (called without one) the
    decorator that gives it back."""
    return fn if fn is not None else _unchanged


def _assume_constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]  # what the real one does, and all it does
    return fn


class OptimizedModule:
    """Stands in for ``torch._dynamo.eval_frame.OptimizedModule``: no module is one until Dynamo is loaded."""


EAGER: dict[str, Any] = {
    "disable": _unchanged,
    "allow_in_graph": _unchanged,
    "assume_constant_result": _assume_constant_result,
    "is_compiling": lambda: False,
    "eval_frame": types.SimpleNamespace(OptimizedModule=OptimizedModule),
}


class Deferred(types.ModuleType):
    """The stand-in for ``torch._dynamo`` (see the module's docstring)."""

    def __getattr__(self, name: str) -> Any:
        if name in EAGER:
            return EAGER[name]
        if name.startswith("__"):  # what a module without a file lacks (inspect asks for __file__)
            raise AttributeError(name)
        return getattr(load(), name)


def defer() -> None:
    """Put the stand-in in ``torch._dynamo``'s place, unless Dynamo is loaded already (or torch has no Dynamo)."""
    if NAME in sys.modules:
        return
    spec = importlib.util.find_spec(NAME)
    if spec is None or spec.submodule_search_locations is None:
        return
    stand_in = Deferred(NAME)
    stand_in.__path__ = list(spec.submodule_search_locations)  # its submodules load from their own files
    stand_in.__package__ = NAME
    sys.modules[NAME] = stand_in


def loaded() -> bool:
    """Is the real Dynamo loaded (not the stand-in)?"""
    module = sys.modules.get(NAME)
    return module is not None and not isinstance(module, Deferred)


def load() -> types.ModuleType:
    """The real ``torch._dynamo``, loaded in the stand-in's place (with the submodules loaded meanwhile)."""
    stand_in = sys.modules.get(NAME)
    if not isinstance(stand_in, Deferred):
        return importlib.import_module(NAME)
    del sys.modules[NAME]
    try:
        real = importlib.import_module(NAME)
    except BaseException:
        sys.modules[NAME] = stand_in
        raise
    for attribute, value in vars(stand_in).items():  # submodules loaded under the stand-in: reachable as attributes
        if isinstance(value, types.ModuleType) and not hasattr(real, attribute):
            setattr(real, attribute, value)
    return real
