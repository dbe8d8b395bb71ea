"""``trialguard bench kernels``: each numba kernel vs the best polars/numpy formulation.

Both sides run in this process on the same synthetic rows (sorted by group and time,
strictly increasing times within a group), results are checked equal, and the
figure is the ratio of the best of ``--repeat`` wall-clock times. The isolation
forest is compared with scikit-learn's ``score_samples``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from kernels import cards, devices, forest, geo, stan, windows
from kernels import stan_chains as stan_chains_kernel
from kernels._checks import dense_codes
from kernels.stan_chains import STAN_MODULUS

WINDOW_S = 600
MAX_GAP = 2
STAN_GAP = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trialguard bench kernels``."""
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows (default 10M)")
    parser.add_argument("--groups", type=int, default=None, help="groups (default rows / 50)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (best kept)")
    parser.add_argument("--forest-rows", type=int, default=200_000, help="rows scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")


@dataclass
class Result:
    """One benchmark line."""

    name: str
    baseline: str
    kernel_s: float
    baseline_s: float
    equal: bool

    @property
    def ratio(self) -> float:
        return self.baseline_s / self.kernel_s


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def make_rows(n: int, n_groups: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic transactions sorted by (group, t), times strictly increasing per group."""
    rng = np.random.default_rng(seed)
    group = np.sort(rng.integers(0, n_groups, n))
    gaps = rng.integers(1, 900, n)
    cum = np.cumsum(gaps)
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    start_of_row = np.repeat(cum[first] - gaps[first], np.diff(np.r_[first, n]))
    t = cum - start_of_row
    base_lat = rng.uniform(20, 45, n_groups)[group]
    base_lon = rng.uniform(100, 125, n_groups)[group]
    moved = rng.random(n) < 0.01
    lat = base_lat + np.where(moved, rng.normal(0, 2, n), rng.normal(0, 1e-3, n))
    lon = base_lon + np.where(moved, rng.normal(0, 2, n), rng.normal(0, 1e-3, n))
    lat[rng.random(n) < 0.1] = np.nan
    device = group * 2 + (rng.random(n) < 0.05)
    device[rng.random(n) < 0.02] = -1
    stan_ = (np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))) % 1_000_000
    jitter = rng.random(n)
    stan_ = np.where(jitter < 0.01, np.maximum(stan_ - 3, 0), stan_)
    stan_[jitter > 0.99] = -1
    return {
        "group": group,
        "t": t,
        "lat": lat,
        "lon": lon,
        "card": rng.integers(0, max(n // 5, 1), n),
        "device": device,
        "stan": stan_,
        "bin": rng.integers(0, 20, n),
        "last4": rng.integers(0, 10_000, n),
    }


def _same_group(df_g: str = "g") -> pl.Expr:
    return pl.col(df_g) == pl.col(df_g).shift()


def polars_travel_speed(r) -> np.ndarray:
    df = pl.DataFrame({"g": r["group"], "t": r["t"], "lat": r["lat"], "lon": r["lon"]})
    df = df.with_row_index("i").filter(pl.col("lat").is_not_nan() & pl.col("lon").is_not_nan())
    rad = np.pi / 180
    p1, p2 = pl.col("lat").shift() * rad, pl.col("lat") * rad
    dl = (pl.col("lon") - pl.col("lon").shift()) * rad
    a = ((p2 - p1) * 0.5).sin() ** 2 + p1.cos() * p2.cos() * (dl * 0.5).sin() ** 2
    d = 2 * geo.EARTH_RADIUS_KM * a.clip(upper_bound=1.0).sqrt().arcsin()
    hours = (pl.col("t") - pl.col("t").shift()) / 3600.0
    speed = (
        pl.when(~_same_group())
        .then(None)
        .when(d == 0)
        .then(0.0)
        .when(hours == 0)
        .then(float("inf"))
        .otherwise(d / hours)
    )
    out = df.select("i", speed.alias("v"))
    res = np.full(len(r["group"]), np.nan)
    res[out["i"].to_numpy()] = out["v"].fill_null(np.nan).to_numpy()
    return res


def _rolling(r, agg: pl.Expr, by: list[str], extra: dict | None = None) -> np.ndarray:
    df = pl.DataFrame({"g": r["group"], "t": r["t"], **(extra or {})}).with_row_index("i")
    if by != ["g"]:
        df = df.sort([*by, "t"])
    out = df.rolling("t", period=f"{WINDOW_S}i", closed="right", group_by=by).agg(
        pl.col("i").last(), agg.alias("v")
    )
    return out.sort("i")["v"].to_numpy().astype(np.int64)


def numpy_window_count(r) -> np.ndarray:
    key = r["group"] * np.int64(1 << 40) + r["t"]
    return np.searchsorted(key, key, "right") - np.searchsorted(key, key - WINDOW_S, "right")


def polars_devices(r) -> tuple[np.ndarray, np.ndarray]:
    df = pl.DataFrame({"g": r["group"], "t": r["t"], "d": r["device"]}).with_row_index("i")
    known = df.filter(pl.col("d") != -1)
    switch = _same_group() & (pl.col("d") != pl.col("d").shift())
    known = known.with_columns(
        switch.alias("switch"),
        pl.col("t").shift().over(["g", "d"]).alias("prev_same"),
    ).with_columns(
        (~_same_group() | pl.col("switch")).cum_sum().alias("run"),
        pl.when(pl.col("switch")).then(pl.col("prev_same")).alias("cand"),
    )
    cand = pl.col("cand").first().over("run")
    known = known.with_columns(
        (cand.is_not_null() & (cand > pl.col("t") - WINDOW_S) & (cand < pl.col("t")))
        .fill_null(False)
        .alias("back")
    )
    n = len(r["group"])
    s, b = np.zeros(n, bool), np.zeros(n, bool)
    idx = known["i"].to_numpy()
    s[idx] = known["switch"].fill_null(False).to_numpy()
    b[idx] = known["back"].to_numpy()
    return s, b


def polars_stan(r) -> tuple[np.ndarray, np.ndarray]:
    df = pl.DataFrame({"g": r["group"], "t": r["t"], "s": r["stan"]}).with_row_index("i")
    known = df.filter(pl.col("s") != -1)
    prev = pl.col("s").shift()
    known = known.with_columns(
        (pl.col("t").shift().over(["g", "s"]) > pl.col("t") - WINDOW_S)
        .fill_null(False)
        .alias("dup"),
        (
            _same_group()
            & (pl.col("s") < prev)
            & ~((prev >= stan.WRAP_FROM) & (pl.col("s") < stan.WRAP_TO))
        )
        .fill_null(False)
        .alias("ooo"),
    )
    n = len(r["group"])
    d, o = np.zeros(n, bool), np.zeros(n, bool)
    idx = known["i"].to_numpy()
    d[idx] = known["dup"].to_numpy()
    o[idx] = known["ooo"].to_numpy()
    return d, o


def polars_stan_chains(r) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kernels.stan_chains` as polars segments plus a loop over segments.

    Within a run of rows whose STAN steps by 0..STAN_GAP from the previous row the chain
    cannot change (polars, vectorised); only a run's first row needs the search over the
    group's chains, which is sequential (a Python loop over runs, not rows).
    """
    df = pl.DataFrame({"g": r["group"], "s": r["stan"]}).with_row_index("i")
    known = df.filter(pl.col("s") != -1)
    step = (pl.col("s") - pl.col("s").shift()) % STAN_MODULUS
    known = known.with_columns((~_same_group() | (step > STAN_GAP)).fill_null(True).alias("new"))
    known = known.with_columns(pl.col("new").cum_sum().alias("seg"))
    segs = known.group_by("seg", maintain_order=True).agg(
        pl.col("g").first(), pl.col("s").first().alias("first"), pl.col("s").last().alias("last")
    )
    seg_chain = np.empty(segs.height, dtype=np.int64)
    lasts: list[int] = []
    prev_g = None
    for j, (g, first, last) in enumerate(
        zip(segs["g"].to_list(), segs["first"].to_list(), segs["last"].to_list(), strict=True)
    ):
        if g != prev_g:
            lasts, prev_g = [], g
        best, best_d = -1, STAN_GAP + 1
        for c, lc in enumerate(lasts):
            d = (first - lc) % STAN_MODULUS
            if d < best_d:
                best, best_d = c, d
        if best < 0:
            best = len(lasts)
            lasts.append(last)
        lasts[best] = last
        seg_chain[j] = best
    known = known.with_columns(pl.Series("c", seg_chain[known["seg"].to_numpy() - 1]))
    size = pl.len().over(["g", "c"])
    kept = known.filter(size >= 2)
    first_seen = pl.col("i").min().over(["g", "c"])
    back = (
        _same_group() & (pl.col("c") != pl.col("c").shift()) & (first_seen < pl.col("i"))
    ).fill_null(False)
    kept = kept.with_columns(back.alias("b"))
    n = len(r["group"])
    chain, b = np.full(n, -1, dtype=np.int64), np.zeros(n, bool)
    chain[known["i"].to_numpy()] = known["c"].to_numpy()
    b[kept["i"].to_numpy()] = kept["b"].to_numpy()
    return chain, b


def polars_cards(r) -> np.ndarray:
    df = pl.DataFrame(
        {"g": r["group"], "t": r["t"], "b": r["bin"], "k": r["last4"]}
    ).with_row_index("i")
    right = df.select("g", "b", "k", pl.col("t").alias("tr")).sort("tr")
    left = df.sort("t")
    hits = []
    for delta in [*range(-MAX_GAP, 0), *range(1, MAX_GAP + 1)]:
        probe = left.with_columns(pl.col("k") + delta)
        joined = probe.join_asof(
            right, left_on="t", right_on="tr", by=["g", "b", "k"], check_sortedness=False
        )
        hits.append(
            (joined["tr"] > joined["t"] - WINDOW_S)
            .fill_null(False)
            .cast(pl.Int64)
            .alias(f"h{delta}")
        )
    out = (
        left.select("i")
        .with_columns(hits)
        .select("i", pl.sum_horizontal(pl.exclude("i")).alias("v"))
    )
    res = np.zeros(len(r["group"]), np.int64)
    res[out["i"].to_numpy()] = out["v"].to_numpy()
    return res


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if a.dtype.kind == "f":
        return bool(np.allclose(a, b, rtol=1e-9, equal_nan=True))
    return bool(np.array_equal(a, b))


def numpy_first_seen_codes(values: np.ndarray) -> np.ndarray:
    """Codes 0..k-1 in order of first appearance, by ``np.unique`` (sort-based)."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]


def _cases(r) -> dict[str, tuple[Callable, list[tuple[str, Callable]]]]:
    g, t = r["group"], r["t"]
    # wide values, as the features pass them: 64-bit hashes of the card codes
    hashed = (pl.Series(r["card"]).hash() // 2).cast(pl.Int64).to_numpy()
    return {
        "dense_codes": (
            lambda: dense_codes(hashed)[0],
            [("numpy unique + first-seen order", lambda: numpy_first_seen_codes(hashed))],
        ),
        "distance_km": (
            lambda: geo.distance_km(
                r["lat"], r["lon"], np.roll(r["lat"], 1), np.roll(r["lon"], 1)
            ),
            [("numba loop", lambda: _numba_distance(r))],
        ),
        "travel_speed_kmh": (
            lambda: geo.travel_speed_kmh(g, t, r["lat"], r["lon"]),
            [("polars shift + same-group mask", lambda: polars_travel_speed(r))],
        ),
        "window_count": (
            lambda: windows.window_count(g, t, WINDOW_S),
            [
                ("polars rolling len", lambda: _rolling(r, pl.len(), ["g"])),
                ("numpy searchsorted", lambda: numpy_window_count(r)),
            ],
        ),
        "window_distinct": (
            lambda: windows.window_distinct(g, t, r["card"], WINDOW_S),
            [
                (
                    "polars rolling n_unique",
                    lambda: _rolling(r, pl.col("c").n_unique(), ["g"], {"c": r["card"]}),
                )
            ],
        ),
        "same_value_recent": (
            lambda: windows.same_value_recent(g, t, r["card"], WINDOW_S),
            [
                (
                    "polars rolling by [g, card]",
                    lambda: _rolling(r, pl.len(), ["g", "c"], {"c": r["card"]}),
                )
            ],
        ),
        "device_interleaving": (
            lambda: devices.device_interleaving(g, t, r["device"], WINDOW_S),
            [("polars shift/over + runs", lambda: polars_devices(r))],
        ),
        "stan_checks": (
            lambda: stan.stan_checks(g, t, r["stan"], WINDOW_S),
            [("polars shift().over([g, stan])", lambda: polars_stan(r))],
        ),
        "stan_chains": (
            lambda: stan_chains_kernel(g, t, r["stan"], STAN_GAP),
            [("polars runs + loop over runs", lambda: polars_stan_chains(r))],
        ),
        "sequential_card_burst": (
            lambda: cards.sequential_card_burst(g, t, r["bin"], r["last4"], WINDOW_S, MAX_GAP),
            [(f"polars join_asof x{2 * MAX_GAP}", lambda: polars_cards(r))],
        ),
    }


def _numba_distance(r) -> np.ndarray:
    out = np.empty(len(r["lat"]))
    geo._distance_km_loop(r["lat"], r["lon"], np.roll(r["lat"], 1), np.roll(r["lon"], 1), out)
    return out


def _forest(args) -> list[Result]:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(args.forest_rows, 20))
    model = IsolationForest(n_estimators=100, random_state=args.seed).fit(X[:50_000])
    packed = forest.pack_isolation_forest(model)
    forest.isolation_forest_score_samples(packed, X[:100])  # compile / load cache
    k_s, got = _best(lambda: forest.isolation_forest_score_samples(packed, X), args.repeat)
    b_s, want = _best(lambda: model.score_samples(X), args.repeat)
    equal = bool(np.max(np.abs(got - want)) <= 1e-9)
    return [Result("isolation_forest_score_samples", "sklearn score_samples", k_s, b_s, equal)]


def run(args: argparse.Namespace, settings=None) -> int:
    """Time every kernel against its baselines and print a Markdown table.

    Returns 0 when every kernel's result equals its baseline's, else 1.
    """
    n = args.rows
    n_groups = args.groups or max(n // 50, 1)
    print(
        f"rows={n:,} groups={n_groups:,} window={WINDOW_S}s repeat={args.repeat} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    r = make_rows(n, n_groups, args.seed)
    small = {k: v[:2000] for k, v in r.items()}
    results: list[Result] = []
    for name, (kernel, baselines) in _cases(r).items():
        if args.only and name not in args.only:
            continue
        kernel_small, baselines_small = _cases(small)[name]
        kernel_small()  # compile or load from cache outside the timing
        for _, base_small in baselines_small:
            base_small()
        k_s, got = _best(kernel, args.repeat)
        for label, base in baselines:
            b_s, want = _best(base, args.repeat)
            results.append(Result(name, label, k_s, b_s, _equal(got, want)))
            print(f"  {name}: {k_s:.3f}s vs {label} {b_s:.3f}s", flush=True)
    if not args.only or "isolation_forest_score_samples" in args.only:
        results += _forest(args)
    print()
    print("| kernel | baseline | kernel s | baseline s | speed-up | equal |")
    print("|---|---|---:|---:|---:|---|")
    for res in results:
        print(
            f"| {res.name} | {res.baseline} | {res.kernel_s:.3f} | {res.baseline_s:.3f} "
            f"| {res.ratio:.1f}x | {'yes' if res.equal else 'NO'} |"
        )
    return 0 if all(res.equal for res in results) else 1
