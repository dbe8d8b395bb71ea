"""Peer anomaly model: scikit-learn conventions, direction, and its reasons."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from features.peers import PEER_FEATURES, with_peer_features
from features.schema import DETECTION_SCHEMA
from models.anomaly import (
    MODEL_FEATURES,
    Z_CLIP,
    PeerAnomalyDetector,
    anomaly_detections,
    anomaly_view,
)
from models.config import load_config

CFG = load_config()


@parametrize_with_checks([PeerAnomalyDetector(n_estimators=10, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_offset_learned_from_alert_budget():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 4))
    det = PeerAnomalyDetector(alert_budget=0.05, random_state=0).fit(X)
    assert det.predict(X).tolist().count(-1) == pytest.approx(50, abs=5)
    with pytest.raises(ValueError, match="alert_budget"):
        PeerAnomalyDetector(alert_budget=0.7).fit(X)


def day_frame(n=60, seed=1):
    """A day of ``n`` ordinary terminals with noisy features."""
    rng = np.random.default_rng(seed)
    data = {f: np.abs(rng.normal(1.0, 0.2, n)) for f in PEER_FEATURES}
    return pl.DataFrame(
        {
            "terminal_id": [f"T{i:07d}" for i in range(n)],
            "local_date": [date(2026, 3, 10)] * n,
            "registered_mcc": ["5411"] * n,
            "region_code": ["310101"] * n,
            "terminal_kind": ["fixed_pos"] * n,
            **data,
            "ev_cash_out": [["e1"]] * n,
        }
    )


def scores(day: pl.DataFrame) -> np.ndarray:
    peers = with_peer_features(day.lazy(), min_peers=8).collect()
    X = peers.select(
        [pl.col(f"z_{f}").fill_null(0.0).clip(0.0, 50.0) for f in MODEL_FEATURES]
    ).to_numpy()
    model = PeerAnomalyDetector(random_state=0).fit(X)
    return -model.score_samples(X)


def test_ten_times_the_amount_raises_the_anomaly_score():
    day = day_frame()
    before = scores(day)[0]
    spiked = day.with_columns(
        pl.when(pl.col("terminal_id") == "T0000000")
        .then(pl.col("cap_amount") * 10)
        .otherwise(pl.col("cap_amount"))
        .alias("cap_amount")
    )
    assert scores(spiked)[0] > before


def far_terminal_peers() -> pl.DataFrame:
    """``day_frame`` with T0000007 reported 40 km from its address, with peer features."""
    day = day_frame().with_columns(
        pl.when(pl.col("terminal_id") == "T0000007")
        .then(pl.lit(40.0))
        .otherwise(pl.col("distance_p50_km"))
        .alias("distance_p50_km")
    )
    return with_peer_features(day.lazy(), min_peers=8).collect()


def test_view_names_the_feature_and_the_behaviour():
    peers = far_terminal_peers()
    view = anomaly_view(peers, CFG)
    hit = view.filter(pl.col("terminal_id") == "T0000007")
    assert hit.height >= 1
    assert "relocation" in hit["behaviour"].to_list()
    assert "distance_p50_km" in hit["feature"].to_list()


def test_view_does_not_depend_on_the_row_order_of_the_day():
    """The forest sees one fixed order; each reason carries its own row's peer percentile."""
    peers = far_terminal_peers()
    view = anomaly_view(peers, CFG)
    for seed in (1, 2):
        shuffled = peers.sample(fraction=1.0, shuffle=True, seed=seed)
        assert shuffled["terminal_id"].to_list() != peers["terminal_id"].to_list()
        assert anomaly_view(shuffled, CFG).equals(view)
    hit = view.filter(pl.col("feature") == "distance_p50_km").row(0, named=True)
    own = peers.filter(pl.col("terminal_id") == hit["terminal_id"]).row(0, named=True)
    assert hit["pct"] == own["pct_distance_p50_km"]
    assert hit["z"] == min(own["z_distance_p50_km"], Z_CLIP) and hit["z"] > 0


def test_anomaly_adds_a_reason_to_a_matching_rule_detection_only():
    peers = far_terminal_peers()
    view = anomaly_view(peers, CFG)
    rule = pl.DataFrame(
        [
            {
                "terminal_id": "T0000007",
                "behaviour": "relocation",
                "day": date(2026, 3, 10),
                "score": 0.6,
                "reasons": [
                    {"code": "outside_geofence", "text": "x", "observed": 1.0, "threshold": 0.5}
                ],
                "evidence": ["a"],
            },
            {
                "terminal_id": "T0000007",
                "behaviour": "mcc_mismatch",
                "day": date(2026, 3, 10),
                "score": 0.6,
                "reasons": [],
                "evidence": ["a"],
            },
        ],
        schema=DETECTION_SCHEMA,
    )
    out = anomaly_detections(rule, view, peers, CFG).sort("behaviour")
    reloc = out.filter(pl.col("behaviour") == "relocation").row(0, named=True)
    assert reloc["score"] > 0.6
    assert [r["code"] for r in reloc["reasons"]] == ["outside_geofence", "peer_anomaly"]
    assert "robust SDs above its peers" in reloc["reasons"][1]["text"]
    mcc = out.filter(pl.col("behaviour") == "mcc_mismatch").row(0, named=True)
    assert mcc["score"] == 0.6
    # Off by default: the model alone raises nothing.
    assert out.height == 2


def test_peer_group_backs_off_to_coarser_groups():
    day = day_frame(12).with_columns(pl.Series("region_code", ["310101"] * 9 + ["110101"] * 3))
    peers = with_peer_features(day.lazy(), min_peers=8).collect()
    groups = dict(zip(peers["region_code"], peers["peer_group"], strict=False))
    assert groups["310101"] == "5411/310101/fixed_pos"
    assert groups["110101"] == "5411/fixed_pos"


def test_packed_forest_scores_equal_sklearn():
    """Scores come from the compiled packed forest and equal scikit-learn's within 1e-9."""
    rng = np.random.default_rng(7)
    X = np.clip(np.abs(rng.standard_t(2, size=(3000, len(MODEL_FEATURES)))), 0.0, 50.0)
    X[:5] = 30.0
    det = PeerAnomalyDetector(n_estimators=50, random_state=3).fit(X)
    got = det.score_samples(X)
    want = det.forest_.score_samples(X)
    np.testing.assert_allclose(got, want, rtol=0.0, atol=1e-9)
    assert det.offset_ == pytest.approx(float(np.quantile(want, det.alert_budget)), abs=1e-9)
    # The scores are not constant: the planted rows are the most abnormal.
    assert got[:5].max() < np.quantile(got, 0.01)
