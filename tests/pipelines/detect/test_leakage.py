"""The leakage detectors on a real DuckDB store: SQL reads agree with the polars reference."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest

from features.schema import DETECTION_SCHEMA, PAN_REDACTION_MARKER, TABLES
from models.compromise import score_card_compromise
from models.compromise.inputs import terminal_card_counts, visit_day_counts
from models.compromise.params import CompromiseParams
from pipelines.detect.leakage import run_leakage, run_leakage_detectors
from pipelines.storage import connect

AS_OF = date(2024, 4, 10)
DEFAULTS = {"str": "x", "int": 0, "float": 0.0, "bool": False, "json": None}


def tid(i: int) -> str:
    return f"T{i:07d}"


def insert(con, table: str, rows: list[dict]) -> None:
    """Insert rows, filling the other required columns of the table with placeholders."""
    cols, _ = TABLES[table]
    full = []
    for r in rows:
        row = {}
        for c in cols:
            if c.name in r:
                row[c.name] = r[c.name]
            elif c.required and c.dtype in DEFAULTS:
                row[c.name] = DEFAULTS[c.dtype]
            elif c.required:
                row[c.name] = datetime(2024, 1, 1) if c.dtype == "ts" else date(2024, 1, 1)
            else:
                row[c.name] = None
        full.append(row)
    frame = pl.DataFrame(full, schema={c.name: c.polars_type for c in cols})
    con.register("_rows", frame.to_arrow())
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
    con.unregister("_rows")


def txn(txn_id, terminal, card, ts, txn_type="purchase", amount=10_000, extra=None) -> dict:
    return {
        "txn_id": txn_id,
        "terminal_id": terminal,
        "merchant_id": "123456789012345",
        "card_token": card,
        "card_bin": "622202",
        "card_last4": card[-4:].rjust(4, "0") if card[-4:].isdigit() else "0000",
        "txn_time": ts,
        "local_date": ts.date(),
        "txn_type": txn_type,
        "amount_minor": amount,
        "currency": "156",
        "card_type": "debit",
        "entry_mode": "05",
        "mcc": "5411",
        "response_code": "00",
        "extra": extra,
    }


def report(rid, card, fraud_time, reported_at, txn_id=None) -> dict:
    return {
        "report_id": rid,
        "card_token": card,
        "txn_id": txn_id,
        "fraud_time": fraud_time,
        "reported_at": reported_at,
        "fraud_type": "counterfeit",
    }


@pytest.fixture
def store(tmp_path):
    con = connect(tmp_path / "leak.duckdb")
    txns, reports = [], []
    for t in range(20):
        for j in range(40):
            ts = datetime(2024, 3, 1 + j % 20, 12, 0)
            txns.append(txn(f"x{t}_{j}", tid(t), f"c{t}_{j:04d}", ts))
    # T0 is a CPP (10 of its cards defrauded elsewhere); T2..T7 one card each (background)
    for card in [f"c0_{j:04d}" for j in range(10)] + [f"c{t}_0000" for t in range(2, 8)]:
        reports.append(report(f"r_{card}", card, datetime(2024, 3, 28, 10), datetime(2024, 4, 5)))
    # T9 accepts 8 stolen cards on 25 March, reported by txn_id
    for j in range(8):
        ts = datetime(2024, 3, 25, 15, j)
        txns.append(txn(f"h{j}", tid(9), f"s{j:04d}", ts, amount=480_000))
        reports.append(report(f"rh{j}", f"s{j:04d}", ts, datetime(2024, 4, 1), txn_id=f"h{j}"))
    # a report not known yet on AS_OF: T1 would otherwise have 3 F-cards
    for j in range(5, 8):  # visits on 6-8 March
        card = f"c1_{j:04d}"
        reports.append(report(f"late{j}", card, datetime(2024, 4, 1), datetime(2024, 4, 20)))
    # T3 prints a card number in a terminal event; T4 in a transaction's extra column
    M = PAN_REDACTION_MARKER
    txns.append(txn("pan1", tid(4), "c4_x", datetime(2024, 4, 10, 9), extra=f'{{"memo": "{M}"}}'))
    insert(con, "transactions", txns)
    insert(con, "fraud_reports", reports)
    insert(
        con,
        "terminal_events",
        [
            {
                "event_id": "ev1",
                "terminal_id": tid(3),
                "event_time": datetime(2024, 4, 10, 8),
                "event_type": "reboot",
                "detail": f"receipt dump {M}",
            },
            {
                "event_id": "ev2",
                "terminal_id": tid(5),
                "event_time": datetime(2024, 4, 9, 8),
                "event_type": "reboot",
                "detail": f"yesterday {M}",
            },
        ],
    )
    yield con, pl.DataFrame(txns, infer_schema_length=None), pl.DataFrame(reports)
    con.close()


def test_detections_and_at_risk_from_the_store(store):
    con, _, _ = store
    detections, at_risk = run_leakage_detectors(con, AS_OF, config={})
    assert detections.schema == DETECTION_SCHEMA
    found = sorted(zip(detections["terminal_id"], detections["behaviour"], strict=True))
    assert found == [
        (tid(0), "card_compromise"),
        (tid(3), "pan_exposure"),
        (tid(4), "pan_exposure"),
        (tid(9), "fraud_hotspot"),
    ]
    assert (detections["day"] == AS_OF).all()
    assert detections["score"].is_between(0, 1).all()
    # T0's F-cards visited on 1-10 March (j 0..9); 1 March, when the background F-cards
    # shopped too, is left out of the most telling window, 2-17 March (16 days, of the
    # multiscale scan: no F-card anywhere on 11-17 March lowers its base rate): the
    # others then are j 10..16 and 21..36 (the same window as T0's n_t)
    others = [*range(10, 17), *range(21, 37)]
    assert at_risk["card_token"].to_list() == [f"c0_{j:04d}" for j in others]
    assert at_risk.columns == [
        "terminal_id",
        "card_token",
        "card_bin",
        "card_last4",
        "first_seen",
        "last_seen",
    ]
    # nothing that looks like a card number in what goes to the analyst
    texts = detections.explode("reasons").unnest("reasons")["text"].to_list()
    assert not any(
        any(ch.isdigit() for ch in w) and len(w) >= 13 for t in texts for w in t.split()
    )


def test_sql_path_matches_the_polars_reference(store):
    con, txns, reports = store
    params = CompromiseParams()
    result = run_leakage(con, AS_OF, config={})
    tx = txns.select("txn_id", "terminal_id", "card_token", "txn_time")
    counts, _ = terminal_card_counts(tx, *params.window(AS_OF))
    days = visit_day_counts(tx, *params.window(AS_OF))
    ref = score_card_compromise(reports, tx, counts, days, AS_OF, params)
    assert result.compromise_stats.equals(ref.stats)
    t9 = result.compromise_stats.filter(pl.col("terminal_id") == tid(9)).row(0, named=True)
    assert t9["k"] == 0  # the hotspot's own fraud is not exposure
    t1 = result.compromise_stats.filter(pl.col("terminal_id") == tid(1)).row(0, named=True)
    assert t1["k"] == 0  # reports arriving after AS_OF are not known yet
    later = run_leakage(con, AS_OF + timedelta(days=10), config={})
    t1_later = later.compromise_stats.filter(pl.col("terminal_id") == tid(1)).row(0, named=True)
    assert t1_later["k"] == 3


def test_thresholds_come_from_the_config(store):
    con, _, _ = store
    strict = {"card_compromise": {"min_cards": 12}, "fraud_hotspot": {"min_fraud": 9}}
    detections, at_risk = run_leakage_detectors(con, AS_OF, config=strict)
    assert set(detections["behaviour"]) == {"pan_exposure"}
    assert at_risk.height == 0
    with pytest.raises(ValueError, match="unknown keys"):
        run_leakage_detectors(con, AS_OF, config={"pan_exposure": {"min_marker": 1}})


def _revisit_store(tmp_path):
    """A store where cards come back to the same and to other terminals over 40 days."""
    import random

    rng = random.Random(7)
    con = connect(tmp_path / "revisit.duckdb")
    start = date(2024, 3, 1)
    rows = []
    for i in range(1500):
        day = start + timedelta(days=rng.randrange(40))
        ts = datetime.combine(day, datetime.min.time()) + timedelta(hours=rng.randrange(8, 20))
        kind = "refund" if rng.random() < 0.1 else "purchase"
        rows.append(txn(f"v{i}", tid(rng.randrange(6)), f"c{rng.randrange(60):04d}", ts, kind))
    insert(con, "transactions", rows)
    return con, start


def _day_table_reads(con, start: date, end: date):
    from pipelines.detect.leakage import read_terminal_cards_cached, read_terminal_sales_cached

    cards, n_active = read_terminal_cards_cached(con, start, end)
    return (
        cards.sort("terminal_id"),
        n_active,
        read_terminal_sales_cached(con, start, end).sort("terminal_id"),
    )


def _raw_reads(con, start: date, end: date):
    from pipelines.detect.leakage import read_terminal_cards, read_terminal_sales

    cards, n_active = read_terminal_cards(con, start, end)
    return (
        cards.sort("terminal_id"),
        n_active,
        read_terminal_sales(con, start, end).sort("terminal_id"),
    )


def test_day_tables_match_raw_scans_in_any_run_order_and_after_late_data(tmp_path):
    from pipelines.detect.leakage import refresh_day_tables

    con, start = _revisit_store(tmp_path)
    # nightly order, then a rerun of an earlier day, then a window reaching before the data
    for end, first in [(start + timedelta(days=d), start) for d in range(0, 40, 6)] + [
        (start + timedelta(days=20), start + timedelta(days=7)),
        (start + timedelta(days=39), start + timedelta(days=25)),
        (start + timedelta(days=12), start - timedelta(days=30)),
    ]:
        refresh_day_tables(con, first, end)
        cached, raw = _day_table_reads(con, first, end), _raw_reads(con, first, end)
        assert cached[0].equals(raw[0]) and cached[1] == raw[1] and cached[2].equals(raw[2])
    assert refresh_day_tables(con, start, start + timedelta(days=39)) == []  # up to date
    # a late file for day 10 with a card new to T5: that day and the later ones are redone
    late = datetime.combine(start + timedelta(days=10), datetime.min.time()) + timedelta(hours=9)
    insert(con, "transactions", [txn("late1", tid(5), "c_new", late, amount=777)])
    redone = refresh_day_tables(con, start + timedelta(days=5), start + timedelta(days=39))
    assert redone[0] == start + timedelta(days=10) and redone[-1] == start + timedelta(days=39)
    for first in (start, start + timedelta(days=10), start + timedelta(days=11)):
        end = start + timedelta(days=39)
        cached, raw = _day_table_reads(con, first, end), _raw_reads(con, first, end)
        assert cached[0].equals(raw[0]) and cached[1] == raw[1] and cached[2].equals(raw[2])
    con.close()


def test_read_only_store_gives_the_same_results_without_writing(tmp_path, store):
    con, _, _ = store
    writable = run_leakage_detectors(con, AS_OF, config={})
    assert con.execute("SELECT count(*) FROM card_visit_days").fetchall()[0][0] > 0
    con.close()
    path = tmp_path / "leak.duckdb"
    fresh = tmp_path / "copy.duckdb"
    fresh.write_bytes(path.read_bytes())
    ro = connect(fresh, read_only=True)
    ro.execute("SELECT 1").fetchall()
    before = ro.execute("SELECT count(*) FROM card_visit_days").fetchall()[0][0]
    read_only = run_leakage_detectors(ro, AS_OF + timedelta(days=1), config={})
    same_day = run_leakage_detectors(ro, AS_OF, config={})
    assert ro.execute("SELECT count(*) FROM card_visit_days").fetchall()[0][0] == before
    ro.close()
    assert same_day[0].equals(writable[0]) and same_day[1].equals(writable[1])
    assert read_only[0].height > 0


def test_day_tables_of_an_older_layout_are_rebuilt(store):
    con, _, _ = store
    expected = run_leakage_detectors(con, AS_OF, config={})
    con.execute("DROP TABLE card_days")
    con.execute(
        "CREATE TABLE card_days (terminal_id VARCHAR, card_token VARCHAR, local_date DATE)"
    )
    con.execute("DELETE FROM terminal_day_sales WHERE local_date = ?", [AS_OF])  # AS_OF stale
    again = run_leakage_detectors(con, AS_OF, config={})
    assert again[0].equals(expected[0]) and again[1].equals(expected[1])
    cols = [r[0] for r in con.execute("DESCRIBE card_days").fetchall()]
    assert cols == [c.name for c in TABLES["card_days"][0]]


def test_visit_days_from_the_day_tables_and_raw_scans_give_the_same_window_counts(tmp_path):
    from models.compromise.scan import _span_counts
    from pipelines.detect.leakage import (
        read_visit_days,
        read_visit_days_cached,
        refresh_day_tables,
    )

    con, start = _revisit_store(tmp_path)
    first, end = start + timedelta(days=5), start + timedelta(days=39)
    refresh_day_tables(con, start, end)
    terminals = pl.Series([tid(1), tid(4)])
    keys = ["terminal_id", "local_date", "prev_date"]
    cached = read_visit_days_cached(con, first, end, terminals).sort(keys)
    raw = read_visit_days(con, first, end, terminals).sort(keys)
    assert cached.equals(raw)
    assert set(raw["terminal_id"]) == {tid(1), tid(4), "*"}
    tx = pl.from_arrow(
        con.sql("SELECT terminal_id, card_token, txn_time FROM transactions").to_arrow_table()
    )
    ref = visit_day_counts(tx, first, end).filter(
        pl.col("terminal_id").is_in([tid(1), tid(4), "*"])
    )
    assert ref.sort(keys).equals(raw)
    # distinct cards of T1 over every window [a, b] match a direct count
    n_days = (end - first).days + 1
    spans = _span_counts(raw.filter(pl.col("terminal_id") == tid(1)), first, n_days)
    t1 = tx.filter(pl.col("terminal_id") == tid(1)).with_columns(d=pl.col("txn_time").dt.date())
    for a, b in [(0, 0), (0, n_days - 1), (3, 17), (10, 11), (20, 34)]:
        lo, hi = first + timedelta(days=a), first + timedelta(days=b)
        direct = t1.filter(pl.col("d").is_between(lo, hi))["card_token"].n_unique()
        assert spans[a, b] == direct
    con.close()
