"""pytest setup for benchmarks/: collect ``bench_*.py`` files, which pytest's default patterns skip.

``pytest`` alone never gets here (pyproject's ``testpaths = ["tests"]``); run this folder explicitly:

* ``pytest benchmarks``                   timings and the memory checks, one run
* ``pytest benchmarks --benchmark-only``  timings only (bench_cpu_memory.py's tests do not use the
  ``benchmark`` fixture, so ``--benchmark-only`` skips them)
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
