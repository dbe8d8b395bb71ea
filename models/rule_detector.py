"""The rule detectors as a scikit-learn style estimator.

Kept apart from :mod:`models.rules` so that the per-terminal step, which calls
:func:`models.rules.detect` in every worker process, does not import scikit-learn
(~2.5 s of CPU per process here).
"""

from __future__ import annotations

from typing import Any

import polars as pl
from sklearn.base import BaseEstimator

from models.rules.common import RULE_BEHAVIOURS
from models.rules.engine import detect


class RuleDetector(BaseEstimator):
    """The rule detectors as a scikit-learn style estimator (stateless; ``fit`` checks config).

    Parameters
    ----------
    config : dict or None
        Thresholds (:func:`models.config.load_config`); ``None`` loads the defaults.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = config

    def fit(self, X=None, y=None):
        """Validate the configuration; returns self."""
        from models.config import load_config

        cfg = load_config() if self.config is None else self.config
        missing = [b for b in RULE_BEHAVIOURS if b not in cfg]
        if missing:
            raise ValueError(
                f"config has no tables for {missing}; expected every table of "
                "models/thresholds.toml (start from load_config())"
            )
        self.config_ = cfg
        return self

    def detect(self, day: pl.LazyFrame) -> pl.LazyFrame:
        """Detections for a terminal-day frame (see :func:`detect`)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return detect(day, self.config_)
