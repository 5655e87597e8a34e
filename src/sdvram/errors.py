"""The failures sdvram reports to a user, each with its documented exit code (README, "Exit codes")."""

from __future__ import annotations


class SdvramError(Exception):
    """A failure the user can act on: printed as one sentence on stderr, never as a traceback."""

    exit_code = 1


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
    """The GPU ran out of memory during a profiled stage."""

    exit_code = 5
