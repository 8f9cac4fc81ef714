"""LDAPS and StartTLS against a real slapd with a certificate from a throw-away test CA."""

from __future__ import annotations

import pytest

from connectors.ldap import LdapAuth, LdapConnector, LdapSettings
from ingest.connector import ConnectorContext
from ingest.errors import FatalError, RetryableError
from tests.servers.ldap_data import OPENLDAP_SUFFIX, READER_DN, openldap_org
from tests.servers.slapd import Database, Slapd

PASSWORD = "tls-reader-password"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Slapd:
    ldif, _ = openldap_org(n_users=30, big_group_size=10, n_project_groups=2, reader_password=PASSWORD)
    server = Slapd(tmp_path_factory.mktemp("slapd-tls"), [Database(OPENLDAP_SUFFIX, ldif)], tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connector(server: Slapd, **kw) -> LdapConnector:
    settings = LdapSettings(**{"host": "127.0.0.1", "base_dn": OPENLDAP_SUFFIX, "max_retries": 0, **kw})
    return LdapConnector(ConnectorContext("tls", settings, LdapAuth(bind_dn=READER_DN, password=PASSWORD)))


class TestLdaps:
    def test_ldaps_with_the_ca_file_works(self, tls_server: Slapd):
        with connector(tls_server, port=tls_server.ldaps_port, use_ssl=True, ca_file=str(tls_server.ca_file)) as c:
            assert c.validate_credentials()["server"] == tls_server.ldaps_url
            assert len(list(c.list_accounts())) == 30

    def test_an_untrusted_certificate_is_refused_clearly_and_not_retried(self, tls_server: Slapd):
        with connector(tls_server, port=tls_server.ldaps_port, use_ssl=True, max_retries=3) as c:
            with pytest.raises(FatalError, match="TLS with ldaps://127.0.0.1") as err:
                c.validate_credentials()
            assert c.ctx.stats.retries == 0
        assert not isinstance(err.value, RetryableError)

    def test_verification_can_be_turned_off(self, tls_server: Slapd):
        with connector(tls_server, host=tls_server.ldaps_url, verify_ssl=False) as c:
            assert len(list(c.list_accounts())) == 30


class TestStartTls:
    def test_starttls_with_the_ca_file_works(self, tls_server: Slapd):
        with connector(tls_server, port=tls_server.port, start_tls=True, ca_file=str(tls_server.ca_file)) as c:
            c.validate_credentials()
            assert c.client.conn.tls_started
            assert len(list(c.list_resources())) == 8

    def test_starttls_with_an_untrusted_certificate_fails(self, tls_server: Slapd):
        with connector(tls_server, port=tls_server.port, start_tls=True) as c:
            with pytest.raises(FatalError, match="TLS"):
                c.validate_credentials()


class TestTlsByDefault:
    """Binds use TLS unless allow_plaintext: true says otherwise (and then every connection logs a warning)."""

    def test_without_tls_settings_the_bind_upgrades_with_starttls(self, tls_server: Slapd):
        settings = LdapSettings(host="127.0.0.1", base_dn=OPENLDAP_SUFFIX)
        assert settings.start_tls and not settings.plaintext
        with connector(tls_server, port=tls_server.port, ca_file=str(tls_server.ca_file)) as c:
            c.validate_credentials()
            assert c.client.conn.tls_started
        assert not LdapSettings(host="ldaps://dc1", base_dn="dc=x").start_tls  # LDAPS: TLS from the first byte

    def test_a_server_without_tls_is_refused_rather_than_bound_in_clear(self, directory):
        with directory.connector(allow_plaintext=False) as c:
            with pytest.raises(FatalError, match="(?i)starttls failed"):
                c.validate_credentials()

    def test_turning_starttls_off_needs_allow_plaintext(self):
        with pytest.raises(ValueError, match="allow_plaintext"):
            LdapSettings(host="127.0.0.1", base_dn=OPENLDAP_SUFFIX, start_tls=False)
        assert LdapSettings(host="127.0.0.1", base_dn=OPENLDAP_SUFFIX, start_tls=False, allow_plaintext=True).plaintext

    def test_allow_plaintext_binds_in_clear_with_a_warning(self, directory):
        from structlog.testing import capture_logs

        with capture_logs() as logs, directory.connector(allow_plaintext=True) as c:
            c.validate_credentials()
            assert not c.client.conn.tls_started
        [warning] = [e for e in logs if e["event"] == "ldap_plaintext_bind"]
        assert warning["log_level"] == "warning" and warning["server"].startswith("ldap://127.0.0.1:")

    def test_a_config_with_start_tls_false_is_a_config_error(self, tmp_path):
        from ingest.config import load_config
        from ingest.errors import ConfigError

        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors:\n  dir:\n    type: ldap\n    settings: {host: 127.0.0.1, base_dn: 'dc=x', "
                       "start_tls: false}\n    auth: {bind_dn: 'cn=r,dc=x', password: pw}\n")
        with pytest.raises(ConfigError, match="allow_plaintext"):
            load_config(cfg)
