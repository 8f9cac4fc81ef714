"""`make bench`: the identity-provider connectors (okta, entra, google_workspace) against their loopback
fakes, with added latency per request and the vendors' page sizes.

For each connector: a tenant of ``--users`` users, ``--groups`` groups and ``--memberships`` group
memberships (spread over the groups, a few groups much larger than the rest) is served by its fake
(tests/servers/) with ``--latency`` seconds added to every answer. A child process reads every
capability the way a run does (accounts, resources, entitlements, associations, last activity) but
writes nothing, so the figures are the fetch side alone. Printed per connector: wall seconds,
requests, records and records/s, peak RSS of the child, the latency floor =
requests / max_concurrency x latency (what perfect concurrency would take) with wall / floor, and
the CPU seconds of the connector and of the fake (on a small machine the JSON both sides encode
and parse, not the latency, can be what bounds the run).

    python bench/idp.py [--users 50000] [--groups 5000] [--memberships 500000] [--latency 0.05]
                        [--concurrency 8] [--only okta,entra,google_workspace]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CAPABILITIES = ("list_accounts", "list_resources", "list_entitlements", "find_entitlement_associations",
                "get_last_activity")

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ingest.registry import get_connector_class
from ingest.connector import ConnectorContext
from ingest.logs import configure_logging
configure_logging("json")  # as `ingest run` logs (INFO, JSON to stderr): not every request's debug line
spec = json.loads(sys.argv[2])
cls = get_connector_class(spec["type"])
ctx = ConnectorContext("bench", cls.Settings.model_validate(spec["settings"]), cls.Auth.model_validate(spec["auth"]))
profile, profiles = None, []
if spec.get("profile"):  # every thread's own cProfile (the fetcher's workers do the requests), merged at the end
    import cProfile, threading
    _run = threading.Thread.run
    def _profiled(self):
        p = cProfile.Profile()
        profiles.append(p)
        p.runcall(_run, self)
    threading.Thread.run = _profiled
    profile = cProfile.Profile()
    profile.enable()
counts, walls, started = {}, {}, time.perf_counter()
with cls(ctx) as c:
    for cap in c.capabilities():
        if cap in CAPABILITIES:
            t0 = time.perf_counter()
            counts[cap] = sum(1 for _ in getattr(c, cap)())
            walls[cap] = round(time.perf_counter() - t0, 2)
wall = time.perf_counter() - started
if profile is not None:
    import io, pstats
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    for p in profiles:
        stats.add(p)
    stats.sort_stats("tottime").print_stats(30)
    print(out.getvalue(), file=sys.stderr)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "walls": walls, "counts": counts, "http": ctx.stats.as_dict(),
                  "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
""".replace("CAPABILITIES", repr(CAPABILITIES))


