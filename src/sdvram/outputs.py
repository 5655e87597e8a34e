"""Files the user asked for, written whole or not at all, and proven writable before any run.

``reserve(path, what)`` creates the output's temporary file in its target folder at once: if that fails
(no such folder, no permission, a read-only or pseudo file system such as /proc), the user hears it before
minutes of running are spent. ``commit`` writes the content to that temporary file, flushes it to disk and
renames it over the target (``os.replace``: atomic on POSIX within a folder); ``discard`` removes it. The
file gets the usual permissions (0666 less the umask), as ``open()`` would give it.

A target that exists and is not a regular file (a device such as /dev/null or /dev/full, a FIFO, a terminal; or a
symbolic link to one, such as /dev/stdout) is never replaced: it is written to directly, as a shell's ``>`` would
(renaming over /dev/full as root would turn the system's device into a regular file). A symbolic link to a
regular file, or to nothing, is replaced by the new file; the file it pointed to is left as it was. Pure Python.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sdvram.errors import InputError, WriteError

STDOUT = "-"  # the path that means "print it" for --json


class PendingFile:
    """An output reserved before a run. Use ``commit_text``/``commit_with`` once, or ``discard``."""

    def __init__(self, path: Path, what: str, param: str) -> None:
        self.path, self.what, self.param = path, what, param
        self.tmp: Path | None = None
        self.direct = _special(path)  # a device, a FIFO...: written to, never replaced
        if self.direct:
            if not os.access(path, os.W_OK):
                raise InputError(f"{{{param}}}: {{path}} cannot be written to (permission denied); give another path "
                                 f"for the {what}.", params=(param,), path=path)
            return
        if path.is_dir():
            raise InputError(f"{{{param}}}: {{path}} is a folder; give a file name for the {what}.", params=(param,),
                             path=path)
        folder = path.parent
        if not folder.is_dir():
            raise InputError(f"{{{param}}}: {{folder}} does not exist; create it or give another path for the "
                             f"{what}.", params=(param,), folder=folder)
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, like open()
        except OSError as exc:
            raise InputError(f"{{{param}}}: cannot write in {{folder}} ({{reason}}); give another path for the "
                             f"{what}.", params=(param,), folder=folder, reason=exc.strerror or exc) from None
        os.close(fd)
        self.tmp = tmp

    def commit_text(self, text: str) -> None:
        self.commit_with(lambda handle: handle.write(text.encode("utf-8")))

    def commit_with(self, write: Callable[[IO[bytes]], object]) -> None:
        """Write through ``write(handle)`` into the temporary file, then rename it over the target. On any
        failure the temporary file is removed, the target left as it was, and a WriteError says why. A special
        target is written to directly."""
        if self.direct:
            self.direct = False  # once
            try:
                with open(self.path, "ab") as handle:  # appended, as to a stream: nothing before it is cut
                    write(handle)
                    handle.flush()
            except (OSError, ValueError) as exc:
                raise self._failed(exc) from None
            return
        if self.tmp is None:
            raise RuntimeError("this output was already committed or discarded")
        tmp, self.tmp = self.tmp, None
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise self._failed(exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _failed(self, exc: OSError | ValueError) -> WriteError:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return WriteError(f"Could not write the {self.what} to {self.path} ({reason}).")

    def discard(self) -> None:
        self.direct = False
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


# a process's open file descriptors: /dev/stdout -> /proc/self/fd/1, /dev/fd/1
STREAMS = re.compile(r"^(/proc/(self|thread-self|\d+)/fd/|/dev/fd/)")
MAX_LINKS = 40  # the kernel's own limit on symbolic links followed in one lookup


def _special(path: Path) -> bool:
    """Does ``path`` exist and lead (through any symbolic links) to something other than a regular file or a
    folder (a character or block device, a FIFO, a socket), or to a process's open file descriptor (/dev/stdout
    and the like, whatever that descriptor is: a terminal, a pipe, a file the shell redirected to)?"""
    hop = str(path)
    for _ in range(MAX_LINKS):
        if STREAMS.match(hop) and os.path.exists(hop):
            return True
        if not os.path.islink(hop):
            break
        target = os.readlink(hop)
        hop = target if os.path.isabs(target) else os.path.join(os.path.dirname(hop), target)
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def same_file(outputs: list[tuple[str | Path | None, str]]) -> None:
    """InputError when two of ``outputs`` ((path, param), None and "-" for none) name the same file: one would
    replace the other."""
    seen: dict[Path, str] = {}
    for path, param in outputs:
        if path is None or str(path) == STDOUT:
            continue
        where = Path(path).resolve()
        if where in seen and not _special(where):
            raise InputError(f"{{{seen[where]}}} and {{{param}}} name the same file, {{path}}; give each output a path "
                             "of its own.", params=(seen[where], param), path=path)
        seen[where] = param


def reserve(path: str | Path | None, what: str, param: str) -> PendingFile | None:
    """A PendingFile for ``path`` (None for no output, and for ``-``, which means stdout)."""
    if path is None or str(path) == STDOUT:
        return None
    return PendingFile(Path(path), what, param)


def image_format(path: str | Path, param: str) -> str:
    """The Pillow format that ``path``'s extension names, checked to write an RGB image, before any run
    (``out.xbm`` is refused: XBM holds only 1-bit images)."""
    import io

    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{{{param}}}: Pillow cannot write '{{suffix}}' files; use .png, .jpg or .webp.",
                         params=(param,), suffix=suffix or "no extension")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError):
        raise InputError(f"{{{param}}}: {fmt} cannot hold an RGB image; use .png, .jpg or .webp.",
                         params=(param,)) from None
    return fmt
