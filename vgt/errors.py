"""The one error type of vgt: a refusal the user can act on, said in one line.

The CLI prints `error: <message>` without a traceback and exits 1 (`VGTError`: a missing object, a
refused resume, a corrupted folder) or 2 (`UsageError`: bad flags, overrides or inputs, as argparse
does). Library callers catch `VGTError`, or a subclass where they must tell cases apart.
"""
from __future__ import annotations


class VGTError(Exception):
    """A refusal at run time (exit status 1)."""

    exit_status = 1


class UsageError(VGTError, ValueError):
    """The request itself is wrong: flags, overrides, input lists (exit status 2)."""

    exit_status = 2
