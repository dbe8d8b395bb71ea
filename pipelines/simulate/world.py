"""The simulated world: merchants and terminals, card population, registry, episodes.

Everything here is per terminal (loops over terminals are fine); nothing is per
transaction. Times are ``int64`` seconds since 1970-01-01 in local wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from features.schema import DEFAULT_POLICY_ID, TERMINAL_KINDS, TERMINALS
from pipelines.simulate import scenarios as sc
from pipelines.simulate.cards import BIN_TYPE, random_cards
from pipelines.simulate.reference import (
    BRANCH_WORDS,
    CATEGORIES,
    CHANNELS,
    CITIES,
    HOURS,
    NAME_WORDS,
    PROFILES,
    TERMINAL_MODELS,
)

DAY = 86_400
EPOCH = date(1970, 1, 1)
KM_PER_DEG_LAT = 111.0


def day_seconds(d: date) -> int:
    """Seconds since the epoch of local midnight starting ``d``."""
    return (d - EPOCH).days * DAY


def seconds_to_datetime(s: int) -> datetime:
    """Local naive datetime of ``s`` seconds since the epoch."""
    return datetime(1970, 1, 1) + timedelta(seconds=int(s))


def offset_km(
    lat: np.ndarray, lon: np.ndarray, north_km, east_km
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates moved by the given distances (small-distance approximation)."""
    lat2 = lat + np.asarray(north_km) / KM_PER_DEG_LAT
    lon2 = lon + np.asarray(east_km) / (KM_PER_DEG_LAT * np.cos(np.radians(lat)))
    return lat2, lon2


@dataclass
class Episode:
    """One injected behaviour episode on one terminal (days are trial-day indices)."""

    term: int
    behaviour: str
    level: int
    first: int
    last: int
    params: dict[str, float]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def intensity(self) -> str:
        """Name of the intensity level."""
        return sc.INTENSITIES[self.behaviour][self.level].name


@dataclass
class World:
    """All per-terminal state of one simulated trial."""

    start: date
    days: int
    n_registered: int
    term: dict[str, np.ndarray]
    policies: dict[str, dict[str, object]]
    registry: pl.DataFrame
    episodes: list[Episode]
    card_pan: np.ndarray
    card_bin: np.ndarray
    card_chip: np.ndarray
    card_debit_next: np.ndarray
    city_card_range: np.ndarray  # (n_cities, 2)

    @property
    def n_terms(self) -> int:
        """Terminals including unregistered (ghost) ids."""
        return len(self.term["tid"])

    def day_start(self, d: int) -> int:
        """Seconds of local midnight of trial day ``d``."""
        return day_seconds(self.start) + d * DAY

    def episodes_on(self, d: int) -> list[Episode]:
        """Episodes active on trial day ``d``."""
        return [e for e in self.episodes if e.first <= d <= e.last]


def _policy_fits(
    policy: dict, rate: float, median_fen: float, sigma: float, hours: tuple[int, int], is24: bool
) -> bool:
    """Whether a merchant's typical trade fits a policy with the acquirer's headroom."""
    p995 = median_fen * np.exp(2.6 * sigma)
    mean = median_fen * np.exp(sigma**2 / 2)
    if p995 > policy["max_txn_amount_minor"]:
        return False
    if rate * mean * sc.POLICY_HEADROOM > policy["max_daily_amount_minor"]:
        return False
    if rate * sc.POLICY_HEADROOM > policy["max_daily_txn_count"]:
        return False
    bh = policy.get("business_hours")
    if bh is None:
        return True
    if is24:
        return False
    start = int(bh[0][:2])
    end = int(bh[1][:2])
    if end <= start:
        end += 24
    o, c = hours
    return (start <= o and c <= end) or (start <= o + 24 and c + 24 <= end)


