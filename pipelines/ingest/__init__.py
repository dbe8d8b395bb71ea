"""Ingest: landing files -> validated, tokenised rows in DuckDB (``trialguard ingest``).

Owns everything between a file on disk and an accepted or quarantined row:

- ``readers``  open CSV / JSON Lines / Parquet (gzip too), sniff kinds and encodings
- ``load``     stage as text, cast by :mod:`features.schema`, quarantine with reasons,
               deduplicate, write the manifest; the atomic load and the CLI
- ``cards``    PAN -> HMAC-SHA256 token + BIN + last 4; redaction of stray card numbers
- ``gate``     the Great Expectations suites derived from the schema, and Data Docs

May import: ``kernels``, ``features``, ``models`` and the shared top-level modules
(``settings``, ``storage``, ``runlock``, ``progress``, ``version``). Must not import
``detect``, ``analyst``, ``simulate``, ``bench``, ``flows``, ``demo`` or ``cli``.
"""

from pipelines import lazy_exports

__getattr__ = lazy_exports(__name__, ("load", "readers", "cards", "gate"))
