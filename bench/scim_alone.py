"""The ``scim`` connector alone against the bench's SCIM server: each stream read, nothing staged.

    python bench/scim_alone.py --users 300000 --memberships 5 [--concurrency 4] [--only list_accounts]

Prints each capability's records, wall and CPU seconds: what fetching, decoding and mapping cost
the run's process without the staging workers and PostgreSQL beside it (compare with the seconds
of each stream that ``scim_bench.py`` prints for a whole run). The cyclic GC is set as in a run.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import scim_bench  # noqa: E402

from connectors.scim import ScimConnector  # noqa: E402
from ingest.connector import ConnectorContext  # noqa: E402
from ingest.staging import GC_THRESHOLD  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=None, help="default: users / 50")
    ap.add_argument("--memberships", type=int, default=5, help="groups per user")
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4, help="the connector's max_concurrency")
    ap.add_argument("--only", default=None, help="one capability (list_entitlements runs too: the fan-out needs it)")
    args = ap.parse_args()
    groups = args.groups or max(10, args.users // 50)
    with scim_bench.serving(args.users, groups, args.memberships, args.page_size) as server:
        ctx = ConnectorContext(
            name="scim", settings=ScimConnector.Settings.model_validate({
                "base_url": f"http://127.0.0.1:{server.port}/scim/v2", "page_size": args.page_size,
                "max_concurrency": args.concurrency}),
            auth=ScimConnector.Auth.model_validate({"bearer_token": scim_bench.TOKEN}), state_dir=None)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
        with ScimConnector(ctx) as connector:
            for capability, records in connector.streams():
                if args.only and capability not in (args.only, "list_entitlements"):
                    continue
                wall, cpu, n = time.perf_counter(), time.process_time(), 0
                for _ in records:
                    n += 1
                print(f"{capability:32s} {n:10,} records {time.perf_counter() - wall:7.2f} s wall "
                      f"{time.process_time() - cpu:7.2f} s CPU", flush=True)


if __name__ == "__main__":
    main()
