"""Finding and ordering the input files: expanding folders and globs, recognising each file's kind from its name or header, and the order a folder is ingested in (policies, registry, then the rest)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from features.schema import (
    INPUT_KINDS,
    POLICIES_KIND,
    InputKind,
)
from pipelines.ingest.readers import (
    UnreadableFile,
)

#: Order in which a folder's files are ingested (policies, registry, then the rest).
KIND_ORDER = {POLICIES_KIND: 0, "terminals": 1, "transactions": 2, "terminal_events": 3}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every file under the named folders (recursively).

    Hidden files (``.name``) inside folders are skipped; a path that does not
    exist raises ``FileNotFoundError``.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; pass existing files or folders")
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def recognise_kind(names: Sequence[str], kind: str | None = None) -> str:
    """The input kind of a file from its column names (or check the one given).

    Raises
    ------
    UnreadableFile
        The given kind's required columns are missing, or no kind matches.

    Examples
    --------
    >>> recognise_kind(["report_id", "pan", "fraud_time", "reported_at", "fraud_type"])
    'fraud_reports'
    """
    have = set(names)

    def missing(k: InputKind) -> list[str]:
        miss = [c for c in k.required if c not in have]
        for group in k.one_of:
            if not have & set(group):
                miss.append(" or ".join(group))
        return miss

    if kind is not None:
        if kind not in INPUT_KINDS:
            raise UnreadableFile(
                f"unknown kind {kind!r}; expected one of {', '.join(INPUT_KINDS)} "
                "(policies are recognised from the .toml extension)"
            )
        miss = missing(INPUT_KINDS[kind])
        if miss:
            raise UnreadableFile(
                f"missing required column(s) for {kind}: {', '.join(miss)}; "
                "add them or check --kind"
            )
        return kind
    complete = [k for k in INPUT_KINDS.values() if not missing(k)]
    if complete:
        return max(complete, key=lambda k: len(have & set(k.names))).name
    best = max(INPUT_KINDS.values(), key=lambda k: len(have & set(k.names)))
    if not have & set(best.names):
        raise UnreadableFile(
            f"the columns ({', '.join(list(names)[:8])}) match no input kind; expected the "
            f"header of one of {', '.join(INPUT_KINDS)} (see docs/data-contract.md)"
        )
    raise UnreadableFile(
        f"looks like {best.name} but is missing required column(s): "
        f"{', '.join(missing(best))}; add them or pass --kind"
    )


def _peek_kind(path: Path, kind: str | None) -> tuple[int, str]:
    """Cheap ordering key: policies, terminals, transactions, events, reports, then name."""
    from pipelines.ingest.readers import claimed_format

    fmt, _ = claimed_format(path)
    if fmt == "toml":
        return (KIND_ORDER[POLICIES_KIND], path.name)
    guess = kind
    if guess is None:
        try:
            names = _header_names(path)
            guess = recognise_kind(names)
        except Exception:  # noqa: BLE001 - ordering only; the real read reports errors
            guess = None
    return (KIND_ORDER.get(guess or "", 4), path.name)


def _header_names(path: Path) -> list[str]:
    import csv
    import gzip
    import io

    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PAR1"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    opener = gzip.open if head.startswith(b"\x1f\x8b") else open
    with opener(path, "rb") as fh:
        raw = fh.read(65536)
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        return []
    first = text.lstrip()
    if first.startswith("{"):
        return list(json.loads(first.splitlines()[0]).keys())
    return next(csv.reader(io.StringIO(text)), [])


def order_files(paths: Sequence[Path], kind: str | None = None) -> list[Path]:
    """Policies first, then the terminal registry, then the rest, each sorted by name."""
    keyed = [(_peek_kind(p, kind), str(p), p) for p in paths]
    return [p for _, _, p in sorted(keyed)]
