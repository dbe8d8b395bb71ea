"""Ingest: landing files -> validated, tokenised rows in DuckDB (``trialguard ingest``).

Owns everything between a file on disk and an accepted or quarantined row:

- ``discover`` expand folders, recognise each file's kind, order a folder's files
- ``readers``  open CSV / JSON Lines / Parquet (gzip too), sniff formats and encodings
- ``stage``    the staging SQL generated from :mod:`features.schema`: text cast per value,
               patterns, card tokens inside DuckDB, the reason of every invalid row
- ``rows``     free-text redaction, duplicates and conflicts, quarantine and accepted rows
- ``policies`` trial policy files: parse, check against the contract, version
- ``load``     one file in one transaction (ingest_file), many files (ingest_paths), the
               manifest and the runs row
- ``results``  FileResult / IngestReport: the accounting of every file
- ``landing``  a landing folder's new files (for the nightly flow)
- ``cli``      ``trialguard ingest`` and the Prefect ingest flow
- ``cards``    PAN -> HMAC-SHA256 token + BIN + last 4; redaction of stray card numbers
- ``gate``     the Great Expectations suites derived from the schema, and Data Docs

May import: ``kernels``, ``features``, ``models`` and the shared top-level modules
(``settings``, ``storage``, ``runlock``, ``progress``, ``version``). Must not import
``detect``, ``analyst``, ``simulate``, ``bench``, ``flows``, ``demo`` or ``cli``.
"""

from pipelines import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    (
        "load",
        "cli",
        "discover",
        "stage",
        "rows",
        "policies",
        "results",
        "readers",
        "cards",
        "gate",
        "landing",
    ),
)
