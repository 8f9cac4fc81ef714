"""Records deleted at the source while a run pages (issue 7 item 1), against scim2-server.

A user deleted after the first page of ``/Users`` was served shifts every later
page by one: the first user of page two slides onto page one and is never
fetched. The listing then holds fewer distinct users than ``totalResults``
announced; the run lists the stream again (bounded) and commits exactly what the
source holds, or fails and writes no removals. Sequential paging and the
concurrent look-ahead obey the same check.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from tests.engine import cli, last_snapshot, output, query
from tests.servers.scim_server import ScimServer, load_org, make_org, source_state, user_id

NAME = "acme"


def write_config(tmp_path: Path, base_url: str, **settings) -> Path:
    settings = {"base_url": base_url, "page_size": 50, "max_retries": 0, **settings}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps({"connectors": {NAME: {"type": "scim", "settings": settings,
                                                      "auth": {"bearer_token": "${SCIM_DEL_TOKEN}"}}}}))
    return path


def run_logged(cfg: Path, database_url: str):
    """``ingest run`` with JSON logs (the CLI configures logging itself); returns (result, log events)."""
    result = cli(cfg, database_url, "--log-format", "json", "run", NAME)
    events = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return result, events


def accounts(database_url: str) -> set[str]:
    return {r["account_id"] for r in query(database_url, "SELECT account_id FROM ingest.accounts "
                                                         "WHERE connector = %s", NAME)}


class DeleteAfterFirstPage:
    """Deletes one user (from page one) each time page one of /Users has been answered, ``times`` times."""

    def __init__(self, server: ScimServer, victims: list[str], times: int) -> None:
        self.server, self.victims, self.times = server, list(victims), times
        self.done = 0
        self.lock = threading.Lock()

    def __call__(self, path: str, query: dict[str, str]) -> None:
        if not path.endswith("/Users") or query.get("startIndex") != "1":
            return
        with self.lock:
            if self.done >= self.times:
                return
            self.server.delete_users([self.victims[self.done]])
            self.done += 1


@pytest.fixture
def org_server(monkeypatch):
    token = "scim-del-" + uuid.uuid4().hex
    monkeypatch.setenv("SCIM_DEL_TOKEN", token)
    with ScimServer(token=token) as server:
        org = make_org(n_users=230, n_teams=4, big_group_size=40, seed=3)
        load_org(server, org)
        yield server, org


@pytest.mark.parametrize("concurrency", [1, 4], ids=["sequential", "look-ahead"])
def test_a_deletion_between_two_pages_is_listed_again_and_committed_exactly(
        tmp_path, database_url, org_server, concurrency):
    server, org = org_server
    cfg = write_config(tmp_path, server.base_url, max_concurrency=concurrency)
    day1 = cli(cfg, database_url, "run", NAME)
    assert day1.exit_code == 0, output(day1)
    assert len(accounts(database_url)) == 230

    victim = user_id(org.users[10]["userName"])  # on page one of fifty
    server.after_request = DeleteAfterFirstPage(server, [victim], times=1)
    day2, logs = run_logged(cfg, database_url)
    assert day2.exit_code == 0, output(day2)
    snap = last_snapshot(database_url, NAME)
    assert snap["status"] == "succeeded"
    assert accounts(database_url) == set(source_state(server)["users"])
    assert victim not in accounts(database_url) and len(accounts(database_url)) == 229
    assert snap["stats"]["account"]["removed"] == 1, "only the deleted user is removed"
    short = [e for e in logs if e["event"] == "listing_short"]
    assert short and short[0]["announced"] == 230 and short[0]["received"] == 229
    assert [e["attempt"] for e in logs if e["event"] == "stream_relisted"] == [2]


def test_a_persistent_shortfall_fails_the_run_and_removes_nothing(tmp_path, database_url, org_server):
    server, org = org_server
    cfg = write_config(tmp_path, server.base_url, max_concurrency=2)
    day1 = cli(cfg, database_url, "run", NAME)
    assert day1.exit_code == 0, output(day1)
    before = accounts(database_url)

    victims = [user_id(u["userName"]) for u in org.users[5:8]]
    server.after_request = DeleteAfterFirstPage(server, victims, times=3)  # every listing comes back short
    day2, logs = run_logged(cfg, database_url)
    assert day2.exit_code == 1, output(day2)
    snap = last_snapshot(database_url, NAME)
    assert snap["status"] == "failed"
    assert "announced" in snap["error"] and "3 times" in snap["error"] and "stream=accounts" in snap["error"]
    assert accounts(database_url) == before, "a short listing never becomes removals"
    assert query(database_url, "SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = %s",
                 snap["snapshot_id"])[0]["n"] == 0
    assert [e["attempt"] for e in logs if e["event"] == "stream_relisted"] == [2, 3]
