"""Per-record and per-request CPU of the SCIM path's hot steps, each in a tight loop (best of 5).

    python bench/micro.py

What a SCIM user and a membership cost the run's process (reading what paging needs of their page:
pages go to the workers undecoded, see ingest.pages) and a staging worker (decode the page, map,
validate, row: hashes and JSON text, COPY formatting; what telling an unchanged user by the hash
of its bytes costs instead: ingest.memo); what handing over records costs a stream
that is not passed through (encoded by the run's process, decoded by the worker); what one small
GET (a SCIM group) costs through ``HttpClient.get_json`` against the bench's SCIM server. These
figures hold still on a noisy machine where whole runs do not (a run's seconds drift with the
machine's load): compare two versions of the code by running this on each, in turn, several times.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import scim_bench  # noqa: E402
from psycopg._copy_base import TextFormatter  # noqa: E402
from psycopg.adapt import Transformer  # noqa: E402

from connectors._scim_mapping import USER_IGNORED_FIELDS  # noqa: E402
from connectors.scim import map_group_members, map_user  # noqa: E402
from ingest import memo  # noqa: E402
from ingest.http import BearerAuth, HttpClient, HttpSettings  # noqa: E402
from ingest.pages import PageSpec, light_decode  # noqa: E402
from ingest.staging import _HAND_OVER, _VALIDATE, ENTITIES, Stager, _EntityStats  # noqa: E402

N = 500


def per_item(label: str, fn, n: int = N, reps: int = 200) -> None:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps / n * 1e6)
    print(f"  {label:34s} {best:7.2f} µs")


def records() -> None:
    tenant = scim_bench.Tenant(1000, 20, 5, 1)
    page = b'{"Resources":[' + b",".join(orjson.dumps(tenant.user(i)) for i in range(N)) + b"]}"
    raw = orjson.loads(page)["Resources"]
    mapped = [map_user(u) for u in raw]
    handed = orjson.dumps(mapped, option=_HAND_OVER)
    account, assignment, stager = ENTITIES["account"], ENTITIES["assignment"], Stager("scim", 1)
    check = _VALIDATE["account"].check
    valid = [check(m) for m in mapped]
    rows = [(*stager.row(account, v), 0) for v in valid]
    fmt = TextFormatter(Transformer())
    out: list = []
    print("a SCIM user, the run's process:")
    per_item("read its page for paging", lambda: light_decode(page, "id"))
    print("a SCIM user, a staging worker:")
    per_item("decode its page", lambda: orjson.loads(page))
    per_item("map_user", lambda: [map_user(u) for u in raw])
    per_item("validate", lambda: [check(m) for m in mapped])
    per_item("row (hashes, JSON text)", lambda: [stager.row(account, v) for v in valid])
    per_item("validate + row", lambda: (out.clear(), stager._copy_records(account, mapped, _EntityStats(),
                                                                           out.append)))
    per_item("COPY formatting", lambda: [fmt.write_row(r) for r in rows])
    # what telling an unchanged record by its bytes costs (ingest.memo: a re-run copies what it has)
    spec = PageSpec("micro", "accounts", "Resources", map_user, False, USER_IGNORED_FIELDS)
    dig = memo.digest(spec, "scim", "account")
    per_item("memo: split its page", lambda: memo.split(spec, page, ()))
    raws = memo.split(spec, page, ())
    per_item("memo: its key (less ignored)", lambda: memo.keys(raws, dig, spec.ignored))
    print("a SCIM user of a stream that is not passed through (records handed over):")
    per_item("encode, the run's process", lambda: orjson.dumps(mapped, option=_HAND_OVER))
    per_item("decode, a staging worker", lambda: orjson.loads(handed))
    group = orjson.dumps(tenant.group(7, list(range(N))))
    members = orjson.loads(group)
    ids = frozenset(scim_bench.gid(g) for g in range(20))
    grants = map_group_members(members, {"entitlement_id": scim_bench.gid(7)}, group_ids=ids)
    assignment_rows: list = []
    stager._copy_plain(assignment, grants, _EntityStats(), assignment_rows.append)
    print(f"a membership ({N} in a group's page):")
    per_item("read the page, the run's process", lambda: light_decode(group, None))
    per_item("decode the page, a staging worker", lambda: orjson.loads(group))
    per_item("map, a staging worker", lambda: map_group_members(members, {"entitlement_id": scim_bench.gid(7)},
                                                               group_ids=ids))
    per_item("validate + row, a staging worker", lambda: (out.clear(), stager._copy_plain(
        assignment, grants, _EntityStats(), out.append)))
    per_item("... as COPY text (what staging does)", lambda: (out.clear(), stager._copy_plain(
        assignment, grants, _EntityStats(), out.append, 0, out.append)))
    per_item("COPY formatting, row by row", lambda: [fmt.write_row(r) for r in assignment_rows])


def requests() -> None:
    with scim_bench.serving(30_000, 3_000, 1) as server:
        paths = [f"Groups/{scim_bench.gid(g)}" for g in range(3000)]
        with HttpClient(f"http://127.0.0.1:{server.port}/scim/v2", settings=HttpSettings(max_concurrency=1),
                        connector="micro", auth=BearerAuth(scim_bench.TOKEN)) as http:
            for p in paths[:300]:
                http.get_json(p)
            best = float("inf")
            for _ in range(3):
                cpu = time.process_time()
                for p in paths:
                    http.get_json(p)
                best = min(best, (time.process_time() - cpu) / len(paths) * 1e6)
    print(f"one GET of a SCIM group (50 members), HttpClient.get_json: {best:.0f} µs of CPU")


if __name__ == "__main__":
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as in a run (ingest.staging.GC_THRESHOLD)
    records()
    requests()
