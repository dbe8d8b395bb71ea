"""The I/O layer: Prefect flows, ingest, storage, detection runs, analyst tools and the CLI.

Only this layer touches Prefect, DuckDB, Great Expectations, files and the clock.
It is cut by stage; each sub-package's docstring says what it owns and what it
may import (``tests/test_layering.py`` enforces it):

- ``pipelines.ingest``   landing files -> validated, tokenised rows in DuckDB
- ``pipelines.detect``   the nightly detection run over the stored trial
- ``pipelines.analyst``  queue, case files, review, verdicts, report, backtest, evaluate
- ``pipelines.simulate`` realistic trials with ground truth
- ``pipelines.bench``    speed and memory benchmarks
- ``pipelines.storage``  the DuckDB file and its DDL

At the top: ``cli`` (the ``trialguard`` command), ``flows`` (the Prefect nightly
flow), ``schedule`` (its deployment, ``trialguard serve``), ``demo``, ``settings``, ``runlock``, ``progress`` and
``version``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(package: str, submodules: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds public names in a package's submodules on first use.

    Keeps ``import pipelines.detect`` as light as an empty package (worker
    processes import only ``pipelines.detect.partition``) while
    ``from pipelines.detect import run_detection`` keeps working.
    """

    def __getattr__(name: str) -> Any:
        from importlib import import_module

        if name in submodules:
            return import_module(f"{package}.{name}")
        if not name.startswith("_"):
            for sub in submodules:
                module = import_module(f"{package}.{sub}")
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
