"""PAN exposure: redaction markers counted per terminal and day."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl

from features.schema import DETECTION_SCHEMA, PAN_REDACTION_MARKER
from models.exposure import ExposureParams, exposure_texts, score_pan_exposure

M = PAN_REDACTION_MARKER
DAY = date(2024, 3, 5)


def frames():
    events = pl.DataFrame(
        {
            "terminal_id": ["T0000001", "T0000001", "T0000001", "T0000002", "T0000003"],
            "event_id": ["e1", "e2", "e3", "e4", "e5"],
            "event_time": [
                datetime(2024, 3, 5, 10),
                datetime(2024, 3, 5, 11),
                datetime(2024, 3, 4, 11),  # another day
                datetime(2024, 3, 5, 12),
                datetime(2024, 3, 5, 12),
            ],
            "detail": [f"print {M} and {M}", f"card {M}", f"old {M}", "heartbeat ok", None],
            "extra": [None, None, None, None, '{"note": "x"}'],
        }
    )
    txns = pl.DataFrame(
        {
            "terminal_id": ["T0000003", "T0000004"],
            "txn_id": ["t1", "t2"],
            "local_date": [DAY, DAY],
            "extra": [f'{{"memo": "{M}"}}', '{"memo": "ok"}'],
        }
    )
    registry = pl.DataFrame(
        {
            "terminal_id": ["T0000005", "T0000005", "T0000006"],
            "merchant_name": [f"Shop {M}", "Shop", f"Cafe {M}"],
            "extra": [None, None, None],
            "updated_at": [
                datetime(2024, 1, 1),
                datetime(2024, 3, 1),  # fixed before DAY
                datetime(2024, 2, 1),
            ],
        }
    )
    return events, txns, registry


def test_markers_are_counted_per_terminal_and_day():
    texts = exposure_texts(*frames(), DAY)
    det = score_pan_exposure(texts, DAY)
    assert det.schema == DETECTION_SCHEMA
    rows = {r["terminal_id"]: r for r in det.iter_rows(named=True)}
    # T1: 3 markers on DAY (e1 twice, e2), e3 is on another day; T2 has none;
    # T3: one in a transaction's extra; T5's current name is clean; T6's is not.
    assert set(rows) == {"T0000001", "T0000003", "T0000006"}
    assert rows["T0000001"]["reasons"][0]["observed"] == 3
    assert rows["T0000001"]["evidence"] == ["e1", "e2"]
    assert rows["T0000003"]["evidence"] == ["t1"]
    assert rows["T0000006"]["evidence"] == ["registry:T0000006@2024-02-01T00:00:00"]
    assert rows["T0000001"]["score"] > rows["T0000003"]["score"] >= 0.9
    assert "3 in terminal_events.detail" in rows["T0000001"]["reasons"][0]["text"]


def test_minimum_marker_count():
    texts = exposure_texts(*frames(), DAY)
    det = score_pan_exposure(texts, DAY, ExposureParams(min_markers=2))
    assert det.get_column("terminal_id").to_list() == ["T0000001"]
    assert score_pan_exposure(exposure_texts(None, None, None, DAY), DAY).height == 0
