"""Detect: the nightly detection run over the stored trial (``trialguard run``).

- ``run``        one run date end to end (:func:`run_detection`, :func:`run_range`) and
                 the ``trialguard run`` command
- ``store``      readers of the stored day (transactions, registry, telemetry, history,
                 flags, dispositions, policies)
- ``spill``      a big day written once in terminal partitions (Arrow IPC)
- ``fanout``     the spilled partitions processed by worker processes (local runner)
- ``write``      flags, at_risk_cards, terminal_day and runs rows
- ``cluster``    ``--task-runner dask``: the partitions as Prefect tasks on a Dask cluster
- ``remote``     what a Dask worker runs on one partition folder (light, like partition)
- ``nightly``    run bookkeeping of the nightly flow and the nights it must detect
- ``partition``  the per-terminal work of one partition (features + rules + anomaly
                 model); the only module a worker process imports, so it stays light
                 (no DuckDB, Prefect, scikit-learn or pandas; tested)
- ``leakage``    the cross-terminal leakage step: common point of compromise and
                 fraud hotspot over card_days / fraud reports within their lookback

May import: ``kernels``, ``features``, ``models`` and the shared top-level modules.
Must not import ``ingest``, ``analyst``, ``simulate``, ``bench``, ``flows``, ``demo``
or ``cli``. This package's ``__init__`` imports nothing, so a worker that imports
``pipelines.detect.partition`` pays only for what a partition needs.
"""

from pipelines import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    (
        "run",
        "store",
        "spill",
        "fanout",
        "write",
        "cluster",
        "remote",
        "nightly",
        "partition",
        "leakage",
    ),
)
