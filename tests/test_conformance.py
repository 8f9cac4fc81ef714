"""The conformance kit (ingest.testing) run over built-in connectors: demo (its own API in a thread), scim
(scim2-server), rest (the Acme fake of tests/servers/rest_api.py), ldap (a real slapd with a small
organisation) and lumos (the connector-py scaffold made real, against its loopback fake). ldap and lumos
are not routed through the kit's HTTP proxies, each with its reason."""

from __future__ import annotations

import sys

import pytest

from connectors.demo.org import OrgSpec
from connectors.demo.server import DemoApi, make_server
from ingest.testing import Source, check_info, conformance_tests
from tests.lumos_pretend import make_pretend
from tests.servers._loopback import Serving
from tests.servers.pretend_api import PretendApi, PretendData


@pytest.fixture
def demo_source(tmp_path):
    api = DemoApi(OrgSpec(users=60, groups=8, workspaces=4), token="demo-secret-4b3a2c1d")
    with Serving(make_server("127.0.0.1", 0, api)) as running:
        yield Source("demo", settings={"base_url": running.root_url, "day": 0, "state_dir": str(tmp_path),
                                       "page_size": 25,
                                       "users": 60, "groups": 8, "workspaces": 4},
                     auth={"api_token": "demo-secret-4b3a2c1d"}, bad_auth={"api_token": "wrong-token-9z8y7x"},
                     url_settings=("base_url",), must_recover=True)


@pytest.fixture(scope="module")
def pretend_package(tmp_path_factory):
    root = make_pretend(tmp_path_factory.mktemp("scaffold") / "pretend-connector")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture
def lumos_source(pretend_package):
    from connector.httpx_rewrite import LUMOS_PROXY_URL, proxy_settings

    data = PretendData(users=[{"id": f"u{i}", "email": f"u{i}@p.test", "login": f"u{i}", "state": "active"}
                              for i in range(7)],
                       roles=[{"id": "admin", "name": "Admin"}], members=[{"user_id": "u1", "role_id": "admin"}])
    with PretendApi(data, tokens={"tok-conformance-77aa"}) as api, proxy_settings(proxy_url=api.root_url + "/"):
        try:
            yield Source("lumos", settings={"integration": "pretend.integration:integration", "page_size": 3,
                                            "connector_settings": {"account_id": "acme"}},
                         auth={"oauth": {"access_token": "tok-conformance-77aa"}},
                         bad_auth={"oauth": {"access_token": "tok-revoked-0000"}})
        finally:
            LUMOS_PROXY_URL.set(None)


@pytest.fixture(scope="module")
def scim_server():
    """One SCIM server for the module (loading the organisation is the slow part); the kit only reads it."""
    from tests.servers.scim_server import ScimServer, load_org, make_org

    with ScimServer(token="scim-conformance-5e6f7a8b") as server:
        load_org(server, make_org(n_users=40, n_teams=4, big_group_size=30))
        yield server


@pytest.fixture
def scim_source(scim_server):
    return Source("scim", settings={"base_url": scim_server.base_url, "page_size": 15},
                  auth={"bearer_token": "scim-conformance-5e6f7a8b"}, bad_auth={"bearer_token": "wrong-1a2b3c4d"},
                  url_settings=("base_url",), must_recover=True)


@pytest.fixture
def rest_source():
    from tests.servers.fake_api import FakeApi
    from tests.servers.rest_api import CONFIG, TOKEN, make_org, serve

    with FakeApi() as api:
        serve(api, make_org(n_users=40, n_groups=4))
        yield Source("rest", settings={"base_url": api.base_url, **CONFIG}, auth={"bearer_token": TOKEN},
                     bad_auth={"bearer_token": "acme-revoked-0000"}, url_settings=("base_url",), must_recover=True)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    from tests.servers.ldap_data import OPENLDAP_SUFFIX, openldap_org
    from tests.servers.slapd import Database, Slapd

    ldif, _ = openldap_org(n_users=40, big_group_size=20, n_project_groups=4, reader_password="reader-conformance")
    with Slapd(tmp_path_factory.mktemp("slapd"), [Database(OPENLDAP_SUFFIX, ldif)]) as server:
        yield server


@pytest.fixture
def ldap_source(slapd):
    from tests.servers.ldap_data import OPENLDAP_SUFFIX, READER_DN

    return Source("ldap", settings={"host": "127.0.0.1", "port": slapd.port, "base_dn": OPENLDAP_SUFFIX,
                                    "allow_plaintext": True, "max_retries": 1, "backoff_initial": 0},
                  auth={"bind_dn": READER_DN, "password": "reader-conformance"},
                  bad_auth={"bind_dn": READER_DN, "password": "wrong-password-31"})


TestDemoConformance = conformance_tests("demo_source")
TestScimConformance = conformance_tests("scim_source")
TestRestConformance = conformance_tests("rest_source")
TestLdapConformance = conformance_tests("ldap_source", no_http="LDAP, a protocol of its own over TCP, not HTTP")
TestLumosConformance = conformance_tests(
    "lumos_source", no_http="connector-py fetches with its own httpx client, pointed by proxy_settings, not settings")


@pytest.mark.parametrize("type_name", ["demo", "scim", "ldap", "lumos", "rest"])
def test_info_of_builtin_types_conforms(type_name):
    check_info(type_name)


def test_the_kit_catches_a_listing_that_never_ends(tmp_path):
    """A kit that cannot fail proves nothing: a connector paging forever is caught."""
    import types

    from ingest.testing import read_all

    class Endless:
        def info(self):
            class Doc:
                def model_dump(self, mode=None):
                    return {"response": {"app_id": "endless", "capabilities": ["list_accounts"],
                                         "credentials_schema": []}}
            return Doc()

        calls = 0

        async def dispatch(self, capability, body):
            import json

            Endless.calls += 1
            return json.dumps({"response": [{"integration_specific_id": f"a{Endless.calls}"}],
                               "page": {"token": f"t{Endless.calls}", "size": 1}})

    mod = types.ModuleType("endless_connector")
    mod.integration = Endless()
    sys.modules["endless_connector"] = mod
    try:
        with pytest.raises(AssertionError, match="more than 50 records"):
            read_all(Source("lumos", settings={"integration": "endless_connector:integration"}, max_records=50),
                     str(tmp_path))
    finally:
        del sys.modules["endless_connector"]
