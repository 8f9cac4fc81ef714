"""``ingest new-connector NAME``: a connector plugin package that passes its own tests as generated.

What it writes (``NAME`` = ``acme``, into ``./ingest-acme`` unless told otherwise)::

    ingest-acme/
      pyproject.toml               entry point: [project.entry-points."ingest.connectors"] acme = "ingest_acme:Connector"
      README.md                    for the plugin author: what to change, how to test, how to install
      ingest_acme/__init__.py      the connector: settings, auth, declared streams, pure mapping functions
      tests/fake_acme.py           a loopback fake of the example API (stdlib http.server, 127.0.0.1:0, paging)
      tests/test_conformance.py    ingest's conformance kit (ingest.testing) over the fake
      tests/test_mapping.py        the mapping functions, without HTTP

The templates are Jinja2 files shipped in ``ingest/scaffold/templates``. A bad
``NAME`` or a target that already holds files is a :class:`ScaffoldError`
(a :class:`~ingest.errors.ConfigError`: exit 2 on the command line); ``force``
overwrites the files the scaffold writes and leaves every other file alone.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ingest.errors import ConfigError

__all__ = ["ScaffoldError", "Scaffold", "check_name", "new_connector", "FILES"]

NAME_RULE = ("lowercase letters and digits, words joined by single underscores, starting with a letter, "
             "at most 40 characters")
_NAME = re.compile(r"(?=.{1,40}$)[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

# template -> path in the generated package ({name} is the connector type name)
FILES: dict[str, str] = {
    "pyproject.toml.j2": "pyproject.toml",
    "README.md.j2": "README.md",
    "connector.py.j2": "ingest_{name}/__init__.py",
    "fake.py.j2": "tests/fake_{name}.py",
    "test_conformance.py.j2": "tests/test_conformance.py",
    "test_mapping.py.j2": "tests/test_mapping.py",
}


class ScaffoldError(ConfigError):
    """A connector name the scaffold cannot use, or a target directory it must not overwrite."""


@dataclass(frozen=True)
class Scaffold:
    """What :func:`new_connector` wrote."""

    name: str
    root: Path
    files: list[Path]

    @property
    def package(self) -> str:
        return f"ingest_{self.name}"


def check_name(name: str) -> str:
    """``name`` when it can be a connector type and the suffix of a Python package name; else ScaffoldError."""
    from ingest.registry import BUILTIN

    if not _NAME.fullmatch(name):
        hint = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
        hint = hint if _NAME.fullmatch(hint) else ""
        raise ScaffoldError(f"connector name {name!r}: must be {NAME_RULE}"
                            + (f" (e.g. {hint!r})" if hint and hint != name else ""))
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"connector name {name!r}: a Python keyword cannot name a connector; choose another")
    if name in BUILTIN:
        raise ScaffoldError(f"connector name {name!r}: a built-in connector type has that name; choose another")
    return name


def _title(name: str) -> str:
    return " ".join(w.capitalize() for w in name.split("_") if w)


def render(name: str) -> dict[str, str]:
    """Relative path -> text of every file of the package for ``name`` (nothing written)."""
    import jinja2

    from ingest import __version__

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    context = {"name": name, "package": f"ingest_{name}", "title": _title(name),
               "camel": _title(name).replace(" ", ""), "dist": f"ingest-{name.replace('_', '-')}", "host": f"api.{name.replace('_', '-')}.example",
               "token_env": f"{name.upper()}_TOKEN", "ingest_version": __version__}
    templates = files("ingest.scaffold") / "templates"
    return {path.format(name=name): env.from_string((templates / tpl).read_text(encoding="utf-8")).render(context)
            for tpl, path in FILES.items()}


def new_connector(name: str, target: str | Path | None = None, *, force: bool = False) -> Scaffold:
    """Write the plugin package for connector type ``name`` into ``target`` (default ``./ingest-NAME``)."""
    check_name(name)
    root = Path(target) if target is not None else Path.cwd() / f"ingest-{name}"
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"target {str(root)!r} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise ScaffoldError(f"target directory {str(root)!r} already exists and is not empty; "
                            "choose another with --dir, or --force to overwrite the generated files")
    rendered = render(name)
    written = []
    for rel, text in rendered.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return Scaffold(name=name, root=root, files=written)
