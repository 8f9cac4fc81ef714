"""Talking to the directory: one bound ldap3 connection, paged searches, ranged attributes, retries.

Every operation goes through :meth:`LdapClient._call`, which classifies what
ldap3 raises or returns into the :mod:`ingest.errors` tree once:

    connection refused / reset / timed out      -> RetryableError (retried with backoff)
    busy, unavailable, timeLimitExceeded        -> RetryableError
    TLS handshake or certificate failure        -> FatalError
    invalidCredentials, insufficientAccess, ... -> AuthError
    noSuchObject, invalidDNSyntax on a base     -> NotFoundError
    sizeLimitExceeded on a paged search         -> FatalError (the server ignored paging)

A RetryableError drops the connection, so the next attempt reconnects and
binds again. Paging cookies belong to the connection that issued them: a
search whose connection was replaced restarts from the first page and skips
the entries it already handed out (servers return entries in a stable order
while the directory does not change).

The password is handed to ldap3 and nowhere else: never logged, never put in
an exception (ldap3's own messages carry the bind DN at most).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ldap3
import structlog
import tenacity
from ldap3.core import exceptions as lx

from connectors.ldap._mapping import Attrs, next_range, ranged_attribute
from connectors.ldap._settings import LdapAuth, LdapSettings
from ingest.errors import (
    AuthError,
    FatalError,
    NotFoundError,
    PaginationLoopError,
    ProtocolError,
    RetryableError,
    SourceError,
)
from ingest.http import HttpStats
from ingest.redact import redact

__all__ = ["LdapClient", "Entry", "PAGED_RESULTS_OID"]

log = structlog.get_logger("ingest.ldap")
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
Entry = tuple[str, dict[str, list[bytes]]]

# LDAP result codes (RFC 4511 section 4.1.9).
_RETRYABLE_RESULTS = {3: "timeLimitExceeded", 51: "busy", 52: "unavailable", 81: "serverDown"}
_AUTH_RESULTS = {7: "authMethodNotSupported", 8: "strongerAuthRequired", 48: "inappropriateAuthentication",
                 49: "invalidCredentials", 50: "insufficientAccessRights"}
_NOT_FOUND_RESULTS = {32: "noSuchObject", 34: "invalidDNSyntax"}
_CONNECTION_ERRORS = (lx.LDAPSocketReceiveError, lx.LDAPSocketSendError, lx.LDAPSessionTerminatedByServerError,
                      lx.LDAPSocketCloseError, lx.LDAPResponseTimeoutError, lx.LDAPUnknownResponseError)
_TLS_HINTS = ("ssl", "tls", "certificate", "handshake")


@dataclass
class _PagedState:
    cookie: bytes | None = None
    generation: int = -1  # connection the cookie belongs to
    delivered: int = 0  # entries handed to the caller
    skip: int = 0  # entries to drop after a restart


class LdapClient:
    """A read-only LDAP client for one connector run."""

    def __init__(self, settings: LdapSettings, auth: LdapAuth, *, connector: str | None = None,
                 stats: HttpStats | None = None,
                 connection_factory: Callable[[], ldap3.Connection] | None = None) -> None:
        self.settings = settings
        self.auth = auth
        self.connector = connector
        self.stats = stats or HttpStats()
        self._factory = connection_factory or self._new_connection
        self._conn: ldap3.Connection | None = None
        self._generation = 0

    # -- connection --------------------------------------------------------------
    def _tls(self) -> ldap3.Tls | None:
        s = self.settings
        if not (s.use_ssl or s.start_tls):
            return None
        return ldap3.Tls(validate=ssl.CERT_REQUIRED if s.verify_ssl else ssl.CERT_NONE,
                         ca_certs_file=s.ca_file if s.verify_ssl else None)

    def _new_connection(self) -> ldap3.Connection:
        s = self.settings
        server = ldap3.Server(s.host, port=s.effective_port, use_ssl=s.use_ssl, tls=self._tls(),
                              get_info=ldap3.NONE, connect_timeout=s.connect_timeout)
        return ldap3.Connection(
            server, user=self.auth.bind_dn, password=self.auth.password.get_secret_value(),
            authentication=ldap3.SIMPLE, client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            read_only=True, raise_exceptions=False, auto_referrals=False, auto_range=False,
            return_empty_attributes=False, receive_timeout=max(1, math.ceil(s.timeout)),  # ldap3 packs an int
        )

    def _open(self) -> ldap3.Connection:
        conn = self._factory()
        line = f"bind {self.settings.url} as {self.auth.bind_dn!r}"
        try:
            if conn.closed:
                conn.open()
            if self.settings.plaintext:
                log.warning("ldap_plaintext_bind", connector=self.connector, server=self.settings.url,
                            hint="allow_plaintext: true: the bind password crosses the network in clear; "
                                 "use ldaps:// or StartTLS")
            if self.settings.start_tls and not conn.tls_started:
                if not conn.start_tls():
                    raise FatalError(f"StartTLS failed: {redact(conn.result.get('description'))}",
                                     connector=self.connector, request=line)
            self.stats.add("requests")
            if not conn.bind():
                raise self._result_error(conn.result, line, bind=True)
        except SourceError:
            _quietly_unbind(conn)
            raise
        except lx.LDAPException as e:
            _quietly_unbind(conn)
            raise self._exception_error(e, line) from None
        return conn

    @property
    def conn(self) -> ldap3.Connection:
        if self._conn is None:
            self._conn = self._open()
            self._generation += 1
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _quietly_unbind(conn)

    close = drop

    # -- classification ----------------------------------------------------------
    def _exception_error(self, e: lx.LDAPException, line: str) -> SourceError:
        text = redact(str(e)) or type(e).__name__
        where = {"connector": self.connector, "request": line}
        if isinstance(e, (lx.LDAPStartTLSError, lx.LDAPSSLConfigurationError, lx.LDAPCertificateError)) or (
                isinstance(e, lx.LDAPSocketOpenError) and any(h in text.lower() for h in _TLS_HINTS)):
            return FatalError(f"TLS with {self.settings.url} failed (check verify_ssl / ca_file): {text}", **where)
        if isinstance(e, lx.LDAPSocketOpenError):
            return RetryableError(f"cannot connect to the LDAP server {self.settings.url}: {text}", **where)
        if isinstance(e, _CONNECTION_ERRORS) or isinstance(e, lx.LDAPCommunicationError):
            return RetryableError(f"connection to {self.settings.url} failed: {text}", **where)
        if isinstance(e, lx.LDAPInvalidDnError):
            return NotFoundError(f"not a valid DN: {text}", **where)
        if isinstance(e, lx.LDAPInvalidFilterError):
            return FatalError(f"invalid search filter: {text}", **where)
        return FatalError(f"LDAP error: {text}", **where)

    def _result_error(self, result: dict[str, Any], line: str, *, bind: bool = False) -> SourceError:
        code = result.get("result")
        name = result.get("description") or f"result {code}"
        message = redact((result.get("message") or "").strip())
        detail = f"{name}{': ' + message if message else ''}"
        where = {"connector": self.connector, "request": f"{line} -> {name}"}
        if bind and (code in _AUTH_RESULTS or code == 34):
            return AuthError(f"the LDAP server refused the bind as {self.auth.bind_dn!r} ({detail})", **where)
        if code in _AUTH_RESULTS:
            return AuthError(f"access denied by the LDAP server ({detail})", **where)
        if code in _NOT_FOUND_RESULTS:
            return NotFoundError(f"the search base does not exist ({detail})", **where)
        if code in _RETRYABLE_RESULTS:
            return RetryableError(f"the LDAP server could not answer now ({detail})", **where)
        if code == 4:
            return FatalError(
                "the LDAP server stopped at its size limit: it did not honour the paged-results control "
                f"(RFC 2696); lower page_size below the server's limit or enable paging ({detail})", **where)
        if code == 12:
            return ProtocolError(f"the LDAP server does not support a control this search needs ({detail})",
                                 **where)
        if code == 10:
            return NotFoundError(f"the LDAP server refers this base elsewhere: it is not one of its naming "
                                 f"contexts ({detail})", **where)
        if code == 2:
            return ProtocolError(f"LDAP protocol error ({detail})", **where)
        return FatalError(f"the LDAP operation failed ({detail})", **where)

    # -- retries -----------------------------------------------------------------
    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self.stats.add("retries")
        exc = state.outcome.exception() if state.outcome else None
        log.warning("ldap_retry", connector=self.connector, attempt=state.attempt_number, error=str(exc),
                    sleep=round(state.upcoming_sleep, 3))

    def _retrying(self) -> tenacity.Retrying:
        s = self.settings
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(s.max_retries + 1),
            wait=tenacity.wait_exponential_jitter(multiplier=s.backoff_initial, max=s.backoff_max,
                                                 jitter=s.backoff_initial),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run one operation with retries; a retryable failure drops the connection first."""

        def attempt() -> Any:
            try:
                return fn(*args, **kw)
            except RetryableError:
                self.drop()
                raise

        return self._retrying()(attempt)

    # -- operations ----------------------------------------------------------------
    def _search(self, base: str, filt: str, scope: str, attributes: Sequence[str], *,
                paged_size: int | None = None, cookie: bytes | None = None,
                ok_codes: tuple[int, ...] = (0,)) -> tuple[list[Entry], bytes | None]:
        conn = self.conn
        line = f"search base={base!r} scope={scope.lower()} filter={filt}"
        self.stats.add("requests")
        try:
            conn.search(base, filt, search_scope=scope, attributes=list(attributes),
                        paged_size=paged_size, paged_cookie=cookie, paged_criticality=False)
        except lx.LDAPException as e:
            raise self._exception_error(e, line) from None
        result = conn.result or {}
        if result.get("result") not in ok_codes:
            raise self._result_error(result, line)
        entries = [(r["dn"], {k.lower(): list(v) for k, v in r["raw_attributes"].items()})
                   for r in (conn.response or []) if r.get("type") == "searchResEntry"]
        try:
            next_cookie = result["controls"][PAGED_RESULTS_OID]["value"]["cookie"] or None
        except (KeyError, TypeError):
            next_cookie = None
        return entries, next_cookie

    def paged_search(self, base: str, filt: str, attributes: Sequence[str], *, page_size: int | None = None,
                     stream: str | None = None) -> Iterator[Entry]:
        """Every entry under ``base`` matching ``filt``, page by page (RFC 2696), with retries."""
        size = page_size or self.settings.page_size
        st = _PagedState()

        def page() -> tuple[list[Entry], bytes | None]:
            _ = self.conn  # (re)connects after a dropped connection
            if st.cookie is not None and st.generation != self._generation:
                log.warning("ldap_search_restarted", connector=self.connector, stream=stream, base=base,
                            skip=st.delivered)
                st.cookie, st.skip = None, st.delivered
            return self._search(base, filt, ldap3.SUBTREE, attributes, paged_size=size, cookie=st.cookie)

        pages = 0
        while True:
            previous = st.cookie
            entries, cookie = self._call(page)
            pages += 1
            if cookie and cookie == previous and st.generation == self._generation:
                raise PaginationLoopError(f"the LDAP server handed back the same paged-results cookie twice "
                                          f"(page {pages})", connector=self.connector, stream=stream,
                                          request=f"search base={base!r} filter={filt}")
            st.cookie, st.generation = cookie, self._generation
            log.debug("ldap_page_fetched", connector=self.connector, stream=stream, base=base, page=pages,
                      entries=len(entries))
            for entry in entries:
                if st.skip:
                    st.skip -= 1
                    continue
                st.delivered += 1
                yield entry
            if not cookie:
                return

    def read(self, dn: str, attributes: Sequence[str], filt: str = "(objectClass=*)") -> dict[str, list[bytes]] | None:
        """One entry's attributes (a base-scope search); None when it does not match ``filt``."""
        entries, _ = self._call(self._search, dn, filt, ldap3.BASE, attributes)
        return entries[0][1] if entries else None

    def attribute_values(self, dn: str, attrs: Attrs, name: str) -> Iterator[bytes]:
        """All values of ``name`` in an entry, following Active Directory's ranged retrieval.

        AD returns at most MaxValRange (1,500) values of a big attribute, as ``member;range=0-1499``;
        the rest is asked for with ``member;range=1500-*`` until a range ending in ``*`` arrives.
        """
        yield from attrs.get(name.lower(), ())
        ranged = ranged_attribute(attrs, name)
        seen = 0
        while ranged is not None:
            key, low, high = ranged
            vals = attrs.get(key, ())
            seen += len(vals)
            yield from vals
            if high is None:
                return
            request = next_range(name, high)
            attrs = self.read(dn, [request]) or {}
            ranged = ranged_attribute(attrs, name)
            if ranged is None:
                raise ProtocolError(f"ranged retrieval of {name} on {dn!r} stopped after {seen} values: "
                                    f"the server answered {request} without a range",
                                    connector=self.connector, request=f"search base={dn!r} attrs={request}")
            if ranged[1] != high + 1:
                raise ProtocolError(f"ranged retrieval of {name} on {dn!r}: asked for {request}, got {ranged[0]}",
                                    connector=self.connector)


def _quietly_unbind(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # a broken socket cannot unbind cleanly; it is being discarded anyway
        pass
