"""The trial simulator: determinism, contract conformance, behaviours and exact derived truth."""

from __future__ import annotations

import ast
import hashlib
import re
import tomllib
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from features.schema import (
    BEHAVIOURS,
    FRAUD_REPORTS,
    POLICY_KEYS,
    TERMINAL_EVENTS,
    TERMINALS,
    TRANSACTIONS,
    InputKind,
)
from pipelines.simulate import simulate_trial, write_trial

ROOT = Path(__file__).resolve().parents[3]
START = date(2025, 9, 1)
TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\+08:00)?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@pytest.fixture(scope="module")
def trial():
    return simulate_trial(80, 8, START, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    report = write_trial(out, 40, 5, START, seed=11)
    return out, report


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, written):
    out, _ = written
    write_trial(tmp_path / "again", 40, 5, START, seed=11)
    write_trial(tmp_path / "other", 40, 5, START, seed=12)
    first = _hashes(out)
    assert len(first) >= 10
    assert _hashes(tmp_path / "again") == first
    other = _hashes(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if k.startswith("landing/transactions"))


# ---------------------------------------------------------------------------
# contract conformance of every written file
# ---------------------------------------------------------------------------


def _check_kind(df: pl.DataFrame, kind: InputKind, name: str) -> None:
    """Every column and value of a CSV read as text satisfies the schema."""
    assert set(df.columns) <= set(kind.names), (
        f"{name}: unknown columns {set(df.columns) - set(kind.names)}"
    )
    for col in kind.required:
        assert col in df.columns, f"{name}: required column {col} missing"
        assert df[col].null_count() == 0, f"{name}: required column {col} has empty values"
    for group in kind.one_of:
        assert any(c in df.columns for c in group)
    for col in df.columns:
        spec = kind.column(col)
        values = df[col].drop_nulls()
        if spec.pattern:
            bad = values.filter(~values.str.contains(f"^(?:{spec.pattern})$"))
            # never show card numbers in a failure message
            shown = f"{bad.len()} values" if col == "pan" else str(bad.head(3).to_list())
            assert bad.is_empty(), f"{name}.{col}: {shown} do not match {spec.pattern}"
        if spec.allowed:
            bad = values.filter(~values.is_in(list(spec.allowed)))
            assert bad.is_empty(), f"{name}.{col}: {bad.unique().to_list()} not in {spec.allowed}"
        if spec.dtype == "int":
            assert values.str.contains(r"^-?\d+$").all(), f"{name}.{col} is not integer"
        if spec.dtype == "float":
            assert values.cast(pl.Float64, strict=True).is_not_null().all()
        if spec.dtype in ("int", "float") and spec.min_value is not None:
            assert (values.cast(pl.Float64) >= spec.min_value).all(), (
                f"{name}.{col} below {spec.min_value}"
            )
        if spec.dtype == "bool":
            assert values.is_in(["true", "false"]).all(), f"{name}.{col} not true/false"
        if spec.dtype == "ts":
            assert values.str.contains(f"^{TS.pattern}$").all(), (
                f"{name}.{col} not an ISO timestamp"
            )
        if spec.dtype == "date":
            assert values.str.contains(f"^{DATE.pattern}$").all(), f"{name}.{col} not a date"


def _read(path: Path, encoding: str = "utf8") -> pl.DataFrame:
    data = path.read_bytes()
    if encoding != "utf8":
        data = data.decode(encoding).encode()
    return pl.read_csv(data, infer_schema=False)


