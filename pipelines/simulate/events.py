"""Terminal-management telemetry of one day: sign-ons, heartbeats, locations, rare events.

Free-text ``detail`` carries ordinary log lines; a few contain long digit runs
that are *not* card numbers (order numbers failing the Luhn check), and the
terminals of a ``pan_exposure`` episode log real card numbers, sometimes grouped
``6222 0212 ...`` or ``6222-0212-...``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.schema import EVENT_TYPES, TERMINAL_EVENTS
from pipelines.simulate import fmt
from pipelines.simulate import scenarios as sc
from pipelines.simulate.cards import luhn_check_digit
from pipelines.simulate.world import DAY, offset_km

EV = {t: i for i, t in enumerate(EVENT_TYPES)}
RARE = {
    "key_download": 0.01,
    "firmware_update": 0.004,
    "reboot": 0.01,
    "sim_change": 0.003,
    "tamper": 0.0003,
}
VERSIONS = ("3.2.1", "3.2.4", "4.0.0", "4.1.2", "4.1.3")


def _non_luhn(rng, n: int) -> np.ndarray:
    """16-digit numbers that fail the Luhn check (order numbers, not cards)."""
    payload = rng.integers(10**14, 10**15 - 1, size=n).astype(np.uint64)
    check = luhn_check_digit(payload, np.full(n, 15))
    return payload * np.uint64(10) + (check + np.uint64(1)) % np.uint64(10)


def _uniform_open(rng, tm, term, day0):
    """Times uniformly within each terminal's opening hours."""
    o, c = tm["open_h"][term], tm["close_h"][term]
    return day0 + o * 3600 + (rng.random(len(term)) * (c - o) * 3600).astype(np.int64)


