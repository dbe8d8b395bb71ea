"""Analyst tools: what a risk analyst reads and decides (flags, show, review, report, ...).

- ``queue``     the flag queue (``trialguard flags``), filtered, ordered by score, exported
- ``casefile``  a terminal's case file (``trialguard show``)
- ``review``    an analyst's decision (``trialguard review``): append-only dispositions
- ``common``    opening the store, card masking, formula-safe CSV/JSON
- ``verdicts``  trial-end recommendations: pass, extend or terminate, with evidence
- ``report``    the offline HTML report (templates in ``templates/``), built from
                ``sections`` (summary, queue, behaviours, verdicts, data quality, case pages)
                and ``charts`` (inline SVG charts, HTML escaping)
- ``backtest``  replay detection with a candidate config without touching live flags
- ``evaluate``  precision and recall per behaviour against a simulator's truth file

May import: ``kernels``, ``features``, ``models``, the shared top-level modules and
``pipelines.detect`` (backtest replays detection). Must not import ``ingest``,
``simulate``, ``bench``, ``flows``, ``demo`` or ``cli``.
"""

from pipelines import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    (
        "queue",
        "casefile",
        "review",
        "common",
        "verdicts",
        "report",
        "charts",
        "sections",
        "backtest",
        "evaluate",
    ),
)
