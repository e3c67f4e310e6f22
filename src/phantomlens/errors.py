"""The one exception type phantomlens raises for bad input.

Every message is a single line that says what was wrong and what to do about it; the CLI prints
it as ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class PhantomLensError(ValueError):
    """Bad input or an unusable environment, described in one actionable line."""


#: How much of a user's own text (a prompt, an answer, a name) an error quotes: enough to find it,
#: not so much that a 500-word answer buries what was wrong.
QUOTE_LIMIT = 60


def short(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` quoted as ``repr`` quotes it, its text cut to ``limit`` characters with "…"."""
    return repr(clip(value, limit)) if isinstance(value, str) else clip(repr(value), limit)


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, the last of them "…", when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed(items: list[str], limit: int = 4) -> str:
    """The first ``limit`` of ``items``, comma-separated, with how many more there are."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


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
