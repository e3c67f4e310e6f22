"""The one exception type phantomlens raises for bad input.

Every message is a single line that says what was wrong and what to do about it; the CLI prints
it as ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class PhantomLensError(ValueError):
    """Bad input or an unusable environment, described in one actionable line."""
