"""The project's docs stay in step with the schema and the data contract."""

from __future__ import annotations

import re
from pathlib import Path

from features.schema import BEHAVIOURS, INPUT_KINDS, POLICY_KEYS
from pipelines.storage.docgen import DOC_PATH, render

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "data-contract.md"
# Documented in README "Where TrialGuard differs from the contract": fraud reports
# carry card_bin / card_last4 beside card_token, "handled exactly as in transactions".
EXTENSIONS = {"fraud_reports": {"card_bin", "card_last4"}}


def test_tables_doc_is_generated_from_the_schema():
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        "docs/tables.md is out of date; run `python -m pipelines.storage.docgen`"
    )


def test_behaviour_codes_match_the_contract():
    text = CONTRACT.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z_]+) \|", text, flags=re.MULTILINE)
    assert dict(rows) == BEHAVIOURS


def test_input_columns_match_the_contract():
    text = CONTRACT.read_text(encoding="utf-8")
    for name, kind in INPUT_KINDS.items():
        section = text.split(f"### {name}", 1)[1].split("###", 1)[0]
        documented: list[str] = []
        for cell in re.findall(r"^\| ([a-z_0-9, /]+?) \|", section, flags=re.MULTILINE):
            if cell.strip() == "column":
                continue
            documented += [c.strip() for c in re.split(r"[,/]", cell)]
        assert set(documented) | EXTENSIONS.get(name, set()) == set(kind.names), name


def test_policy_keys_match_the_contract():
    text = CONTRACT.read_text(encoding="utf-8")
    block = text.split("```toml", 1)[1].split("```", 1)[0]
    keys = re.findall(r"^([a-z_]+) =", block, flags=re.MULTILINE)
    assert set(keys) == set(POLICY_KEYS)
