"""The conformance kit: the Source a plugin author describes, the checks, the generated test class."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from ingest.http import READ_METHODS, is_read_only
from ingest.testing._proxy import FAULTS, FaultProxy, SeenRequest

__all__ = ["Source", "Routing", "conformance_tests", "check_info", "read_all", "secrets_of", "canonical",
           "is_declared_read_only", "READ_METHODS", "FAULT_SETTINGS"]

# credential fields that hold a secret, whichever connector uses them (the credential kinds' names)
SECRET_FIELDS = frozenset({"password", "api_key", "api_secret", "bearer_token", "token", "client_secret", "private_key",
                           "service_account_json", "secret_access_key", "session_token", "access_token",
                           "refresh_token"})


# Shared HTTP settings the fault test sets (where the connector's Settings has them and the Source does not):
# a stalled request costs one short read timeout, a retry a few milliseconds of backoff.
FAULT_SETTINGS: dict[str, Any] = {"timeout": 1.0, "backoff_initial": 0.02, "backoff_max": 0.1}
RETRY_AFTER = "1"  # what the fault test's 429 asks for (seconds)


@dataclass
class Source:
    """A connector type and a test source it can read: settings, a working auth and (optionally) a bad one.

    ``url_settings`` / ``url_auth`` name where the source's upstream URLs are (dotted paths into
    ``settings`` / ``auth``; a JSON document held as a string, such as a service-account key, is
    read through), so the kit can route every request through its proxies: ``("base_url",)``;
    entra ``("graph_url", "authority")``; google ``url_settings=("api_url",),
    url_auth=("service_account_json.token_uri",)``. ``fault_settings`` are merged into the
    settings of the fault test's reads (default: :data:`FAULT_SETTINGS`, for the fields the
    connector's Settings has). ``must_recover``: every injected fault must be retried away (exact
    data); else a clean :class:`~ingest.errors.IngestError` passes too. ``seed`` picks the faults.
    ``honours_retry_after``: a request answered 429 with ``Retry-After: 1`` is not sent again sooner
    (False for a source whose protocol throttles otherwise, e.g. AWS's error codes).
    """

    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    bad_auth: dict[str, Any] | None = None
    max_records: int = 1_000_000
    timeout_s: float = 120.0
    url_settings: tuple[str, ...] = ()
    url_auth: tuple[str, ...] = ()
    fault_settings: dict[str, Any] | None = None
    must_recover: bool = False
    seed: int = 0
    honours_retry_after: bool = True


def _properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from (schema.get("properties") or {}).items()
    for sub in (schema.get("$defs") or {}).values():
        yield from (sub.get("properties") or {}).items()


def check_info(type_name: str) -> dict[str, Any]:
    """The type's ``info`` document, checked: SDK keys, valid JSON Schemas, sections, write-only secrets."""
    import jsonschema

    from ingest.credentials._form import SECTIONS
    from ingest.registry import get_connector_class

    info = get_connector_class(type_name).info()
    missing = {"app_id", "user_friendly_name", "description", "logo_url", "authentication_schema",
               "request_settings_schema", "capabilities", "resource_types", "entitlement_types"} - set(info)
    assert not missing, f"{type_name}: info lacks {sorted(missing)}"
    problems = []
    for key in ("request_settings_schema", "authentication_schema"):
        jsonschema.validators.validator_for(info[key]).check_schema(info[key])
        for name, spec in _properties(info[key]):
            if name != "kind" and spec.get("x-section") not in SECTIONS:
                problems.append(f"{key}.{name}: no x-section (one of {', '.join(SECTIONS)})")
    for name, spec in _properties(info["authentication_schema"]):
        if name in SECRET_FIELDS and spec.get("writeOnly") is not True:
            problems.append(f"authentication_schema.{name}: a secret that is not writeOnly")
    assert not problems, f"{type_name}: " + "; ".join(problems)
    return info


def secrets_of(model: BaseModel) -> list[str]:
    """Every SecretStr value inside a validated auth model."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, SecretStr):
            found.append(v.get_secret_value())
        elif isinstance(v, BaseModel):
            for x in v.__dict__.values():
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(model)
    return [s for s in found if s]


def _context(source: Source, auth: dict[str, Any], state_dir: str | None):
    from ingest.connector import ConnectorContext
    from ingest.registry import get_connector_class

    cls = get_connector_class(source.type)
    ctx = ConnectorContext(name=f"conformance-{source.type}", settings=cls.Settings.model_validate(source.settings),
                           auth=cls.Auth.model_validate(auth), state_dir=state_dir)
    return cls, ctx


def read_all(source: Source, state_dir: str | None = None) -> dict[str, list[Any]]:
    """Every record of every capability the connector runs, validated; raises AssertionError on a bad one,
    on a listing longer than ``max_records`` or slower than ``timeout_s``."""
    from ingest.records import ENTITY_MODELS
    from ingest.runner import _entity_of

    cls, ctx = _context(source, source.auth, state_dir)
    got: dict[str, list[Any]] = {}
    deadline = time.monotonic() + source.timeout_s
    with cls(ctx) as connector:
        for capability, records in connector.streams():
            n = 0
            for item in records:
                n += 1
                assert n <= source.max_records, f"{capability}: more than {source.max_records} records (paging loops?)"
                assert time.monotonic() < deadline, f"{capability}: not finished within {source.timeout_s:g} s"
                entity = _entity_of(capability, item)
                model = ENTITY_MODELS[entity]
                try:
                    rec = item if isinstance(item, model) else model.model_validate(
                        item.model_dump() if isinstance(item, BaseModel) else item)
                except ValidationError as e:
                    raise AssertionError(f"{capability}: invalid {entity} record: {e.errors()[0]}") from None
                got.setdefault(entity, []).append(rec)
            got.setdefault(capability, [])
    return got


def canonical(got: dict[str, list[Any]]) -> dict[str, list[str]]:
    """``read_all``'s result in a comparable form: per entity, the records as sorted JSON (order-free)."""
    return {entity: sorted(json.dumps(r.model_dump(mode="json") if isinstance(r, BaseModel) else r,
                                      sort_keys=True, default=str) for r in records)
            for entity, records in got.items()}


def _differences(expected: dict[str, list[str]], got: dict[str, list[str]], limit: int = 3) -> str:
    out = []
    for entity in sorted(set(expected) | set(got)):
        want, have = Counter(expected.get(entity, [])), Counter(got.get(entity, []))
        if want != have:
            missing, extra = list((want - have).elements()), list((have - want).elements())
            out.append(f"{entity}: {sum(want.values())} expected, {sum(have.values())} read; "
                       f"missing {missing[:limit]}{' ...' if len(missing) > limit else ''}, "
                       f"unexpected {extra[:limit]}{' ...' if len(extra) > limit else ''}")
    return "; ".join(out)


def is_declared_read_only(connector_cls: type, method: str, path: str, body: bytes = b"") -> bool:
    """True when a request is a read: GET/HEAD, or matches one of the connector class's
    ``read_only_requests`` ``(method, path regex[, body regex])`` (``re.search``): the declaration the HTTP
    layer's guard enforces too (:func:`ingest.http.is_read_only`)."""
    return is_read_only(getattr(connector_cls, "read_only_requests", ()) or (), method, path, body)


# -- routing a Source through proxies --------------------------------------------------------------------

def _walk(value: Any, parts: list[str], fn: Callable[[str], str], where: str) -> Any:
    """``value`` with ``fn`` applied to the string at ``parts`` (JSON held as a string is read through)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if parts and isinstance(value, str):
        try:
            doc = json.loads(value)
        except ValueError:
            raise AssertionError(f"{where}: {'.'.join(parts)} is under a string that is not a JSON document") from None
        return json.dumps(_walk(doc, parts, fn, where))
    if not parts:
        if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
            raise AssertionError(f"{where}: {value!r} is not an http(s) URL")
        return fn(value)
    if not isinstance(value, dict) or parts[0] not in value:
        raise AssertionError(f"{where}: no {parts[0]!r} there (the Source names a URL the settings do not have)")
    return {**value, parts[0]: _walk(value[parts[0]], parts[1:], fn, where)}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Routing:
    """A :class:`Source` routed through proxies: one :class:`FaultProxy` per upstream origin its
    ``url_settings`` / ``url_auth`` name, ``source`` the same Source with those URLs pointing at them
    (path and query kept). Every proxy rewrites every routed origin in answers, so links from one
    upstream to another come back through the proxies too.

        with Routing(source) as routing:
            read_all(routing.source)
            routing.requests()          # every request, as each proxy saw it
    """

    def __init__(self, source: Source, **proxy_kw: Any) -> None:
        if not (source.url_settings or source.url_auth):
            raise AssertionError(
                f"{source.type}: the Source names no url_settings / url_auth, so the kit cannot route it through "
                "its proxies: name the settings that hold the source's URLs, or opt out with "
                "conformance_tests(..., no_http='why this connector does not speak HTTP')")
        self.original = source
        self._proxy_kw = proxy_kw
        self.proxies: dict[str, FaultProxy] = {}  # upstream origin -> its proxy
        self.source = source

    def _rewrite(self, fn: Callable[[str], str]) -> Source:
        src = self.original
        settings, auth = src.settings, src.auth
        for dotted in src.url_settings:
            settings = _walk(settings, dotted.split("."), fn, f"{src.type}: settings.{dotted}")
        for dotted in src.url_auth:
            auth = _walk(auth, dotted.split("."), fn, f"{src.type}: auth.{dotted}")
        return replace(src, settings=settings, auth=auth)

    def __enter__(self) -> Routing:
        origins: list[str] = []
        self._rewrite(lambda url: origins.append(_origin(url)) or url)
        try:
            for upstream in dict.fromkeys(origins):
                self.proxies[upstream] = FaultProxy(upstream, **self._proxy_kw).start()
        except BaseException:
            self.__exit__()
            raise
        mapping = {up: proxy.root_url for up, proxy in self.proxies.items()}
        for proxy in self.proxies.values():
            proxy.rewrite.update(mapping)
        self.source = self._rewrite(lambda url: mapping[_origin(url)] + url[len(_origin(url)):])
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    def requests(self) -> list[SeenRequest]:
        return [r for proxy in self.proxies.values() for r in proxy.requests]

    def injected(self) -> Counter[str]:
        return sum((proxy.injected for proxy in self.proxies.values()), Counter())

    def early_retries(self) -> list[str]:
        """Requests sent again sooner after a 429 than its Retry-After said (the proxies' arrival times;
        a lower bound, so a loaded machine cannot make a patient client look early)."""
        early = []
        for proxy in self.proxies.values():
            for i, r in enumerate(proxy.requests):
                if r.fault == "429" and r.retry_after:
                    again = next((n for n in proxy.requests[i + 1:] if n.key == r.key), None)
                    if again is not None and again.at - r.at < float(r.retry_after) * 0.95:
                        early.append(f"{r.key}: Retry-After {r.retry_after}, again after {again.at - r.at:.2f} s")
        return early

    def plan_faults(self, seed: int = 0, faults: tuple[str, ...] = FAULTS) -> dict[str, list[str]]:
        """Arm every proxy with one of each fault, on distinct requests the proxies have seen (a seeded
        choice among the sorted request lines: the same faults on every run, however the connector
        orders its requests). With fewer request lines than faults, a line gets at most two (its retry
        meets the second). Returns ``{"<upstream> <request line>": faults}``."""
        lines = sorted({(up, r.key) for up, proxy in self.proxies.items() for r in proxy.requests})
        chosen = Random(seed).sample(lines, min(len(lines), len(faults)))
        plan: dict[tuple[str, str], list[str]] = {}
        for i, fault in enumerate(faults):
            if i < len(chosen):
                plan[chosen[i]] = [fault]
            elif chosen and len(plan[chosen[i % len(chosen)]]) < 2:
                plan[chosen[i % len(chosen)]].append(fault)
        for up, proxy in self.proxies.items():
            proxy.arm({key: fs for (u, key), fs in plan.items() if u == up})
        return {f"{up} {key}": fs for (up, key), fs in plan.items()}


def _with_fault_settings(source: Source) -> Source:
    from ingest.registry import get_connector_class

    fields = get_connector_class(source.type).Settings.model_fields
    extra = source.fault_settings if source.fault_settings is not None else {
        k: v for k, v in FAULT_SETTINGS.items() if k in fields and k not in source.settings}
    return replace(source, settings={**source.settings, **extra})


def conformance_tests(source_fixture: str, *, no_http: str | None = None) -> type:
    """A test class over the :class:`Source` the named pytest fixture yields.

    ``no_http``: the connector does not speak HTTP to its source (LDAP), or speaks it through a
    client the kit cannot route (an SDK's own); the reason given. The class then has no fault-proxy
    and read-only tests, and instead one test whose id states the reason (and that fails if the
    Source names URLs after all).
    """
    import pytest
    from structlog.testing import capture_logs

    from ingest.errors import IngestError
    from ingest.redact import structlog_processor

    def source(request) -> Source:
        return request.getfixturevalue(source_fixture)

    class ConformanceTests:
        def test_info_is_valid_json_schema_with_sections_and_locked_secrets(self, request):
            check_info(source(request).type)

        def test_every_capability_yields_valid_records_and_its_listing_ends(self, request, tmp_path):
            src = source(request)
            got = read_all(src, str(tmp_path))
            assert got.get("account"), f"{src.type}: list_accounts yielded no account from the test source"

        def test_a_bad_credential_fails_check_cleanly(self, request, tmp_path):
            src = source(request)
            if src.bad_auth is None:
                pytest.fail("the Source gives no bad_auth: every connector must fail `check` on a bad credential")
            cls, ctx = _context(src, src.bad_auth, str(tmp_path))
            with pytest.raises(IngestError) as e:
                with cls(ctx) as connector:
                    connector.validate_credentials()
            for secret in secrets_of(ctx.auth):
                assert secret not in str(e.value), f"{src.type}: the error quotes the secret"

        def test_no_secret_reaches_the_logs(self, request, tmp_path):
            src = source(request)
            with capture_logs(processors=[structlog_processor]) as logs:
                read_all(src, str(tmp_path))
            _, ctx = _context(src, src.auth, str(tmp_path))
            dumped = json.dumps(logs, default=str)
            for secret in secrets_of(ctx.auth):
                assert secret not in dumped, f"{src.type}: a secret reached the logs"

    class HttpTests:
        def test_faults_lead_to_the_exact_data_or_a_clean_failure(self, request, tmp_path):
            """One of each fault (500, 429 + Retry-After, reset, drop, truncated body, cut JSON, stall) on
            requests chosen with the Source's seed: the read returns exactly the clean read's records (and
            waited out the Retry-After), or raises an IngestError that quotes no secret; never another
            exception, never fewer records."""
            src = _with_fault_settings(source(request))
            with Routing(src, retry_after=(RETRY_AFTER,)) as routing:
                clean = canonical(read_all(routing.source, str(tmp_path / "clean")))
                plan = routing.plan_faults(src.seed)
                assert plan, f"{src.type}: the read made no request through the kit's proxies"
                try:
                    faulty = canonical(read_all(routing.source, str(tmp_path / "faults")))
                except IngestError as e:
                    _, ctx = _context(src, src.auth, None)
                    for secret in secrets_of(ctx.auth):
                        assert secret not in str(e), f"{src.type}: the error quotes the secret"
                    if src.must_recover:
                        pytest.fail(f"{src.type}: failed under faults {dict(routing.injected())} "
                                    f"(must_recover): {e}")
                    return
                except AssertionError:
                    raise
                except Exception as e:
                    pytest.fail(f"{src.type}: under faults {dict(routing.injected())} the read raised "
                                f"{type(e).__module__}.{type(e).__name__}: {e} (a connector raises IngestError)")
                injected = routing.injected()
            assert sum(injected.values()), f"{src.type}: none of the planned faults was met: {plan}"
            assert faulty == clean, (f"{src.type}: under faults {dict(injected)} the read succeeded with other "
                                     f"data: {_differences(clean, faulty)}")
            if src.honours_retry_after:
                early = routing.early_retries()
                assert not early, (f"{src.type}: retried before the Retry-After it was given: {early} "
                                   "(or Source(honours_retry_after=False) with the reason)")

        def test_only_reads_reach_the_source(self, request, tmp_path):
            """Through a recording proxy, `check` and a full read send only GET/HEAD, or requests the
            connector class declares read-only (``read_only_requests``)."""
            from ingest.registry import get_connector_class

            src = source(request)
            cls = get_connector_class(src.type)
            with Routing(src) as routing:
                _, ctx = _context(routing.source, routing.source.auth, str(tmp_path))
                with cls(ctx) as connector:
                    connector.validate_credentials()
                read_all(routing.source, str(tmp_path))
            idle = [up for up, proxy in routing.proxies.items() if not proxy.requests]
            assert not idle, f"{src.type}: no request went through the proxy of {idle} (is every URL routed?)"
            writes = sorted({f"{r.method} {r.path}" for r in routing.requests()
                             if not is_declared_read_only(cls, r.method, r.path, r.body)})
            assert not writes, (f"{src.type}: requests other than GET/HEAD reached the source: {writes} "
                                f"(declare read-only ones in {cls.__name__}.read_only_requests)")

    if no_http is None:
        bases: tuple[type, ...] = (ConformanceTests, HttpTests)
    else:
        if not no_http.strip():
            raise ValueError("conformance_tests(no_http=...) needs the reason the connector is not routed over HTTP")

        class NotHttp:
            @pytest.mark.parametrize("reason", [no_http], ids=[f"no_http: {no_http}"])
            def test_is_not_routed_through_http_proxies(self, request, reason):
                src = source(request)
                assert not (src.url_settings or src.url_auth), (
                    f"{src.type}: opted out of the HTTP tests ({reason}) but the Source names URLs "
                    f"{[*src.url_settings, *src.url_auth]}: drop no_http and run them")

        bases = (ConformanceTests, NotHttp)
    cls = type(f"Conformance[{source_fixture}]", bases, {"__qualname__": f"Conformance[{source_fixture}]",
                                                          "no_http": no_http})
    return cls
