"""A run killed at 80 % resumes: what the retry costs next to a clean run (SCIM path, bench/scim_bench.py's server).

Against the pre-rendered SCIM server of ``scim_bench.py`` and a fresh embedded PostgreSQL (defaults):

1. a first load (not measured here: ``scim_bench.py`` does);
2. a clean re-run of the same data: the baseline;
3. the same re-run killed with SIGKILL once the member fan-out (one ``GET /Groups/{id}`` per group, the
   last and longest stream) has checkpointed ``--at`` of the groups (checkpoints every
   ``INGEST_CHECKPOINT_SECONDS``, 0.1 s here: the 400 groups of 20,000 users take about a second);
4. the next ``ingest run``: it continues from the checkpoint (users and groups were done; the groups are
   listed again as the fan-out's parents, the members of the groups not yet done are fetched).

Printed: wall and run seconds, HTTP requests and records fetched of 2 and 4, where 3 died, and
whether 4's tables equal 2's (counts of current versions per entity).

    python bench/resume.py                          # 100,000 users / 2,000 groups / 1,000,000 memberships
    python bench/resume.py --users 20000 --at 0.8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scim_bench import scim_database, serving  # noqa: E402

from bench import INGEST, records, run  # noqa: E402


def db_url(config: Path) -> str:
    got = subprocess.run([*INGEST, "--config", str(config), "db", "url", "--show-password"], capture_output=True,
                         text=True, cwd=config.parent)
    return got.stdout.strip()


def killed_at(config: Path, url: str, groups: int, at: float) -> dict:
    """``ingest run`` killed once the member fan-out checkpointed ``at`` of the groups."""
    env = {**os.environ, "INGEST_CHECKPOINT_SECONDS": os.environ.get("INGEST_CHECKPOINT_SECONDS", "0.1")}
    t = time.perf_counter()
    proc = subprocess.Popen([*INGEST, "--config", str(config), "run", "scim"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=config.parent, env=env)
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while proc.poll() is None:
            row = conn.execute("SELECT positions FROM ingest.stage_checkpoints "
                               "WHERE stream = 'find_entitlement_associations'").fetchone()
            done = (row[0].get("assignments") or {}).get("parents_done", 0) if row else 0
            if done >= at * groups:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit(f"the run ended ({proc.returncode}) before {at:.0%} of the groups were checkpointed; "
                         "lower --at or INGEST_CHECKPOINT_SECONDS")
    return {"wall_s": time.perf_counter() - t, "parents_done": done}


def current(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM ingest.{t} WHERE connector = 'scim'").fetchone()[0]
                for t in ("accounts", "entitlements", "assignments", "nested_entitlements")}


def show(label: str, r: dict) -> str:
    return (f"{label:<34} {r['wall_s']:7.1f} s wall  {r['duration_s']:6.1f} s run  "
            f"{r['stats']['http']['requests']:>7,} requests  {records(r['stats']):>10,} records fetched")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=None, help="default: users / 50")
    ap.add_argument("--memberships", type=int, default=10)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--at", type=float, default=0.8, help="share of the member fan-out done when the run is killed")
    args = ap.parse_args()
    args.groups = args.groups or max(10, args.users // 50)
    print(f"ingest bench, resume after SIGKILL: {args.users:,} users, {args.groups:,} groups, "
          f"{args.users * args.memberships:,} memberships, SCIM page size {args.page_size}, "
          f"max_concurrency {args.concurrency}, embedded PostgreSQL with default settings")
    with serving(args.users, args.groups, args.memberships, args.page_size) as srv:
        with scim_database(srv.port, args, prefix="ingest-resume-bench-") as config:
            url = db_url(config)
            first = run(config, name="scim")
            print(show("first load", first))
            clean = run(config, name="scim")
            clean_tables = current(url)
            print(show("clean re-run (baseline)", clean))
            died = killed_at(config, url, args.groups, args.at)
            print(f"{'re-run killed (SIGKILL)':<34} {died['wall_s']:7.1f} s wall  after {died['parents_done']:,} "
                  f"of {args.groups:,} groups' members were checkpointed")
            resumed = run(config, name="scim")
            print(show("the next run (resumed)", resumed))
            print(f"  resumed from {json.dumps(resumed['stats'].get('resumed', {}).get('streams'))}")
            same = current(url) == clean_tables
            print(f"  tables equal the clean re-run's: {same}; the resumed run took "
                  f"{resumed['wall_s'] / clean['wall_s']:.0%} of the clean re-run's wall time and "
                  f"{resumed['stats']['http']['requests'] / clean['stats']['http']['requests']:.0%} of its requests")


if __name__ == "__main__":
    main()
