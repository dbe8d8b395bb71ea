"""Detection thresholds: ``models/thresholds.toml`` merged with an optional candidate file.

The packaged TOML is the one documented place for every threshold (each with
its source in the domain reference). A candidate file (backtests, ``--config``)
overrides it key by key. Reading the packaged default is the only file access in
``models/``; it happens when a caller asks, never at import.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_NAME = "thresholds.toml"


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins, tables are merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_config() -> dict[str, Any]:
    """The packaged thresholds (``models/thresholds.toml``) as a dict."""
    text = resources.files("models").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Thresholds from ``models/thresholds.toml``, merged with an optional candidate file.

    Parameters
    ----------
    path : str or Path or None
        A TOML file whose tables override the defaults key by key (a backtest's
        candidate config). ``None`` gives the defaults.

    Returns
    -------
    dict
        The merged configuration.

    Examples
    --------
    >>> cfg = load_config()
    >>> cfg["relocation"]["max_speed_kmh"]
    300.0
    """
    config = default_config()
    if path is None:
        return config
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"config file {p} does not exist; pass a TOML file whose tables override "
            f"models/{DEFAULT_CONFIG_NAME} (e.g. a copy of it with changed values)"
        )
    try:
        candidate = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {p} is not valid TOML ({exc}); fix the file") from exc
    unknown = sorted(set(candidate) - set(config))
    if unknown:
        raise ValueError(
            f"config file {p} has unknown tables {unknown}; expected tables among "
            f"{sorted(k for k, v in config.items() if isinstance(v, dict))}"
        )
    return merge_config(config, candidate)


def config_version(config: dict[str, Any]) -> str:
    """sha256 of the configuration's canonical JSON (recorded with every run).

    Examples
    --------
    >>> config_version({"a": 1}) == config_version({"a": 1})
    True
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
