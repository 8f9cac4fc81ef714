"""Huge tenants resume (issue 13 item 4): ``ingest run`` killed with SIGKILL half way through a stream,
and the next ``ingest run`` finishes from what was staged, fetching only the pages that were not, with
exactly the snapshot a clean run takes. The loopback "Acme" API of tests/servers/rest_api.py holds one
request open (the page the run is to die on) until the test has seen the checkpoint before it commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.engine import cli, last_snapshot, output, query
from tests.servers.fake_api import FakeApi, Reply, SeenRequest, _encode_cursor
from tests.servers.rest_api import TOKEN, make_org, serve
from tests.test_rest import NAME, expected, state, write

ROOT = Path(__file__).resolve().parent.parent
BOUND = 30.0  # seconds: a correctness bound for a condition to hold, not a performance figure
USERS, PAGE = 200, 25  # /users: 8 cursor pages; the first run dies on page 5


def wait_for(fn: Callable[[], Any], what: str, timeout: float = BOUND) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return got


class Hold:
    """Wraps a route: the first request ``matches`` accepts waits (bounded) until ``release``."""

    def __init__(self, api: FakeApi, path: str, matches: Callable[[SeenRequest], bool],
                 answer: Reply | None = None) -> None:
        self.inner = api._routes[("GET", path)]
        self.matches, self.arrived, self.released = matches, threading.Event(), threading.Event()
        self.answer = answer  # what the held request gets (default: the route's answer)
        api.route(path, self)

    def __call__(self, req: SeenRequest) -> Reply:
        if not self.arrived.is_set() and self.matches(req):
            self.arrived.set()
            self.released.wait(BOUND)
            if self.answer is not None:
                return self.answer
        return self.inner(req)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def acme(monkeypatch) -> Iterator[tuple[FakeApi, Any]]:
    monkeypatch.setenv("ACME_REST_TOKEN", TOKEN)
    org = make_org(n_users=USERS)
    with FakeApi() as api:
        serve(api, org)
        yield api, org


@pytest.fixture
def clean_url(pg_server_url: str) -> Iterator[str]:
    """A second empty database: where the clean run goes, to compare with."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, q = pg_server_url.partition("?")
    yield base.rsplit("/", 1)[0] + "/" + name + (("?" + q) if q else "")
    from ingest.db import dispose_engines

    dispose_engines()
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ingest_run(cfg: Path, database_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from ingest.cli import main; main()", "--config", str(cfg),
                             "--database-url", database_url, "--log-format", "json", "run", NAME],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def checkpoint(database_url: str, stream: str) -> dict[str, Any] | None:
    rows = query(database_url, "SELECT c.* FROM ingest.stage_checkpoints c JOIN ingest.snapshots s USING "
                               "(snapshot_id) WHERE s.connector = %s AND c.stream = %s", NAME, stream)
    return rows[0] if rows else None


def kill_on_page_5(api: FakeApi, cfg: Path, database_url: str) -> tuple[int, dict[str, Any]]:
    """Run ``ingest run`` in a child, hold its request for /users page 5, wait for the checkpoint of
    pages 1-4 to commit, SIGKILL the child. Returns how many requests had been served, and the checkpoint."""
    page5 = _encode_cursor(4 * PAGE)
    hold = Hold(api, "/users", lambda r: r.query.get("cursor") == page5)
    proc = ingest_run(cfg, database_url)
    try:
        wait_for(hold.arrived.is_set, "request for page 5 of /users")
        cp = wait_for(lambda: (c := checkpoint(database_url, "list_accounts")) and c["page_seq"] == 4 and c,
                      "checkpoint of pages 1-4 of /users")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=BOUND) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hold.release()
    return len(api.requests), cp


def fail_while_held(api: FakeApi, cfg: Path, database_url: str, path: str, matches: Callable[[SeenRequest], bool],
                    checkpointed: Callable[[], Any]) -> Any:
    """``ingest run`` in process, its request ``matches`` held until ``checkpointed()`` holds, then answered
    403: the run fails (cheaper than a child process to kill). Returns what ``checkpointed`` returned."""
    hold = Hold(api, path, matches, answer=Reply(403, {"error": "forbidden"}))
    first: list[Any] = []
    runner = threading.Thread(target=lambda: first.append(cli(cfg, database_url, "run", NAME)))
    runner.start()
    try:
        wait_for(hold.arrived.is_set, f"request for {path}")
        got = wait_for(checkpointed, "the checkpoint")
    finally:
        hold.release()
        runner.join(BOUND)
    assert not runner.is_alive() and first[0].exit_code == 1, output(first[0])
    assert last_snapshot(database_url, NAME)["status"] == "failed"
    return got


