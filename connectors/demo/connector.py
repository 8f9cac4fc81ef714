"""The demo connector (see :mod:`connectors.demo`)."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.demo._parallel import interleave_pages
from connectors.demo._process import DemoServerProcess
from connectors.demo.mapping import (
    CUSTOM_ATTRIBUTES,
    map_group,
    map_license,
    map_nested_group,
    map_user,
    map_workspace,
    map_workspace_role,
)
from connectors.demo.org import day_date
from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.errors import ConfigError
from ingest.http import (
    BearerAuth,
    CursorPaginator,
    HttpClient,
    HttpSettings,
    LinkHeaderPaginator,
    OffsetPaginator,
    PageNumberPaginator,
)
from ingest.records import CustomAttribute

__all__ = ["DayCounter", "DemoAuth", "DemoConnector", "DemoSettings"]

SMALL_PAGE = 25  # page size of the small lists (groups, roles, workspaces): exercises their pagination
MAX_PARTITIONS = 3  # big lists are paged in up to this many user ranges at once


class DemoSettings(HttpSettings):
    """Size and behaviour of the synthetic organisation (plus the shared HTTP settings)."""

    users: int = Field(500, ge=0, le=100_000_000, description="Users on day 0 (the headcount stays near it).")
    groups: int = Field(40, ge=0, le=1_000_000, description="Groups (about one in ten nested in another).")
    roles: int = Field(6, ge=0, le=1_000, description="Roles; each exists in every workspace.")
    workspaces: int = Field(12, ge=0, le=1_000_000, description="Workspaces (resources, in a tree).")
    memberships_per_user: float = Field(4.0, ge=0, le=1_000,
                                        description="Average grants (licence, groups, workspace roles) per user.")
    churn: float = Field(0.01, ge=0, le=1, description="Fraction of users changed per day.")
    seed: int = Field(42, ge=0, description="Another seed, another organisation.")
    day: int | None = Field(None, ge=0, le=100_000, description="Pin the organisation to this day; "
                                                     "when absent each run advances one day.")
    state_dir: str | None = Field(None, description="Where the day counter lives "
                                                    "(default: the engine's state directory, else ./.ingest).")
    base_url: str | None = Field(None, description="A running demo server to page; "
                                                   "when absent the connector starts its own.")
    page_size: int = Field(5000, ge=1, le=10_000, description="Grants per page; users come a fifth as many "
                                                              "per page (a user weighs about five grants).")


class DemoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_token: SecretStr = Field(SecretStr("demo-token"), description="Bearer token of the demo API.")


class DayCounter:
    """The day the next run serves, kept in a one-line file (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def peek(self) -> int:
        """The day the next run will serve (0 when no run has served one yet)."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            last = int(text)
        except ValueError:
            raise ConfigError(f"the demo day counter {self.path} is corrupt ({text[:40]!r}); "
                              "delete it to start again from day 0") from None
        return last + 1

    def advance(self) -> int:
        """Claim the next day: record it as served and return it."""
        day = self.peek()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{day}\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return day


class DemoConnector(Connector):
    type = "demo"
    name = "Demo organisation"
    description = ("A deterministic synthetic organisation (users, service accounts, groups, workspaces, "
                   "roles, licences) served over HTTP; it changes a little every day.")
    Settings = DemoSettings
    Auth = DemoAuth
    resource_types = [ResourceType(type_id="workspace", type_label="Workspace")]
    entitlement_types = [
        EntitlementType(type_id="group", type_label="Group"),
        EntitlementType(type_id="role", type_label="Workspace role", resource_type_id="workspace"),
        EntitlementType(type_id="license", type_label="Licence", max=1),
    ]

    settings: DemoSettings
    auth: DemoAuth

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._lock = threading.RLock()  # the fetch threads share the server, the client and the day
        self._server: DemoServerProcess | None = None
        self._base_url: str | None = None
        self._day: int | None = None

    # -- plumbing ---------------------------------------------------------------
    @property
    def counter(self) -> DayCounter:
        base = self.settings.state_dir or getattr(self.ctx, "state_dir", None) or ".ingest"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.ctx.name)
        return DayCounter(Path(base) / f"demo-{safe}.day")

    @property
    def day(self) -> int:
        """The day this run serves; claimed from the counter on first use."""
        with self._lock:
            if self._day is None:
                if self.settings.day is not None:
                    self._day = self.settings.day
                else:
                    self._day = self.counter.advance()
                    self.log.info("demo_day_claimed", day=self._day, date=day_date(self._day),
                                  counter=str(self.counter.path))
            return self._day

    def base_url(self) -> str:
        with self._lock:
            if self._base_url is None:
                if self.settings.base_url:
                    self._base_url = self.settings.base_url
                else:
                    self._server = DemoServerProcess(self.auth.api_token.get_secret_value())
                    self._base_url = self._server.start()
                    self.log.info("demo_server_started", url=self._base_url, pid=self._server.pid)
            return self._base_url

    @property
    def http(self) -> HttpClient:
        with self._lock:
            client = self.__dict__.get("http")  # where Connector.close() looks for it
            if client is None:
                token = self.auth.api_token.get_secret_value()
                client = self.__dict__["http"] = self.ctx.http_client(self.base_url(), auth=BearerAuth(token))
            return client

    def org_params(self, day: int | None = None) -> dict[str, Any]:
        s = self.settings
        return {"seed": s.seed, "day": self.day if day is None else day, "users": s.users, "groups": s.groups,
                "roles": s.roles, "workspaces": s.workspaces, "memberships_per_user": s.memberships_per_user,
                "churn": s.churn}

    def close(self) -> None:
        try:
            super().close()
        finally:
            with self._lock:
                server, self._server = self._server, None
            if server is not None:
                pid = server.pid
                server.stop()
                self.log.info("demo_server_stopped", pid=pid)

    # -- capabilities -------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        """One authenticated call; shows the day the next run serves, without claiming it."""
        day = self._day if self._day is not None else (
            self.settings.day if self.settings.day is not None else self.counter.peek())
        org = self.http.get_json("/api/org", params=self.org_params(day))
        return {"organisation": org["name"], "users": org["users"], "day": org["day"], "date": org["date"]}

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        for page in self._partitioned("/api/users", max(1, self.settings.page_size // 5)):
            yield from [map_user(raw) for raw in page]

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for page in self._workspace_pages():
            yield from [map_workspace(raw) for raw in page]

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        for page in self.http.paginate("/api/licenses", selector="licenses", params=self.org_params()):
            yield from [map_license(raw) for raw in page]
        for page in self._group_pages():
            yield from [map_group(raw) for raw in page]
        roles = [role for page in self.http.paginate("/api/roles", paginator=LinkHeaderPaginator(),
                                                      params={**self.org_params(), "per_page": SMALL_PAGE})
                 for role in page]
        if roles:
            for page in self._workspace_pages():
                yield from [map_workspace_role(ws, role) for ws in page for role in roles]

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        for page in self._group_pages():
            yield from [n for n in map(map_nested_group, page) if n is not None]
        for page in self._partitioned("/api/memberships", self.settings.page_size):
            yield from page  # already Assignment-shaped (see connectors.demo.mapping)

    def list_custom_attributes_schema(self) -> Iterator[CustomAttribute]:
        for name, description in CUSTOM_ATTRIBUTES.items():
            yield CustomAttribute(name=name, type="string", description=description)

    # -- pages -------------------------------------------------------------------------
    def partitions(self) -> list[tuple[int, int | None]]:
        """User-index ranges paged in parallel (the last is open: joiners take new indices)."""
        s = self.settings
        n = max(1, min(s.max_concurrency, MAX_PARTITIONS, s.users // s.page_size))
        cuts = [s.users * k // n for k in range(n)]
        return [(lo, hi) for lo, hi in zip(cuts, [*cuts[1:], None])]

    def _partitioned(self, path: str, limit: int) -> Iterator[list[dict[str, Any]]]:
        """The pages of a big cursor-paged list, its partitions fetched concurrently."""
        base = {**self.org_params(), "limit": limit}

        def source(lo: int, hi: int | None):
            params = {**base, "user_from": lo, **({"user_to": hi} if hi is not None else {})}
            return lambda: self.http.paginate(path, paginator=CursorPaginator("next_cursor", "cursor"),
                                              selector="data", params=params)

        return interleave_pages([source(lo, hi) for lo, hi in self.partitions()])

    # -- pages of the small lists ----------------------------------------------------
    def _group_pages(self) -> Iterator[list[dict[str, Any]]]:
        return self.http.paginate("/api/groups", paginator=OffsetPaginator(limit=SMALL_PAGE, total_path="total"),
                                  selector="items", params=self.org_params())

    def _workspace_pages(self) -> Iterator[list[dict[str, Any]]]:
        return self.http.paginate(
            "/api/workspaces", selector="workspaces", params=self.org_params(),
            paginator=PageNumberPaginator(size=SMALL_PAGE, total_pages_path="total_pages"),
        )
