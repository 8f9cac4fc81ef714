"""Settings and credentials of the LDAP connector."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["LdapSettings", "LdapAuth", "DEFAULT_FILTERS", "DEFAULT_ID_ATTRIBUTE", "DEFAULT_USERNAME_ATTRIBUTE"]

Mode = Literal["openldap", "active_directory"]

# (mode, entity) -> default search filter.
DEFAULT_FILTERS: dict[tuple[str, str], str] = {
    ("openldap", "user"): "(|(objectClass=person)(objectClass=posixAccount))",
    ("openldap", "group"): "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
    # Computers are users in AD's class tree, managed service accounts are computers.
    ("active_directory", "user"): (
        "(|(&(objectClass=user)(!(objectClass=computer)))"
        "(objectClass=msDS-ManagedServiceAccount)(objectClass=msDS-GroupManagedServiceAccount))"
    ),
    ("active_directory", "group"): "(objectClass=group)",
}
DEFAULT_ID_ATTRIBUTE = {"openldap": "entryUUID", "active_directory": "objectGUID"}
DEFAULT_USERNAME_ATTRIBUTE = {"openldap": "uid", "active_directory": "sAMAccountName"}


def _check_filter(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
        raise ValueError(f"{value!r} is not an LDAP filter: it must be enclosed in balanced parentheses, "
                         "e.g. (objectClass=person)")
    return value


class LdapSettings(BaseModel):
    """Where the directory is and what to read from it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Server host name or IP address (an ldap:// or ldaps:// URL is accepted too).")
    port: int | None = Field(None, ge=1, le=65535, description="TCP port; default 389, or 636 with use_ssl.")
    use_ssl: bool = Field(False, description="Connect with LDAPS (TLS from the first byte).")
    start_tls: bool | None = Field(
        None, description="Upgrade the connection with StartTLS before binding; default: on unless use_ssl "
                          "(or allow_plaintext).")
    allow_plaintext: bool = Field(
        False, description="Allow binding without TLS (the password crosses the network in clear); logs a "
                           "warning on every connection. Off by default: binds use LDAPS or StartTLS.")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_file: str | None = Field(None, description="Path to a PEM file of CA certificates to trust.")
    mode: Mode = Field("openldap", description="Directory flavour: openldap or active_directory.")
    base_dn: str = Field(description="Base DN everything is searched under, e.g. dc=example,dc=org.")
    user_search_base: str | None = Field(None, description="Where accounts live; default base_dn.")
    user_filter: str | None = Field(None, description="Filter selecting accounts; default depends on mode.")
    group_search_base: str | None = Field(None, description="Where groups live; default base_dn.")
    group_filter: str | None = Field(None, description="Filter selecting groups; default depends on mode.")
    ou_search_base: str | None = Field(None, description="Where organizational units live; default base_dn.")
    ou_filter: str = Field("(objectClass=organizationalUnit)", description="Filter selecting OUs (resources).")
    disabled_filter: str | None = Field(
        None, description="Accounts that also match this filter are SUSPENDED, e.g. (employeeType=disabled).")
    id_attribute: str | None = Field(
        None, description="Stable id attribute; default entryUUID (openldap) or objectGUID (active_directory).")
    username_attribute: str | None = Field(
        None, description="Attribute holding the login name; default uid or sAMAccountName.")
    custom_attributes: list[str] = Field(
        default_factory=list, description="Extra account attributes copied into custom_attributes.")
    primary_group_membership: bool = Field(
        True, description="Active Directory: also report each user's primary group (primaryGroupID, usually "
                          "Domain Users), which AD leaves out of the group's member attribute.")
    page_size: int = Field(500, ge=1, le=100_000, description="Entries per page (RFC 2696 paged results).")
    membership_page_size: int = Field(
        50, ge=1, le=10_000, description="Groups per page when reading members (large groups are big entries).")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for each response.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries of a search after a connection error or timeout.")
    backoff_initial: float = Field(0.5, ge=0, description="First backoff delay in seconds.")
    backoff_max: float = Field(30.0, ge=0, description="Longest backoff delay in seconds.")

    @field_validator("user_filter", "group_filter", "ou_filter", "disabled_filter")
    @classmethod
    def _filters(cls, value: str | None) -> str | None:
        return _check_filter(value)

    @model_validator(mode="after")
    def _normalize(self) -> LdapSettings:
        if "://" in self.host:
            url = urlsplit(self.host)
            if url.scheme not in ("ldap", "ldaps") or not url.hostname:
                raise ValueError(f"host {self.host!r}: expected a host name or an ldap:// / ldaps:// URL")
            self.host = url.hostname
            self.use_ssl = self.use_ssl or url.scheme == "ldaps"
            self.port = self.port or url.port
        if self.use_ssl and self.start_tls:
            raise ValueError("use_ssl and start_tls are exclusive: LDAPS is already encrypted")
        if self.use_ssl:
            self.start_tls = False
        elif self.start_tls is None:
            self.start_tls = not self.allow_plaintext  # TLS by default: StartTLS on ldap://
        elif not self.start_tls and not self.allow_plaintext:
            raise ValueError("start_tls: false without use_ssl would send the bind password in clear; use "
                             "use_ssl (ldaps://) or StartTLS, or set allow_plaintext: true to accept plaintext")
        return self

    @property
    def plaintext(self) -> bool:
        """Binds travel without TLS (only with ``allow_plaintext``)."""
        return not (self.use_ssl or self.start_tls)

    # -- effective values ------------------------------------------------------
    @property
    def effective_port(self) -> int:
        return self.port or (636 if self.use_ssl else 389)

    @property
    def url(self) -> str:
        return f"{'ldaps' if self.use_ssl else 'ldap'}://{self.host}:{self.effective_port}"

    def filter_for(self, entity: str) -> str:
        own = {"user": self.user_filter, "group": self.group_filter}[entity]
        return own or DEFAULT_FILTERS[(self.mode, entity)]

    def base_for(self, entity: str) -> str:
        own = {"user": self.user_search_base, "group": self.group_search_base, "ou": self.ou_search_base}[entity]
        return own or self.base_dn


class LdapAuth(BaseModel):
    """A simple bind: a DN (or, for Active Directory, a user principal name) and its password."""

    model_config = ConfigDict(extra="forbid")

    bind_dn: str = Field(min_length=1, description="Bind DN, e.g. cn=reader,dc=example,dc=org, or a UPN.")
    # An empty password would be an "unauthenticated bind" (RFC 4513 5.1.2), which servers may accept as
    # anonymous: refused here so a missing secret cannot silently read as anonymous.
    password: SecretStr = Field(min_length=1, description="The bind password.")