def build_world(
    n_terminals: int,
    days: int,
    start: date,
    seed: int,
    min_per_behaviour: int = 1,
    injected_share: float = sc.INJECTED_SHARE,
) -> World:
    """Draw merchants, terminals, cards, the registry and the injected episodes."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    end = start + timedelta(days=days - 1)
    n_ghost = max(1, round(n_terminals * sc.GHOST_TERMINALS_PER_1000 / 1000))
    n = n_terminals + n_ghost

    # --- merchants and terminals -------------------------------------------------
    city_w = np.array([c.weight for c in CITIES])
    city = rng.choice(len(CITIES), size=n, p=city_w / city_w.sum())
    cat_w = np.array([c.weight for c in CATEGORIES])
    cat = rng.choice(len(CATEGORIES), size=n, p=cat_w / cat_w.sum())
    mobile_share = np.array([c.mobile for c in CATEGORIES])[cat]
    kinds = np.array(list(sc.KIND_SHARES))
    kind_p = np.array(list(sc.KIND_SHARES.values()))
    kind = rng.choice(kinds, size=n, p=kind_p).astype(object)
    kind[rng.random(n) < mobile_share] = "mobile_pos"
    model = np.empty(n, dtype=object)
    reports_serial = np.zeros(n, dtype=bool)
    for k in TERMINAL_KINDS:
        opts = [m for m in TERMINAL_MODELS if m[1] == k]
        idx = np.flatnonzero(kind == k)
        pick = rng.integers(0, len(opts), size=len(idx))
        model[idx] = [opts[j][0] for j in pick]
        reports_serial[idx] = [opts[j][2] for j in pick]
    has_gps = (kind != "fixed_pos") | (rng.random(n) > sc.FIXED_WITHOUT_GPS_SHARE)

    # chains: some terminals are a second till of an earlier merchant (same MID, place, trade)
    parent = np.arange(n)
    chain = (rng.random(n) < sc.SAME_MERCHANT_SHARE) & (parent > 0)
    parent[chain] = (rng.random(int(chain.sum())) * parent[chain]).astype(np.int64)
    for _ in range(8):
        parent = parent[parent]
    city, cat = city[parent], cat[parent]
    city_lat = np.array([c.lat for c in CITIES])[city]
    city_lon = np.array([c.lon for c in CITIES])[city]
    r_km = 9.0 * np.sqrt(rng.random(n))
    ang = rng.random(n) * 2 * np.pi
    lat, lon = offset_km(city_lat, city_lon, r_km * np.cos(ang), r_km * np.sin(ang))
    near_lat, near_lon = offset_km(
        lat[parent], lon[parent], rng.normal(0, 0.03, size=n), rng.normal(0, 0.03, size=n)
    )
    lat, lon = np.where(chain, near_lat, lat), np.where(chain, near_lon, lon)
    lat, lon = np.round(lat, 6), np.round(lon, 6)
    region = np.array(
        [CITIES[c].regions[int(rng.integers(len(CITIES[c].regions)))] for c in city], dtype=object
    )

    tids = rng.choice(90_000_000, size=n, replace=False) + 10_000_000
    tid = np.array([f"{t:08d}" for t in tids], dtype=object)
    mcc = np.array([CATEGORIES[c].mcc for c in cat], dtype=object)
    msn = rng.choice(10_000, size=n, replace=n > 10_000)
    mid = np.array(
        [f"898{CITIES[c].area_code}{m}{s:04d}" for c, m, s in zip(city, mcc, msn, strict=True)],
        dtype=object,
    )[parent]
    serial = np.array(
        [f"SN{v:010d}" for v in rng.choice(9 * 10**9, size=n, replace=False)], dtype=object
    )
    clone_serial = np.array(
        [f"SN{v:010d}" for v in rng.integers(0, 9 * 10**9, size=n)], dtype=object
    )
    name = np.array(
        [
            CITIES[c].name
            + NAME_WORDS[int(rng.integers(len(NAME_WORDS)))]
            + CATEGORIES[k].label
            + BRANCH_WORDS[int(rng.integers(len(BRANCH_WORDS)))]
            for c, k in zip(city, cat, strict=True)
        ],
        dtype=object,
    )[parent]
    region = region[parent]
    channel = np.array(CHANNELS, dtype=object)[rng.integers(0, len(CHANNELS), size=n)]

    # --- trade profile: hours, volume, policy ----------------------------------
    profile = [CATEGORIES[c].profile for c in cat]
    is24 = rng.random(n) < np.array([CATEGORIES[c].p24h for c in cat])
    open_h = np.zeros(n, dtype=np.int64)
    close_h = np.full(n, 24, dtype=np.int64)
    for i in range(n):
        if not is24[i]:
            opts = HOURS[profile[i]]
            open_h[i], close_h[i] = opts[int(rng.integers(len(opts)))]
    rate = (
        np.array([CATEGORIES[c].rate for c in cat])
        * sc.VOLUME_SCALE
        * np.exp(rng.normal(0, 0.6, size=n))
    )
    rate = np.clip(rate, *sc.DAILY_TXN_RANGE)
    median_fen = np.array([CATEGORIES[c].median_yuan * 100 for c in cat]) * np.exp(
        rng.normal(0, 0.25, size=n)
    )
    sigma = np.array([CATEGORIES[c].sigma for c in cat])
    sloppy = rng.random(n) < sc.SLOPPY_SHARE
    policy = np.empty(n, dtype=object)
    for i in range(n):
        hours = (int(open_h[i]), int(close_h[i]))
        size = rate[i] * (0.5 if sloppy[i] else 1.0)
        if CATEGORIES[cat[i]].mcc == "7011":
            policy[i] = "hospitality"
            continue
        if profile[i] == "night" and _policy_fits(
            sc.POLICIES["night_trade"], size, median_fen[i], sigma[i], hours, False
        ):
            policy[i] = "night_trade"
            continue
        fits = [
            p
            for p in ("debit_only", "strict")
            if _policy_fits(sc.POLICIES[p], size, median_fen[i], sigma[i], hours, bool(is24[i]))
        ]
        u = rng.random()
        if "debit_only" in fits and u < 0.3:
            policy[i] = "debit_only"
        elif "strict" in fits and u < 0.85:
            policy[i] = "strict"
        else:
            policy[i] = DEFAULT_POLICY_ID
    policy_id = policy.copy()
    unknown = (policy == DEFAULT_POLICY_ID) & (rng.random(n) < sc.UNKNOWN_POLICY_SHARE)
    policy_id[unknown] = sc.UNKNOWN_POLICY_ID
    # sloppy staff keep selling an hour past the policy's closing hour
    for i in np.flatnonzero(sloppy & ~is24):
        bh = sc.POLICIES.get(policy[i], {}).get("business_hours")
        if bh:
            end_h = int(bh[1][:2]) + (24 if int(bh[1][:2]) <= int(bh[0][:2]) else 0)
            close_h[i] = max(close_h[i], end_h + 1)

    hour_w = np.zeros((n, 24))
    for i in range(n):
        w = np.array(PROFILES[profile[i]], dtype=np.float64)
        if not is24[i]:
            mask = np.zeros(24, dtype=bool)
            hrs = np.arange(open_h[i], close_h[i]) % 24
            mask[hrs] = True
            w = w * mask
        hour_w[i] = w
    hour_cdf = np.cumsum(hour_w, axis=1)
    hour_cdf /= hour_cdf[:, -1:]
    weekday_f = np.array([CATEGORIES[c].weekend for c in cat])

    # --- trial windows and operating windows ------------------------------------
    ts_off = rng.integers(-25, max(2, int(days * 0.7)), size=n)
    length = rng.choice([30, 45, 60, 90], size=n)
    trial_start_day = day_seconds(start) // DAY + ts_off
    trial_end_day = trial_start_day + length - 1
    too_early = trial_end_day < day_seconds(start) // DAY + 3
    trial_end_day[too_early] += 60
    act_delay = rng.integers(8 * 3600, 11 * 3600, size=n) + (rng.random(n) < 0.1) * DAY
    activated = trial_start_day * DAY + act_delay
    op_start = activated.copy()
    op_end = (trial_end_day + 1) * DAY
    stop_time = np.full(n, -1, dtype=np.int64)
    stop_status = np.empty(n, dtype=object)
    sim0, sim1 = day_seconds(start), day_seconds(end) + DAY

    ghost = np.zeros(n, dtype=bool)
    ghost[n_terminals:] = True

    # --- card population: per-city ranges, per-terminal customer windows ------
    per_city = np.bincount(city, minlength=len(CITIES)) * sc.CARDS_PER_TERMINAL + 2000
    bounds = np.concatenate([[0], np.cumsum(per_city)])
    card_pan, card_bin, card_chip = random_cards(rng, int(bounds[-1]))
    debit = BIN_TYPE[card_bin] == "debit"
    pos = np.flatnonzero(debit)
    nxt = np.searchsorted(pos, np.arange(len(card_pan)))
    card_debit_next = pos[np.where(nxt >= len(pos), 0, nxt)]
    width = np.clip(rate * sc.POOL_SIZE_PER_DAILY_TXN, 60, per_city[city] - 1).astype(np.int64)
    win_start = bounds[city] + (rng.random(n) * (per_city[city] - width)).astype(np.int64)

    term: dict[str, np.ndarray] = {
        "tid": tid,
        "mid": mid,
        "serial": serial,
        "clone_serial": clone_serial,
        "name": name,
        "mcc": mcc,
        "cat": cat,
        "city": city,
        "region": region,
        "lat": lat,
        "lon": lon,
        "kind": kind,
        "model": model,
        "reports_serial": reports_serial,
        "has_gps": has_gps,
        "channel": channel,
        "policy": policy,
        "policy_id": policy_id,
        "open_h": open_h,
        "close_h": close_h,
        "is24": is24,
        "hour_cdf": hour_cdf,
        "rate": rate,
        "median_fen": median_fen,
        "sigma": sigma,
        "weekend": weekday_f,
        "sloppy": sloppy,
        "op_start": op_start,
        "op_end": op_end,
        "ghost": ghost,
        "win_start": win_start,
        "win_width": width,
        "activated": activated,
        "trial_start_day": trial_start_day,
        "trial_end_day": trial_end_day,
        "stop_time": stop_time,
        "stop_status": stop_status,
        "ip": (np.array([CITIES[c].ip_prefix for c in city], dtype=np.int64) << 24)
        + rng.integers(1 << 16, 1 << 24, size=n),
        "lac": np.array([int(r[-2:]) for r in region], dtype=np.int64) * 1000
        + city.astype(np.int64) * 100
        + 20000
        + rng.integers(0, 100, size=n),
        "ci": rng.integers(1000, 65000, size=n),
        "mnc": rng.integers(0, 3, size=n),
        "app_version": np.array(["3.2.1", "3.2.4", "4.0.0", "4.1.2"], dtype=object)[
            rng.integers(0, 4, size=n)
        ],
    }

    # --- clean terminals that stop mid-trial (suspended/terminated and silent) --
    registered = np.flatnonzero(~ghost)
    running = registered[
        (op_start[registered] < sim1 - 5 * DAY) & (op_end[registered] > sim0 + 5 * DAY)
    ]
    stops = (
        rng.choice(running, size=int(len(running) * 0.03), replace=False) if len(running) else []
    )
    for i in stops:
        lo, hi = max(op_start[i], sim0) + DAY, min(op_end[i], sim1) - DAY
        if hi > lo:
            stop_time[i] = int(rng.integers(lo, hi))
            stop_status[i] = "suspended" if rng.random() < 0.5 else "terminated"
            op_end[i] = stop_time[i]

    episodes = _draw_episodes(
        rng, term, start, days, n_terminals, min_per_behaviour, injected_share
    )
    registry = _registry(rng, term, n_terminals, end)
    return World(
        start=start,
        days=days,
        n_registered=n_terminals,
        term=term,
        policies=sc.POLICIES,
        registry=registry,
        episodes=episodes,
        card_pan=card_pan,
        card_bin=card_bin,
        card_chip=card_chip,
        card_debit_next=card_debit_next,
        city_card_range=np.stack([bounds[:-1], bounds[1:]], axis=1),
    )


def _active_days(term: dict, i: int, start: date, days: int) -> tuple[int, int]:
    """First and last trial-day index on which terminal ``i`` operates (may be empty)."""
    s0 = day_seconds(start)
    first = max(0, int((term["op_start"][i] - s0) // DAY))
    last = min(days - 1, int((term["op_end"][i] - 1 - s0) // DAY))
    return first, last


def _draw_episodes(
    rng, term, start, days, n_registered, min_per_behaviour, share
) -> list[Episode]:
    """Pick injected terminals, behaviours, intensities and windows."""
    behaviours = list(sc.INJECTED)
    n_inj = max(round(n_registered * share), len(behaviours) * min_per_behaviour)
    candidates = []
    for i in rng.permutation(n_registered):
        first, last = _active_days(term, int(i), start, days)
        if term["stop_time"][i] < 0 and last - first >= 2:
            candidates.append(int(i))
    if not candidates:
        candidates = list(range(n_registered))
    chosen = candidates[: min(n_inj, len(candidates))]
    plan: list[tuple[int, str]] = []
    for k, i in enumerate(chosen):
        plan.append((int(i), behaviours[k % len(behaviours)]))
    n_two = int(len(chosen) * sc.SECOND_BEHAVIOUR_SHARE)
    for k, i in enumerate(chosen[:n_two]):
        first_b = behaviours[k % len(behaviours)]
        if first_b == "unregistered_use":
            continue
        others = [b for b in behaviours if b not in (first_b, "unregistered_use")]
        plan.append((int(i), others[int(rng.integers(len(others)))]))
    level_counter: dict[str, int] = {}
    episodes: list[Episode] = []
    s0 = day_seconds(start)
    ghosts = list(np.flatnonzero(term["ghost"]))
    for i, b in plan:
        levels = sc.INTENSITIES[b]
        level = level_counter.get(b, 0) % len(levels)
        level_counter[b] = level_counter.get(b, 0) + 1
        params = dict(levels[level].params)
        lo, hi = sc.EPISODE_DAYS[b]
        a, z = _active_days(term, i, start, days)
        if z < a:
            a, z = 0, days - 1
        length = int(rng.integers(lo, hi + 1))
        first = int(rng.integers(a, max(a, z - length + 1) + 1))
        last = min(z, first + length - 1)
        ep = Episode(i, b, level, first, last, params)
        if b == "unregistered_use":
            _plan_unregistered(rng, term, ep, ghosts, s0, days)
            if ep.extra.get("kind") == "unknown_id":
                ep.term = int(ep.extra["ghost"])
        else:
            _plan_extra(rng, term, ep)
        episodes.append(ep)
    # ghosts that no episode uses still trade a few days (stray unknown ids)
    used = {e.term for e in episodes}
    for g in ghosts:
        if g not in used:
            first = int(rng.integers(0, days))
            episodes.append(
                Episode(
                    int(g),
                    "unregistered_use",
                    2,
                    first,
                    min(days - 1, first + 1),
                    {"hours": 5},
                    {"kind": "unknown_id"},
                )
            )
            _ghost_window(term, int(g), s0, first, min(days - 1, first + 1))
    return episodes


def _ghost_window(term, g, s0, first, last) -> None:
    term["op_start"][g] = s0 + first * DAY
    term["op_end"][g] = s0 + (last + 1) * DAY
    term["activated"][g] = term["op_start"][g]


def _plan_unregistered(rng, term, ep: Episode, ghosts: list, s0: int, days: int) -> None:
    """Make a terminal transact outside its registry window (or give an unknown id)."""
    i = ep.term
    hours = int(ep.params["hours"])
    sim1 = s0 + days * DAY
    kinds = list(sc.UNREGISTERED_KINDS) + (["unknown_id"] if ghosts else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "before_activation" and term["activated"][i] - hours * 3600 < s0:
        kind = "after_termination"
    if kind == "after_trial_end" and term["op_end"][i] + 3600 > sim1:
        kind = "after_suspension"
    ep.extra["kind"] = kind
    if kind == "unknown_id":
        g = ghosts.pop()
        ep.extra["ghost"] = g
        _ghost_window(term, g, s0, ep.first, ep.last)
    elif kind == "before_activation":
        term["op_start"][i] = term["activated"][i] - hours * 3600
    elif kind == "after_trial_end":
        term["op_end"][i] = term["op_end"][i] + hours * 3600
    else:
        t = s0 + ep.first * DAY + int(rng.integers(9 * 3600, 17 * 3600))
        t = max(t, int(term["op_start"][i]) + 3600)
        term["stop_time"][i] = t
        term["stop_status"][i] = "suspended" if kind == "after_suspension" else "terminated"
        term["op_end"][i] = min(t + hours * 3600, sim1)


def _plan_extra(rng, term, ep: Episode) -> None:
    """Per-behaviour choices fixed for the whole episode."""
    i, p = ep.term, ep.params
    if ep.behaviour in ("relocation", "cloned_terminal"):
        if p.get("other_city"):
            c = (int(term["city"][i]) + 1 + int(rng.integers(len(CITIES) - 1))) % len(CITIES)
            lat, lon = CITIES[c].lat, CITIES[c].lon
            lat, lon = offset_km(np.array(lat), np.array(lon), rng.normal(0, 3), rng.normal(0, 3))
            ep.extra.update(city=c, lat=float(lat), lon=float(lon))
        else:
            ang = rng.random() * 2 * np.pi
            km = p["km"] * (0.8 + 0.4 * rng.random())
            lat, lon = offset_km(
                np.array(term["lat"][i]),
                np.array(term["lon"][i]),
                km * np.cos(ang),
                km * np.sin(ang),
            )
            ep.extra.update(city=int(term["city"][i]), lat=float(lat), lon=float(lon))
        ep.extra["ip"] = (CITIES[ep.extra["city"]].ip_prefix << 24) + int(
            rng.integers(1 << 16, 1 << 24)
        )
        ep.extra["ci"] = int(rng.integers(1000, 65000))
        ep.extra["lac"] = (
            int(term["lac"][i])
            + 1
            + int(rng.integers(1, 50))
            + 100 * (ep.extra["city"] - int(term["city"][i]))
        )
    elif ep.behaviour == "mcc_mismatch":
        opts = [m for m in sc.MCC_JUMP_TARGETS if m != term["mcc"][i]]
        ep.extra["mcc"] = opts[int(rng.integers(len(opts)))]
    elif ep.behaviour == "cash_out":
        pans, bins, _ = random_cards(rng, int(p["cards"]) * 3)
        credit = BIN_TYPE[bins] == "credit"
        ep.extra["pans"] = (
            pans[credit][: int(p["cards"])] if credit.sum() else pans[: int(p["cards"])]
        )
        ep.extra["bins"] = (
            bins[credit][: int(p["cards"])] if credit.sum() else bins[: int(p["cards"])]
        )


def _ts(s: int | None) -> datetime | None:
    return None if s is None or s < 0 else seconds_to_datetime(s)


def _registry(rng, term, n_registered: int, end: date) -> pl.DataFrame:
    """The registry extract as of the last trial day: one row per terminal version."""
    extract = day_seconds(end) + DAY - 1
    rows: list[dict] = []
    for i in range(n_registered):
        ts_day = int(term["trial_start_day"][i])
        te_day = int(term["trial_end_day"][i])
        base = {
            "terminal_id": term["tid"][i],
            "merchant_id": term["mid"][i],
            "serial_number": term["serial"][i],
            "merchant_name": term["name"][i],
            "registered_mcc": term["mcc"][i],
            "registered_lat": float(term["lat"][i]),
            "registered_lon": float(term["lon"][i]),
            "region_code": term["region"][i],
            "terminal_kind": term["kind"][i],
            "terminal_model": term["model"][i],
            "channel_id": term["channel"][i],
            "policy_id": term["policy_id"][i],
            "activated_at": None,
            "trial_start": EPOCH + timedelta(days=ts_day),
            "trial_end": EPOCH + timedelta(days=te_day),
            "status": "pending",
            "updated_at": None,
        }
        pending_at = (ts_day - int(rng.integers(2, 12))) * DAY + int(
            rng.integers(9 * 3600, 18 * 3600)
        )
        first = dict(base, updated_at=_ts(pending_at))
        if rng.random() < 0.05:
            first["policy_id"] = (
                DEFAULT_POLICY_ID if base["policy_id"] != DEFAULT_POLICY_ID else "strict"
            )
        rows.append(first)
        act = int(term["activated"][i])
        if act > extract:
            continue
        active = dict(base, status="active", activated_at=_ts(act), updated_at=_ts(act))
        rows.append(active)
        last_ok = min(
            extract, int(term["stop_time"][i]) - 60 if term["stop_time"][i] >= 0 else extract
        )
        old_end = (te_day + 1) * DAY
        t_ext = None
        if (
            rng.random() < 0.1
            and act < old_end - 4 * DAY
            and old_end - DAY < last_ok
            and term["op_end"][i] == old_end
        ):
            t_ext = old_end - int(rng.integers(DAY, 2 * DAY))
        fix_until = last_ok if t_ext is None else t_ext
        if rng.random() < 0.12 and fix_until - act > 2 * DAY:
            fix = dict(active, updated_at=_ts(int(rng.integers(act + DAY, fix_until))))
            if rng.random() < 0.5:
                fix["registered_lat"] = round(base["registered_lat"] + rng.normal(0, 0.0004), 6)
                fix["registered_lon"] = round(base["registered_lon"] + rng.normal(0, 0.0004), 6)
            else:
                fix["merchant_name"] = base["merchant_name"] + "（更名）"
            rows.append(fix)
            active = fix
        if t_ext is not None:
            ext = dict(
                active, updated_at=_ts(t_ext), trial_end=base["trial_end"] + timedelta(days=30)
            )
            rows.append(ext)
            active = ext
            term["trial_end_day"][i] = te_day + 30
            term["op_end"][i] = old_end + 30 * DAY
        if term["stop_time"][i] >= 0 and term["stop_time"][i] <= extract:
            rows.append(
                dict(
                    active,
                    status=term["stop_status"][i],
                    updated_at=_ts(int(term["stop_time"][i])),
                )
            )
    schema = {c.name: c.polars_type for c in TERMINALS.columns}
    return pl.DataFrame(rows, schema=schema).select(TERMINALS.names)
