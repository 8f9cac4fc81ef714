"""The conformance kit's own parts: the fault proxy (what a client sees of each fault, recording,
rewriting, deterministic plans), the pytest plugin, and the kit's checks failing the connectors they
exist to catch (a kit that cannot fail proves nothing)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from connectors.demo import DemoConnector
from connectors.demo.org import OrgSpec
from connectors.demo.server import DemoApi, make_server
from ingest.errors import IngestError
from ingest.testing import (
    FAULTS,
    FaultProxy,
    Routing,
    Serving,
    Source,
    conformance_tests,
    is_declared_read_only,
    read_all,
)

# -- a tiny upstream: JSON naming its own absolute URL in a Link header and in the body -------------------


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        seen = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        me = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        body = json.dumps({"path": self.path, "method": self.command, "seen": seen, "host": self.headers["Host"],
                           "next": f"{me}/items?page=2", "items": list(range(200))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Link", f'<{me}/items?page=2>; rel="next"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture
def upstream():
    with Serving(ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)) as running:
        yield running.root_url


def _wait_for(condition, deadline_s: float = 5.0) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        threading.Event().wait(0.01)
    return True


class TestTheFaultProxy:
    def test_it_forwards_records_and_rewrites_the_upstream_origin_to_its_own(self, upstream):
        with FaultProxy(upstream) as proxy, httpx.Client(base_url=proxy.root_url) as client:
            got = client.get("/items?page=1")
            posted = client.post("/search", content=b"q=alice")
            mine = proxy.root_url
        assert got.status_code == 200 and got.json()["items"] == list(range(200))
        assert got.json()["next"] == f"{mine}/items?page=2"
        assert got.headers["Link"] == f'<{mine}/items?page=2>; rel="next"'
        assert got.json()["host"] == mine.removeprefix("http://"), "Host is forwarded as the client sent it"
        assert posted.json()["seen"] == "q=alice"
        assert [(r.method, r.target, r.body, r.fault) for r in proxy.requests] == [
            ("GET", "/items?page=1", b"", None), ("POST", "/search", b"q=alice", None)]
        assert proxy.forwarded == 2 and not proxy.injected

    def test_each_planned_fault_is_what_a_client_meets_then_the_retry_passes(self, upstream):
        plan = {f"GET /{fault}": [fault] for fault in FAULTS if fault != "stall"}
        with FaultProxy(upstream, plan=plan, retry_after=("7",)) as proxy:
            met: dict[str, Any] = {}
            for fault in plan:
                with httpx.Client(base_url=proxy.root_url, timeout=10) as client:
                    try:
                        r = client.get(fault.split()[1])
                        met[fault] = (r.status_code, r.headers.get("Retry-After"), r.content)
                    except httpx.TransportError as e:
                        met[fault] = type(e)
                with httpx.Client(base_url=proxy.root_url, timeout=10) as client:
                    assert client.get(fault.split()[1]).json()["items"] == list(range(200)), "the 2nd one passes"
        assert met["GET /500"][0] == 500
        assert met["GET /429"][:2] == (429, "7")
        assert met["GET /reset"] in (httpx.ReadError, httpx.RemoteProtocolError)
        assert met["GET /drop"] is httpx.RemoteProtocolError
        assert met["GET /truncate"] is httpx.RemoteProtocolError, "a body shorter than its Content-Length"
        status, _, body = met["GET /cut_json"]
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(body)
        assert proxy.injected == dict.fromkeys([f for f in FAULTS if f != "stall"], 1)

    def test_a_stall_ends_when_the_client_gives_up_and_answers_a_patient_one(self, upstream):
        with FaultProxy(upstream, plan={"GET /slow": ["stall"]}, stall_s=60) as proxy:
            with httpx.Client(base_url=proxy.root_url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
                client.get("/slow")
            # the client closed its connection: the proxy lets go long before stall_s
            assert _wait_for(lambda: not proxy._connections), "the stalled request was held after the client left"
        with FaultProxy(upstream, plan={"GET /slow": ["stall"]}, stall_s=0.2) as proxy:
            with httpx.Client(base_url=proxy.root_url, timeout=30) as client:
                assert client.get("/slow").json()["items"] == list(range(200))
        assert proxy.injected == {"stall": 1}

    def test_unknown_faults_are_refused_naming_the_known_ones(self, upstream):
        with pytest.raises(ValueError, match="unknown faults.*known: 500, 429"):
            FaultProxy(upstream, faults=("500", "gremlins"))
        with pytest.raises(ValueError, match="not an http"):
            FaultProxy("ldap://127.0.0.1:389")


# -- the plugin ---------------------------------------------------------------------------------------

def test_the_plugin_is_registered_by_the_entry_point():
    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "ingest"]
    assert ep.value == "ingest.testing"


def test_the_plugin_fixtures_start_and_stop_proxies(fault_proxy, recording_proxy, upstream):
    faulty = fault_proxy(upstream, plan={"GET /x": ["500"]})
    recording = recording_proxy(upstream)
    assert httpx.get(faulty.root_url + "/x").status_code == 500
    assert httpx.get(recording.root_url + "/y").status_code == 200
    assert [r.key for r in recording.requests] == ["GET /y"] and recording.injected == {}


# -- the kit's checks fail the connectors they are there to catch -------------------------------------

def _swallowing(records):
    try:
        yield from records
    except IngestError:
        return


def _leaking(records):
    try:
        yield from records
    except IngestError as e:
        raise RuntimeError("boom") from e


class SwallowingDemo(DemoConnector):
    """Ends a listing quietly when a request fails: a partial result passed off as the whole."""

    type = "swallowing_demo"

    def streams(self):
        for capability, records in super().streams():
            yield capability, _swallowing(records)


class LeakyDemo(DemoConnector):
    """Lets a fault out as something other than an IngestError."""

    type = "leaky_demo"

    def streams(self):
        for capability, records in super().streams():
            yield capability, _leaking(records)


class PostingDemo(DemoConnector):
    """Sends a POST behind the HTTP layer's back (the layer itself would refuse it)."""

    type = "posting_demo"

    def validate_credentials(self):
        httpx.post(self.base_url() + "/api/search", content=b"q=*")
        return super().validate_credentials()


