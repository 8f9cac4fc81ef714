"""The conformance kit (:mod:`ingest.testing`) over the identity providers: okta (API token and OAuth
service app), entra (client secret and certificate) and google_workspace (service account), each against its loopback
fake with a small tenant (tens of users, a few groups) so the whole file stays cheap. Every Source is
``must_recover``: the kit's injected faults (500, 429, resets, drops, cut bodies, a stall) are all retried
away, token requests included, and the read ends with exactly the clean read's records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from ingest.testing import Source, conformance_tests
from tests.servers import google_directory_server as gds
from tests.servers import graph_server, okta_server
from tests.test_okta import rsa_pair

OKTA_SCOPES = {"okta.users.read", "okta.groups.read", "okta.apps.read", "okta.roles.read", "okta.orgs.read"}


@pytest.fixture(scope="module")
def okta_keys() -> tuple[tuple[str, str], str]:
    """The service app's key pair, and another private key Okta does not know."""
    return rsa_pair(), rsa_pair()[0]


@pytest.fixture
def okta_source() -> Iterator[Source]:
    token = "ssws-" + uuid.uuid4().hex
    tenant = okta_server.make_tenant(n_users=40, n_groups=5, n_apps=2, big_group=30)
    with okta_server.OktaServer(tenant, api_tokens={token: None}) as fake:
        yield Source("okta", settings={"domain": fake.root_url}, auth={"api_key": token},
                     bad_auth={"api_key": "ssws-" + uuid.uuid4().hex}, must_recover=True,
                     url_settings=("domain",))


@pytest.fixture
def okta_app_source(okta_keys) -> Iterator[Source]:
    (private, public), other = okta_keys
    tenant = okta_server.make_tenant(n_users=40, n_groups=5, n_apps=2, big_group=30)
    with okta_server.OktaServer(tenant, api_tokens={}, oauth_clients={"0oaservice1": (public, OKTA_SCOPES)}) as fake:
        yield Source("okta", settings={"domain": fake.root_url},
                     auth={"client_id": "0oaservice1", "private_key": private, "key_id": "k1"},
                     bad_auth={"client_id": "0oaservice1", "private_key": other, "key_id": "k1"},
                     must_recover=True, url_settings=("domain",))


@pytest.fixture
def entra_source() -> Iterator[Source]:
    secret = "entra-" + uuid.uuid4().hex
    tenant = graph_server.make_tenant(n_users=40, n_groups=5, n_apps=2, big_group=30)
    with graph_server.GraphServer(tenant, clients={"app-1": (secret, graph_server.ALL_PERMISSIONS)}) as fake:
        settings = {"tenant_id": tenant.tenant_id, "graph_url": fake.root_url, "authority": fake.root_url}
        yield Source("entra", settings=settings, auth={"client_id": "app-1", "client_secret": secret},
                     bad_auth={"client_id": "app-1", "client_secret": "entra-" + uuid.uuid4().hex},
                     must_recover=True, url_settings=("graph_url", "authority"))


@pytest.fixture(scope="module")
def entra_certificates() -> tuple[tuple[str, str], tuple[str, str]]:
    """The certificate (key, cert PEM) uploaded to the app, and one Entra does not know."""
    return graph_server.self_signed_certificate(), graph_server.self_signed_certificate()


@pytest.fixture
def entra_certificate_source(entra_certificates) -> Iterator[Source]:
    (key, cert), (other_key, other_cert) = entra_certificates
    tenant = graph_server.make_tenant(n_users=40, n_groups=5, n_apps=2, big_group=30)
    with graph_server.GraphServer(tenant, clients={"app-1": (None, graph_server.ALL_PERMISSIONS)},
                                  certificates={"app-1": [cert]}) as fake:
        settings = {"tenant_id": tenant.tenant_id, "graph_url": fake.root_url, "authority": fake.root_url}
        yield Source("entra", settings=settings, auth={"client_id": "app-1", "private_key": key, "certificate": cert},
                     bad_auth={"client_id": "app-1", "private_key": other_key, "certificate": other_cert},
                     must_recover=True, url_settings=("graph_url", "authority"))


@pytest.fixture(scope="module")
def google_keys() -> tuple[dict, dict]:
    """A service account key the fake trusts and one it does not (RSA keys cost a little: made once)."""
    return gds.service_account_key("http://placeholder/token"), gds.service_account_key("http://placeholder/token")


@pytest.fixture
def google_source(google_keys) -> Iterator[Source]:
    tenant = gds.make_tenant(n_users=40, n_groups=5, big_group=30)
    with gds.GoogleDirectoryServer(tenant) as fake:
        key, unknown = ({**k, "token_uri": fake.token_uri} for k in google_keys)
        fake.trust(key)
        admin = f"user0@{tenant.domain}"
        yield Source("google_workspace", settings={"api_url": fake.root_url},
                     auth={"service_account_json": json.dumps(key), "subject": admin},
                     bad_auth={"service_account_json": json.dumps(unknown), "subject": admin},
                     must_recover=True, url_settings=("api_url",), url_auth=("service_account_json.token_uri",))


TestOktaConformance = conformance_tests("okta_source")
TestOktaServiceAppConformance = conformance_tests("okta_app_source")
TestEntraConformance = conformance_tests("entra_source")
TestEntraCertificateConformance = conformance_tests("entra_certificate_source")
TestGoogleWorkspaceConformance = conformance_tests("google_source")
