"""Rule detectors: minimum functionality per behaviour, invariance and direction."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from features.daily import terminal_day
from features.policy import policy_frame
from features.schema import DETECTION_SCHEMA
from features.transactions import enrich_transactions
from models.config import load_config
from models.rule_detector import RuleDetector
from models.rules.engine import detect

_path = Path(__file__).parents[2] / "features" / "_frames.py"
_spec = importlib.util.spec_from_file_location("_frames", _path)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = load_config()


def run(txns: pl.DataFrame, registry: pl.DataFrame | None = None, policies=None, config=CFG):
    registry = (
        F.registry([*txns.get_column("terminal_id").unique()]) if registry is None else registry
    )
    pol = policy_frame(policies or {}, config["default_policy"])
    day = terminal_day(enrich_transactions(txns.lazy(), registry.lazy(), pol, config), config)
    day = day.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_implausible_time"))
    return detect(day, config).collect()


def behaviours(det: pl.DataFrame) -> set[str]:
    return set(det.get_column("behaviour"))


def test_clean_day_has_no_detection():
    det = run(F.txns(30))
    assert det.height == 0
    assert det.schema == DETECTION_SCHEMA


def _times(n, start=F.T0, step=60):
    return [start + timedelta(seconds=step * i) for i in range(n)]


CASES = {
    "relocation": {"terminal_lat": 31.5},
    "cloned_terminal": {"device_serial": ["SNT0000001", "CLONE"] * 10},
    "mcc_mismatch": {"mcc": "4829"},
    "cash_out": {
        "card_token": ["c1", "c1", "c1", "c2", "c2", "c2"] + [f"x{i}" for i in range(14)],
        "amount_minor": [100000] * 20,
        "card_type": "credit",
        "step_s": 120,
    },
    "card_testing": {
        "amount_minor": 100,
        "response_code": ["14", "05", "00", "54"] * 5,
        "step_s": 60,
    },
    "fallback_abuse": {"entry_mode": ["80", "05", "01", "05"] * 5},
    "trial_limit_breach": {"amount_minor": [600000] + [1000] * 19},
    "disallowed_use": {"txn_type": ["purchase"] * 19 + ["cash_advance"]},
    "malfunction": {
        "response_code": ["96", "00", "91", "00"] * 5,
        "txn_type": ["purchase", "purchase", "purchase", "reversal"] * 5,
    },
}


@pytest.fixture(scope="module")
def mft():
    """One terminal per behaviour case, detected in one run."""
    frames, ids = [], {}
    for i, (behaviour, kwargs) in enumerate(sorted(CASES.items())):
        kwargs = dict(kwargs)
        step = kwargs.pop("step_s", 600)
        tid = f"M{i:07d}"
        ids[behaviour] = tid
        if "device_serial" in kwargs:
            kwargs["device_serial"] = [
                s.replace("SNT0000001", f"SN{tid}") for s in kwargs["device_serial"]
            ]
        frames.append(F.txns(20, terminal_id=tid, step_s=step, **kwargs))
    return ids, run(pl.concat(frames))


@pytest.mark.parametrize("behaviour", sorted(CASES))
def test_minimum_functionality(mft, behaviour):
    ids, det = mft
    det = det.filter(pl.col("terminal_id") == ids[behaviour])
    assert behaviour in behaviours(det), det
    row = det.filter(pl.col("behaviour") == behaviour).row(0, named=True)
    assert 0.0 <= row["score"] <= 1.0
    assert row["reasons"] and all(r["text"] and r["code"] for r in row["reasons"])
    assert 0 < len(row["evidence"]) <= 50


def test_unregistered_use_of_unknown_terminal():
    det = run(F.txns(3, terminal_id="ZZZZZZZZ"), registry=F.registry())
    row = det.filter(pl.col("behaviour") == "unregistered_use").row(0, named=True)
    assert "not in the registry" in row["reasons"][0]["text"]
    assert len(row["evidence"]) == 3


def test_relocation_reason_speaks_the_analysts_language():
    det = run(F.txns(10, terminal_lat=31.5))
    text = det.filter(pl.col("behaviour") == "relocation")["reasons"][0][0]["text"]
    assert "km from the registered address" in text and "geofence 500 m" in text


def test_policy_drives_disallowed_use():
    strict = {"default": {"allowed_card_types": ["debit"]}}
    assert "disallowed_use" not in behaviours(run(F.txns(10, card_type="credit")))
    det = run(F.txns(10, card_type="credit"), policies=strict)
    assert "disallowed_use" in behaviours(det)


def test_declined_attempt_is_not_a_disallowed_use():
    det = run(F.txns(10, txn_type="cash_advance", response_code="51"))
    assert "disallowed_use" not in behaviours(det)


def test_renaming_terminal_ids_does_not_change_scores():
    t = pl.concat(
        [
            F.txns(20, terminal_id="T0000001", mcc="4829"),
            F.txns(20, terminal_id="T0000002", terminal_lat=31.5),
        ]
    )
    a = run(t)
    renamed = t.with_columns(
        pl.col("terminal_id").replace({"T0000001": "Q0000009", "T0000002": "Q0000001"}),
        pl.col("txn_id").str.replace("T", "Q"),
    )
    b = run(renamed, registry=F.registry(["Q0000009", "Q0000001"]))
    key = {"T0000001": "Q0000009", "T0000002": "Q0000001"}
    a = a.with_columns(pl.col("terminal_id").replace(key)).sort("terminal_id", "behaviour")
    b = b.sort("terminal_id", "behaviour")
    assert a.select("terminal_id", "behaviour", "score").equals(
        b.select("terminal_id", "behaviour", "score")
    )


def test_farther_relocation_scores_higher():
    near = run(F.txns(10, terminal_lat=F.LAT + 0.05)).filter(pl.col("behaviour") == "relocation")
    far = run(F.txns(10, terminal_lat=F.LAT + 2.0)).filter(pl.col("behaviour") == "relocation")
    assert far["score"][0] > near["score"][0]


def test_threshold_comes_from_config():
    cfg = load_config()
    t = F.txns(20, entry_mode=["80", "05", "01", "05"] * 5)
    assert "fallback_abuse" in behaviours(run(t, config=cfg))
    cfg["fallback_abuse"] = {**cfg["fallback_abuse"], "rate": 0.9, "min_txns_window": 1000}
    assert "fallback_abuse" not in behaviours(run(t, config=cfg))


def test_rule_detector_estimator():
    det = RuleDetector().fit()
    assert det.config_["relocation"]["max_speed_kmh"] == 300.0
    with pytest.raises(ValueError, match="no tables"):
        RuleDetector(config={"version": 1}).fit()
