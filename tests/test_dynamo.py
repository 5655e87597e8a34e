"""The stand-in for torch._dynamo (dynamo.py): what it answers, that a simulation needs nothing more of it, and that
anything else loads the real module. Each case runs in a fresh interpreter: whether Dynamo is loaded is the state of
a whole process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from sdvram import dynamo


def _in_fresh_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_eager_answers_are_what_the_real_calls_give_where_nothing_compiles() -> None:
    def f(x: int) -> int:
        return x + 1

    for name in ("disable", "allow_in_graph"):
        answer = dynamo.EAGER[name]
        assert answer(f) is f  # the function itself, not a wrapper
        assert answer()(f) is f  # as a decorator with arguments: @torch.compiler.disable()
        assert answer(None, False)(f) is f  # torch.compiler.disable(recursive=False)
        assert answer(f, recursive=False, reason="r", wrapping=False) is f  # torch._disable_dynamo's call
    marked = dynamo.EAGER["assume_constant_result"](f)
    assert marked is f and f._dynamo_marked_constant is True  # type: ignore[attr-defined]
    assert dynamo.EAGER["is_compiling"]() is False
    import torch

    assert not isinstance(torch.nn.Linear(2, 2), dynamo.EAGER["eval_frame"].OptimizedModule)


def test_a_simulation_runs_without_loading_dynamo() -> None:
    found = _in_fresh_python("""
        import json, sys
        import sdvram.pipeline
        from sdvram import dynamo
        from sdvram.choices import Architecture
        from sdvram.gpus import find_gpu
        from sdvram.requests import RunRequest, Settings, SimulateOptions
        from sdvram.simulate import Simulator
        stand_in = type(sys.modules["torch._dynamo"]).__name__
        request = RunRequest(height=64, width=64, architecture=Architecture.tiny, settings=Settings(steps=2))
        record = Simulator(architecture=Architecture.tiny).run(request, SimulateOptions(find_gpu("h200")))
        print(json.dumps({"stand_in": stand_in, "loaded": dynamo.loaded(), "peak": record.peak_allocated}))
    """)
    assert found["stand_in"] == "Deferred"
    assert found["peak"] > 0
    assert found["loaded"] is False  # diffusers and transformers asked it only what it answers


def test_anything_else_loads_the_real_module_in_its_place() -> None:
    found = _in_fresh_python("""
        import json, sys
        import torch
        from sdvram import dynamo
        dynamo.defer()
        import torch._dynamo._trace_wrapped_higher_order_op as sub  # a submodule, as transformers imports one
        before = dynamo.loaded()
        limit = torch._dynamo.config.recompile_limit  # not an eager answer: the real module answers
        real = sys.modules["torch._dynamo"]
        print(json.dumps({"before": before, "after": dynamo.loaded(), "limit": limit,
                          "sub_reachable": real._trace_wrapped_higher_order_op is sub,
                          "disable_is_real": torch._dynamo.disable is not dynamo.EAGER["disable"]}))
    """)
    assert found == {"before": False, "after": True, "limit": found["limit"], "sub_reachable": True,
                     "disable_is_real": True}
    assert isinstance(found["limit"], int) and found["limit"] > 0


def test_nothing_is_put_in_place_of_a_dynamo_already_loaded() -> None:
    found = _in_fresh_python("""
        import json, sys
        import torch._dynamo
        from sdvram import dynamo
        real = sys.modules["torch._dynamo"]
        dynamo.defer()
        print(json.dumps({"same": sys.modules["torch._dynamo"] is real, "loaded": dynamo.loaded()}))
    """)
    assert found == {"same": True, "loaded": True}