def test_written_files_follow_the_contract(written):
    out, report = written
    landing = out / "landing"
    assert report.landing == landing
    raw = (landing / "terminals.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # Chinese names in GB18030, not UTF-8
    terminals = _read(landing / "terminals.csv", "gb18030")
    _check_kind(terminals, TERMINALS, "terminals")
    assert terminals["merchant_name"].str.contains(r"[\u4e00-\u9fff]").all()
    assert (terminals["merchant_id"].str.slice(7, 4) == terminals["registered_mcc"]).all()
    assert terminals["terminal_kind"].n_unique() == 3
    assert terminals["status"].is_in(["pending", "active"]).sum() > 0

    day_files = sorted((landing / "transactions").glob("transactions_*.csv"))
    assert [p.name for p in day_files] == [
        f"transactions_{START + timedelta(days=d)}.csv" for d in range(5)
    ]
    offsets = 0
    ids: set[str] = set()
    for path in day_files:
        tx = _read(path)
        _check_kind(tx, TRANSACTIONS, path.name)
        # bools, not Series: a failing assert must not print card numbers
        luhn = bool(tx["pan"].map_elements(luhn_ok, return_dtype=pl.Boolean).all())
        assert luhn, f"{path.name}: a PAN fails the Luhn check"
        bins_ok = bool((tx["card_bin"] == tx["pan"].str.slice(0, 6)).all())
        last4_ok = bool((tx["card_last4"] == tx["pan"].str.slice(-4)).all())
        assert bins_ok and last4_ok, f"{path.name}: card_bin/card_last4 disagree with the PAN"
        assert tx["currency"].unique().to_list() == ["156"]
        assert tx["txn_id"].n_unique() == tx.height and not ids & set(tx["txn_id"])
        ids |= set(tx["txn_id"])
        offsets += int(tx["txn_time"].str.ends_with("+08:00").all())
        day = path.stem.split("_")[1]
        # every row belongs to its day file, except clock-skewed rows of a malfunction
        assert (tx["txn_time"].str.slice(0, 10) == day).mean() > 0.99
    assert offsets == 1  # the 4th day is written with explicit +08:00 offsets

    events = _read(landing / "terminal_events.csv")
    _check_kind(events, TERMINAL_EVENTS, "terminal_events")
    reports = _read(landing / "fraud_reports.csv")
    _check_kind(reports, FRAUD_REPORTS, "fraud_reports")
    assert reports["report_id"].n_unique() == reports.height
    assert (reports["reported_at"] >= reports["fraud_time"]).all()
    assert reports["txn_id"].drop_nulls().is_in(list(ids)).all()

    policies = tomllib.loads((landing / "policies.toml").read_text())["policies"]
    assert {"default", "strict", "debit_only"} <= set(policies)
    for keys in policies.values():
        assert set(keys) <= set(POLICY_KEYS)

    truth = pl.read_csv(out / "truth.csv", infer_schema=False)
    assert truth.columns == ["terminal_id", "behaviour", "start", "end"]
    assert truth["behaviour"].is_in(list(BEHAVIOURS)).all()
    assert (truth["start"] <= truth["end"]).all()
    assert not (landing / "truth.csv").exists()


def test_a_rerun_leaves_no_stale_files(tmp_path):
    write_trial(tmp_path, 12, 4, START, seed=1)
    report = write_trial(tmp_path, 12, 2, START, seed=1, fmt="parquet")
    landing = sorted(p.relative_to(tmp_path).as_posix() for p in report.landing.rglob("*.*"))
    assert landing == sorted(
        [
            f"landing/transactions/transactions_{START + timedelta(days=d)}.parquet"
            for d in range(2)
        ]
        + [f"landing/{n}.parquet" for n in ("terminals", "terminal_events", "fraud_reports")]
        + ["landing/policies.toml"]
    )


def test_parquet_format_writes_the_same_tables(tmp_path):
    report = write_trial(tmp_path, 15, 2, START, seed=5, fmt="parquet")
    landing = report.landing
    tx = pl.read_parquet(landing / "transactions" / f"transactions_{START}.parquet")
    assert tx.schema["txn_time"] == pl.Datetime("us")
    assert tx.schema["amount_minor"] == pl.Int64
    assert set(tx.columns) <= set(TRANSACTIONS.names)
    reg = pl.read_parquet(landing / "terminals.parquet")
    assert reg.columns == list(TERMINALS.names)
    ev = pl.read_parquet(landing / "terminal_events.parquet")
    assert ev.columns == list(TERMINAL_EVENTS.names)
    assert report.counts["terminal_events"] == ev.height


# ---------------------------------------------------------------------------
# behaviours
# ---------------------------------------------------------------------------


def test_every_behaviour_code_appears_in_the_truth(trial):
    assert set(trial.truth["behaviour"]) == set(BEHAVIOURS)
    injected = trial.truth_detail.filter(pl.col("source") == "injected")
    assert set(injected["intensity"]) <= {"blatant", "medium", "subtle"}


def test_injected_behaviours_leave_their_traces(trial):
    tx, ev, truth = trial.transactions, trial.terminal_events, trial.truth_detail

    def terminals(behaviour):
        return set(truth.filter(pl.col("behaviour") == behaviour)["terminal_id"])

    # a cloned terminal id is used by two devices; a clean one by at most one
    serials = (
        tx.drop_nulls("device_serial")
        .group_by("terminal_id")
        .agg(pl.col("device_serial").n_unique())
    )
    multi = set(serials.filter(pl.col("device_serial") > 1)["terminal_id"])
    assert terminals("cloned_terminal") <= multi | set(
        tx.filter(pl.col("device_serial").is_null())["terminal_id"]
    )
    assert multi <= terminals("cloned_terminal")
    # MCC jumping: DE18 differs from the registered MCC only there
    reg = trial.terminals.group_by("terminal_id").agg(pl.col("registered_mcc").last())
    jump = tx.join(reg, on="terminal_id").filter(pl.col("mcc") != pl.col("registered_mcc"))
    assert set(jump["terminal_id"]) == terminals("mcc_mismatch")
    # card numbers in telemetry only at pan_exposure terminals
    digits = ev.with_columns(
        run=pl.col("detail").str.extract(r"card=([0-9 \-]{13,25})").str.replace_all(r"[ \-]", "")
    )
    leaked = digits.drop_nulls("run").filter(
        pl.col("run").map_elements(luhn_ok, return_dtype=pl.Boolean)
    )
    assert set(leaked["terminal_id"]) == terminals("pan_exposure")
    assert ev["detail"].str.contains(r"order \d{16}").any()  # long numbers that are not cards
    # an unknown terminal id transacts
    assert set(tx["terminal_id"]) - set(trial.terminals["terminal_id"])
    # fraud reports name transactions of the hotspot terminals
    named = tx.join(trial.fraud_reports.drop_nulls("txn_id").select("txn_id"), on="txn_id")
    assert terminals("fraud_hotspot") <= set(named["terminal_id"])


def test_every_injected_episode_day_shows_the_behaviour(trial):
    tx = trial.transactions.with_columns(day=pl.col("txn_time").dt.date())
    injected = trial.truth_detail.filter(pl.col("source") == "injected")
    reg_mcc = trial.terminals.group_by("terminal_id").agg(pl.col("registered_mcc").last())
    tx = tx.join(reg_mcc, on="terminal_id", how="left")
    shows = {
        "card_testing": (pl.col("amount_minor") < 2000)
        & pl.col("entry_mode").is_in(["01", "02", "90"]),
        "mcc_mismatch": pl.col("mcc") != pl.col("registered_mcc"),
        "fallback_abuse": pl.col("entry_mode").is_in(["01", "02", "80", "90"]),
        "malfunction": pl.col("response_code").is_in(["91", "96"]),
        "cash_out": pl.col("card_type") == "credit",
    }
    checked = 0
    for row in injected.iter_rows(named=True):
        if row["behaviour"] not in shows:
            continue
        day = row["start"]
        while day <= row["end"]:
            hits = tx.filter(
                (pl.col("terminal_id") == row["terminal_id"])
                & (pl.col("day") == day)
                & shows[row["behaviour"]]
            )
            assert hits.height > 0, f"{row['behaviour']} ({row['intensity']}) not visible on {day}"
            day += timedelta(days=1)
            checked += 1
    assert checked >= 5


def test_legitimate_terminals_carry_background_noise(trial):
    tx, truth = trial.transactions, trial.truth
    clean = set(trial.terminals["terminal_id"]) - set(truth["terminal_id"])
    c = tx.filter(pl.col("terminal_id").is_in(list(clean)))
    assert len(clean) > 30
    assert c.filter(pl.col("txn_time").dt.hour() < 5).height > 0  # night sales at 24 h shops
    assert (
        c.filter((pl.col("amount_minor") % 10_000 == 0) & (pl.col("amount_minor") > 0)).height > 0
    )
    assert set(c["response_code"]) >= {"00", "51", "55"}
    assert set(c["entry_mode"]) >= {
        "02",
        "03",
        "05",
        "07",
    }  # old magstripe cards swipe legitimately
    assert set(c["txn_type"]) >= {"purchase", "refund", "reversal", "void"}
    # refunds, voids and reversals name an existing purchase of the same card
    refs = c.filter(pl.col("original_txn_id").is_not_null())
    orig = tx.select(original_txn_id="txn_id", orig_pan="pan", orig_type="txn_type")
    joined = refs.join(orig, on="original_txn_id", how="left")
    assert (
        joined["orig_pan"].is_not_null().mean() > 0.9
    )  # a few originals predate the trial window
    matched = joined.drop_nulls("orig_pan")
    same_card = bool((matched["pan"] == matched["orig_pan"]).all())
    assert same_card, "a refund/void/reversal names a purchase of another card"
    assert matched["orig_type"].is_in(["purchase", "preauth"]).all()
    # cards repeat at a terminal (local customer pools)
    repeat = c.group_by("terminal_id").agg(n=pl.len(), cards=pl.col("pan").n_unique())
    assert (repeat["cards"] < repeat["n"]).mean() > 0.5


def test_stans_increase_per_device_on_clean_terminals(trial):
    tx, truth = trial.transactions, trial.truth
    noisy = set(
        truth.filter(pl.col("behaviour").is_in(["cloned_terminal", "malfunction"]))["terminal_id"]
    )
    df = (
        tx.filter(~pl.col("terminal_id").is_in(list(noisy)))
        .sort("terminal_id", "txn_time", "txn_id")
        .with_columns(s=pl.col("stan").cast(pl.Int64))
        .with_columns(step=(pl.col("s") - pl.col("s").shift()).over("terminal_id") % 1_000_000)
    )
    steps = df["step"].drop_nulls()
    assert (steps >= 1).mean() > 0.999  # strictly increasing (same-second ties aside)


# ---------------------------------------------------------------------------
# derived truth: an independent, row-by-row recomputation
# ---------------------------------------------------------------------------


def _naive_derived(trial) -> set[tuple[str, str, date, date]]:
    policies = tomllib.loads(trial.policies_toml)["policies"]
    versions = defaultdict(list)
    for row in trial.terminals.iter_rows(named=True):
        versions[row["terminal_id"]].append(row)
    for rows in versions.values():
        rows.sort(key=lambda r: r["updated_at"])
    days: set[tuple[str, str, date]] = set()
    capped = defaultdict(list)
    for r in trial.transactions.iter_rows(named=True):
        tid, t = r["terminal_id"], r["txn_time"]
        rows = versions.get(tid)
        latest = rows[-1] if rows else None
        pol = policies.get(latest["policy_id"] if latest else "default", policies["default"])
        if latest is None:
            bad = True
        else:
            in_effect = [v for v in rows if v["updated_at"] <= t]
            status = in_effect[-1]["status"] if in_effect else None
            bad = (
                latest["activated_at"] is None
                or t < latest["activated_at"]
                or t.date() < latest["trial_start"]
                or t.date() > latest["trial_end"]
                or status in ("suspended", "terminated")
            )
        if bad:
            days.add((tid, "unregistered_use", t.date()))
        if r["response_code"] != "00":
            continue
        hours_ok = True
        if "business_hours" in pol:
            s, e = (int(x[:2]) * 60 + int(x[3:]) for x in pol["business_hours"])
            m = t.hour * 60 + t.minute
            hours_ok = (s <= m < e) if s < e else (m >= s or m < e)
        if (
            r["card_type"] not in pol.get("allowed_card_types", [r["card_type"]])
            or r["txn_type"] not in pol.get("allowed_txn_types", [r["txn_type"]])
            or r["entry_mode"] not in pol.get("allowed_entry_modes", [r["entry_mode"]])
            or not hours_ok
        ):
            days.add((tid, "disallowed_use", t.date()))
        if r["txn_type"] in ("purchase", "preauth_complete", "cash_advance"):
            capped[(tid, t.date())].append((r["amount_minor"], r["pan"], pol))
    for (tid, day), rows in capped.items():
        pol = rows[0][2]
        big = 2**62
        per_card = defaultdict(int)
        for _, pan, _ in rows:
            per_card[pan] += 1
        if (
            any(a > pol.get("max_txn_amount_minor", big) for a, _, _ in rows)
            or sum(a for a, _, _ in rows) > pol.get("max_daily_amount_minor", big)
            or len(rows) > pol.get("max_daily_txn_count", big)
            or max(per_card.values()) > pol.get("max_same_card_per_day", big)
        ):
            days.add((tid, "trial_limit_breach", day))
    episodes = set()
    for tid, beh, day in sorted(days):
        if (tid, beh, day - timedelta(days=1)) in days:
            continue
        end = day
        while (tid, beh, end + timedelta(days=1)) in days:
            end += timedelta(days=1)
        episodes.add((tid, beh, day, end))
    return episodes


def test_derived_truth_matches_a_naive_recomputation(trial):
    derived = trial.truth_detail.filter(pl.col("source") == "derived")
    got = set(derived.select("terminal_id", "behaviour", "start", "end").iter_rows())
    expected = _naive_derived(trial)
    assert got == expected
    kinds = {b for _, b, _, _ in expected}
    assert kinds == {"unregistered_use", "disallowed_use", "trial_limit_breach"}


def test_most_terminals_stay_within_their_policy(trial):
    derived = trial.truth.filter(
        pl.col("behaviour").is_in(["disallowed_use", "trial_limit_breach"])
    )
    share = derived["terminal_id"].n_unique() / trial.terminals["terminal_id"].n_unique()
    assert 0.0 < share < 0.35


def test_in_memory_frames_have_the_schema_types(trial):
    for frame, kind in (
        (trial.terminals, TERMINALS),
        (trial.transactions, TRANSACTIONS),
        (trial.terminal_events, TERMINAL_EVENTS),
        (trial.fraud_reports, FRAUD_REPORTS),
    ):
        for name, dtype in frame.schema.items():
            assert dtype == kind.column(name).polars_type, f"{kind.name}.{name} is {dtype}"


def test_in_memory_trial_is_deterministic(trial):
    again = simulate_trial(80, 8, START, seed=3)
    same = again.transactions.equals(trial.transactions)  # a bool: no frame (PANs) in the message
    assert same, "the same seed gave different transactions"
    assert again.truth.equals(trial.truth)


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError, match="n_terminals must be at least 1"):
        simulate_trial(0, 3)
    with pytest.raises(ValueError, match="days must be at least 1"):
        simulate_trial(5, 0)


