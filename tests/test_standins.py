"""The stand-ins (standins.py) for torch._dynamo, torch.fx.experimental.symbolic_shapes and sympy: what they answer is
what the real modules answer, a simulation needs nothing more of them, and anything else loads the real module. Each
case that looks at what is loaded runs in a fresh interpreter: that is the state of a whole process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from sdvram import standins


def _in_fresh_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_eager_answers_are_what_the_real_calls_give_where_nothing_compiles() -> None:
    def f(x: int) -> int:
        return x + 1

    for name in ("disable", "allow_in_graph"):
        answer = standins.EAGER[name]
        assert answer(f) is f  # the function itself, not a wrapper
        assert answer()(f) is f  # as a decorator with arguments: @torch.compiler.disable()
        assert answer(None, False)(f) is f  # torch.compiler.disable(recursive=False)
        assert answer(f, recursive=False, reason="r", wrapping=False) is f  # torch._disable_dynamo's call
    marked = standins.EAGER["assume_constant_result"](f)
    assert marked is f and f._dynamo_marked_constant is True  # type: ignore[attr-defined]
    assert standins.EAGER["is_compiling"]() is False
    import torch

    assert not isinstance(torch.nn.Linear(2, 2), standins.EAGER["eval_frame"].OptimizedModule)


# Arguments for each helper of symbolic_shapes that the stand-in answers: first the plain values meta kernels pass
# (bools, ints, sizes as tuples and lists), which it answers itself; then values of other types, for which the real
# helper raises or answers otherwise, and which it hands to the real module
SHAPE_CASES = {
    "expect_true": ([(True,), (False,)], [(1,), (None,), (True, 1)]),
    "guard_or_false": ([(True,), (False,)], [(0,), ("x",)]),
    "guard_or_true": ([(True,), (False,)], [(1,)]),
    "guard_size_oblivious": ([(True,), (False,)], [(2,)]),
    "statically_known_true": ([(True,), (False,)], [(1.0,)]),
    "sym_and": ([(True,), (False, True), (True, True, True), (True, True, False)], [(1,), (1, 3)]),
    "sym_or": ([(False,), (False, False), (False, True, False)], [(0, 2), ("a",)]),
    "sym_eq": ([(1, 1), (1, 2), ((1, 2), (1, 2)), ((1, 2), [1, 2]), ((1, 2), (1, 3)), ((1, 2), (1, 2, 3)), ((), ()),
                (((1, 2), 3), ((1, 2), 3)), (((1, 2), 3), ((1, 4), 3))], [(1, (1,)), (True, 1), (1.0, 1), ("a", "a"),
                                              (((1, 2), 3), ((1, 3), (1,)))]),
    "guarding_hint_or_throw": ([(True,), (3,), (0,)], [(2.5,), (None,)]),
    "has_guarding_hint": ([(True,), (3,), (2.5,), (None,)], []),
    "is_nested_int": ([(3,), (True,), (None,)], []),
}


def test_the_shape_answers_are_the_real_helpers_answers() -> None:
    """Every answer and every exception of the stand-in's helpers, against the real module's for the same arguments:
    plain values answered without it, anything else handed to it."""
    assert set(SHAPE_CASES) == set(standins.SHAPE_ANSWERS)
    found = _in_fresh_python(f"""
        import json, sys
        import torch
        from sdvram import standins
        standins.defer()
        stand_in = sys.modules[standins.SHAPES]
        answers = {{name: getattr(stand_in, name) for name in standins.SHAPE_ANSWERS}}
        def outcome(fn, args):
            try:
                value = fn(*args)
                return [type(value).__name__, repr(value)]
            except Exception as error:
                return ["raised", type(error).__name__]
        cases = {SHAPE_CASES!r}
        mine = {{name: [outcome(answers[name], args) for args in plain] for name, (plain, _) in cases.items()}}
        before = standins.loaded(standins.SHAPES)
        for name, (_, other) in cases.items():
            mine[name] += [outcome(answers[name], args) for args in other]
        real = standins.load(standins.SHAPES)
        theirs = {{name: [outcome(getattr(real, name), args) for args in plain + other]
                   for name, (plain, other) in cases.items()}}
        print(json.dumps({{"mine": mine, "theirs": theirs, "before": before}}))
    """)
    assert found["before"] is False  # the plain cases, answered by the stand-in, did not load the real module
    for name, (plain, other) in SHAPE_CASES.items():
        for args, mine, theirs in zip(plain + other, found["mine"][name], found["theirs"][name], strict=True):
            assert mine == theirs, (name, args)
    assert ["bool", "True"] in found["theirs"]["sym_eq"] and ["raised", "AssertionError"] in found["theirs"]["sym_eq"]


def test_a_simulation_runs_without_loading_what_is_stood_in_for() -> None:
    found = _in_fresh_python("""
        import json, sys
        import sdvram.pipeline
        from sdvram import standins
        from sdvram.gpus import find_gpu
        from sdvram.requests import RunRequest, SimulateOptions
        from sdvram.simulate import Simulator
        stand_ins = {name: type(sys.modules[name]).__name__ for name in standins.ANSWERS}
        import importlib.util
        specs = [name for name in standins.ANSWERS if importlib.util.find_spec(name).name == name]
        record = Simulator().run(RunRequest(height=512, width=512), SimulateOptions(find_gpu("h200")))
        print(json.dumps({"stand_ins": stand_ins, "specs": specs,
                          "loaded": [n for n in standins.ANSWERS if standins.loaded(n)],
                          "dtensor": "torch.distributed.tensor" in sys.modules, "peak": record.peak_allocated}))
    """)
    assert found["stand_ins"] == {name: "Deferred" for name in standins.ANSWERS}
    assert found["specs"] == list(standins.ANSWERS)  # find_spec answers for a stand-in as for the real module
    assert found["peak"] > 0
    assert found["loaded"] == []  # diffusers, transformers and torch's meta kernels asked only what they answer
    assert found["dtensor"] is False


def test_anything_else_loads_the_real_module_in_its_place() -> None:
    found = _in_fresh_python("""
        import json, sys
        import torch
        from sdvram import standins
        standins.defer()
        import sympy  # the stand-in, kept as code that imported it keeps it
        placeholder = sympy.Basic
        x = sympy.Symbol("x")  # not answered: sympy itself is loaded
        import torch._dynamo._trace_wrapped_higher_order_op as sub  # a submodule, as transformers imports one
        before = standins.loaded()
        limit = torch._dynamo.config.recompile_limit  # not an eager answer: the real module answers
        real = sys.modules["torch._dynamo"]
        print(json.dumps({"before": before, "after": standins.loaded(), "limit": limit,
                          "sub_reachable": real._trace_wrapped_higher_order_op is sub,
                          "disable_is_real": torch._dynamo.disable is not standins.EAGER["disable"],
                          "sympy_loaded": standins.loaded("sympy"), "placeholder": placeholder is standins.Basic,
                          "kept_is_real_now": isinstance(x, sympy.Basic)
                                              and sympy.Basic is sys.modules["sympy"].Basic}))
    """)
    assert found == {"before": False, "after": True, "limit": found["limit"], "sub_reachable": True,
                     "disable_is_real": True, "sympy_loaded": True, "placeholder": True, "kept_is_real_now": True}
    assert isinstance(found["limit"], int) and found["limit"] > 0


def test_transformers_model_loading_is_imported_without_torch_distributed() -> None:
    found = _in_fresh_python("""
        import json, sys
        import torch
        from sdvram import standins
        standins.defer()
        import transformers.modeling_utils
        from transformers.utils import is_torch_distributed_available
        print(json.dumps({"available": is_torch_distributed_available(), "torch_says": torch.distributed.is_available(),
                          "dtensor": "torch.distributed.tensor" in sys.modules}))
    """)
    assert found == {"available": False, "torch_says": True, "dtensor": False}


def test_nothing_is_put_in_place_of_a_module_already_loaded() -> None:
    found = _in_fresh_python("""
        import json, sys
        import torch._dynamo
        import sympy
        from sdvram import standins
        real = sys.modules["torch._dynamo"], sys.modules["sympy"]
        standins.defer()
        print(json.dumps({"same": (sys.modules["torch._dynamo"], sys.modules["sympy"]) == real,
                          "loaded": standins.loaded() and standins.loaded("sympy")}))
    """)
    assert found == {"same": True, "loaded": True}