def day_events(gen, rng: np.random.Generator, d: int, episodes) -> pl.DataFrame:
    """The ``terminal_events`` rows of trial day ``d`` (contract columns, polars types)."""
    w, tm = gen.w, gen.w.term
    day0 = w.day_start(d)
    live = np.flatnonzero((tm["op_start"] < day0 + DAY) & (tm["op_end"] > day0) & ~tm["ghost"])
    parts_term, parts_type, parts_t, parts_dev = [], [], [], []

    def add(term, etype, t, dev=0):
        parts_term.append(np.asarray(term, dtype=np.int64))
        parts_type.append(np.full(len(term), EV[etype], dtype=np.int8))
        parts_t.append(np.asarray(t, dtype=np.int64))
        parts_dev.append(np.full(len(term), dev, dtype=np.int8))

    add(live, "sign_on", day0 + tm["open_h"][live] * 3600 + rng.integers(0, 1800, size=len(live)))
    hb = np.where(tm["is24"][live], 8, (tm["close_h"][live] - tm["open_h"][live]) // 3)
    hb_term = np.repeat(live, hb)
    add(hb_term, "heartbeat", _uniform_open(rng, tm, hb_term, day0))
    moving = live[(tm["kind"][live] != "fixed_pos") & tm["has_gps"][live]]
    loc_term = np.repeat(moving, 3)
    add(loc_term, "location", _uniform_open(rng, tm, loc_term, day0))
    for etype, p in RARE.items():
        hit = live[rng.random(len(live)) < p]
        add(hit, etype, _uniform_open(rng, tm, hit, day0))
    pan_term, pan_t = [], []
    for e in episodes:
        if e.behaviour == "malfunction":
            k = rng.poisson(e.params["reboots"])
            add(np.full(k, e.term), "reboot", _uniform_open(rng, tm, np.full(k, e.term), day0))
        elif e.behaviour == "cloned_terminal":
            term = np.full(4, e.term)
            add(term[:1], "sign_on", _uniform_open(rng, tm, term[:1], day0), dev=1)
            add(term[1:], "heartbeat", _uniform_open(rng, tm, term[1:], day0), dev=1)
        elif e.behaviour == "card_compromise" and d == e.first and e.level < 2:
            kind = "tamper" if e.level == 0 else "firmware_update"
            add(np.full(1, e.term), kind, _uniform_open(rng, tm, np.full(1, e.term), day0))
        elif e.behaviour == "pan_exposure":
            k = max(rng.poisson(e.params["per_day"]), int(d == e.first))
            pan_term.append(np.full(k, e.term))
            pan_t.append(_uniform_open(rng, tm, np.full(k, e.term), day0))
    if pan_term:
        term = np.concatenate(pan_term)
        add(term, "heartbeat", np.concatenate(pan_t))
    term = np.concatenate(parts_term)
    etype = np.concatenate(parts_type)
    t = np.concatenate(parts_t)
    dev = np.concatenate(parts_dev)
    keep = (t >= tm["op_start"][term]) & (t < tm["op_end"][term]) & (t < day0 + DAY)
    n_pan = len(term) - (len(np.concatenate(pan_term)) if pan_term else 0)
    is_pan = np.zeros(len(term), dtype=bool)
    is_pan[n_pan:] = True
    term, etype, t, dev, is_pan = term[keep], etype[keep], t[keep], dev[keep], is_pan[keep]
    o = np.lexsort((term, t))
    term, etype, t, dev, is_pan = term[o], etype[o], t[o], dev[o], is_pan[o]
    n = len(term)

    # where the device is: home (with noise), or an episode's place
    lat, lon = offset_km(
        tm["lat"][term],
        tm["lon"][term],
        rng.standard_normal(n) * sc.GPS_NOISE_M / 1000,
        rng.standard_normal(n) * sc.GPS_NOISE_M / 1000,
    )
    mobile = tm["kind"][term] == "mobile_pos"
    mlat, mlon = offset_km(
        lat,
        lon,
        rng.standard_normal(n) * sc.MOBILE_RANGE_M / 2000,
        rng.standard_normal(n) * sc.MOBILE_RANGE_M / 2000,
    )
    lat, lon = np.where(mobile, mlat, lat), np.where(mobile, mlon, lon)
    lac = tm["lac"][term].copy()
    ci = tm["ci"][term].copy()
    ip = tm["ip"][term] + np.where(tm["kind"][term] == "fixed_pos", 0, (d * 7919 + term) % 4096)
    for e in episodes:
        if e.behaviour == "cloned_terminal":
            sel = (term == e.term) & (dev == 1)
        elif e.behaviour == "relocation":
            sel = (term == e.term) & (rng.random(n) < e.params["share"])
        else:
            continue
        k = int(sel.sum())
        lat[sel], lon[sel] = offset_km(
            np.full(k, e.extra["lat"]),
            np.full(k, e.extra["lon"]),
            rng.standard_normal(k) * 0.02,
            rng.standard_normal(k) * 0.02,
        )
        lac[sel], ci[sel], ip[sel] = e.extra["lac"], e.extra["ci"], e.extra["ip"]
    with_pos = (etype == EV["location"]) | (
        (etype == EV["sign_on"]) & (tm["kind"][term] != "fixed_pos")
    )
    with_pos &= tm["has_gps"][term]
    lat = np.where(with_pos, np.round(lat, 6), np.nan)
    lon = np.where(with_pos, np.round(lon, 6), np.nan)

    # detail text
    gen.batch[term[etype == EV["sign_on"]]] += 1
    order_no = _non_luhn(rng, n)
    with_order = (etype == EV["sign_on"]) & (rng.random(n) < 0.02)
    cards = tm["win_start"][term] + (rng.random(n) * tm["win_width"][term]).astype(np.int64)
    pan = w.card_pan[cards]
    grouped = rng.random(n) < 0.4
    dash = rng.random(n) < 0.5
    old_v = np.array(VERSIONS, dtype=object)[rng.integers(0, len(VERSIONS) - 1, size=n)]
    cell = fmt.MNC_CODES[tm["mnc"][term]] * 10**12 + lac * 10**6 + ci
    df = pl.DataFrame(
        {
            "tid": fmt.gather(gen.strings["tid"], term),
            "t": t * 1_000_000,
            "etype": etype,
            "serial": fmt.gather(gen.strings["serial"], term + w.n_terms * dev.astype(np.int64)),
            "lat": lat,
            "lon": lon,
            "cell": fmt.by_code(cell, fmt.cell_strings),
            "ip": fmt.by_code(ip, fmt.ip_strings),
            "app": pl.Series(tm["app_version"][term].astype(str)),
            "batch": gen.batch[term],
            "order_no": order_no,
            "with_order": with_order,
            "is_pan": is_pan,
            "pan": pan,
            "grouped": grouped,
            "dash": dash,
            "old_v": old_v.astype(str),
        },
        nan_to_null=True,
    )
    p = pl.col("pan").cast(pl.String)
    sep = pl.when(pl.col("dash")).then(pl.lit("-")).otherwise(pl.lit(" "))
    grouped_pan = pl.concat_str(
        [p.str.slice(0, 4), sep, p.str.slice(4, 4), sep, p.str.slice(8, 4), sep, p.str.slice(12)]
    )
    et = pl.col("etype")
    detail = (
        pl.when(pl.col("is_pan"))
        .then(
            pl.lit("txn log upload: card=")
            + pl.when(pl.col("grouped")).then(grouped_pan).otherwise(p)
            + pl.lit(" rc=00")
        )
        .when((et == EV["sign_on"]) & pl.col("with_order"))
        .then(pl.lit("sign-on ok, resend order ") + pl.col("order_no").cast(pl.String))
        .when(et == EV["sign_on"])
        .then(pl.lit("sign-on ok batch ") + pl.col("batch").cast(pl.String).str.zfill(6))
        .when(et == EV["firmware_update"])
        .then(pl.lit("app ") + pl.col("old_v") + pl.lit(" -> ") + pl.col("app"))
        .when(et == EV["key_download"])
        .then(pl.lit("TMK/TPK download ok"))
        .when(et == EV["reboot"])
        .then(pl.lit("watchdog reset, uptime lost"))
        .when(et == EV["sim_change"])
        .then(pl.lit("SIM replaced"))
        .when(et == EV["tamper"])
        .then(pl.lit("tamper switch triggered, keys erased"))
        .when(et == EV["location"])
        .then(pl.lit("gps fix"))
    )
    out = df.select(
        terminal_id=pl.col("tid"),
        event_time=pl.col("t").cast(pl.Datetime("us")),
        event_type=et.replace_strict(dict(enumerate(EVENT_TYPES)), return_dtype=pl.String),
        device_serial=pl.col("serial"),
        lat=pl.col("lat"),
        lon=pl.col("lon"),
        cell_id=pl.col("cell"),
        ip_address=pl.col("ip"),
        app_version=pl.col("app"),
        detail=detail,
    )
    return out.select(TERMINAL_EVENTS.names)
