"""The kit's pytest fixtures, registered by the ``pytest11`` entry point (see :mod:`ingest.testing`).

    def test_my_connector_retries(fault_proxy, acme_fake):
        proxy = fault_proxy(acme_fake.root_url, plan={"GET /users": ["500"]})
        ...                                       # point the connector at proxy.root_url

    def test_it_only_reads(recording_proxy, acme_fake):
        proxy = recording_proxy(acme_fake.root_url)
        ...
        assert {r.method for r in proxy.requests} <= {"GET"}

    def test_routed(routed_source, acme_source):
        routing = routed_source(acme_source)      # a started Routing: routing.source, routing.proxies
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ingest.testing._kit import Routing, Source
from ingest.testing._proxy import FaultProxy


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """A factory: ``fault_proxy(upstream, rate=..., seed=..., plan=..., faults=...)`` -> a started
    :class:`~ingest.testing.FaultProxy` on 127.0.0.1, stopped after the test."""
    started: list[FaultProxy] = []

    def make(upstream: str, **kw: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **kw).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def recording_proxy(fault_proxy) -> Callable[[str], FaultProxy]:
    """A factory: ``recording_proxy(upstream)`` -> a started proxy that injects nothing and records
    every request in ``.requests``, stopped after the test."""
    return lambda upstream: fault_proxy(upstream, rate=0.0)


@pytest.fixture
def routed_source() -> Iterator[Callable[..., Routing]]:
    """A factory: ``routed_source(source, **proxy_kw)`` -> an entered :class:`~ingest.testing.Routing`
    (``.source`` reads through one proxy per upstream origin), exited after the test."""
    entered: list[Routing] = []

    def make(source: Source, **kw: Any) -> Routing:
        routing = Routing(source, **kw).__enter__()
        entered.append(routing)
        return routing

    yield make
    for routing in entered:
        routing.__exit__()
