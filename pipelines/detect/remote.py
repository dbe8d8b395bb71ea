"""The worker side of a Dask run: one spilled partition in, compact Arrow results out.

A Dask worker gets only a partition's folder (a path it can read: local, or a
shared mount on a real cluster) and the thresholds. Everything else it needs was
written into the folder once by the flow's process (:func:`write_inputs`): the
rows (``rows.arrow``, :func:`pipelines.detect.spill.spill_day_transactions`) and
the partition's registry, history, telemetry and clock-skewed rows
(``<name>.ipc``), plus the policies frame beside the partitions. It returns the
terminal-day frame and the detections as Arrow IPC bytes (lz4), not pickled
frames of the whole day.

Light like :mod:`pipelines.detect.partition` (no DuckDB, scikit-learn or pandas
import): this module and that one are all a worker imports of the project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipelines.detect.partition import _detect_spilled

#: The partition's side inputs, in the order :func:`pipelines.detect.partition._detect_frame`
#: takes them after the transactions (``policies`` lives beside the partitions).
SIDE_INPUTS: tuple[str, ...] = ("registry", "policies", "implausible", "history", "telemetry")
POLICIES_FILE = "policies.ipc"


def to_ipc(df: pl.DataFrame) -> bytes:
    """A frame as Arrow IPC bytes (lz4): what a worker sends back."""
    return df.write_ipc(None, compression="lz4").getvalue()


def from_ipc(data: bytes) -> pl.DataFrame:
    """The frame of :func:`to_ipc`."""
    return pl.read_ipc(data)


def write_inputs(folder: Path, frames: dict[str, pl.DataFrame | None]) -> None:
    """Write a partition's side inputs into its folder (``None`` frames are left out)."""
    for name, df in frames.items():
        if df is not None:
            df.write_ipc(Path(folder) / f"{name}.ipc", compression="lz4")


def _read_input(folder: Path, name: str) -> pl.DataFrame | None:
    path = folder.parent / POLICIES_FILE if name == "policies" else folder / f"{name}.ipc"
    return pl.read_ipc(path) if path.exists() else None


def detect_folder(folder: str, config: dict[str, Any]) -> dict[str, Any]:
    """Per-terminal detection of one spilled partition (runs on a Dask worker).

    Returns ``day`` and ``detections`` as Arrow IPC bytes, the partition's
    ``transactions`` count and the ``file_ids`` its rows came from.
    """
    path = Path(folder)
    if not (path / "rows.arrow").exists():
        raise FileNotFoundError(
            f"partition folder {path} has no rows.arrow: the worker cannot see the spill "
            "the flow wrote; give --spill-dir a path every worker can read (a shared mount)"
        )
    registry, pol, implausible, history, telemetry = (_read_input(path, n) for n in SIDE_INPUTS)
    day, det, n, file_ids = _detect_spilled(
        path, registry, pol, config, implausible, history, telemetry
    )
    return {
        "day": to_ipc(day),
        "detections": to_ipc(det),
        "transactions": int(n),
        "file_ids": sorted(file_ids),
    }
