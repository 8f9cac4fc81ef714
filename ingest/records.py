"""Normalized records a connector yields (after the Lumos SDK's Found*Data models).

A connector yields these models or plain dicts of the same shape; the runner
validates dicts, and a record that fails validation is counted as ``invalid``
in the snapshot's stats with its reason instead of failing the run.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AccountStatus",
    "AccountType",
    "Account",
    "Resource",
    "Entitlement",
    "Assignment",
    "NestedEntitlement",
    "LastActivity",
    "CustomAttribute",
    "Expense",
    "ENTITY_MODELS",
]

_Id = Field(min_length=1, max_length=1024)


class AccountStatus(str, enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUSPENDED = "SUSPENDED"
    DEPROVISIONED = "DEPROVISIONED"
    PENDING = "PENDING"


class AccountType(str, enum.Enum):
    USER = "user"
    SERVICE = "service"


class _Record(BaseModel):
    # (Text containing NUL, which PostgreSQL cannot store, is refused by the writer.)
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)
    entity: ClassVar[str]


class Account(_Record):
    """FoundAccountData: one account in the source app."""

    entity: ClassVar[str] = "account"
    account_id: str = _Id
    email: str | None = None
    username: str | None = None
    display_name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    status: AccountStatus = AccountStatus.ACTIVE
    account_type: AccountType = AccountType.USER
    custom_attributes: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    # not versioned: goes to ingest.last_activity, a login is not a change of the account
    last_activity_at: datetime | None = None


class Resource(_Record):
    """FoundResourceData: a workspace, project, repo, OU, ..."""

    entity: ClassVar[str] = "resource"
    resource_type: str = _Id
    resource_id: str = _Id
    label: str | None = None
    description: str | None = None
    parent_resource_type: str | None = None
    parent_resource_id: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Entitlement(_Record):
    """FoundEntitlementData: a group, role or licence; ``resource_id`` is '' when global."""

    entity: ClassVar[str] = "entitlement"
    entitlement_type: str = _Id
    resource_type: str = ""
    resource_id: str = ""
    entitlement_id: str = _Id
    label: str | None = None
    description: str | None = None
    is_assignable: bool = True
    extra: dict[str, Any] = Field(default_factory=dict)


class Assignment(_Record):
    """FoundEntitlementAssociation: an account holds an entitlement directly."""

    entity: ClassVar[str] = "assignment"
    account_id: str = _Id
    entitlement_id: str = _Id
    resource_type: str = ""
    resource_id: str = ""


class NestedEntitlement(_Record):
    """A group that is a member of another group (never an account)."""

    entity: ClassVar[str] = "nested_entitlement"
    entitlement_id: str = _Id
    member_entitlement_id: str = _Id


class LastActivity(_Record):
    """LastActivityData: when an account was last seen active (and how: ``login``, ``api``, ...).

    Stored in ``ingest.last_activity``, updated in place: activity is not a change of the account.
    """

    entity: ClassVar[str] = "last_activity"
    account_id: str = _Id
    last_activity_at: datetime
    event_type: str | None = None


class Expense(_Record):
    """A spend record (Lumos ``list_expenses``): a reimbursement or a card transaction.

    ``amount`` is exact (a decimal, never a float); ``category`` is the kind of
    expense (``reimbursement``, ``card_transaction``, or the source's own).
    """

    entity: ClassVar[str] = "expense"
    expense_id: str = _Id
    account_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = Field(None, max_length=16)
    merchant: str | None = None
    occurred_at: datetime | None = None
    category: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class CustomAttribute(_Record):
    """One entry of ``list_custom_attributes_schema``."""

    entity: ClassVar[str] = "custom_attribute"
    name: str = _Id
    type: str = "string"
    description: str | None = None


ENTITY_MODELS: dict[str, type[_Record]] = {
    m.entity: m for m in (Account, Resource, Entitlement, Assignment, NestedEntitlement, LastActivity, Expense)
}
