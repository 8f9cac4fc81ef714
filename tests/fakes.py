"""A connector for engine tests: it serves records from a JSON file, with injectable faults.

    settings:
      path: /tmp/org.json        # {"account": [...], "entitlement": [...], "assignment": [...], ...}
      fail_in: assignment        # raise while streaming this entity ...
      fail_after: 10             # ... after this many records
      sleep: 0.5                 # seconds to wait before each record (a slow source)
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from ingest.connector import Connector
from ingest.errors import AuthError, RetryableError


class FileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    fail_in: str | None = None
    fail_after: int = 0
    sleep: float = 0.0


class FileAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: SecretStr | None = None


class FileConnector(Connector):
    type = "file"
    name = "JSON file (tests)"
    description = "Records from a JSON file."
    Settings = FileSettings
    Auth = FileAuth

    def _data(self) -> dict[str, list[Any]]:
        with open(self.settings.path) as f:
            return json.load(f)

    def validate_credentials(self) -> dict[str, Any]:
        if self.auth.token is not None and self.auth.token.get_secret_value() != self._data().get("token"):
            raise AuthError("the token was refused", connector=self.ctx.name)
        return {"accounts": len(self._data().get("account", []))}

    def _stream(self, *entities: str):
        data = self._data()
        n = 0
        for entity in entities:
            for item in data.get(entity, []):
                if self.settings.fail_in == entity and n >= self.settings.fail_after:
                    raise RetryableError(f"injected failure in {entity} after {n} records",
                                         connector=self.ctx.name)
                n += 1
                if self.settings.sleep:
                    time.sleep(self.settings.sleep)
                yield item

    def list_accounts(self):
        return self._stream("account")

    def list_resources(self):
        return self._stream("resource")

    def list_entitlements(self):
        return self._stream("entitlement")

    def find_entitlement_associations(self):
        return self._stream("assignment", "nested_entitlement")

    def get_last_activity(self):
        return self._stream("last_activity")


class FileSpendConnector(FileConnector):
    """The ``file`` connector with expenses (``"expense": [...]`` in the file), like a spend-management app."""

    type = "file_spend"
    name = "JSON file with expenses (tests)"

    def list_expenses(self):
        return self._stream("expense")
