"""ingest: a daily, queryable record of who has access to what."""

__version__ = "0.1.0"
