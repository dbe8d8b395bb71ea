"""Flag episodes: extend, new episode after a gap, dispositions, idempotent re-runs."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from features.schema import DETECTION_SCHEMA
from models.config import load_config
from models.episodes import FLAG_FRAME_SCHEMA, flag_id, merge_detections

CFG = load_config()  # gap_days = 3
EMPTY = pl.DataFrame(schema=FLAG_FRAME_SCHEMA)


def det(
    day: date,
    score=0.6,
    evidence=("a", "b"),
    terminal="T0000001",
    behaviour="relocation",
    code="outside_geofence",
):
    reasons = [{"code": code, "text": f"seen {day}", "observed": score, "threshold": 0.5}]
    return pl.DataFrame(
        [
            {
                "terminal_id": terminal,
                "behaviour": behaviour,
                "day": day,
                "score": score,
                "reasons": reasons,
                "evidence": list(evidence),
            }
        ],
        schema=DETECTION_SCHEMA,
    )


def upsert(flags: pl.DataFrame, touched: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([flags.filter(~pl.col("flag_id").is_in(touched["flag_id"])), touched])


def run_days(days, flags=EMPTY, dispositions=None, **kw):
    for d in days:
        flags = upsert(
            flags,
            merge_detections(flags, det(d, **kw), d, f"r{d}", CFG, dispositions=dispositions),
        )
    return flags


def disposition(fid, decision, snooze_until=None, at=datetime(2026, 3, 2, 9)):
    return pl.DataFrame(
        {
            "flag_id": [fid],
            "decision": [decision],
            "decided_at": [at],
            "snooze_until": [snooze_until],
        },
        schema={
            "flag_id": pl.String,
            "decision": pl.String,
            "decided_at": pl.Datetime("us"),
            "snooze_until": pl.Date,
        },
    )


def test_new_flag_has_stable_id_category_and_severity():
    out = merge_detections(EMPTY, det(date(2026, 3, 1)), date(2026, 3, 1), "r1", CFG)
    row = out.row(0, named=True)
    assert row["flag_id"] == flag_id("T0000001", "relocation", date(2026, 3, 1))
    assert row["category"] == "illegal_terminal"
    assert row["severity"] == "medium"
    assert row["status"] == "open"
    assert (row["first_seen"], row["last_seen"]) == (date(2026, 3, 1), date(2026, 3, 1))


def test_continuing_episode_extends_one_flag():
    flags = run_days([date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 4)])
    assert flags.height == 1
    row = flags.row(0, named=True)
    assert (row["first_seen"], row["last_seen"]) == (date(2026, 3, 1), date(2026, 3, 4))
    assert row["run_id"] == "r2026-03-04"


def test_new_episode_after_the_gap():
    flags = run_days([date(2026, 3, 1), date(2026, 3, 10)])
    assert flags.height == 2
    assert sorted(flags["first_seen"]) == [date(2026, 3, 1), date(2026, 3, 10)]


def test_score_is_max_reasons_of_strongest_day_evidence_merged():
    flags = run_days([date(2026, 3, 1)], score=0.9, evidence=("a", "b"))
    flags = run_days([date(2026, 3, 2)], flags=flags, score=0.6, evidence=("b", "c"))
    row = flags.row(0, named=True)
    assert row["score"] == pytest.approx(0.9)
    assert row["reasons"][0]["text"] == "seen 2026-03-01"
    assert row["evidence"] == ["a", "b", "c"]


def test_evidence_capped_at_50():
    flags = run_days([date(2026, 3, 1)], evidence=[f"x{i}" for i in range(40)])
    flags = run_days([date(2026, 3, 2)], flags=flags, evidence=[f"y{i}" for i in range(40)])
    ev = flags.row(0, named=True)["evidence"]
    assert len(ev) == 50 and ev[:40] == [f"x{i}" for i in range(40)]


def test_rerun_of_a_day_is_idempotent():
    flags = run_days([date(2026, 3, 1), date(2026, 3, 2)])
    again = run_days([date(2026, 3, 2)], flags=flags)
    cols = [c for c in FLAG_FRAME_SCHEMA.names() if c != "run_id"]
    assert again.sort("flag_id").select(cols).equals(flags.sort("flag_id").select(cols))


def test_dismissed_flag_stays_dismissed_when_the_episode_continues():
    flags = run_days([date(2026, 3, 1)])
    fid = flags["flag_id"][0]
    flags = flags.with_columns(pl.lit("dismissed").alias("status"))
    flags = run_days(
        [date(2026, 3, 2), date(2026, 3, 3)],
        flags=flags,
        dispositions=disposition(fid, "dismissed"),
    )
    assert flags.height == 1 and flags["status"][0] == "dismissed"


def test_confirmed_stays_confirmed():
    flags = run_days([date(2026, 3, 1)])
    fid = flags["flag_id"][0]
    flags = run_days([date(2026, 3, 2)], flags=flags, dispositions=disposition(fid, "confirmed"))
    assert flags["status"][0] == "confirmed"


def test_snoozed_until_date_then_open_again():
    flags = run_days([date(2026, 3, 1)])
    fid = flags["flag_id"][0]
    snooze = disposition(fid, "snoozed", snooze_until=date(2026, 3, 3))
    flags = run_days([date(2026, 3, 3)], flags=flags, dispositions=snooze)
    assert flags["status"][0] == "snoozed"
    flags = run_days([date(2026, 3, 4)], flags=flags, dispositions=snooze)
    assert flags["status"][0] == "open"


def test_latest_disposition_wins():
    flags = run_days([date(2026, 3, 1)])
    fid = flags["flag_id"][0]
    both = pl.concat(
        [
            disposition(fid, "dismissed", at=datetime(2026, 3, 1, 9)),
            disposition(fid, "confirmed", at=datetime(2026, 3, 2, 9)),
        ]
    )
    flags = run_days([date(2026, 3, 2)], flags=flags, dispositions=both)
    assert flags["status"][0] == "confirmed"


def test_other_behaviour_or_terminal_opens_its_own_flag():
    flags = run_days([date(2026, 3, 1)])
    flags = run_days([date(2026, 3, 1)], flags=flags, behaviour="mcc_mismatch")
    flags = run_days([date(2026, 3, 1)], flags=flags, terminal="T0000002")
    assert flags.height == 3
    assert set(flags["category"]) == {"illegal_terminal"}
