"""User-facing errors: one line that names the problem and how to fix it."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class BridgeError(Exception):
    """A problem with the user's input or environment that qdq_bridge cannot work around.

    The message is a single line naming the problem and the fix; the CLI prints it and exits non-zero.
    """

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that a run unwinds as on Ctrl-C (SIGINT's
    KeyboardInterrupt): its worker processes end and its scratch files go. Also any of the three that came while a
    run moved its files into place: then `files_in` is the folder that holds the run's complete set. A
    BaseException, so no `except Exception` swallows it."""

    def __init__(self, signal_number: int, files_in: Path | None = None):
        self.signal_number, self.files_in = signal_number, files_in
        super().__init__(f"signal {signal_number}")


def readable_file(path: str | Path, kind: str) -> Path:
    """`path` once it is a regular file this process can read; otherwise a BridgeError saying what it is instead
    (missing, a folder, a symbolic link loop or to nothing, unreadable). `kind` names it: 'model file'..."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            raise BridgeError(f"{kind} '{path}' is a symbolic link to a missing file", "check the link") from None
        raise BridgeError(f"{kind} '{path}' not found", "check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BridgeError(f"{kind} '{path}' is a symbolic link loop", "point the link at a file") from None
        raise BridgeError(f"{kind} '{path}' cannot be read ({exc.strerror})", "check the path and its folders' "
                                                                             "permissions") from None
    if stat.S_ISDIR(mode):
        raise BridgeError(f"{kind} '{path}' is a folder, not a file", "pass the file itself")
    if not stat.S_ISREG(mode):
        raise BridgeError(f"{kind} '{path}' is not a regular file", "pass a file saved on disk")
    if not os.access(path, os.R_OK):
        raise BridgeError(f"{kind} '{path}' cannot be read (permission denied)",
                          "make it readable (chmod) or copy it somewhere you can read")
    return path
