"""The landing folder: its files with their content hashes, and ingest of the new ones.

Used by the nightly flow (``pipelines.flows``): a file whose content hash is
already in ``ingest_manifest`` is not read again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipelines.progress import as_json_counts
from pipelines.settings import Settings

_HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the ``file_id`` ingest records in its manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def landing_inputs(landing: str | Path) -> list[dict[str, Any]]:
    """Every file under the landing folder with its content hash, in path order.

    Hidden files and folders (``.``-prefixed) are skipped.
    """
    root = Path(landing)
    if not root.is_dir():
        raise FileNotFoundError(
            f"landing folder {root} does not exist or is not a folder; pass the folder "
            "the acquirer's exports arrive in (--landing), e.g. the `landing/` folder "
            "written by `trialguard simulate --out DIR`"
        )
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        out.append({"path": str(rel), "file_id": file_sha256(path), "bytes": path.stat().st_size})
    return out


def known_file_ids(con) -> set[str]:
    """Content hashes already recorded by ingest (loaded or rejected)."""
    return {r[0] for r in con.execute("SELECT DISTINCT file_id FROM ingest_manifest").fetchall()}


def _report_counts(report: Any) -> dict[str, Any]:
    """Numbers of an ``IngestReport`` (whatever its exact shape) as a JSON-ready dict."""
    if report is None:
        return {}
    for attr in ("counts", "totals", "summary"):
        value = getattr(report, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, dict):
            return as_json_counts(value)
    if hasattr(report, "__dataclass_fields__"):
        out = {}
        for name in report.__dataclass_fields__:
            value = getattr(report, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = value
        return as_json_counts(out)
    return {}


def ingest_landing(settings: Settings, landing: str | Path) -> dict[str, Any]:
    """Ingest the landing folder's new files; return inputs (with hashes) and counts.

    A file whose content hash is already in ``ingest_manifest`` is not read again
    (to retry a rejected file, run ``trialguard ingest FILE`` on it explicitly).
    """
    from pipelines.ingest.load import ingest_paths
    from pipelines.storage import connect

    root = Path(landing)
    inputs = landing_inputs(root)
    con = connect(settings.db_path)
    try:
        known = known_file_ids(con)
        for item in inputs:
            item["status"] = "known" if item["file_id"] in known else "new"
        new = [root / i["path"] for i in inputs if i["status"] == "new"]
        report = ingest_paths(settings, new, con=con) if new else None
    finally:
        con.close()
    counts = {"files_seen": len(inputs), "files_new": len(new), **_report_counts(report)}
    return {"inputs": inputs, "counts": counts}