def tables(database_url: str) -> dict[str, list[tuple]]:
    """Every current version of the connector, as a clean run would have it (snapshot ids left out)."""
    out = {}
    for table in ("accounts", "resources", "entitlements", "assignments", "nested_entitlements"):
        rows = query(database_url, f"SELECT * FROM ingest.{table}_history WHERE connector = %s", NAME)
        out[table] = sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k not in ("valid_from", "valid_to")))
                            for r in rows)
    return out


def counts(stats: dict[str, Any]) -> dict[str, Any]:
    return {e: {k: v for k, v in s.items() if k in ("fetched", "invalid", "added", "modified", "removed",
                                                     "unchanged")}
            for e, s in stats.items() if isinstance(s, dict) and "fetched" in s}


def test_a_run_killed_half_way_resumes_fetching_only_the_remaining_pages(tmp_path, database_url, clean_url, acme):
    api, org = acme
    cfg = write(tmp_path, api)
    served, cp = kill_on_page_5(api, cfg, database_url)
    first = query(database_url, "SELECT snapshot_id FROM ingest.snapshots WHERE connector = %s", NAME)[0]["snapshot_id"]
    assert cp["done"] is False and cp["counts"]["account"]["fetched"] == 4 * PAGE
    assert cp["positions"]["accounts"]["state"] == {"cursor": _encode_cursor(4 * PAGE)}

    retry = cli(cfg, database_url, "run", NAME)
    assert retry.exit_code == 0, output(retry)
    snap = last_snapshot(database_url, NAME)
    assert snap["status"] == "succeeded"
    assert snap["stats"]["resumed"] == {"from_snapshot": first, "streams": {"list_accounts": {
        "page_seq": 4, "done": False, "records": {"account": 4 * PAGE}}}}
    statuses = query(database_url, "SELECT status FROM ingest.snapshots WHERE connector = %s ORDER BY 1", NAME)
    assert [r["status"] for r in statuses] == ["interrupted", "succeeded"]

    # the retry asked /users only for the pages that were not staged: page 5 (the one the first run died
    # on) to page 8, by the cursor the checkpoint saved; never page 1 (no cursor) or pages 2-4
    users = [r.query.get("cursor") for r in api.requests[served:] if r.path == "/users"]
    assert users == [_encode_cursor(k * PAGE) for k in range(4, USERS // PAGE)]
    before = [r.query.get("cursor") for r in api.requests[:served] if r.path == "/users"]
    assert before == [None] + [_encode_cursor(k * PAGE) for k in range(1, 5)]

    # exactly the snapshot a clean run takes
    assert state(database_url) == expected(org)
    clean = cli(cfg, clean_url, "run", NAME)
    assert clean.exit_code == 0, output(clean)
    assert tables(database_url) == tables(clean_url)
    assert counts(snap["stats"]) == counts(last_snapshot(clean_url, NAME)["stats"])
    assert query(database_url, "SELECT count(*) AS n FROM ingest.stage_checkpoints")[0]["n"] == 0
    assert query(database_url, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'ingest_stage'")[0]["n"] == 0


def test_a_resume_whose_cursor_the_source_refuses_starts_the_stream_over(tmp_path, database_url, acme):
    api, org = acme
    cfg = write(tmp_path, api)
    stale = _encode_cursor(4 * PAGE)
    fail_while_held(api, cfg, database_url, "/users", lambda r: r.query.get("cursor") == stale,
                    lambda: (c := checkpoint(database_url, "list_accounts")) and c["page_seq"] == 4)
    served = len(api.requests)
    inner = api._routes[("GET", "/users")]
    refused: list[int] = []  # the saved cursor is refused once (the source expired it); later cursors are new
    api.route("/users", lambda r: (refused.append(1) or Reply(400, {"error": "invalid_cursor",
                                                                     "message": "cursor expired"}))
              if r.query.get("cursor") == stale and not refused else inner(r))

    retry = cli(cfg, database_url, "run", NAME)
    assert retry.exit_code == 0, output(retry)
    snap = last_snapshot(database_url, NAME)
    assert snap["status"] == "succeeded" and len(refused) == 1
    assert "refused" in snap["stats"]["resumed"]["streams"]["list_accounts"]["restarted"]
    users = [r.query.get("cursor") for r in api.requests[served:] if r.path == "/users"]
    assert users == [stale, None] + [_encode_cursor(k * PAGE) for k in range(1, USERS // PAGE)]
    assert state(database_url) == expected(org)
    assert snap["stats"]["account"]["fetched"] == USERS and snap["stats"]["account"]["added"] == USERS


def test_a_failed_run_resumes_without_the_streams_it_had_done_and_fresh_starts_over(tmp_path, database_url, acme):
    """In process (no kill needed): a run that fails in /apps keeps the accounts it had staged."""
    api, org = acme
    cfg = write(tmp_path, api)
    inner, fail = api._routes[("GET", "/apps")], [2]
    api.route("/apps", lambda r: (fail.append(fail.pop() - 1) or Reply(403, {"error": "forbidden"}))
              if r.query.get("page") == "2" and fail[0] > 0 else inner(r))

    def users_fetched(since: int) -> list[str | None]:
        return [r.query.get("cursor") for r in api.requests[since:] if r.path == "/users"]

    first = cli(cfg, database_url, "run", NAME)
    assert first.exit_code == 1 and last_snapshot(database_url, NAME)["status"] == "failed"
    assert checkpoint(database_url, "list_accounts")["done"] is True

    # --fresh: the failed run's staging is dropped, every page fetched again (and it fails the same way)
    served = len(api.requests)
    fresh = cli(cfg, database_url, "run", NAME, "--fresh")
    assert fresh.exit_code == 1 and "resumed" not in last_snapshot(database_url, NAME)["stats"]
    assert users_fetched(served) == [None] + [_encode_cursor(k * PAGE) for k in range(1, USERS // PAGE)]
    stage = query(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'ingest_stage'")
    second = last_snapshot(database_url, NAME)["snapshot_id"]
    assert {r["tablename"].split("_")[0] for r in stage} == {f"s{second}"}

    # the next run continues the second: no request to /users at all, /apps from its first page
    served = len(api.requests)
    retry = cli(cfg, database_url, "run", NAME)
    assert retry.exit_code == 0, output(retry)
    snap = last_snapshot(database_url, NAME)
    assert users_fetched(served) == []
    assert sorted(r.query.get("page") for r in api.requests[served:] if r.path == "/apps") == ["1", "2", "3"]
    assert snap["stats"]["resumed"] == {"from_snapshot": second, "streams": {"list_accounts": {
        "page_seq": USERS // PAGE, "done": True, "records": {"account": USERS}}}}
    assert state(database_url) == expected(org)
    assert snap["stats"]["account"]["fetched"] == USERS and snap["stats"]["account"]["added"] == USERS


def test_a_fan_out_resumes_after_the_last_parent_it_had_done(tmp_path, database_url, acme):
    """Members are listed per group (offset pages, in group order): the run fails while the members of
    grp-5 are being fetched; the retry lists the groups again (its parents) and the members of grp-5 on."""
    api, org = acme
    cfg = write(tmp_path, api)
    cp = fail_while_held(api, cfg, database_url, "/groups/grp-5/members", lambda r: True,
                         lambda: (c := checkpoint(database_url, "find_entitlement_associations"))
                         and c["positions"]["assignments"].get("parents_done") == 5 and c)
    assert cp["counts"]["assignment"]["fetched"] == sum(len(org.members[f"grp-{k}"]) for k in range(5))

    served = len(api.requests)
    retry = cli(cfg, database_url, "run", NAME)
    assert retry.exit_code == 0, output(retry)
    members = {r.path.split("/")[2] for r in api.requests[served:] if r.path.endswith("/members")}
    assert members == {f"grp-{k}" for k in range(5, len(org.groups))}
    assert [r.path for r in api.requests[served:] if r.path == "/users"] == []
    assert len([r for r in api.requests[served:] if r.path == "/groups"]) == 3  # the parents, listed again
    assert state(database_url) == expected(org)
    snap = last_snapshot(database_url, NAME)
    assert snap["stats"]["resumed"]["streams"]["find_entitlement_associations"]["page_seq"] == cp["page_seq"]
    assert snap["stats"]["assignment"]["fetched"] == sum(len(v) for v in org.members.values())


def test_which_attempt_a_run_continues(database_url):
    """The daemon continues an attempt of the same slot; ``ingest run`` a recent one; both only with the same
    settings, with checkpoints, and only the latest attempt when nothing succeeded since."""
    import sqlalchemy as sa

    from ingest.checkpoints import previous_attempt
    from ingest.db import get_engine, migrate

    engine = get_engine(database_url)
    migrate(engine)
    slot = "2026-12-01T03:30:00+00:00"

    def attempt(status: str, *, config: str = "h1", scheduled: str | None = slot, age_h: float = 1,
                checkpoint: bool = True) -> int:
        with engine.begin() as c:
            sid = c.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, scheduled_for, status, config_hash, "
                "started_at) VALUES ('a', 'rest', 'schedule', CAST(:s AS timestamptz), :st, :h, "
                "now() - make_interval(secs => :age)) RETURNING snapshot_id"),
                {"s": scheduled, "st": status, "h": config, "age": age_h * 3600}).scalar_one()
            if checkpoint:
                c.execute(sa.text("INSERT INTO ingest.stage_checkpoints VALUES (:s, 'list_accounts', 1, false, "
                                  "'{}', '{}')"), {"s": sid})
        return sid

    def pick(scheduled: str | None, config: str = "h1") -> int | None:
        from datetime import datetime

        with engine.connect() as c:
            return previous_attempt(c, "a", config, datetime.fromisoformat(scheduled) if scheduled else None)

    sid = attempt("interrupted")
    assert pick(slot) == sid and pick(None) == sid
    assert pick("2026-12-02T03:30:00+00:00") is None  # the daemon's next slot starts over
    assert pick(slot, config="h2") is None  # the settings changed
    old = attempt("failed", scheduled=None, age_h=13)
    assert pick(None) is None and old > sid  # ingest run: older than 12 hours
    attempt("failed", checkpoint=False)
    assert pick(slot) is None  # nothing staged to continue
    attempt("succeeded")
    attempt("rejected")
    assert pick(slot) is None


@pytest.mark.parametrize("style, paginator, resumable", [
    ("cursor", {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"}, True),
    ("next_url", {"type": "next_url", "next_path": "next"}, True),
    ("link", {"type": "link_header"}, True),
    ("offset", {"type": "offset", "limit": 10, "total_path": "total"}, False),
    ("page", {"type": "page_number", "size": 10, "total_pages_path": "total_pages"}, False),
    ("scim", {"type": "scim", "count": 10}, False),
])
def test_a_listing_continues_from_its_saved_state(style, paginator, resumable):
    """Each paginator's ``state()`` once page 1 was taken (reported when the consumer asks for more: here
    while page 2 is handed on), restored in another listing, continues at page 2 exactly;
    ``resumable`` says which may (the others' positions shift when the list changes in between)."""
    from ingest.http import HttpClient, HttpSettings, make_paginator

    rows = [{"id": i} for i in range(35)]
    with FakeApi() as api:
        api.serve_records("/items", rows, style=style, page_size=10)
        selector = {"cursor": "data", "next_url": "results", "link": None, "offset": "items", "page": "data",
                    "scim": "Resources"}[style]
        http = HttpClient(api.base_url, settings=HttpSettings(max_concurrency=1))
        states: list[dict[str, Any]] = []
        pages = http.paginate("/items", paginator=make_paginator(paginator), selector=selector,
                              on_page=states.append)
        first_two = [next(pages), next(pages)]
        pages.close()
        served = len(api.requests)
        rest = list(http.paginate("/items", paginator=make_paginator(paginator), selector=selector,
                                  resume=states[-1]))
        assert make_paginator(paginator).resumable is resumable
        assert len(states) == 1
        assert [r["id"] for page in first_two[:1] + rest for r in page] == list(range(35))
        assert len(api.requests) - served == 3  # pages 2 to 4 only
        http.close()


def test_a_saved_next_link_to_another_origin_is_not_followed():
    from ingest.errors import ProtocolError
    from ingest.http import HttpClient, LinkHeaderPaginator

    with FakeApi() as api:
        api.serve_records("/items", [{"id": i} for i in range(5)], style="link", page_size=2)
        http = HttpClient(api.base_url)
        with pytest.raises(ProtocolError, match="another origin"):
            next(http.paginate("/items", paginator=LinkHeaderPaginator(),
                               resume={"next_url": "http://127.0.0.2:9/items?page=2"}))
        assert api.requests == []
        http.close()
