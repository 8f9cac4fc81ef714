"""The fault-injecting proxy the tests used before the kit shipped it (:mod:`ingest.testing`).

``FaultyProxy`` is :class:`ingest.testing.FaultProxy` with this module's original fault set as its
default (500, 429, drop, truncate, cut_json: no resets or stalls), so the tests written against it
draw the same faults from the same seeds.

    with FaultyProxy(server.root_url, rate=0.2, seed=3) as proxy:
        url = proxy.root_url + "/scim/v2"
"""

from __future__ import annotations

from ingest.testing import FaultProxy

__all__ = ["FaultyProxy", "FAULTS"]

FAULTS = ("500", "429", "drop", "truncate", "cut_json")


class FaultyProxy(FaultProxy):
    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 0, faults: tuple[str, ...] = FAULTS,
                 retry_after: tuple[str, ...] = ("0", "1")) -> None:
        super().__init__(upstream, rate=rate, seed=seed, faults=faults, retry_after=retry_after)
