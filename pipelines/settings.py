"""Run-time settings: paths, key location and time zone, read from the environment.

No side effects at import: nothing here creates folders or reads files until asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_DB = DATA_DIR / "warehouse" / "trialguard.duckdb"
DEFAULT_KEY_FILE = DATA_DIR / "secrets" / "pan.key"
DEFAULT_TIMEZONE = "Asia/Shanghai"


class MissingKeyError(RuntimeError):
    """The card-number key is missing or unusable."""


@dataclass(frozen=True)
class Settings:
    """Where TrialGuard keeps its data and how it reads card numbers.

    Parameters
    ----------
    db_path : Path
        The DuckDB file (``--db`` or ``TRIALGUARD_DB``).
    pan_key_file : Path
        File holding the HMAC key for card tokens (``TRIALGUARD_PAN_KEY_FILE``),
        used when ``TRIALGUARD_PAN_KEY`` is not set.
    pan_key_env : str or None
        The key itself, from ``TRIALGUARD_PAN_KEY``.
    timezone : str
        Zone of local times without an offset (``TRIALGUARD_TIMEZONE``).
    """

    db_path: Path = DEFAULT_DB
    pan_key_file: Path = DEFAULT_KEY_FILE
    pan_key_env: str | None = None
    timezone: str = DEFAULT_TIMEZONE

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, db: str | Path | None = None
    ) -> Settings:
        """Settings from environment variables, with ``db`` (``--db``) taking precedence."""
        env = os.environ if env is None else env
        db_path = Path(db) if db else Path(env.get("TRIALGUARD_DB") or DEFAULT_DB)
        return cls(
            db_path=db_path,
            pan_key_file=Path(env.get("TRIALGUARD_PAN_KEY_FILE") or DEFAULT_KEY_FILE),
            pan_key_env=env.get("TRIALGUARD_PAN_KEY") or None,
            timezone=env.get("TRIALGUARD_TIMEZONE") or DEFAULT_TIMEZONE,
        )

    def with_db(self, db: str | Path) -> Settings:
        """A copy pointing at another database file."""
        return replace(self, db_path=Path(db))

    @property
    def warehouse_dir(self) -> Path:
        """Folder of the database file; reports and Data Docs go beside it."""
        return self.db_path.resolve().parent

    @property
    def reports_dir(self) -> Path:
        """Where HTML reports are written by default."""
        return self.warehouse_dir / "reports"

    @property
    def data_docs_dir(self) -> Path:
        """Where Great Expectations Data Docs are rendered."""
        return self.warehouse_dir / "data_docs"

    def pan_key(self) -> bytes:
        """The HMAC key for card tokens; a clear error if there is none.

        There is never a default key: a tokenised card is only as safe as its key.
        """
        if self.pan_key_env:
            key = self.pan_key_env.strip().encode()
        elif self.pan_key_file.is_file():
            key = self.pan_key_file.read_bytes().strip()
        else:
            raise MissingKeyError(
                "no card-number key: TRIALGUARD_PAN_KEY is not set and the key file "
                f"{self.pan_key_file} does not exist. Set TRIALGUARD_PAN_KEY, point "
                "TRIALGUARD_PAN_KEY_FILE at a key file, or run `make key` to create a local one."
            )
        if len(key) < 16:
            raise MissingKeyError(
                f"the card-number key is {len(key)} bytes long; at least 16 are required "
                "(128-bit strength, PCI DSS 3.5.1.1). Use e.g. `python -c 'import secrets; "
                "print(secrets.token_hex(32))'`."
            )
        return key
