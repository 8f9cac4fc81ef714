"""The loopback server lifecycle, now shipped in the package (:mod:`ingest.testing`); re-exported for the tests."""

from ingest.testing._loopback import LoopbackServer, Serving

__all__ = ["LoopbackServer", "Serving"]
