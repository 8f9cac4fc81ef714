"""Secrets never reach a log line, an error message, str(exc) or repr(exc)."""

from __future__ import annotations

import base64
import collections
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from ingest.errors import IngestError, RetryableError
from ingest.http import (
    ApiKeyConfig,
    BasicAuthConfig,
    BearerTokenConfig,
    CursorPaginator,
    HttpClient,
    HttpSettings,
    OAuth2ClientCredentialsConfig,
)
from ingest.logs import configure_logging
from ingest.redact import MASK, redact, redact_url, register_secret, structlog_processor
from tests.servers.fake_api import FakeApi, Fault, Reply, SeenRequest, fake_api  # noqa: F401


class TestRedact:
    def test_a_registered_secret_is_masked_in_every_encoding(self) -> None:
        secret = "p@ss w/rd+42!"
        register_secret(secret)
        from urllib.parse import quote, quote_plus

        for form in (secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()):
            assert redact(f"x {form} y") == f"x {MASK} y"

    def test_short_values_are_not_registered(self) -> None:
        register_secret("abc")
        assert redact("abc abcd") == "abc abcd"

    def test_credential_shapes_are_masked_without_registration(self) -> None:
        text = ('Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x1 and Basic Ym9iOnB3ZDEyMzQ= '
                'password=hunter22 {"client_secret": "cs_live_9"} api_key: k-99')
        masked = redact(text)
        for secret in ("eyJhbGciOiJIUzI1NiJ9", "Ym9iOnB3ZDEyMzQ=", "hunter22", "cs_live_9", "k-99"):
            assert secret not in masked

    def test_prose_about_credentials_is_left_alone(self) -> None:
        text = "the token endpoint refused Basic authentication; the source refused the credentials"
        assert redact(text) == text

    def test_non_strings_pass_through(self) -> None:
        assert redact(5) == 5 and redact(None) is None

    @pytest.mark.parametrize("url, expected", [
        ("https://bob:pw@api.example.com/x?page=2", "https://***@api.example.com/x?page=2"),
        ("https://api.example.com/x?access_token=abc&page=2", "https://api.example.com/x?access_token=***&page=2"),
        ("https://api.example.com/x?api_key=abc&sig=zz", "https://api.example.com/x?api_key=***&sig=***"),
        ("https://api.example.com/cb#access_token=abc&state=1", "https://api.example.com/cb#access_token=***&state=1"),
        ("https://api.example.com/Users?startIndex=1&count=100", "https://api.example.com/Users?startIndex=1&count=100"),
    ])
    def test_redact_url(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected

    def test_processor_scrubs_nested_values_exceptions_and_objects(self) -> None:
        register_secret("nested-secret-1")
        Point = collections.namedtuple("Point", "a b")

        class Obj:
            def __str__(self) -> str:
                return "obj nested-secret-1"

        event = structlog_processor(None, "info", {
            "event": "x nested-secret-1",
            "d": {"k": ["nested-secret-1", ("nested-secret-1", 2)]},
            "nt": Point("nested-secret-1", 1),
            "exc": ValueError("boom nested-secret-1"),
            "raw": b"nested-secret-1",
            "obj": Obj(),
            "n": 3,
            "s": {"nested-secret-1"},
        })
        assert "nested-secret-1" not in json.dumps(event, default=str)
        assert event["n"] == 3
        assert event["exc"] == f"ValueError: boom {MASK}"


# -- secrets through the whole HTTP layer --------------------------------------------------------

def echo(req: SeenRequest) -> Reply:
    """A careless server: its error body repeats the credentials it was sent."""
    return Reply(500, {"error": {"message": f"bad request: auth={req.header('Authorization')} "
                                            f"key={req.header('X-API-Key')} url={req.path}?{req.query}"}})


@pytest.fixture
def verbose_logs() -> Iterator[list[dict[str, Any]]]:
    """Every event at DEBUG and up, captured after the redaction processor."""
    configure_logging("json", verbose=True, force=True)
    with capture_logs(processors=[structlog_processor]) as logs:
        yield logs


def drive(http: HttpClient, api: FakeApi, secret: str, query_token: str) -> list[BaseException]:
    """Make the client log and fail in every way it can: retries, give-up, HTML, auth, pages."""
    errors: list[BaseException] = []
    api.route("/echo", echo)
    api.serve_records("/users", [{"id": i} for i in range(4)], style="cursor")
    for call in (
        lambda: http.get_json("/echo", params={"access_token": query_token}),
        lambda: list(http.records("/users", paginator=CursorPaginator(), selector="data",
                                  params={"limit": 2, "token": query_token})),
    ):
        try:
            call()
        except IngestError as e:
            errors.append(e)
    for fault in (Fault.html(), Fault.unauthorized(), Fault.status(400, {"error": f"you sent {secret}"})):
        api.script([fault])
        try:
            http.get_json("/users", params={"limit": 2, "password": query_token})
        except IngestError as e:
            errors.append(e)
    return errors


@pytest.mark.parametrize("kind", ["bearer", "api_key_header", "api_key_query", "basic", "oauth2"])
def test_no_secret_in_logs_or_errors(fake_api: FakeApi, verbose_logs: list[dict[str, Any]], kind: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Credentials of every auth kind, and a token in the query string, stay out of logs and errors."""
    secret = f"{kind}-SECRET-{uuid.uuid4().hex[:10]}"  # unique: registration by another test cannot help
    query_token = f"query-SECRET-{uuid.uuid4().hex[:10]}"  # never registered: masked by parameter name
    fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret=secret)
    fake_api._required.clear()  # accept any credentials: this test is about what leaks, not who gets in
    auth = {
        "bearer": lambda: BearerTokenConfig(bearer_token=secret),
        "api_key_header": lambda: ApiKeyConfig(api_key=secret, header="X-API-Key"),
        "api_key_query": lambda: ApiKeyConfig(api_key=secret, query_param="api_key"),
        "basic": lambda: BasicAuthConfig(username="bob", password=secret),
        "oauth2": lambda: OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                                        client_secret=secret),
    }[kind]().httpx_auth()
    http = HttpClient(fake_api.base_url, settings=HttpSettings(max_retries=1, backoff_initial=0.01),
                      connector="acme", auth=auth)
    with http:
        errors = drive(http, fake_api, secret, query_token)

    leaks = [secret, query_token, base64.b64encode(f"bob:{secret}".encode()).decode()]
    if kind == "oauth2":
        leaks.append(fake_api.tokens_issued[0])
    # the secrets did go over the wire (or into a server's error body), so a leak would show
    wire = " ".join(f"{r.headers} {r.query} {r.body!r}" for r in fake_api.requests)
    on_wire = {"basic": leaks[2], "oauth2": leaks[-1]}.get(kind, secret)
    assert query_token in wire and on_wire in wire
    # (with OAuth2 the 401 is answered by a token refresh, so that call succeeds)
    assert len(errors) == (3 if kind == "oauth2" else 4) and isinstance(errors[0], RetryableError)
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [" ".join(map(str, e.args)) for e in errors]
    texts += [json.dumps(verbose_logs, default=str), capsys.readouterr().err]
    assert {e["event"] for e in verbose_logs} >= {"http_request", "request_retry", "page_fetched"}
    for text in texts:
        for leak in leaks:
            assert leak not in text


def test_rendered_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """The configured chain itself (not only capture_logs) masks secrets, for structlog and stdlib loggers."""
    register_secret("rendered-secret-42")
    configure_logging("json", verbose=False, force=True)
    structlog.get_logger("t").info("event_one", value="rendered-secret-42",
                                   url="https://h/x?token=rendered-other-43")
    logging.getLogger("some.library").warning("connected with rendered-secret-42")
    try:
        raise RuntimeError("failed with rendered-secret-42")
    except RuntimeError:
        structlog.get_logger("t").exception("event_two")
    err = capsys.readouterr().err
    assert "rendered-secret-42" not in err
    assert err.count(MASK) >= 3


def test_http_errors_carry_no_secret_in_the_request_line(fake_api: FakeApi) -> None:
    fake_api.add_json("/x", None, status=404)
    http = HttpClient(fake_api.base_url, settings=HttpSettings(max_retries=0))
    with http, pytest.raises(IngestError) as e:
        http.get_json("/nope", params={"client_secret": "plain-SECRET-12345", "page": 3})
    assert "plain-SECRET-12345" not in str(e.value)
    assert "client_secret=***" in str(e.value) and "page=3" in str(e.value)


def test_mock_transport_errors_are_redacted() -> None:
    """Connection errors whose text names a secret are masked too."""
    register_secret("transport-SECRET-991")

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("cannot reach proxy with transport-SECRET-991", request=request)

    http = HttpClient("http://api.invalid", settings=HttpSettings(max_retries=0), transport=httpx.MockTransport(boom))
    with http, pytest.raises(RetryableError) as e:
        http.get_json("/x")
    assert "transport-SECRET-991" not in str(e.value) and "transport-SECRET-991" not in repr(e.value)