class DeclaredPostingDemo(PostingDemo):
    type = "declared_posting_demo"
    read_only_requests = (("POST", r"/api/search$", r"^q="),)


@pytest.fixture
def demo_api():
    api = DemoApi(OrgSpec(users=30, groups=4, workspaces=2), token="demo-kit-token-5a5a")
    with Serving(make_server("127.0.0.1", 0, api)) as running:
        yield running.root_url


def _source(type_name: str, base_url: str, tmp_path, monkeypatch, **kw: Any) -> Source:
    from ingest import registry

    for cls in (SwallowingDemo, LeakyDemo, PostingDemo, DeclaredPostingDemo):
        monkeypatch.setitem(registry.BUILTIN, cls.type, f"{__name__}:{cls.__name__}")
    settings = {"base_url": base_url, "day": 0, "state_dir": str(tmp_path), "page_size": 10, "users": 30,
                "groups": 4, "workspaces": 2, **kw.pop("settings", {})}
    return Source(type_name, settings=settings, auth={"api_token": "demo-kit-token-5a5a"},
                  bad_auth={"api_token": "wrong"}, **kw)


def _run(test_name: str, src: Source, tmp_path, **kw: Any) -> None:
    tests = conformance_tests("the_source", **kw)()
    getattr(tests, test_name)(SimpleNamespace(getfixturevalue=lambda name: src), tmp_path)


FAULT_TEST = "test_faults_lead_to_the_exact_data_or_a_clean_failure"
READ_ONLY_TEST = "test_only_reads_reach_the_source"


class TestTheKitCatches:
    def test_a_partial_read_returned_as_success(self, demo_api, tmp_path, monkeypatch):
        src = _source("swallowing_demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",),
                      settings={"max_retries": 0}, seed=3)
        with pytest.raises(AssertionError, match="succeeded with other data: .* expected, .* read; missing"):
            _run(FAULT_TEST, src, tmp_path)

    def test_a_fault_surfacing_as_another_exception(self, demo_api, tmp_path, monkeypatch):
        src = _source("leaky_demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",),
                      settings={"max_retries": 0}, seed=3)
        with pytest.raises(pytest.fail.Exception, match="raised builtins.RuntimeError: boom"):
            _run(FAULT_TEST, src, tmp_path)

    def test_a_clean_failure_when_the_source_must_recover(self, demo_api, tmp_path, monkeypatch):
        src = _source("demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",),
                      settings={"max_retries": 0}, must_recover=True)
        with pytest.raises(pytest.fail.Exception, match="failed under faults .* \\(must_recover\\)"):
            _run(FAULT_TEST, src, tmp_path)
        _run(FAULT_TEST, src.__class__(**{**src.__dict__, "must_recover": False}), tmp_path / "lenient")

    def test_a_retry_sooner_than_the_retry_after_it_was_given(self, demo_api, tmp_path, monkeypatch):
        monkeypatch.setattr("ingest.testing._kit.RETRY_AFTER", "5")  # a retry that did not wait is far from it
        src = _source("demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",),
                      settings={"max_retry_after": 0})  # the client caps every wait at 0 s
        with pytest.raises(AssertionError, match="retried before the Retry-After it was given: .*Retry-After 5, "
                                                 "again after"):
            _run(FAULT_TEST, src, tmp_path)
        _run(FAULT_TEST, src.__class__(**{**src.__dict__, "honours_retry_after": False}), tmp_path / "exempt")

    def test_a_post_that_is_not_declared_read_only(self, demo_api, tmp_path, monkeypatch):
        src = _source("posting_demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",))
        with pytest.raises(AssertionError, match=r"other than GET/HEAD reached the source: \['POST /api/search'\]"):
            _run(READ_ONLY_TEST, src, tmp_path)
        _run(READ_ONLY_TEST, _source("declared_posting_demo", demo_api, tmp_path, monkeypatch,
                                     url_settings=("base_url",)), tmp_path / "declared")

    def test_a_source_it_cannot_route(self, demo_api, tmp_path, monkeypatch):
        src = _source("demo", demo_api, tmp_path, monkeypatch)
        with pytest.raises(AssertionError, match="names no url_settings .* or opt out with"):
            _run(READ_ONLY_TEST, src, tmp_path)

    def test_an_opt_out_from_a_source_that_names_urls(self, demo_api, tmp_path, monkeypatch):
        src = _source("demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",))
        tests = conformance_tests("the_source", no_http="not HTTP")
        assert not hasattr(tests, FAULT_TEST) and not hasattr(tests, READ_ONLY_TEST), "not generated"
        with pytest.raises(AssertionError, match="opted out of the HTTP tests \\(not HTTP\\) but the Source names"):
            tests().test_is_not_routed_through_http_proxies(SimpleNamespace(getfixturevalue=lambda name: src),
                                                            "not HTTP")
        with pytest.raises(ValueError, match="needs the reason"):
            conformance_tests("the_source", no_http=" ")