def memberships_plan(n_users: int, n_groups: int, total: int, rnd: random.Random) -> list[int]:
    """Group sizes that add up to ``total``: three big groups (a quarter of everyone each at most),
    the rest spread evenly."""
    big = [min(n_users, total // 10)] * min(3, n_groups)
    rest = max(0, total - sum(big))
    n_rest = max(1, n_groups - len(big))
    sizes = big + [rest // n_rest + (1 if k < rest % n_rest else 0) for k in range(n_rest)]
    return [min(n_users, s) for s in sizes[:n_groups]]


def okta(args, rnd):
    from tests.servers import okta_server as o

    t = o.OktaTenant()
    for i in range(args.users):
        t.add_user(i, o.STATUSES[i % len(o.STATUSES)] if i < 80 else "ACTIVE", f"2026-11-01T08:{i % 60:02d}:00.000Z")
    uids = sorted(t.users)
    for g, size in enumerate(memberships_plan(args.users, args.groups, args.memberships, rnd)):
        grp = t.add_group(g, f"group-{g}")
        start = rnd.randrange(len(uids))
        t.members[grp["id"]] = sorted((uids + uids)[start:start + size])
    gids = sorted(t.groups)
    for a in range(50):
        app = t.add_app(a, f"App {a}")
        t.app_users[app["id"]] = uids[a * 20:a * 20 + 100]
        t.app_groups[app["id"]] = gids[10 + a:12 + a]
    t.user_roles[uids[0]] = [o.role("SUPER_ADMIN")]
    server = o.OktaServer(t, latency=args.latency).start()
    spec = {"type": "okta", "settings": {"domain": server.root_url, "max_concurrency": args.concurrency},
            "auth": {"api_key": "ssws-test-token"}}
    return server, spec


def entra(args, rnd):
    from tests.servers import graph_server as g

    t = g.GraphTenant()
    for i in range(args.users):
        t.add_user(i, enabled=i % 17 != 0, guest=i % 23 == 0, last_sign_in="2026-11-01T09:00:00Z")
    uids = sorted(t.users)
    for n, size in enumerate(memberships_plan(args.users, args.groups, args.memberships, rnd)):
        grp = t.add_group(n, f"group-{n}", ("security", "m365", "dynamic")[n % 3])
        start = rnd.randrange(len(uids))
        t.members[grp["id"]] = (uids + uids)[start:start + size]
    for template, name in g.ROLES.items():
        t.add_role(template, name)
    t.role_assignments = [(next(iter(g.ROLES)), uids[0])]
    for a in range(50):
        sp = t.add_service_principal(a, f"App {a}", ["Reader"])
        t.app_role_assignments[sp["id"]] = [(sp["appRoles"][0]["id"], u) for u in uids[a * 20:a * 20 + 100]]
    server = g.GraphServer(t, latency=args.latency).start()
    spec = {"type": "entra", "settings": {"tenant_id": t.tenant_id, "graph_url": server.root_url,
                                          "authority": server.root_url, "max_concurrency": args.concurrency},
            "auth": {"client_id": "app-1", "client_secret": "s3cret-1"}}
    return server, spec


def google_workspace(args, rnd):
    from tests.servers import google_directory_server as gd

    t = gd.GoogleTenant()
    for i in range(args.users):
        t.add_user(i, suspended=i % 19 == 0, last_login="2026-11-01T10:00:00.000Z")
    uids = sorted(t.users)
    for n, size in enumerate(memberships_plan(args.users, args.groups, args.memberships, rnd)):
        grp = t.add_group(n, f"group-{n}")
        start = rnd.randrange(len(uids))
        t.members[grp["id"]] = [(u, "MEMBER") for u in (uids + uids)[start:start + size]]
    t.add_role("9170516996784129", "_SEED_ADMIN_ROLE", super_admin=True)
    t.role_assignments = [("9170516996784129", uids[0])]
    key = gd.service_account_key("http://placeholder/token")
    server = gd.GoogleDirectoryServer(t, admins={uids and t.users[uids[0]]["primaryEmail"]},
                                      latency=args.latency).start()
    key["token_uri"] = server.token_uri
    server.trust(key)
    spec = {"type": "google_workspace", "settings": {"api_url": server.root_url, "max_concurrency": args.concurrency},
            "auth": {"service_account_json": json.dumps(key), "subject": t.users[uids[0]]["primaryEmail"]}}
    return server, spec


BUILDERS = {"okta": okta, "entra": entra, "google_workspace": google_workspace}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=int(os.environ.get("BENCH_IDP_USERS", 50_000)))
    ap.add_argument("--groups", type=int, default=int(os.environ.get("BENCH_IDP_GROUPS", 5_000)))
    ap.add_argument("--memberships", type=int, default=int(os.environ.get("BENCH_IDP_MEMBERSHIPS", 500_000)))
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--only", default=",".join(BUILDERS))
    ap.add_argument("--profile", action="store_true", help="print the connector process's cProfile (top 25 by "
                    "own time)")
    args = ap.parse_args()
    print(f"identity providers: {args.users:,} users, {args.groups:,} groups, {args.memberships:,} memberships, "
          f"{args.latency * 1000:.0f} ms per request, max_concurrency {args.concurrency} (fetch only, no database)")
    print(f"{'connector':<18}{'wall s':>8}{'requests':>10}{'records':>10}{'rec/s':>9}{'peak MB':>9}"
          f"{'floor s':>9}{'x floor':>9}")
    for name in args.only.split(","):
        rnd = random.Random(7)
        server, spec = BUILDERS[name](args, rnd)
        server.frozen = True  # the tenant is built: each listing is sorted once, not for every page
        spec["profile"] = args.profile
        cpu0 = time.process_time()
        try:
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(spec)], capture_output=True,
                                 text=True, timeout=3600)
        finally:
            server_cpu = time.process_time() - cpu0  # this process serves the fake (its threads' CPU)
            server.stop()
        if out.returncode != 0:
            print(f"{name:<18} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        records = sum(r["counts"].values())
        requests = r["http"]["requests"]
        floor = requests / args.concurrency * args.latency
        print(f"{name:<18}{r['wall']:>8.1f}{requests:>10,}{records:>10,}{records / r['wall']:>9,.0f}"
              f"{r['peak_rss_mb']:>9.0f}{floor:>9.1f}{r['wall'] / floor:>9.2f}   "
              f"(connector CPU {r['cpu']:.0f} s, fake CPU {server_cpu:.0f} s; retries {r['http']['retries']}; "
              f"most in flight {server.max_in_flight})")
        print(f"{'':<18}per capability, s: " + ", ".join(f"{k} {v}" for k, v in r["walls"].items()))
        if args.profile:
            print(out.stderr)


if __name__ == "__main__":
    main()
