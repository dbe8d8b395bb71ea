"""Generate ``docs/tables.md`` from the schema module, so the docs never drift from the DDL.

Run ``python -m pipelines.storage.docgen`` after changing ``features/schema.py``; a test
fails when the committed file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from features.schema import BEHAVIOURS, INPUT_KINDS, TABLES, UNINDEXED_KEYS

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "tables.md"

TABLE_PURPOSE: dict[str, str] = {
    "terminals": "the trial terminal registry; every version kept, the latest `updated_at` in force",
    "transactions": "the switch log; `pan` never stored (token + BIN + last 4 instead)",
    "terminal_events": "terminal-management telemetry",
    "fraud_reports": "issuer fraud notifications (arrive late)",
    "policies": "trial policies, one row per policy version",
    "quarantine": "rejected rows with file, line and reason; card numbers redacted",
    "ingest_manifest": "one row per file attempt: accounting, status, messages",
    "gate_results": "Great Expectations gate result per batch",
    "runs": "one row per command run (ingest, run, nightly, backtest)",
    "flags": "one row per terminal x behaviour episode",
    "dispositions": "append-only analyst decisions",
    "at_risk_cards": "cards seen at a compromised terminal in its compromise window (tokens only)",
}


def render() -> str:
    """The Markdown text of ``docs/tables.md``."""
    out = [
        "# Tables",
        "",
        "Generated from `features/schema.py` by `python -m pipelines.storage.docgen`; do not edit by hand.",
        "All timestamps are local wall-clock time in the configured zone (default Asia/Shanghai).",
        "",
    ]
    for table, (cols, pk) in TABLES.items():
        out.append(f"## `{table}`")
        purpose = TABLE_PURPOSE.get(table)
        if purpose:
            out.append(purpose[0].upper() + purpose[1:] + ".")
        if pk and table in UNINDEXED_KEYS:
            out.append(
                f"Key: `{', '.join(pk)}`, unique by ingest's de-duplication (no index: "
                "see `UNINDEXED_KEYS` in `features/schema.py`)."
            )
        elif pk:
            out.append(f"Primary key: `{', '.join(pk)}`.")
        out += ["", "| column | type | required | meaning |", "|---|---|---|---|"]
        for c in cols:
            meaning = c.description
            if c.allowed:
                meaning = (
                    (meaning + "; " if meaning else "")
                    + "one of "
                    + ", ".join(f"`{v}`" for v in c.allowed)
                )
            out.append(
                f"| {c.name} | {c.duckdb_type} | {'yes' if c.required else ''} | {meaning} |"
            )
        out.append("")
    out += ["## Input kinds", "", "| kind | required columns |", "|---|---|"]
    for name, kind in INPUT_KINDS.items():
        req = ", ".join(kind.required)
        if kind.one_of:
            req += "; one of " + " / ".join("|".join(g) for g in kind.one_of)
        out.append(f"| {name} | {req} |")
    out += ["", "## Behaviour codes", "", "| code | category |", "|---|---|"]
    out += [f"| `{code}` | {cat} |" for code, cat in BEHAVIOURS.items()]
    return "\n".join(out) + "\n"


def main() -> int:
    """Write ``docs/tables.md``."""
    DOC_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
