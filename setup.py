"""Packages for setuptools; everything else is in pyproject.toml.

``sql/`` stays at the top of the repository (where migrations are written and
reviewed) and ships inside the package as ``ingest.sql``, so an installed wheel
finds every ``sql/*.sql`` through ``importlib.resources``. pyproject.toml alone
cannot combine package discovery with that mapping.
"""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: data-only directories (ingest/people/templates) are packages of their own
    packages=[*find_namespace_packages(include=["ingest*", "connectors*"], exclude=["*__pycache__*"]), "ingest.sql"],
    package_dir={"ingest.sql": "sql"},
)
