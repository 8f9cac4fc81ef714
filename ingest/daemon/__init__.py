"""``ingest daemon``: fire every enabled connector on its schedule, any number of daemons per database.

The scheduler is a thin shell around :func:`ingest.runner.run`: it adds timing
(:mod:`ingest.schedule`), coordination through PostgreSQL (slot claims with
leases), limits, retries, signals and ``/healthz`` + ``/metrics``.
"""

from ingest.daemon._service import Daemon, serve

__all__ = ["Daemon", "serve"]
