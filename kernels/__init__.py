"""Numba kernels for sequential per-terminal and per-card work on the hot path.

Every public function validates its inputs (1-D, equal lengths, int64/float64, rows
sorted by ``(group, t)``) and raises ``ValueError``/``TypeError`` saying what to fix.
See ``docs/kernels.md``.
"""

from kernels.cards import sequential_card_burst
from kernels.devices import device_interleaving, previous_flagged
from kernels.forest import PackedForest, isolation_forest_score_samples, pack_isolation_forest
from kernels.geo import distance_km, travel_speed_kmh
from kernels.stan import stan_checks
from kernels.stan_chains import stan_chains
from kernels.windows import same_value_recent, window_count, window_distinct

__all__ = [
    "PackedForest",
    "device_interleaving",
    "distance_km",
    "isolation_forest_score_samples",
    "pack_isolation_forest",
    "previous_flagged",
    "same_value_recent",
    "sequential_card_burst",
    "stan_chains",
    "stan_checks",
    "travel_speed_kmh",
    "window_count",
    "window_distinct",
]
