"""``demo``: a deterministic synthetic organisation served over HTTP.

For the quickstart and the benchmarks: no account, no secret, and the real
fetch path (the shared HTTP layer, four pagination styles, bearer auth). Its
size is set by its settings; it changes from one day to the next (joiners,
leavers, renames, job changes, suspensions, logins, access changes; see
:mod:`connectors.demo.org`), so consecutive snapshots show realistic diffs.

Which day? ``day: N`` pins the organisation to day N. Without it, each run
serves the day after the previous run's: the counter lives in
``<state_dir>/demo-<connector name>.day`` (``state_dir`` defaults to the
engine's state directory when it provides one, else ``./.ingest``) and
advances when a run first lists something (``ingest check`` shows the day the
next run will serve without advancing it).

Which server? Without ``base_url`` the connector starts the demo API in a
child process on 127.0.0.1 and a free port, and stops it in ``close()``; with
it, the connector pages that server (``python -m connectors.demo.server``).

    connectors:
      demo:
        type: demo
        settings: {users: 500, churn: 0.01}
"""

# The connector's names load on first use: the demo server runs as ``python -m
# connectors.demo.server`` and, importing this package first, must not pay for
# pydantic, httpx and the engine (it starts in a fraction of the time).
__all__ = ["DayCounter", "DemoAuth", "DemoConnector", "DemoSettings"]


def __getattr__(name: str):
    if name in __all__:
        from connectors.demo import connector

        return getattr(connector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
