"""Analyst tools: what a risk analyst reads and decides (flags, show, review, report, ...).

- ``cases``     the flag queue, case files, review (dispositions) and safe CSV/JSON export
- ``verdicts``  trial-end recommendations: pass, extend or terminate, with evidence
- ``report``    the offline HTML report (templates in ``templates/``)
- ``backtest``  replay detection with a candidate config without touching live flags
- ``evaluate``  precision and recall per behaviour against a simulator's truth file

May import: ``kernels``, ``features``, ``models``, the shared top-level modules and
``pipelines.detect`` (backtest replays detection). Must not import ``ingest``,
``simulate``, ``bench``, ``flows``, ``demo`` or ``cli``.
"""

from pipelines import lazy_exports

__getattr__ = lazy_exports(__name__, ("cases", "verdicts", "report", "backtest", "evaluate"))
