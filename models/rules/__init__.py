"""Rule detectors: trial policies and documented thresholds applied to terminal-day features.

Each behaviour is a list of :class:`~models.rules.common.Check` objects evaluated on
the frame of :func:`features.daily.terminal_day` (one row per terminal and local
day). A check that holds contributes a reason ``{code, text, observed, threshold}``
and a score in [0, 1]; a behaviour is detected when one of its *firing* checks
holds (supporting checks only add reasons and score). Scores combine as a
noisy-OR, ``1 - prod(1 - s_i)``. Thresholds come from ``models/thresholds.toml``
(:func:`models.config.load_config`), caps and allowed codes from the policy.

One module per behaviour family, each naming its thresholds and their domain
sources (``shared/reference/domain.md``):

- ``location``      relocation (移机)
- ``devices``       cloned terminals and MCC jumping (跳码)
- ``cashout``       credit-card cash-out (套现)
- ``card_testing``  card testing / BIN attacks
- ``fallback``      magstripe fallback abuse
- ``compliance``    unregistered use, trial limit breaches, disallowed use
- ``malfunction``   faulty terminals
- ``common``        the Check record and score shapes; ``engine`` evaluates them all
"""

from models.rules.card_testing import card_testing_checks
from models.rules.cashout import cash_out_checks
from models.rules.common import (
    RULE_BEHAVIOURS,
    Check,
    below_score,
    count_score,
    exceed_score,
    poisson_surprise,
)
from models.rules.compliance import (
    disallowed_use_checks,
    trial_limit_breach_checks,
    unregistered_use_checks,
)
from models.rules.devices import cloned_terminal_checks, mcc_mismatch_checks
from models.rules.engine import (
    CHECKS,
    OPTIONAL_COUNTS,
    OPTIONAL_DETAILS,
    behaviour_detections,
    detect,
)
from models.rules.fallback import FALLBACK_WINDOW_COUNTS, fallback_abuse_checks
from models.rules.location import relocation_checks
from models.rules.malfunction import (
    MALFUNCTION_BASELINE,
    MALFUNCTION_SYMPTOMS,
    malfunction_checks,
    window_sums,
)

__all__ = [
    "CHECKS",
    "FALLBACK_WINDOW_COUNTS",
    "MALFUNCTION_BASELINE",
    "MALFUNCTION_SYMPTOMS",
    "OPTIONAL_COUNTS",
    "OPTIONAL_DETAILS",
    "RULE_BEHAVIOURS",
    "Check",
    "behaviour_detections",
    "below_score",
    "card_testing_checks",
    "cash_out_checks",
    "cloned_terminal_checks",
    "count_score",
    "detect",
    "disallowed_use_checks",
    "exceed_score",
    "fallback_abuse_checks",
    "malfunction_checks",
    "mcc_mismatch_checks",
    "poisson_surprise",
    "relocation_checks",
    "trial_limit_breach_checks",
    "unregistered_use_checks",
    "window_sums",
]
