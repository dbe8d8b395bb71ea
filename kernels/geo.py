"""Great-circle distances and the implied travel speed between consecutive locations."""

from __future__ import annotations

import math

import numpy as np

from kernels._checks import as_float64, as_int64, as_plain_time, check_sorted, same_length
from kernels._jit import jit

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
_SECONDS_PER_HOUR = 3600.0


def distance_km(lat, lon, ref_lat, ref_lon) -> np.ndarray:
    """Haversine distance in km between points and reference points (numpy, broadcasting).

    Plain numpy is as fast as a compiled loop here (see ``docs/kernels.md``).

    Parameters
    ----------
    lat, lon : array-like of float
        Points in degrees; NaN means missing.
    ref_lat, ref_lon : float or array-like of float
        Reference points in degrees, broadcast against ``lat``/``lon``.

    Returns
    -------
    numpy.ndarray of float64
        Distances in km; NaN where any coordinate is NaN.

    Examples
    --------
    >>> round(float(distance_km([0.0], [0.0], 0.0, 1.0)[0]), 3)
    111.195
    """
    lat1 = np.radians(np.asarray(lat, dtype=np.float64))
    lon1 = np.radians(np.asarray(lon, dtype=np.float64))
    lat2 = np.radians(np.asarray(ref_lat, dtype=np.float64))
    lon2 = np.radians(np.asarray(ref_lon, dtype=np.float64))
    a = (
        np.sin((lat2 - lat1) * 0.5) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) * 0.5) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


@jit
def _haversine(lat1, lon1, lat2, lon2):
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    a = (
        math.sin((p2 - p1) * 0.5) ** 2
        + math.cos(p1)
        * math.cos(p2)
        * math.sin((math.radians(lon2) - math.radians(lon1)) * 0.5) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(a, 1.0)))


@jit
def _distance_km_loop(lat, lon, ref_lat, ref_lon, out):
    # Compiled twin of distance_km, kept only to measure that numpy is as fast.
    for i in range(lat.shape[0]):
        out[i] = _haversine(lat[i], lon[i], ref_lat[i], ref_lon[i])


@jit
def _travel_speed_kmh(group, t, lat, lon, out):
    prev = -1  # last located row of the current group
    for i in range(group.shape[0]):
        if i > 0 and group[i] != group[i - 1]:
            prev = -1
        if math.isnan(lat[i]) or math.isnan(lon[i]):
            out[i] = np.nan
            continue
        if prev < 0:
            out[i] = np.nan
        else:
            d = _haversine(lat[prev], lon[prev], lat[i], lon[i])
            hours = (t[i] - t[prev]) / _SECONDS_PER_HOUR
            if d == 0.0:
                out[i] = 0.0
            elif hours == 0.0:
                out[i] = np.inf
            else:
                out[i] = d / hours
        prev = i


def travel_speed_kmh(group, t, lat, lon) -> np.ndarray:
    """Implied speed from the previous located row of the same group, in km/h.

    Parameters
    ----------
    group : array-like of int
        Group code per row (e.g. terminal index).
    t : array-like of int or float
        Seconds. Rows must be sorted by ``(group, t)``, else a ValueError names the
        first row out of order.
    lat, lon : array-like of float
        Location in degrees; NaN in either means the row has no location.

    Returns
    -------
    numpy.ndarray of float64
        Haversine distance (R = 6371.0088 km) from the previous row of the group that
        has a location, divided by the elapsed hours. NaN for rows without a location
        or without an earlier located row in the group; ``inf`` for a positive
        distance in zero time; ``0.0`` for zero distance.

    Examples
    --------
    >>> travel_speed_kmh([1, 1], [0, 3600], [0.0, 0.0], [0.0, 1.0]).round(3)
    array([    nan, 111.195])
    """
    name = "travel_speed_kmh"
    g = as_int64(group, "group", name)
    tt = as_plain_time(t, name)
    la = as_float64(lat, "lat", name)
    lo = as_float64(lon, "lon", name)
    n = same_length(name, group=g, t=tt, lat=la, lon=lo)
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    check_sorted(g, tt, name)
    _travel_speed_kmh(g, tt, la, lo, out)
    return out
