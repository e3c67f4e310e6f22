"""The one exception type phantomlens raises for bad input.

Every message is a single line that says what was wrong and what to do about it; the CLI prints
it as ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class PhantomLensError(ValueError):
    """Bad input or an unusable environment, described in one actionable line."""


def one_line(exc: BaseException) -> str:
    """An exception raised by a dependency or the OS, as one line for the CLI's ``error:`` prefix.

    The OS names the file and the reason (``/x/out: permission denied``); anything else keeps its
    type and the first line of its message, which is where libraries put the cause.
    """
    if isinstance(exc, PhantomLensError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = (exc.strerror or type(exc).__name__).lower()
        return f"{exc.filename}: {reason}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
