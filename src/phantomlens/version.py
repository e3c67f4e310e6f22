"""The package version, in a module of its own so that reading it imports nothing else.

Modules that need the version import ``phantomlens.version``, never the package root: the root
resolves its exports lazily, and importing it from inside the package would tie every module to it.
"""

from __future__ import annotations

__version__ = "0.1.0"
