"""Slow, obviously correct versions of the kernels (plain Python loops, O(n^2)).

Each takes plain lists or arrays already sorted by (group, t) and follows the kernel's
docstring word for word.
"""

from __future__ import annotations

import math

import numpy as np

R_KM = 6371.0088


def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2) - math.radians(lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_KM * math.asin(math.sqrt(min(a, 1.0)))


def travel_speed_kmh(group, t, lat, lon):
    n = len(group)
    out = np.full(n, np.nan)
    for i in range(n):
        if math.isnan(lat[i]) or math.isnan(lon[i]):
            continue
        prev = None
        for j in range(i):
            if group[j] == group[i] and not (math.isnan(lat[j]) or math.isnan(lon[j])):
                prev = j  # the last such j before i
        if prev is None:
            continue
        d = haversine_km(lat[prev], lon[prev], lat[i], lon[i])
        hours = (t[i] - t[prev]) / 3600
        out[i] = 0.0 if d == 0 else (math.inf if hours == 0 else d / hours)
    return out


def _in_window(group, t, i, j, window):
    return group[j] == group[i] and t[i] - window < t[j] <= t[i]


def window_count(group, t, window):
    n = len(group)
    return np.array(
        [sum(_in_window(group, t, i, j, window) for j in range(n)) for i in range(n)], np.int64
    )


def window_distinct(group, t, values, window):
    n = len(group)
    return np.array(
        [
            len({values[j] for j in range(n) if _in_window(group, t, i, j, window)})
            for i in range(n)
        ],
        np.int64,
    )


def same_value_recent(group, t, values, window):
    n = len(group)
    return np.array(
        [
            sum(_in_window(group, t, i, j, window) and values[j] == values[i] for j in range(n))
            for i in range(n)
        ],
        np.int64,
    )


def device_interleaving(group, t, device, window):
    n = len(group)
    switch = np.zeros(n, bool)
    back = np.zeros(n, bool)
    for i in range(n):
        if device[i] == -1:
            continue
        known = [j for j in range(i) if group[j] == group[i] and device[j] != -1]
        if known and device[known[-1]] != device[i]:
            switch[i] = True
        for j in known:
            # an earlier sighting of the same device in (t_i - w, t_i) followed, before
            # row i, by another known device
            seen = device[j] == device[i] and t[i] - window < t[j] < t[i]
            if seen and any(device[k] != device[i] for k in known if k > j):
                back[i] = True
    return switch, back


def stan_checks(group, t, stan, window):
    n = len(group)
    dup = np.zeros(n, bool)
    ooo = np.zeros(n, bool)
    for i in range(n):
        if stan[i] == -1:
            continue
        known = [j for j in range(i) if group[j] == group[i] and stan[j] != -1]
        dup[i] = any(stan[j] == stan[i] and t[i] - window < t[j] <= t[i] for j in known)
        if known:
            prev = stan[known[-1]]
            wrapped = prev >= 999_000 and stan[i] < 1_000
            ooo[i] = stan[i] < prev and not wrapped
    return dup, ooo


def sequential_card_burst(group, t, bin_code, last4, window, max_gap):
    n = len(group)
    out = np.zeros(n, np.int64)
    for i in range(n):
        if bin_code[i] == -1 or last4[i] == -1:
            continue
        near = {
            last4[j]
            for j in range(n)
            if _in_window(group, t, i, j, window)
            and bin_code[j] == bin_code[i]
            and last4[j] != -1
            and 1 <= abs(last4[j] - last4[i]) <= max_gap
        }
        out[i] = len(near)
    return out
