"""Prefect flows, ingest, storage and the CLI: the only layer that touches I/O and the clock."""
