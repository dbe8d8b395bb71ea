"""Fast string columns: format each distinct value once, then gather by index."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl


@lru_cache(maxsize=4)
def zero_padded(width: int) -> pl.Series:
    """The strings ``0 .. 10**width - 1``, zero-padded to ``width`` digits."""
    return pl.Series(np.arange(10**width, dtype=np.int64)).cast(pl.String).str.zfill(width)


@lru_cache(maxsize=4)
def decimal(width: int) -> pl.Series:
    """The strings ``0 .. 10**width - 1`` without padding."""
    return pl.Series(np.arange(10**width, dtype=np.int64)).cast(pl.String)


def cell_prefixes(mnc_idx: np.ndarray, lac: np.ndarray) -> pl.Series:
    """``460-MNC-LAC-`` per place (the cell id follows)."""
    df = pl.DataFrame(
        {"mnc": MNC_CODES[np.asarray(mnc_idx)], "lac": np.asarray(lac, dtype=np.int64)}
    )
    return df.select(
        pl.concat_str(
            [
                pl.lit("460"),
                pl.col("mnc").cast(pl.String).str.zfill(2),
                pl.col("lac").cast(pl.String),
                pl.lit(""),
            ],
            separator="-",
        )
    ).to_series()


def table(values) -> pl.Series:
    """A small lookup table of strings (``None`` allowed)."""
    return pl.Series(list(values), dtype=pl.String)


def gather(lookup: pl.Series, idx: np.ndarray) -> pl.Series:
    """``lookup[idx]`` as a polars Series."""
    return lookup.gather(np.asarray(idx, dtype=np.int64))


def by_code(codes: np.ndarray, make) -> pl.Series:
    """Format the distinct ``codes`` with ``make(unique_codes) -> Series`` and spread them.

    Worth it when there are few distinct values (IPs, cells, terminal ids).
    """
    uniq, inv = np.unique(codes, return_inverse=True)
    return make(uniq).gather(inv.astype(np.int64))


def ip_strings(ip: np.ndarray) -> pl.Series:
    """Dotted IPv4 strings of 32-bit integers."""
    ip = np.asarray(ip, dtype=np.int64)
    parts = [((ip >> s) & 255) for s in (24, 16, 8, 0)]
    df = pl.DataFrame({f"o{i}": p for i, p in enumerate(parts)})
    return df.select(
        pl.concat_str([pl.col(f"o{i}").cast(pl.String) for i in range(4)], separator=".")
    ).to_series()


def cell_strings(code: np.ndarray) -> pl.Series:
    """``460-MNC-LAC-CI`` of packed codes ``mnc * 10**12 + lac * 10**6 + ci``."""
    code = np.asarray(code, dtype=np.int64)
    df = pl.DataFrame({"mnc": code // 10**12, "lac": (code // 10**6) % 10**6, "ci": code % 10**6})
    return df.select(
        pl.concat_str(
            [
                pl.lit("460"),
                pl.col("mnc").cast(pl.String).str.zfill(2),
                pl.col("lac").cast(pl.String),
                pl.col("ci").cast(pl.String),
            ],
            separator="-",
        )
    ).to_series()


MNC_CODES = np.array([0, 1, 11], dtype=np.int64)