# ---------------------------------------------------------------------------
# detectors never see the answer key
# ---------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_detection_code_does_not_import_the_simulator():
    files = [
        *(ROOT / "features").rglob("*.py"),
        *(ROOT / "models").rglob("*.py"),
        *(ROOT / "kernels").rglob("*.py"),
    ]
    files += [p for p in (ROOT / "pipelines" / "detect.py",) if p.exists()]
    assert files
    for path in files:
        bad = {m for m in _imports(path) if m.startswith("pipelines.simulate")}
        assert not bad, (
            f"{path.relative_to(ROOT)} imports {bad}: detectors must not see the injection parameters"
        )


# ---------------------------------------------------------------------------
# round trip through ingest
# ---------------------------------------------------------------------------


def _round_trip(written, tmp_path, gate: bool):
    ingest = pytest.importorskip("pipelines.ingest.load")
    from pipelines.settings import Settings
    from pipelines.storage import connect

    out, report = written
    settings = Settings.from_env(db=tmp_path / "tg.duckdb")
    result = ingest.ingest_paths(settings, [out / "landing"], gate=gate)
    totals = result.totals
    assert totals["files_rejected"] == 0, [
        f.message for f in result.files if f.status == "rejected"
    ]
    assert totals["quarantined"] == 0
    assert result.ok
    con = connect(settings.db_path)
    try:
        n_tx = con.execute("SELECT count(*) FROM transactions").fetchone()[0]
        n_reg = con.execute("SELECT count(*) FROM terminals").fetchone()[0]
        n_rep = con.execute("SELECT count(*) FROM fraud_reports").fetchone()[0]
        cols = [r[0] for r in con.execute("DESCRIBE transactions").fetchall()]
        leaked = con.execute(
            "SELECT DISTINCT terminal_id FROM terminal_events WHERE detail LIKE '%[PAN-REDACTED]%'"
        ).fetchall()
        first_day_of_offset_file = str(
            con.execute(
                "SELECT min(local_date) FROM transactions t JOIN ingest_manifest m USING (file_id) "
                "WHERE m.source_path LIKE ?",
                [f"%transactions_{START + timedelta(days=3)}.csv"],
            ).fetchone()[0]
        )
    finally:
        con.close()
    assert n_tx == report.counts["transactions"]
    assert n_reg == report.counts["terminals"]
    assert n_rep == report.counts["fraud_reports"]
    assert "pan" not in cols
    # card numbers in telemetry are redacted exactly at the pan_exposure terminals
    exposed = {r[0] for r in leaked}
    truth = pl.read_csv(out / "truth.csv", infer_schema=False)
    assert exposed == set(truth.filter(pl.col("behaviour") == "pan_exposure")["terminal_id"])
    # the +08:00 file lands on the same local day as the others
    assert first_day_of_offset_file == str(START + timedelta(days=3))


def test_simulated_trial_round_trips_through_ingest_without_quarantine(
    written, tmp_path, pan_key_env
):
    _round_trip(written, tmp_path, gate=False)


@pytest.mark.slow
def test_round_trip_with_quality_gates(written, tmp_path, pan_key_env):
    _round_trip(written, tmp_path, gate=True)
