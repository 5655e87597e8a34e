"""The failures sdvram reports to a user, each with its documented exit code (README, "Exit codes").

Library code names parameters, not command-line flags: an ``InputError`` is built from a template whose
``{param}`` fields are parameter names, and ``render`` fills them with the names the caller's interface
uses (the CLI passes its flag table; ``str()`` gives the parameter names themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class SdvramError(Exception):
    """A failure the user can act on: printed as one sentence on stderr, never as a traceback.

    ``InputError("{height} must be ...; got {got}.", params=("height",), got=0)``: each name in ``params``
    is a parameter, rendered through the caller's name table; other fields are values, inserted as given.
    A template without params or values is the sentence itself (it may hold braces).
    """

    exit_code = 1

    def __init__(self, template: str, *, params: Sequence[str] = (), **values: Any) -> None:
        self.template, self.params, self.values = template, tuple(params), values
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        if not self.params and not self.values:
            return self.template
        spell: Callable[[str], str]
        if callable(names):
            spell = names
        else:
            table = names or {}
            spell = lambda param: table.get(param, param)  # noqa: E731
        return self.template.format(**{p: spell(p) for p in self.params}, **self.values)


class InputError(SdvramError):
    """Bad input: a size, token count, file or option that is not allowed."""

    exit_code = 2


class NoCudaError(SdvramError):
    """A CUDA GPU was asked for and there is none."""

    exit_code = 3


class MissingExtraError(SdvramError):
    """An optional dependency group is not installed."""

    exit_code = 4

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"This command needs the '{extra}' extra ({module} is not installed); "
            f"install it with: pip install 'sdvram[{extra}]'"
        )
        self.extra = extra
        self.module = module


class OutOfMemoryError(SdvramError):
    """The device (a GPU, or the host for a CPU run) ran out of memory during a profiled stage."""

    exit_code = 5


class WriteError(SdvramError):
    """A result was computed but a file the user asked for could not be written at the end; what could be
    printed or written was, and the sentence says what was lost."""

    exit_code = 6


class Interrupted(SdvramError):
    """Ctrl-C (exit 130) or SIGTERM (143, what timeout, systemd and container runtimes send): the run stopped;
    files are written whole or not at all, so nothing half-written is left, and the sentence says which were."""

    exit_code = 130

    def __init__(self, written: list[str] | None = None, signal_name: str = "interrupted") -> None:
        done = f"wrote {', '.join(written)}; nothing else was written" if written else "nothing was written"
        super().__init__(f"{signal_name}; {done}")
        if signal_name != "interrupted":
            self.exit_code = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C's KeyboardInterrupt is: the same clean-up runs."""


class HostOutOfMemory(SdvramError):
    """The host (not the GPU) ran out of memory: an import, a decode or a simulation could not allocate."""

    exit_code = 5
    # what is said when nothing more precise is known (a MemoryError or std::bad_alloc anywhere in a command)
    RAN_OUT = ("This machine ran out of memory (the host's RAM, not the GPU's); close other programs, or try a "
               "smaller image or batch.")
