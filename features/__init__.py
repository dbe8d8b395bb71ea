"""Polars feature builders and the schema (the single source of truth for columns and codes)."""