def test_declared_read_only_requests_match_method_path_and_body():
    class Aws:
        read_only_requests = (("POST", r"^/$", r"(?:^|&)Action=(?:List[A-Z]\w*|Get[A-Z]\w*)(?:&|$)"),
                              ("POST", r"/oauth2/v2\.0/token$"))

    assert is_declared_read_only(Aws, "GET", "/anything") and is_declared_read_only(Aws, "head", "/x")
    assert is_declared_read_only(Aws, "POST", "/", b"Action=ListUsers&Version=2010-05-08")
    assert not is_declared_read_only(Aws, "POST", "/", b"Action=DeleteUser&UserName=bob")
    assert not is_declared_read_only(Aws, "PUT", "/", b"Action=ListUsers")
    assert is_declared_read_only(Aws, "POST", "/tenant/oauth2/v2.0/token", b"grant_type=client_credentials")
    assert not is_declared_read_only(Aws, "DELETE", "/tenant/oauth2/v2.0/token")


def test_routing_rewrites_every_named_url_and_plans_the_same_faults_for_the_same_seed(upstream):
    key = json.dumps({"type": "service_account", "token_uri": upstream + "/token", "private_key": "k"})
    src = Source("demo", settings={"api": {"root": upstream + "/v1"}, "login": upstream + "/login?x=1"},
                 auth={"service_account_json": key}, url_settings=("api.root", "login"),
                 url_auth=("service_account_json.token_uri",))
    with Routing(src) as routing:
        (proxy,) = routing.proxies.values()
        assert routing.source.settings == {"api": {"root": proxy.root_url + "/v1"}, "login": proxy.root_url + "/login?x=1"}
        assert json.loads(routing.source.auth["service_account_json"])["token_uri"] == proxy.root_url + "/token"
        assert src.settings["login"] == upstream + "/login?x=1", "the Source itself is left alone"
        with httpx.Client(base_url=proxy.root_url) as client:
            for page in range(12):
                client.get(f"/v1/users?page={page}")
        plans = [routing.plan_faults(seed) for seed in (5, 5, 6)]
    assert plans[0] == plans[1] and plans[0] != plans[2]
    assert sorted(f for faults in plans[0].values() for f in faults) == sorted(FAULTS)
    with pytest.raises(AssertionError, match=r"settings.nowhere: no 'nowhere' there"):
        Routing(Source("demo", settings={}, url_settings=("nowhere",))).__enter__()


def test_read_all_through_routing_reads_what_a_direct_read_does(demo_api, tmp_path, monkeypatch):
    src = _source("demo", demo_api, tmp_path, monkeypatch, url_settings=("base_url",))
    with Routing(src) as routing:
        routed = read_all(routing.source, str(tmp_path / "routed"))
    direct = read_all(src, str(tmp_path / "direct"))
    assert {k: len(v) for k, v in routed.items()} == {k: len(v) for k, v in direct.items()}
    assert len(routed["account"]) == 30


def test_the_kits_public_names_are_pinned():
    import ingest.testing

    assert sorted(ingest.testing.__all__) == sorted([
        "FAULTS", "FAULT_SETTINGS", "FaultProxy", "LoopbackServer", "READ_METHODS", "Routing", "SeenRequest",
        "Serving", "Source", "canonical", "check_info", "conformance_tests", "is_declared_read_only", "read_all",
        "recording_proxy", "request_key", "secrets_of"])
    for name in ingest.testing.__all__:
        assert getattr(ingest.testing, name) is not None
