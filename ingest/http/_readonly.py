"""Which requests only read: GET/HEAD, and what a connector class declares in ``read_only_requests``.

One declaration, two readers: the HTTP layer's guard lets exactly these requests out (refusing any other
before it is sent), and the conformance kit (``ingest.testing``) checks that nothing else reached the source.
A declaration is ``(method, path regex[, body regex])``, matched with ``re.search`` against the request's
path (as sent, without the query) and its body (decoded as UTF-8), e.g. ``("POST", r"/\\.search$")`` or
``("POST", r"^/$", r"(?:^|&)Action=(?:List|Get)[A-Z]")``.
"""

from __future__ import annotations

import functools
import re

__all__ = ["READ_METHODS", "ReadOnlyRequests", "compile_read_only", "is_read_only"]

READ_METHODS = frozenset({"GET", "HEAD"})

ReadOnlyRequests = tuple[tuple[str, ...], ...]
_Compiled = tuple[tuple[str, "re.Pattern[str]", "re.Pattern[str] | None"], ...]


def compile_read_only(declared: ReadOnlyRequests) -> _Compiled:
    """The declarations with their patterns compiled; a malformed one raises ValueError naming it."""
    return _compile(tuple(e if isinstance(e, str) else tuple(e) for e in declared or ()))


@functools.lru_cache(maxsize=256)
def _compile(declared: ReadOnlyRequests) -> _Compiled:
    out = []
    for entry in declared or ():
        if isinstance(entry, str) or not 2 <= len(entry) <= 3 or not all(isinstance(p, str) for p in entry):
            raise ValueError(f"read_only_requests entry {entry!r}: expected (method, path regex[, body regex])")
        method, path_rx, *body_rx = entry
        try:
            out.append((method.upper(), re.compile(path_rx), re.compile(body_rx[0]) if body_rx else None))
        except re.error as e:
            raise ValueError(f"read_only_requests entry {entry!r}: {e}") from None
    return tuple(out)


def is_read_only(declared: ReadOnlyRequests, method: str, path: str, body: bytes | str | None = b"") -> bool:
    """True when a request only reads: GET/HEAD, or it matches one of ``declared``."""
    method = method.upper()
    if method in READ_METHODS:
        return True
    compiled = compile_read_only(declared)
    if not compiled:
        return False
    # a body that cannot be read (None: streamed) matches no body pattern
    text = None if body is None else body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) \
        else str(body)
    return any(want == method and path_rx.search(path)
               and (body_rx is None or (text is not None and body_rx.search(text) is not None))
               for want, path_rx, body_rx in compiled)
