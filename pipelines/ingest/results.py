"""What an ingest reports: one :class:`FileResult` per file attempt (accounting, status, messages) and the :class:`IngestReport` of a whole call."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FileResult:
    """The outcome of one file: status, accounting and timings.

    ``status`` is ``loaded``, ``rejected`` (recorded in the manifest with
    ``message``) or ``skipped`` (its content hash was loaded before).
    """

    path: str
    status: str
    file_id: str | None = None
    kind: str | None = None
    format: str | None = None
    encoding: str | None = None
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    pan_redactions: int = 0
    gate_success: bool | None = None
    message: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Whether rows read = accepted + quarantined + duplicates."""
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


@dataclass
class IngestReport:
    """What one ingest call did, file by file.

    ``ok`` is false when a file was rejected or a quality gate failed; the
    command then exits with status 1.
    """

    run_id: str
    files: list[FileResult]
    seconds: float = 0.0

    @property
    def totals(self) -> dict[str, int]:
        """Summed counts over all files, and the number of files per status."""
        out = {"files": len(self.files)}
        for status in ("loaded", "rejected", "skipped"):
            out[f"files_{status}"] = sum(f.status == status for f in self.files)
        for name in ("rows_read", "accepted", "quarantined", "duplicates", "pan_redactions"):
            out[name] = sum(getattr(f, name) for f in self.files)
        out["gates_failed"] = sum(f.gate_success is False for f in self.files)
        return out

    @property
    def ok(self) -> bool:
        """No rejected file and no failed gate."""
        t = self.totals
        return t["files_rejected"] == 0 and t["gates_failed"] == 0
