"""Unsupervised peer-group anomaly model and how its hits become reasons.

:class:`PeerAnomalyDetector` follows scikit-learn's IsolationForest API:
``score_samples`` (lower = more abnormal), ``decision_function =
score_samples - offset_`` and ``predict`` in {-1, +1}; ``offset_`` is learned in
``fit`` from ``alert_budget`` (the share of rows to alert on, like
``contamination``). Its input is the matrix of one-sided peer z-scores
(:mod:`features.peers`), so "abnormal" means "far above its peers", and
:meth:`PeerAnomalyDetector.top_features` names the features that make a row
abnormal.

:func:`anomaly_detections` turns the model's view of a day into reasons: a
terminal-day the model marks abnormal adds a ``peer_anomaly`` reason (and a
small score boost) to a rule detection of the behaviour its top features point
at. It raises a detection of its own only if ``[anomaly] standalone`` is on and
the top feature is extremely far from peers; that is off by default because the
clean-terminal false-positive rate matters more than the extra recall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

from features.peers import PEER_FEATURES
from features.schema import DETECTION_SCHEMA, REASON_STRUCT
from kernels import isolation_forest_score_samples, pack_isolation_forest

#: Peer feature -> the behaviour it is evidence of.
FEATURE_BEHAVIOUR: dict[str, str] = {
    "n_txn": "cash_out",
    "cap_amount": "cash_out",
    "amount_mean": "cash_out",
    "amount_p90": "cash_out",
    "n_cards": "card_testing",
    "max_same_card": "cash_out",
    "round_share": "cash_out",
    "just_under_cap_share": "cash_out",
    "credit_share": "cash_out",
    "night_share": "cash_out",
    "outside_hours_share": "disallowed_use",
    "top5_card_share": "cash_out",
    "decline_rate": "card_testing",
    "decline_card_rate": "card_testing",
    "decline_technical_rate": "malfunction",
    "refund_ratio": "cash_out",
    "reversal_ratio": "malfunction",
    "fallback_share": "fallback_abuse",
    "mcc_mismatch_share": "mcc_mismatch",
    "distance_p50_km": "relocation",
    "max_speed_kmh": "relocation",
    "n_serials": "cloned_terminal",
    "n_ips": "cloned_terminal",
    "n_stan_conflict": "cloned_terminal",
    "max_cards_window": "card_testing",
    "n_txn_vs_7d": "cash_out",
    "cap_amount_vs_7d": "cash_out",
}

#: Feature names in model column order.
MODEL_FEATURES: tuple[str, ...] = tuple(PEER_FEATURES)
Z_CLIP = 50.0


class PeerAnomalyDetector(OutlierMixin, BaseEstimator):
    """Isolation forest on peer z-scores, with an alert threshold learned from a budget.

    Parameters
    ----------
    n_estimators : int
        Trees in the forest.
    max_samples : int, float or "auto"
        Rows drawn per tree (as in IsolationForest).
    alert_budget : float
        Share of training rows that fall below ``offset_`` (0 < budget < 0.5).
    random_state : int or None
        Seed of the forest.

    Attributes
    ----------
    forest_ : IsolationForest
        The fitted forest.
    packed_ : kernels.PackedForest
        The same forest flattened for the compiled scorer
        (:func:`kernels.isolation_forest_score_samples`, equal to scikit-learn's
        ``score_samples`` within 1e-9); every score below comes from it.
    offset_ : float
        ``score_samples`` below this is an alert.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> X[0] = 12.0
    >>> det = PeerAnomalyDetector(random_state=0, alert_budget=0.01).fit(X)
    >>> int(det.predict(X[:1])[0])
    -1
    """

    def __init__(self, n_estimators=100, max_samples="auto", alert_budget=0.01, random_state=None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.alert_budget = alert_budget
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the forest and learn ``offset_`` from ``alert_budget``; returns self."""
        X = validate_data(self, X, dtype=np.float64)
        if not 0.0 < float(self.alert_budget) < 0.5:
            raise ValueError(
                f"alert_budget must be in (0, 0.5), got {self.alert_budget!r}; it is the share "
                "of rows to alert on, e.g. 0.01"
            )
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.random_state,
        ).fit(X)
        self.packed_ = pack_isolation_forest(self.forest_)
        scores = isolation_forest_score_samples(self.packed_, X)
        self.offset_ = float(np.quantile(scores, self.alert_budget))
        return self

    def score_samples(self, X):
        """Opposite of the anomaly score: lower is more abnormal (in [-1, 0])."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return isolation_forest_score_samples(self.packed_, X)

    def decision_function(self, X):
        """``score_samples - offset_``: negative means an alert."""
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for rows to alert on, +1 otherwise."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def top_features(self, X, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Indices and values of the ``k`` largest columns of each row (the reasons).

        The model's inputs are one-sided peer z-scores, so the largest values are
        the features furthest above peers.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        k = min(int(k), X.shape[1])
        idx = np.argsort(-X, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(X, idx, axis=1)


def model_matrix(day: pl.DataFrame) -> np.ndarray:
    """One-sided, clipped peer z-scores of :data:`MODEL_FEATURES` (rows of ``day``)."""
    cols = [
        pl.col(f"z_{f}").fill_nan(0.0).fill_null(0.0).clip(0.0, Z_CLIP) for f in MODEL_FEATURES
    ]
    return day.select(cols).to_numpy().astype(np.float64, copy=False)


def anomaly_view(day: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """Per terminal-day: anomaly score in [0, 1], alert flag and top feature per behaviour.

    Returns columns terminal_id, local_date, anomaly_score, anomaly_alert,
    behaviour, feature, z, pct, peer_group (one row per alerting terminal-day and
    behaviour among its top features with ``z >= reason_z``).
    """
    a = config["anomaly"]
    empty = pl.DataFrame(
        schema={
            "terminal_id": pl.String,
            "local_date": pl.Date,
            "anomaly_score": pl.Float64,
            "behaviour": pl.String,
            "feature": pl.String,
            "z": pl.Float64,
            "pct": pl.Float64,
            "peer_group": pl.String,
        }
    )
    if day.height < 20:
        return empty  # too few terminal-days to learn what normal looks like
    # The forest's subsamples depend on row order; a fixed order makes runs repeatable
    # (group_by output order is not). Only the model's columns are put in that order.
    order = day.select(pl.arg_sort_by("terminal_id", "local_date")).to_series().to_numpy()
    X = model_matrix(day)[order]
    model = PeerAnomalyDetector(
        n_estimators=int(a["n_estimators"]),
        alert_budget=float(a["alert_budget"]),
        random_state=int(a["random_state"]),
    ).fit(X)
    raw = model.score_samples(X)  # once: decision_function would score every row again
    # An isolation forest splits on one feature at a time, so a row far out on a
    # single feature among many is isolated late; such a row alerts too.
    alert = (raw - model.offset_ < 0) | (X.max(axis=1) >= float(a["feature_z"]))
    rows = np.nonzero(alert)[0]
    if rows.size == 0:
        return empty
    idx, vals = model.top_features(X[rows], k=3)  # reasons of the alerting rows only
    names = np.asarray(MODEL_FEATURES)
    k = idx.shape[1]
    rep = np.repeat(rows, k)
    feat = names[idx.ravel()]
    z = vals.ravel()
    keep = z >= float(a["reason_z"])
    rep, feat, z = rep[keep], feat[keep], z[keep]
    scores = -raw
    sub = day[order[rep]]
    pct = [sub[f"pct_{f}"][i] for i, f in enumerate(feat)] if rep.size else []
    out = pl.DataFrame(
        {
            "terminal_id": sub.get_column("terminal_id"),
            "local_date": sub.get_column("local_date"),
            "anomaly_score": scores[rep],
            "behaviour": [FEATURE_BEHAVIOUR[f] for f in feat],
            "feature": feat.tolist(),
            "z": z,
            "pct": pl.Series(pct, dtype=pl.Float64),
            "peer_group": sub.get_column("peer_group"),
        },
        schema=empty.schema,
    )
    # Keep the strongest feature per terminal-day and behaviour.
    return out.sort("z", descending=True).unique(
        ["terminal_id", "local_date", "behaviour"], keep="first", maintain_order=True
    )


def _anomaly_reason() -> pl.Expr:
    return pl.struct(
        pl.lit("peer_anomaly").alias("code"),
        pl.format(
            "{} is {} robust SDs above its peers ({}; {}th percentile); peer anomaly score {}",
            pl.col("feature"),
            pl.col("z").round(1),
            pl.col("peer_group"),
            pl.col("pct").round(0),
            pl.col("anomaly_score").round(2),
        ).alias("text"),
        pl.col("z").alias("observed"),
        pl.col("reason_z").alias("threshold"),
    ).cast(REASON_STRUCT)


def anomaly_detections(
    detections: pl.DataFrame, view: pl.DataFrame, day: pl.DataFrame, config: dict[str, Any]
) -> pl.DataFrame:
    """Rule detections with peer-anomaly reasons added, plus standalone ones if configured.

    Parameters
    ----------
    detections : DataFrame
        Rule detections (:data:`DETECTION_SCHEMA`).
    view : DataFrame
        :func:`anomaly_view` output.
    day : DataFrame
        The terminal-day frame (for evidence of standalone detections).
    config : dict
        Thresholds (``[anomaly]``).
    """
    a = config["anomaly"]
    if view.height == 0:
        return detections
    v = view.with_columns(pl.lit(float(a["reason_z"])).alias("reason_z"))
    v = v.with_columns(_anomaly_reason().alias("a_reason")).rename({"local_date": "day"})
    keys = ["terminal_id", "behaviour", "day"]
    joined = detections.join(v.select(*keys, "a_reason"), on=keys, how="left")
    has = pl.col("a_reason").is_not_null()
    boosted = joined.with_columns(
        pl.when(has)
        .then((pl.col("score") + float(a["boost"])).clip(0.0, 1.0))
        .otherwise(pl.col("score"))
        .alias("score"),
        pl.when(has)
        .then(pl.concat_list("reasons", pl.col("a_reason")))
        .otherwise(pl.col("reasons"))
        .alias("reasons"),
    ).drop("a_reason")
    out = boosted.select(DETECTION_SCHEMA.names())
    if not bool(a.get("standalone", False)):
        return out
    strong = v.filter(pl.col("z") >= float(a["standalone_z"])).join(
        detections.select(keys), on=keys, how="anti"
    )
    if strong.height == 0:
        return out
    ev_cols = [c for c in day.columns if c.startswith("ev_")]
    ev = day.select("terminal_id", pl.col("local_date").alias("day"), *ev_cols)
    strong = strong.join(ev, on=["terminal_id", "day"], how="left")
    evidence = pl.lit([], dtype=pl.List(pl.String))
    for c in ev_cols:
        evidence = pl.when(pl.col("behaviour") == c[3:]).then(pl.col(c)).otherwise(evidence)
    extra = strong.select(
        "terminal_id",
        "behaviour",
        "day",
        (0.5 * pl.col("anomaly_score") + 0.2).clip(0.0, 0.9).alias("score"),
        pl.concat_list(pl.col("a_reason")).alias("reasons"),
        evidence.alias("evidence"),
    )
    return pl.concat([out, extra.cast(dict(DETECTION_SCHEMA))])
