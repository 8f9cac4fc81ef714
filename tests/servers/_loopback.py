"""The loopback server lifecycle, now shipped in the package (:mod:`ingest.testing`); re-exported for the tests."""

from ingest.testing._loopback import LoopbackServer, Managed, QuietHandler, QuietServer, Serving

__all__ = ["LoopbackServer", "Managed", "QuietHandler", "QuietServer", "Serving"]
