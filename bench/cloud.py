"""`make bench` rows for the cloud connectors: each against its fake with 50 ms added to every answer,
through the whole pipeline (`ingest run` in a child process, embedded PostgreSQL).

    github   10,000 members, 2,000 repositories with collaborators and team grants, 200 nested teams
             (the loopback GitHub fake of tests/servers)
    aws_iam  5,000 users, 2,000 roles, 3,000 customer-managed policies (moto's IAM server, populated
             with boto3 before the latency is switched on)
    pagerduty 5,000 users, 100 teams (about 100,000 team memberships), schedules, escalation policies
    jira     10,000 users, 50 groups (about 37,000 memberships), 200 projects with 3 roles each

Printed per row: wall time of the run, HTTP requests, records/s, peak RSS of the ingest process tree,
and the latency floor: requests x 50 ms / the connector's concurrency (what the run could not beat
even with zero work of its own), and the CPU seconds the fake spent (it serves from this process,
the connector runs in the child: a fake near a core's worth would be the bottleneck, not ingest).

    python bench/cloud.py [--only github|aws_iam|pagerduty|jira] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INGEST = [sys.executable, "-c", "from ingest.cli import main; main()"]


def ingest_run(cfg: Path, name: str, env: dict[str, str]) -> dict:
    t, cpu = time.perf_counter(), time.process_time()
    proc = subprocess.Popen([*INGEST, "--config", str(cfg), "--log-format", "json", "run", name, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cfg.parent,
                            env={**os.environ, **env})
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
               for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                if "postgres" not in p.name():
                    rss += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, rss)
        time.sleep(0.05)
    for r in readers:
        r.join()
    wall, fake_cpu = time.perf_counter() - t, time.process_time() - cpu
    if proc.returncode != 0:
        sys.stderr.write(out.get("stderr", "")[-3000:])
        raise SystemExit(f"ingest run {name} failed ({proc.returncode})")
    result = json.loads(out["stdout"])[0]
    result.update(wall_s=wall, peak_rss_mb=peak / 2**20, fake_cpu_s=fake_cpu)
    subprocess.run([*INGEST, "--config", str(cfg), "db", "stop"], capture_output=True, cwd=cfg.parent)
    return result


def row(label: str, r: dict, latency: float, concurrency: int) -> str:
    stats = r["stats"]
    n = sum(v.get("fetched", 0) for k, v in stats.items()
            if isinstance(v, dict) and k in ("account", "resource", "entitlement", "assignment", "nested_entitlement"))
    requests = stats.get("http", {}).get("requests", 0)
    fetch = stats.get("timings", {}).get("fetch_s", float("nan"))
    floor = requests * latency / concurrency
    return (f"{label:<8} {r['wall_s']:6.1f} s wall  {r['duration_s']:6.1f} s run  fetch {fetch:6.1f} s  "
            f"{requests:>6,} requests  {n:>8,} records  {n / r['duration_s']:>7,.0f} rec/s  "
            f"peak RSS {r['peak_rss_mb']:5.0f} MB  latency floor {floor:5.1f} s "
            f"({requests:,} x {latency * 1000:.0f} ms / {concurrency})  fake CPU {r['fake_cpu_s']:5.1f} s")


def bench_github(latency: float) -> str:
    from tests.servers.github_server import GithubServer, make_org

    org = make_org(n_members=10_000, n_repos=2_000, n_teams=200)
    token = "ghp_bench0000000000000000000000000000"
    with GithubServer(org, token, latency=latency) as server, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # the embedded PostgreSQL runs as its own system user when ingest runs as root
        cfg = Path(tmp) / "schedules.yaml"
        cfg.write_text(json.dumps({"connectors": {"github": {"type": "github", "settings": {
            "org": org.login, "base_url": server.root_url}, "auth": {"bearer_token": "${BENCH_GH_TOKEN}"}}}}))
        r = ingest_run(cfg, "github", {"BENCH_GH_TOKEN": token})
    return row("github", r, latency, 4)


def bench_vendor(label: str, server, settings: dict, auth: dict, env: dict[str, str], latency: float) -> str:
    with server, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        cfg = Path(tmp) / "schedules.yaml"
        cfg.write_text(json.dumps({"connectors": {label: {"type": label, "settings": {
            "base_url": server.root_url, **settings}, "auth": auth}}}))
        r = ingest_run(cfg, label, env)
    return row(label, r, latency, 4)


def bench_pagerduty(latency: float) -> str:
    from tests.servers.pagerduty_server import PagerDutyServer, make_account

    key = "u+bench00000000000000"
    return bench_vendor("pagerduty", PagerDutyServer(make_account(n_users=5_000, n_teams=100), key,
                                                     latency=latency),
                        {}, {"api_key": "${BENCH_PD_KEY}"}, {"BENCH_PD_KEY": key}, latency)


def bench_jira(latency: float) -> str:
    from tests.servers.jira_server import JiraServer, make_site

    email, token = "bench@example.com", "ATATTbench0000000000"
    return bench_vendor("jira", JiraServer(make_site(n_users=10_000, n_groups=50, n_projects=200), email, token,
                                           latency=latency),
                        {}, {"username": email, "api_key": "${BENCH_JIRA_TOKEN}"}, {"BENCH_JIRA_TOKEN": token},
                        latency)


def bench_aws(latency: float) -> str:
    import boto3
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "false"
    app = DomainDispatcherApplication(create_backend_app)
    delay = {"s": 0.0}

    def slow(environ, start_response):
        time.sleep(delay["s"])
        return app(environ, start_response)

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, slow, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        # populated through moto's own backend (tens of thousands of HTTP calls would take longer than the run)
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.iam.models import iam_backends

        boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIABENCH",
                     aws_secret_access_key="bench").list_users()  # the backend exists once IAM was called
        iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
        doc = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*",
                                                                   "Resource": "*"}]})
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                                     "Principal": {"Service": "ec2.amazonaws.com"}}]})
        policies = [iam.create_policy(description="", path="/", policy_document=doc, policy_name=f"policy-{i}",
                                      tags=[]).arn for i in range(3_000)]
        for g in range(50):
            iam.create_group(f"group-{g}")
            iam.attach_group_policy(policies[g], f"group-{g}")
        for u in range(5_000):
            iam.create_user("us-east-1", f"user-{u}")
            iam.add_user_to_group(f"group-{u % 50}", f"user-{u}")
            if u % 5 == 0:
                iam.attach_user_policy(policies[50 + u % 2_950], f"user-{u}")
        for r in range(2_000):
            iam.create_role(f"role-{r}", trust, "/", None, "", [], None)
            iam.attach_role_policy(policies[r % 3_000], f"role-{r}")
        delay["s"] = latency
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            cfg = Path(tmp) / "schedules.yaml"
            cfg.write_text(json.dumps({"connectors": {"aws": {"type": "aws_iam", "settings": {"endpoint_url": url},
                                                              "auth": {"access_key_id": "AKIABENCH",
                                                                       "secret_access_key": "${BENCH_AWS_SECRET}"}}}}))
            r = ingest_run(cfg, "aws", {"BENCH_AWS_SECRET": "bench"})
    finally:
        server.shutdown()
    return row("aws_iam", r, latency, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("github", "aws_iam", "pagerduty", "jira"))
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()
    print(f"\ningest bench: cloud connectors against their fakes, {args.latency * 1000:.0f} ms per answer")
    if args.only in (None, "github"):
        print(bench_github(args.latency), flush=True)
    if args.only in (None, "aws_iam"):
        print(bench_aws(args.latency), flush=True)
    if args.only in (None, "pagerduty"):
        print(bench_pagerduty(args.latency), flush=True)
    if args.only in (None, "jira"):
        print(bench_jira(args.latency), flush=True)


if __name__ == "__main__":
    main()
