"""Great Expectations quality gate, with suites generated from :mod:`features.schema`.

The row-level checks of ingest already quarantine every invalid row, so the
gate is a second line of defence: it re-states the schema as expectations and
runs them on (a seeded sample of) each file's accepted rows. A failed gate
means the row-level checks and the schema disagree, which is a bug to look
at: the rows stay loaded, the failure is stored in ``gate_results`` and the
manifest, and ``trialguard ingest`` exits with status 1 (see ``docs/ingest.md``).

Suites per kind (stored columns, ``pan`` excluded):

* every stored column exists (one table-level expectation);
* required columns (and ``card_token``, ``card_bin``, ``card_last4`` for kinds
  that carry a card) are not null;
* enumerated columns take listed values; patterned text columns match their
  pattern; numeric columns respect their minimum and maximum;
* the table key is unique.

Data Docs are rendered by a file context rooted at ``settings.data_docs_dir``
(``<dir>/gx/uncommitted/data_docs/local_site/index.html``), once per ingest call.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from features.schema import INPUT_KINDS, TABLES, InputKind
from pipelines.ingest.cards import safe_message

#: Columns holding card data for kinds that have ``pan`` / ``card_token``.
CARD_COLUMNS = ("card_token", "card_bin", "card_last4")
_SKIP = ("extra", "file_id", "line_no")


@dataclass
class GateResult:
    """Outcome of one suite on one batch."""

    suite: str
    success: bool
    evaluated: int
    failed: int
    details: list[dict[str, Any]] = field(default_factory=list)
    docs_path: str | None = None


def suite_name(kind: str) -> str:
    """Name of the expectation suite of an input kind."""
    return f"trialguard.{kind}"


def expectation_specs(kind: InputKind) -> list[tuple[str, dict[str, Any]]]:
    """The suite of ``kind`` as (expectation class name, keyword arguments), from the schema.

    Examples
    --------
    >>> from features.schema import FRAUD_REPORTS
    >>> ("ExpectColumnValuesToBeUnique", {"column": "report_id"}) in expectation_specs(FRAUD_REPORTS)
    True
    """
    columns, key = TABLES[kind.name]
    stored = [c for c in columns if c.name not in _SKIP]
    card = bool(kind.one_of)
    # one table-level expectation for the columns instead of one per column: GX's
    # fixed cost is per expectation (~40 ms), the data is small (a sample)
    specs: list[tuple[str, dict[str, Any]]] = [
        (
            "ExpectTableColumnsToMatchSet",
            {"column_set": [c.name for c in stored], "exact_match": False},
        )
    ]
    for col in stored:
        if col.required or (card and col.name in CARD_COLUMNS):
            specs.append(("ExpectColumnValuesToNotBeNull", {"column": col.name}))
        if col.allowed:
            specs.append(
                (
                    "ExpectColumnValuesToBeInSet",
                    {"column": col.name, "value_set": list(col.allowed)},
                )
            )
        if col.pattern and col.dtype == "str":
            specs.append(
                (
                    "ExpectColumnValuesToMatchRegex",
                    {"column": col.name, "regex": f"^(?:{col.pattern})$"},
                )
            )
        bounds = {"min_value": col.min_value, "max_value": col.max_value}
        if col.dtype in ("int", "float") and any(v is not None for v in bounds.values()):
            limits = {k: v for k, v in bounds.items() if v is not None}
            specs.append(("ExpectColumnValuesToBeBetween", {"column": col.name, **limits}))
    if len(key) == 1:
        specs.append(("ExpectColumnValuesToBeUnique", {"column": key[0]}))
    elif key:
        specs.append(("ExpectCompoundColumnsToBeUnique", {"column_list": list(key)}))
    return specs


class Gate:
    """Runs the schema suites on batches and renders Data Docs; one per ingest call.

    Great Expectations is imported (slowly, several seconds) on first use. The
    context, the pandas data source, one asset and batch definition per kind and
    the suites are set up once per :class:`Gate` and reused for every file; each
    file is validated directly on its batch (no checkpoint: a checkpoint re-reads
    and compares its stored configuration on every run, which cost 1-2 s a
    file), its result is stored for Data Docs, and :meth:`build_docs` renders the
    pages of this call's results once, at the end.

    Parameters
    ----------
    docs_dir : Path
        Root of the file context that stores results and Data Docs.
    """

    def __init__(self, docs_dir: str | Path) -> None:
        self.docs_dir = Path(docs_dir)
        self._context = None
        self._source = None
        self._kinds: dict[str, tuple[Any, Any]] = {}
        self._result_ids: list[Any] = []
        self._warm: threading.Thread | None = None
        self._warm_error: BaseException | None = None
        self.ran = 0

    def warm_up(self) -> None:
        """Import Great Expectations and open the context in a background thread.

        The import alone costs several seconds of CPU; started when an ingest call
        begins, it runs while DuckDB reads the first file (DuckDB releases the GIL)
        instead of after it. Every use of the context waits for it to finish, and an
        error it met is raised there.
        """
        if self._warm is not None or self._context is not None:
            return

        def work() -> None:
            try:
                self._open()
            except BaseException as exc:  # noqa: BLE001 - raised again by the first real use
                self._warm_error = exc

        self._warm = threading.Thread(target=work, name="trialguard-gate-warm-up", daemon=True)
        self._warm.start()

    def _ctx(self):
        if self._warm is not None:
            self._warm.join()
            self._warm = None
            if self._warm_error is not None:
                error, self._warm_error = self._warm_error, None
                raise error
        return self._open()

    def _open(self):
        if self._context is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.docs_dir.mkdir(parents=True, exist_ok=True)
            ctx = gx.get_context(mode="file", project_root_dir=str(self.docs_dir))
            # the per-metric progress bars flood logs; results are reported by ingest
            ctx.variables.progress_bars = ProgressBarsConfig(
                globally=False, metric_calculations=False
            )
            self._context = ctx
        return self._context

    def _prepared(self, kind: str) -> tuple[Any, Any]:
        """The (batch definition, suite) of ``kind``, created on first use in this gate."""
        if kind not in self._kinds:
            ctx = self._ctx()  # first: waits for the warm-up thread's import
            import great_expectations as gx
            import great_expectations.expectations as gxe

            if self._source is None:
                self._source = ctx.data_sources.add_or_update_pandas("trialguard")
            try:
                asset = self._source.get_asset(kind)
            except LookupError:
                asset = self._source.add_dataframe_asset(kind)
            try:
                batch = asset.get_batch_definition("whole file")
            except (LookupError, KeyError):
                batch = asset.add_batch_definition_whole_dataframe("whole file")
            suite = gx.ExpectationSuite(name=suite_name(kind))
            for cls, kwargs in expectation_specs(INPUT_KINDS[kind]):
                suite.add_expectation(getattr(gxe, cls)(**kwargs))
            self._kinds[kind] = (batch, suite)
        return self._kinds[kind]

    def validate(self, kind: str, frame: pl.DataFrame, file_id: str) -> GateResult:
        """Run the suite of ``kind`` on ``frame`` (a file's accepted rows or a sample)."""
        batch_definition, suite = self._prepared(kind)  # first: waits for the warm-up
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
        result = batch.validate(suite, result_format="SUMMARY")
        run_id = _run_id(file_id)
        result.meta.update(
            run_id=run_id, validation_time=run_id.run_time, batch_parameters={"file_id": file_id}
        )
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
            run_id=run_id,
            batch_identifier=result.batch_id,
        )
        self._ctx().validation_results_store.set(key, result)
        self._result_ids.append(key)
        details: list[dict[str, Any]] = []
        evaluated = failed = 0
        for r in result.results:
            evaluated += 1
            if r.success:
                continue
            failed += 1
            cfg = r.expectation_config
            res = r.result or {}
            sample = [safe_message(str(v)) for v in (res.get("partial_unexpected_list") or [])[:5]]
            entry = {
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list"),
                "unexpected_count": res.get("unexpected_count"),
                "element_count": res.get("element_count"),
                "sample": sample,
            }
            mismatched = (res.get("details") or {}).get("mismatched")
            if mismatched:  # table columns: which are missing or unexpected (names only)
                entry["mismatched"] = mismatched
            details.append(entry)
        self.ran += 1
        return GateResult(
            suite=suite_name(kind),
            success=bool(result.success),
            evaluated=evaluated,
            failed=failed,
            details=json.loads(json.dumps(details, default=str)),
            docs_path=str(self.index_path),
        )

    @property
    def index_path(self) -> Path:
        """The Data Docs entry page."""
        return self.docs_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def build_docs(self) -> Path | None:
        """Render Data Docs for the results of this gate (once per ingest call).

        Only this call's result pages (and the suites used) are rendered; pages
        of earlier calls stay as they are, and the index lists them all.
        """
        if not self._result_ids:
            return None
        ctx = self._ctx()
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
        )

        suites = []
        for _, suite in self._kinds.values():
            ctx.suites.add_or_update(suite)
            suites.append(ExpectationSuiteIdentifier(name=suite.name))
        ctx.build_data_docs(resource_identifiers=[*self._result_ids, *suites])
        self._result_ids.clear()
        return self.index_path


def _run_id(file_id: str):
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=f"file-{file_id[:16]}")
