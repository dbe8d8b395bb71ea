"""The combined format check equals the per-column checks it stands in for."""

from __future__ import annotations

import re

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.schema import INPUT_KINDS
from pipelines.ingest.stage import _patterns_ok_sql, _trimmed_sql

PATTERNS = sorted({c.pattern for k in INPUT_KINDS.values() for c in k.columns if c.pattern})
_chars = st.sampled_from(list("09AZaz") + ["\x1f", "é", "-", " "])


@st.composite
def _rows(draw):
    """Valid or null values for every pattern, then a few replaced by arbitrary text."""
    values = [
        draw(st.one_of(st.none(), st.from_regex(p, fullmatch=True).filter(lambda v: v != "")))
        for p in PATTERNS
    ]
    for i in draw(st.lists(st.integers(0, len(PATTERNS) - 1), max_size=2)):
        values[i] = draw(st.text(_chars, min_size=1, max_size=9))
    return values


@settings(max_examples=120, deadline=None)
@given(values=_rows())
def test_combined_check_equals_every_column_checked_alone(values):
    cols = [f"v{i}" for i in range(len(PATTERNS))]
    sql = _patterns_ok_sql(list(zip(cols, PATTERNS, strict=True)))
    con = duckdb.connect()
    select = ", ".join(f"CAST(? AS VARCHAR) AS {c}" for c in cols)
    (got,) = con.execute(f"SELECT {sql} FROM (SELECT {select})", values).fetchone()
    expected = all(v is None or re.fullmatch(p, v) for v, p in zip(values, PATTERNS, strict=True))
    assert got == expected


def test_a_pattern_that_could_admit_the_separator_is_refused():
    with pytest.raises(ValueError, match="U\\+001F"):
        _patterns_ok_sql([("x", "[0-9]{4}"), ("y", ".{3}")])


_edge_chars = st.sampled_from(
    [" ", "\u00a0", "\u3000", "\u2003", "\t", "\n", "\r", "a", "0", "é", "上", "-"]
)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), st.text(_edge_chars, max_size=6), st.text(max_size=6)))
def test_cheap_trim_equals_trim(value):
    """_trimmed_sql gives NULLIF(TRIM(v), '') for any value, spaces of any kind included."""
    con = duckdb.connect()
    (same,) = con.execute(
        f"SELECT {_trimmed_sql('v')} IS NOT DISTINCT FROM NULLIF(TRIM(v), '') "
        "FROM (SELECT CAST(? AS VARCHAR) AS v)",
        [value],
    ).fetchone()
    assert same, repr(value)
