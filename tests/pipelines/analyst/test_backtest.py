"""``trialguard backtest``: a candidate makes flags appear or disappear; live tables stay untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date

import pytest

from pipelines.analyst.backtest import backtest, load_candidate
from pipelines.cli import main
from pipelines.detect.run import run_range
from pipelines.settings import Settings
from pipelines.storage import connect

D1, D2, D3, D4 = (date(2025, 9, d) for d in range(1, 5))
LIVE_TABLES = ("flags", "dispositions", "runs", "at_risk_cards", "terminal_day", "policies")


def _table_hashes(db) -> dict[str, str]:
    con = connect(db, read_only=True)
    try:
        out = {}
        for table in LIVE_TABLES:
            rows = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
            out[table] = hashlib.sha256(repr(rows).encode()).hexdigest() + f":{len(rows)}"
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def live_db(small_trial_db, tmp_path_factory):
    """The small trial ingested and detected D1..D4, with one analyst decision (shared)."""
    db = tmp_path_factory.mktemp("backtest") / "trialguard.duckdb"
    shutil.copy2(small_trial_db, db)
    settings = Settings(db_path=db)
    run_range(settings, D1, D4)
    con = connect(db)
    flag_id = con.execute("SELECT min(flag_id) FROM flags").fetchone()[0]
    con.execute(
        "INSERT INTO dispositions VALUES (?, 'confirmed', 'ana', NULL, TIMESTAMP '2025-09-05 10:00', NULL)",
        [flag_id],
    )
    con.close()
    return settings


def _policy_ids(db) -> list[str]:
    con = connect(db, read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT DISTINCT policy_id FROM policies").fetchall()]
    finally:
        con.close()


def test_stricter_and_looser_candidates_make_flags_appear_and_disappear(live_db, tmp_path):
    db = live_db.db_path
    before = _table_hashes(db)
    ids = _policy_ids(db)
    assert ids, "the simulated trial ships policies"

    # Stricter: a daily count cap of 1 makes trial_limit_breach appear almost everywhere.
    strict = tmp_path / "strict.toml"
    strict.write_text(
        "".join(f"[policies.{pid}]\nmax_daily_txn_count = 1\n\n" for pid in ids), encoding="utf-8"
    )
    report = backtest(live_db, strict, D2, D3)
    appeared = {(r["terminal_id"], r["behaviour"]) for r in report.appear}
    assert any(b == "trial_limit_breach" for _, b in appeared)
    assert all(0 <= r["score"] <= 1 for r in report.appear)
    assert [n["night"] for n in report.nights] == [D2, D3]
    assert sum(n["candidate_new"] for n in report.nights) > sum(
        n["baseline_new"] for n in report.nights
    )

    # Looser: no caps at all, every code allowed -> the policy flags disappear.
    loose = tmp_path / "loose.toml"
    loose.write_text(
        "".join(
            f"[policies.{pid}]\nmax_txn_amount_minor = 1000000000000\n"
            "max_daily_amount_minor = 1000000000000\nmax_daily_txn_count = 1000000\n"
            "max_same_card_per_day = 1000000\n"
            'allowed_entry_modes = ["01", "02", "03", "05", "07", "80", "90", "91"]\n'
            'allowed_card_types = ["debit", "credit", "prepaid", "unknown"]\n\n'
            for pid in ids
        ),
        encoding="utf-8",
    )
    report = backtest(live_db, loose, D2, D3)
    gone = {b for _, b in ((r["terminal_id"], r["behaviour"]) for r in report.disappear)}
    assert gone & {"trial_limit_breach", "disallowed_use"}
    assert not any(r["behaviour"] == "trial_limit_breach" for r in report.appear)

    assert _table_hashes(db) == before  # live flags, dispositions and runs untouched


def test_cli_json_and_candidate_errors(live_db, tmp_path, capsys):
    same = tmp_path / "same.toml"
    same.write_text("[episodes]\ngap_days = 3\n", encoding="utf-8")  # the shipped value
    rc = main(["--db", str(live_db.db_path), "backtest", "--config", str(same),
               "--from", "2025-09-03", "--to", "2025-09-04", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["appear"] == [] and out["disappear"] == []  # same config, same flags
    assert [n["night"] for n in out["nights"]] == ["2025-09-03", "2025-09-04"]
    assert all(n["baseline_new"] == n["candidate_new"] for n in out["nights"])

    bad = tmp_path / "bad.toml"
    bad.write_text("[policies.default]\nmax_daily_txns = 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown keys \['max_daily_txns'\]"):
        load_candidate(bad)
    rc = main(["--db", str(live_db.db_path), "backtest", "--config", str(tmp_path / "nope.toml"),
               "--from", "2025-09-01", "--to", "2025-09-04"])  # fmt: skip
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
