"""Project tools that are not benchmarks: the findings generator and the docs it regenerates.

Run them as modules from the repository root, e.g. ``python -m tools.findings``; tests import
them as ``tools.<module>`` (pytest puts the root on ``sys.path``). Shared formatting lives in
``tools.fmt``, used by these tools and by ``benchmarks`` alike.
"""
