"""The command line: ``pipeline`` (the console script) and ``python -m pipeline``.

:func:`main` and :func:`build_parser` are :mod:`pipeline.cli.app`'s, the entry point
``pyproject.toml`` names (``pipeline.cli.app:main``). The commands users run live here too:
``pipeline demo`` and ``pipeline bench`` with their sample generators, ``pipeline plan``'s output,
and the commands that read committed outputs.
"""

from pipeline.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
