"""A conformance kit for connectors, shipped with ingest (in the spirit of the Singer SDK's standard
tests and Airbyte's acceptance tests).

A plugin author points it at a running test source and gets one test class::

    # tests/test_conformance.py of a connector package
    import pytest
    from ingest.testing import Source, conformance_tests

    @pytest.fixture
    def acme_source():
        with AcmeFake() as fake:                       # the package's own fake server
            yield Source("acme", settings={"base_url": fake.url}, auth={"api_key": "k-123456"},
                         bad_auth={"api_key": "wrong-98765"}, url_settings=("base_url",))

    TestAcmeConformance = conformance_tests("acme_source")

The class checks what every connector owes its users:

- ``info`` is valid JSON Schema with every setting in a form section and every secret write-only;
- every declared capability yields records that validate, and its listing ends within ``max_records``;
- a bad credential fails ``check`` with an :class:`~ingest.errors.IngestError` that does not quote the secret;
- no secret reaches the logs;
- faults (a :class:`FaultProxy` between the connector and its source: 500, 429 + Retry-After, a reset,
  a dropped connection, a truncated body, cut JSON, a stall; one of each, on requests picked with
  ``Source.seed``) lead to exactly the records of a clean read, with the 429's ``Retry-After: 1``
  waited out, or to a clean ``IngestError``: never another exception, never a partial result returned
  as success (``must_recover=True``: only the former);
- only reads reach the source: through a recording proxy, ``check`` and a full read send GET/HEAD, or
  requests the connector class declares read-only (``read_only_requests``, below).

**Routing.** The last two need the connector's HTTP to go through the kit's proxies. ``Source`` names
where the source's URLs are: ``url_settings`` (dotted paths into ``settings``) and ``url_auth`` (into
``auth``; a JSON document held as a string, such as a Google service-account key, is read through).
The kit starts one proxy per upstream origin and points those URLs at it (path kept), e.g.
``url_settings=("graph_url", "authority")`` for entra, or ``url_settings=("api_url",),
url_auth=("service_account_json.token_uri",)`` for google_workspace. The proxies rewrite every routed
origin in answers (headers, uncompressed bodies), so absolute next-page links come back through them.
Reads under faults get :data:`FAULT_SETTINGS` (a 1 s read timeout, millisecond backoffs) for the
shared HTTP settings the connector has and the Source does not set; ``Source.fault_settings``
replaces them.

**Not HTTP.** A connector that does not speak HTTP to its source (LDAP), or only through a client the
kit cannot route (the Lumos SDK's own httpx), says so with the reason:
``conformance_tests("ldap_source", no_http="LDAP, not HTTP")``. Its class then has no proxy tests
(nothing is skipped: they are not generated) and one test whose id states the reason.

**Read-only requests.** A connector class lists the non-GET/HEAD requests that only read as
``read_only_requests = (("POST", r"/\\.search$"), ...)``: ``(method, path regex[, body regex])``,
matched with ``re.search`` (e.g. ``("POST", r"/token$")`` for an OAuth token endpoint, or
``("POST", r"^/$", r"(^|&)Action=(List|Get)[A-Z]")`` for AWS query-protocol reads).

**Pytest plugin.** Installing ingest registers this module as a pytest plugin (entry point
``pytest11: ingest``), so any test gets the fixtures ``fault_proxy`` / ``recording_proxy`` (factories
of started proxies, stopped after the test) and ``routed_source`` (a :class:`Routing` of a Source)
without importing them. ``-p no:ingest`` turns it off.

Public names: :class:`Source`, :func:`conformance_tests`, :func:`check_info`, :func:`read_all`,
:func:`secrets_of`, :func:`canonical`, :class:`Routing`, :func:`is_declared_read_only`,
:class:`FaultProxy` (and :func:`recording_proxy`, :class:`SeenRequest`, :func:`request_key`, :data:`FAULTS`),
:class:`LoopbackServer` / :class:`Serving` (the lifecycle of a loopback test server, for a package's
own fake). jsonschema is needed (it is in ingest's test extra).
"""

from __future__ import annotations

from ingest.testing._kit import (
    FAULT_SETTINGS,
    READ_METHODS,
    Routing,
    Source,
    canonical,
    check_info,
    conformance_tests,
    is_declared_read_only,
    read_all,
    secrets_of,
)
from ingest.testing._loopback import LoopbackServer, Serving
from ingest.testing._proxy import FAULTS, FaultProxy, SeenRequest, recording_proxy, request_key

__all__ = [
    "FAULTS",
    "FAULT_SETTINGS",
    "FaultProxy",
    "LoopbackServer",
    "READ_METHODS",
    "Routing",
    "SeenRequest",
    "Serving",
    "Source",
    "canonical",
    "check_info",
    "conformance_tests",
    "is_declared_read_only",
    "read_all",
    "recording_proxy",
    "request_key",
    "secrets_of",
]


def pytest_configure(config) -> None:
    """The plugin entry point's one hook: register the kit's fixtures (:mod:`ingest.testing._plugin`).

    The entry point names this module rather than the fixtures' so that ``import ingest.testing``
    never needs pytest."""
    from ingest.testing import _plugin

    if not config.pluginmanager.is_registered(_plugin):
        config.pluginmanager.register(_plugin, "ingest.testing.fixtures")
