"""Connector types: the built-ins and plugins from the ``ingest.connectors`` entry-point group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ingest.connector import Connector
from ingest.errors import ConfigError

__all__ = ["BUILTIN", "connector_types", "get_connector_class"]

BUILTIN: dict[str, str] = {
    "demo": "connectors.demo:DemoConnector",
    "scim": "connectors.scim:ScimConnector",
    "lucid_scim": "connectors.scim:LucidScimConnector",
    "ldap": "connectors.ldap:LdapConnector",
    "rest": "connectors.rest:RestConnector",
    "okta": "connectors.okta:OktaConnector",
    "aws_iam": "connectors.aws_iam:AwsIamConnector",
    "entra": "connectors.entra:EntraConnector",
    "github": "connectors.github:GithubConnector",
    "pagerduty": "connectors.pagerduty:PagerDutyConnector",
    "jira": "connectors.jira:JiraConnector",
    "google_workspace": "connectors.google_workspace:GoogleWorkspaceConnector",
    "lumos": "connectors.lumos:LumosConnector",
}


def _load(target: str) -> type[Connector]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def connector_types() -> dict[str, str]:
    """type name -> ``module:Class`` for built-ins and installed plugins."""
    types = dict(BUILTIN)
    for ep in entry_points(group="ingest.connectors"):
        types.setdefault(ep.name, ep.value)
    return types


def get_connector_class(type_name: str) -> type[Connector]:
    types = connector_types()
    if type_name not in types:
        raise ConfigError(f"unknown connector type {type_name!r}; known: {', '.join(sorted(types))}")
    return _load(types[type_name])
