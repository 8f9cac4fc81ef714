"""LDAP connector (OpenLDAP and Active Directory); see :mod:`connectors.ldap._connector`."""

from connectors.ldap._client import LdapClient
from connectors.ldap._connector import LdapConnector
from connectors.ldap._mapping import Dialect
from connectors.ldap._settings import LdapAuth, LdapSettings

__all__ = ["Dialect", "LdapAuth", "LdapClient", "LdapConnector", "LdapSettings"]
