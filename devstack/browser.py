"""Headless Chromium for the gallery: the DOM after its scripts ran, and screenshots.

    python -m devstack.browser demo-out/gallery.html docs/img/gallery.png --palette    # a screenshot

Debian's ``chromium`` package (``/usr/bin/chromium``); each call gets a fresh profile folder, and
every background service that would reach for the network is switched off, so it runs offline and
as root.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def chromium_binary() -> str | None:
    """Path of chromium (or chromium-browser, google-chrome), or None when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout_s: float) -> str:
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="vp-chromium-") as profile:
        proc = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def dump_dom(url: str, *, timeout_s: float = 120) -> str:
    """The page's DOM as HTML once it has loaded and its scripts have run (``url`` may carry a #hash)."""
    return _run(["--virtual-time-budget=5000", "--dump-dom", url], timeout_s)


def screenshot(url: str, out: Path, *, size: tuple[int, int] = (1200, 900), timeout_s: float = 120,
               palette: bool = False) -> Path:
    """A PNG of the page's first ``size`` (width, height) pixels at ``out`` (``palette``: 256 colours)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000", f"--screenshot={out}", url], timeout_s)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot at {out}")
    if palette:
        _to_palette(out)
    return out


def _to_palette(path: Path) -> None:
    # 256 colours keep a docs screenshot under a third of its size; photos in it dither a little.
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def file_url(path: Path, fragment: str = "") -> str:
    """``file://`` URL of a local file, with an optional ``#fragment``."""
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.browser", description="screenshot a local HTML page")
    parser.add_argument("page", help="HTML file")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--size", default="1200x900", help="WIDTHxHEIGHT (default 1200x900)")
    parser.add_argument("--hash", default="", help="URL fragment, e.g. status=error")
    parser.add_argument("--palette", action="store_true", help="256 colours: a smaller PNG for the docs")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    print(screenshot(file_url(Path(args.page), args.hash), Path(args.out), size=(width, height), palette=args.palette))
    return 0


if __name__ == "__main__":
    sys.exit(main())
