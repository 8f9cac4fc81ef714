"""Headless Chromium (the Debian package) for the report tests: the DOM after scripts ran, a screenshot,
and a reader of the values a page marks with ``data-*`` attributes."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium is missing: run scripts/install-chromium.sh (make test does)")
    return found


def _run(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ingest-chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=True)


def dump_dom(page: Path) -> str:
    """The serialized DOM once the page loaded and its scripts ran."""
    return _run(["--virtual-time-budget=2000", "--dump-dom", page.resolve().as_uri()]).stdout


def screenshot(page: Path, png: Path, size: str = "1280,1600") -> Path:
    _run([f"--screenshot={png}", f"--window-size={size}", "--hide-scrollbars", page.resolve().as_uri()])
    return png


def png_scanlines(png: Path) -> list[bytes]:
    """The scanlines of a PNG as stored (each with its filter byte): a blank page is one line repeated
    (every line after the first filters to zeros), anything drawn makes lines differ."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels + 1
    assert len(raw) == stride * height
    return [raw[y * stride:(y + 1) * stride] for y in range(height)]


class Marked(HTMLParser):
    """Collects (attribute, value) -> text of every element carrying one of ``attrs``."""

    def __init__(self, *attrs: str) -> None:
        super().__init__()
        self.attrs, self.found, self.root, self._open = attrs, {}, {}, []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if tag == "html":
            self.root = d
        keys = [(a, d[a]) for a in self.attrs if a in d]
        if "data-kind" in d and "data-connector" in d:
            keys = [("cell", f"{d['data-kind']}|{d['data-connector']}")]
        self._open.append((tag, keys, []))

    def handle_data(self, data):
        for _, _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag):
        while self._open:
            t, keys, text = self._open.pop()
            for k in keys:
                self.found.setdefault(k, []).append("".join(text).strip())
            if t == tag:
                break
