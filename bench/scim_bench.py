"""`make bench`: the SCIM path - the path most users take - end to end, day 1 and day 2.

A fast local SCIM 2.0 server serves users, groups and group members from pages
rendered once up front (every answer's bytes are built before the first run and
served from memory by one asyncio loop with keep-alive, so the server is not the
bottleneck). Each run is a separate ``ingest run`` process of a ``scim`` connector
against a fresh embedded PostgreSQL (default settings): a first load (day 1), then
a re-run after churn (day 2: 1 % of the users changed and moved to another group,
0.1 % removed, 0.1 % new). Printed per run, medians over ``--repeat`` fresh
databases: wall and run seconds, records/s, seconds per phase (fetch, stage,
merge) and per merge statement, CPU of the ingest process tree, of PostgreSQL and
of the SCIM server, and the peak RSS of the ingest process tree.

    python bench/scim_bench.py                       # 100,000 users / 2,000 groups / 1,000,000 memberships
    python bench/scim_bench.py --large               # 1,000,000 users / 20,000 groups / 5,000,000 memberships
    python bench/scim_bench.py --users 20000 --memberships 5 --repeat 1

The data: user ``i`` is a member of ``--memberships`` groups spread evenly; every
1,000th group also has the next group as a member (a nested group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import INGEST, line, merge_line, run, streams_line  # noqa: E402

TOKEN = "scim-bench-token"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
_DEPTS = ("Engineering", "Sales", "Finance", "Support", "Marketing", "Forschung & Entwicklung", "Légal")


# -- the data --------------------------------------------------------------------------------------

def uid(i: int) -> str:
    return f"5f0c3a53-0d0e-4a51-9a53-{i:012d}"


def gid(g: int) -> str:
    return f"9b1d2e4f-7a6c-4e3b-8d2a-{g:012d}"


class Tenant:
    """The tenant on one day: which users exist, how they look, who is in which group."""

    def __init__(self, users: int, groups: int, memberships: int, day: int) -> None:
        self.n, self.g, self.m, self.day = users, groups, memberships, day
        self.stride = max(1, groups // memberships)

    def changed(self, i: int) -> bool:
        return self.day >= 2 and i % 100 == 37

    def alive(self, i: int) -> bool:
        return not (self.day >= 2 and i % 1000 == 999)

    def user_indexes(self) -> range | list[int]:
        if self.day < 2:
            return range(self.n)
        return [i for i in range(self.n + self.n // 1000) if self.alive(i)]

    def groups_of(self, i: int) -> list[int]:
        gs = [(i + j * self.stride) % self.g for j in range(self.m)]
        if self.changed(i):
            gs[0] = (gs[0] + self.stride // 2 + 1) % self.g
        return gs

    def user(self, i: int) -> dict:
        given, family = ("Zoë", "Łukasz", "José", "Anna", "Chen")[i % 5], ("Ødegård", "Smith", "Tanaka")[i % 3]
        display = f"{given} {family} {i}" + (" (moved)" if self.changed(i) else "")
        u = {
            "schemas": [CORE_USER, ENTERPRISE],
            "id": uid(i),
            "externalId": f"ext-{i}",
            "userName": f"user{i:07d}@example.org",
            "name": {"givenName": given, "familyName": family, "formatted": display},
            "displayName": display,
            "emails": [{"value": f"user{i:07d}@example.org", "type": "work", "primary": True}],
            "active": i % 23 != 5,
            "title": "Manager" if self.changed(i) else ("Engineer", "Analyst", "Designer")[i % 3],
            ENTERPRISE: {"employeeNumber": f"E{i:07d}", "department": _DEPTS[i % len(_DEPTS)],
                         "costCenter": f"CC-{i % 17}", "manager": {"value": uid(i // 10)}},
            "meta": {"resourceType": "User", "created": "2026-01-01T00:00:00Z",
                     "lastModified": f"2026-12-0{min(self.day, 9)}T00:00:00Z",
                     "location": f"/scim/v2/Users/{uid(i)}", "version": f'W/"{self.day}"'},
        }
        return u

    def group(self, g: int, members: list[int] | None) -> dict:
        out = {"schemas": [CORE_GROUP], "id": gid(g), "displayName": f"group-{g:05d}",
               "meta": {"resourceType": "Group", "created": "2026-01-01T00:00:00Z",
                        "location": f"/scim/v2/Groups/{gid(g)}"}}
        if members is not None:
            out["members"] = [{"value": uid(i), "display": f"user{i:07d}@example.org", "type": "User"}
                              for i in members]
            if g % 1000 == 0 and self.g > 1:
                out["members"].append({"value": gid(g + 1), "display": f"group-{g + 1:05d}", "type": "Group"})
        return out


# -- the server ------------------------------------------------------------------------------------

class Rendered:
    """Every answer of one day, as bytes: pages of the page size the connector asks for (rendered page
    by page, so only the pages are held), each group with its members; any other page is rendered
    when asked."""

    def __init__(self, t: Tenant, page: int) -> None:
        self.t, self.page = t, page
        users = t.user_indexes()
        self.users = list(users)
        members: list[list[int]] = [[] for _ in range(t.g)]
        for i in users:
            for g in t.groups_of(i):
                members[g].append(i)
        self.group_bodies = {gid(g).encode(): orjson.dumps(t.group(g, members[g])) for g in range(t.g)}
        del members
        self.total = {b"Users": len(self.users), b"Groups": t.g}
        self.pages = {what: [self.render(what, s, page) for s in range(0, max(n, 1), page)]
                      for what, n in self.total.items()}

    def render(self, what: bytes, start: int, count: int) -> bytes:
        """Items ``start`` (0-based) to ``start + count`` of a listing as a ListResponse."""
        if what == b"Users":
            chunk = [orjson.dumps(self.t.user(i)) for i in self.users[start:start + count]]
        else:
            chunk = [orjson.dumps(self.t.group(g, None)) for g in range(start, min(start + count, self.t.g))]
        return (b'{"schemas":["' + LIST.encode() + b'"],"totalResults":' + str(self.total[what]).encode()
                + b',"startIndex":' + str(start + 1).encode() + b',"itemsPerPage":' + str(len(chunk)).encode()
                + b',"Resources":[' + b",".join(chunk) + b"]}")

    def listing(self, what: bytes, start: int, count: int) -> bytes:
        start, count = max(start, 1) - 1, max(0, min(count, self.page))
        if count == self.page and start % self.page == 0 and start // self.page < len(self.pages[what]):
            return self.pages[what][start // self.page]
        return self.render(what, start, count)


SPC = orjson.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
                    "patch": {"supported": False}, "bulk": {"supported": False},
                    "filter": {"supported": True, "maxResults": 1000},
                    "authenticationSchemes": [{"type": "oauthbearertoken", "name": "OAuth Bearer Token"}]})


class Server(asyncio.Protocol):
    """HTTP/1.1 GET with keep-alive; nothing else."""

    days: dict[int, Rendered] = {}
    day = 1

    def connection_made(self, transport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            self.answer(head)

    def answer(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in lines[1:])}
        path, _, query = target.partition(b"?")
        status, body = b"200 OK", None
        if path.startswith(b"/control/day/"):
            Server.day = int(path.rsplit(b"/", 1)[1])
            body = b"{}"
        elif headers.get(b"authorization") != b"Bearer " + TOKEN.encode():
            status, body = b"401 Unauthorized", b'{"status":"401","detail":"bad token"}'
        else:
            r = Server.days[Server.day]
            rest = path.removeprefix(b"/scim/v2/")
            if rest == b"ServiceProviderConfig":
                body = SPC
            elif rest in (b"Users", b"Groups"):
                q = dict(parse_qsl(query.decode()))
                body = r.listing(rest, int(q.get("startIndex", 1)), int(q.get("count", r.page)))
            elif rest.startswith(b"Groups/"):
                body = r.group_bodies.get(rest[len(b"Groups/"):])
            if body is None:
                status, body = b"404 Not Found", b'{"status":"404","detail":"not found"}'
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/scim+json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)


def serve(args) -> None:
    for day in (1, 2):
        Server.days[day] = Rendered(Tenant(args.users, args.groups, args.memberships, day), args.page_size)

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

    asyncio.run(main())


# -- the bench -------------------------------------------------------------------------------------

@contextlib.contextmanager
def serving(users: int, groups: int, memberships: int, page_size: int = 1000) -> Iterator[subprocess.Popen]:
    """The bench's SCIM server in its own process (its port in ``.port``), stopped on leaving."""
    srv = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", "--users", str(users),
                            "--groups", str(groups), "--memberships", str(memberships), "--page-size",
                            str(page_size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        srv.port = int(srv.stdout.readline())
        yield srv
    finally:
        srv.stdin.close()
        srv.wait(timeout=60)


def set_day(port: int, day: int) -> None:
    import httpx

    httpx.get(f"http://127.0.0.1:{port}/control/day/{day}", timeout=10).raise_for_status()


@contextlib.contextmanager
def scim_database(port: int, args, prefix: str = "ingest-scim-bench-") -> Iterator[Path]:
    """A config with one ``scim`` connector on the bench server, its embedded PostgreSQL started (stopped after)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        if os.geteuid() == 0:  # as root the embedded server runs as its own user, who must reach the directory
            os.chmod(tmp, 0o711)
        config = Path(tmp) / "schedules.yaml"
        config.write_text(json.dumps({"connectors": {"scim": {"type": "scim", "settings": {
            "base_url": f"http://127.0.0.1:{port}/scim/v2", "page_size": args.page_size,
            "max_concurrency": args.concurrency}, "auth": {"bearer_token": TOKEN},
            **({"stage_workers": w} if (w := getattr(args, "workers", None)) is not None else {})}}}))
        started = subprocess.run([*INGEST, "--config", str(config), "db", "start"], capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"ingest db start failed ({started.returncode}): {started.stderr[-2000:]}")
        try:
            yield config
        finally:
            subprocess.run([*INGEST, "--config", str(config), "db", "stop"], capture_output=True)


def bench_once(port: int, server: psutil.Process, args) -> dict:
    out = {}
    with scim_database(port, args) as config:
        for day in (1, 2):
            set_day(port, day)
            cpu = server.cpu_times()
            out[day] = run(config, name="scim")
            after = server.cpu_times()
            out[day]["server_cpu_s"] = after.user + after.system - cpu.user - cpu.system
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=int(os.environ.get("BENCH_SCIM_USERS", 100_000)))
    ap.add_argument("--groups", type=int, default=None, help="default: users / 50")
    ap.add_argument("--memberships", type=int, default=10, help="groups per user")
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4, help="the connector's max_concurrency")
    ap.add_argument("--workers", type=int, default=None, help="the connector's stage_workers (default: the default)")
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", 3)))
    ap.add_argument("--large", action="store_true", help="1,000,000 users, 20,000 groups, 5 groups each")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.large:
        args.users, args.groups, args.memberships = 1_000_000, 20_000, 5
    args.groups = args.groups or max(10, args.users // 50)
    if args.serve:
        return serve(args)
    print(f"ingest bench, SCIM path: {os.cpu_count()} CPUs, embedded PostgreSQL with default settings, "
          f"page size {args.page_size}, max_concurrency {args.concurrency}")
    print(f"\n{args.users:,} users, {args.groups:,} groups, {args.users * args.memberships:,} memberships "
          "(day 2: 1 % changed and moved, 0.1 % removed, 0.1 % new)")
    with serving(args.users, args.groups, args.memberships, args.page_size) as srv:
        runs = [bench_once(srv.port, psutil.Process(srv.pid), args) for _ in range(args.repeat)]
    for day, label in ((1, "day 1 (first load)"), (2, "day 2 (after churn)")):
        rs = [r[day] for r in runs]
        print(line(label, rs) + f"  server CPU {statistics.median(r['server_cpu_s'] for r in rs):5.1f} s")
    for day, label in ((1, "day 1"), (2, "day 2")):
        print(streams_line(label, [r[day] for r in runs]))
    for day, label in ((1, "day 1"), (2, "day 2")):
        print(merge_line(label, [r[day] for r in runs]))
    for day, label in ((1, "day 1"), (2, "day 2")):
        r = sorted((r[day] for r in runs), key=lambda r: r["duration_s"])[len(runs) // 2]
        print(f"  processes of {label}: CPU s {r['cpu_by_process_s']}, peak RSS MB {r['peak_rss_by_process_mb']} "
              "(the run's process first, then its staging workers; the median run)")


if __name__ == "__main__":
    main()
