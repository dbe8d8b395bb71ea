"""kernels.geo against tests/kernels/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.geo import distance_km, travel_speed_kmh
from tests.kernels import reference as ref
from tests.kernels.strategies import sorted_rows

# A few distinct places, so that zero distances and repeats occur.
PLACES = [(31.23, 121.47), (31.23, 121.48), (39.90, 116.40), (-33.86, 151.21), (np.nan, 1.0)]


@st.composite
def located_rows(draw):
    group, t = draw(sorted_rows())
    idx = draw(hnp.arrays(np.int64, len(group), elements=st.integers(0, len(PLACES) - 1)))
    lat = np.array([PLACES[i][0] for i in idx], dtype=np.float64)
    lon = np.array([PLACES[i][1] for i in idx], dtype=np.float64)
    lon[draw(hnp.arrays(np.bool_, len(group)))] = np.nan  # lon alone missing also counts
    return group, t, lat, lon


@settings(max_examples=60, deadline=None)
@given(located_rows())
def test_travel_speed_matches_reference(rows):
    group, t, lat, lon = rows
    got = travel_speed_kmh(group, t, lat, lon)
    assert got.dtype == np.float64 and got.shape == group.shape
    np.testing.assert_allclose(got, ref.travel_speed_kmh(group, t, lat, lon), rtol=1e-12)


def test_travel_speed_edge_cases():
    # zero time + positive distance -> inf; zero distance -> 0; missing location skipped
    got = travel_speed_kmh(
        [1, 1, 1, 1, 2],
        [0, 0, 10, 3600, 3600],
        [0.0, 0.0, np.nan, 0.0, 0.0],
        [0.0, 1.0, 5.0, 1.0, 0.0],
    )
    np.testing.assert_array_equal(got[[0, 2, 4]], [np.nan, np.nan, np.nan])
    assert got[1] == np.inf
    assert got[3] == 0.0


def test_travel_speed_empty_and_single_row():
    assert travel_speed_kmh([], [], [], []).shape == (0,)
    assert np.isnan(travel_speed_kmh([3], [5], [1.0], [2.0])).all()


def test_unsorted_rows_are_rejected_with_the_row():
    with pytest.raises(ValueError, match=r"row 2 .*sort by \[group, t\]"):
        travel_speed_kmh([0, 0, 0], [5, 9, 7], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="row 1"):
        travel_speed_kmh([1, 0], [0, 9], [0.0, 0.0], [0.0, 0.0])


def test_wrapper_errors():
    with pytest.raises(ValueError, match="lengths"):
        travel_speed_kmh([0, 0], [1, 2], [0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="1-D"):
        travel_speed_kmh([[0, 0]], [[1, 2]], [[0.0, 0.0]], [[0.0, 0.0]])
    with pytest.raises(TypeError, match="integer codes"):
        travel_speed_kmh([0.5, 1.5], [1, 2], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="NaN at row 1"):
        travel_speed_kmh([0, 0], [1.0, np.nan], [0.0, 0.0], [0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, 8, elements=st.floats(-90, 90)),
    hnp.arrays(np.float64, 8, elements=st.floats(-180, 180)),
    st.floats(-90, 90),
    st.floats(-180, 180),
)
def test_distance_matches_reference(lat, lon, ref_lat, ref_lon):
    want = [ref.haversine_km(a, b, ref_lat, ref_lon) for a, b in zip(lat, lon, strict=True)]
    np.testing.assert_allclose(distance_km(lat, lon, ref_lat, ref_lon), want, rtol=1e-9, atol=1e-9)


def test_distance_known_value_and_nan():
    # Shanghai -> Beijing is about 1067 km
    d = distance_km([31.2304, np.nan], [121.4737, 0.0], 39.9042, 116.4074)
    assert 1060 < d[0] < 1075
    assert np.isnan(d[1])
