"""A corpus of hostile images, and what decoding each costs: ``python -m devstack.hostile_images``.

Each image is decoded as the detect stage does it (``vehicle_core.images.decode`` with
``images.max_side``), in a fresh process: the table gives the outcome (an error code, or the decoded
size), the peak memory above the process's baseline (``ru_maxrss`` after decoding minus before) and
the seconds spent decoding. The bar (issue 9): under 300 MB and 2 s for every input up to 50 MB.
Tests use :func:`hostile_images` as inputs that must each end in a typed error or small pixels.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, *, depth: int = 8, color: int = 2, idat: bytes = b"", idat_length=None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat or zlib.compress(b"\x00" * 16),
                                                                   idat_length) + _chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _zero_rows_png(width: int, height: int, depth: int, color: int) -> bytes:
    """A real PNG of ``width`` x ``height`` whose pixels compress to almost nothing (a bomb)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\x00" + b"\x00" * (width * channels * depth // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return _png(width, height, depth=depth, color=color, idat=body)


def hostile_images() -> dict[str, bytes]:
    """Name -> bytes of each hostile input (all built here, in memory; a few MB in total)."""
    noise = Image.effect_noise((64, 64), 64).convert("RGB")
    webp = _encode(noise, "WEBP")
    tiff = bytearray(_encode(noise, "TIFF"))
    big_jpeg = _encode(Image.new("RGB", (7000, 5000), (90, 120, 150)), "JPEG", quality=70)
    bmp = bytearray(_encode(noise, "BMP"))
    return {
        "png IDAT claims 0xFFFFFFFF bytes": _png(64, 64, idat_length=0xFFFFFFFF),
        "png IDAT claims 0x7FFFFFFF bytes": _png(64, 64, idat_length=0x7FFFFFFF),
        "png header 50000x50000": _png(50000, 50000),
        "png 16-bit RGBA 6320x6320 (bomb)": _zero_rows_png(6320, 6320, 16, 6),
        "png 8-bit RGB 6000x6000 (bomb)": _zero_rows_png(6000, 6000, 8, 2),
        "png strip 4000000x10": _png(4_000_000, 10),
        "webp RIFF claims 1 GB": webp[:4] + struct.pack("<I", 1 << 30) + webp[8:],
        "webp truncated": webp[: len(webp) // 2],
        "tiff strip past the end": bytes(tiff[: len(tiff) // 3]),
        "bmp pixel array past the end": bytes(bmp[: len(bmp) // 2]),
        "jpeg 7000x5000 (35 Mpx)": big_jpeg,
        "jpeg truncated": big_jpeg[: len(big_jpeg) // 2],
        "zero bytes": b"",
        "html named .png": b"<!doctype html><html><body>not an image</body></html>",
    }


_MEASURE = """
import json, resource, sys, time
from vehicle_core.config import load_settings
from vehicle_core.images import decode
settings = load_settings(env={}).images
decode(open(sys.argv[2], "rb").read(), settings, max_side=settings.max_side)  # warm the decoders
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    out = "x".join(map(str, decode(data, settings, max_side=settings.max_side).pixels.shape[:2]))
except Exception as exc:
    out = getattr(exc, "code", type(exc).__name__)
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": out, "mb": (after - before) / 1024, "seconds": seconds}))
"""


def measure(name: str, data: bytes, workdir) -> dict:
    """Decode ``data`` in a fresh interpreter; its outcome, peak MB above baseline and seconds."""
    path, warm = workdir / "input.bin", workdir / "warm.jpg"
    path.write_bytes(data)
    warm.write_bytes(_encode(Image.new("RGB", (32, 32)), "JPEG"))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(warm)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        return {"name": name, "outcome": f"process died ({out.returncode})", "mb": float("nan"), "seconds": float("nan")}
    return {"name": name, **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m devstack.hostile_images", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in hostile_images().items():
            rows.append({**measure(name, data, Path(tmp)), "bytes": len(data)})
    print(f"{'input':<36} {'bytes':>9}  {'outcome':<18} {'peak MB':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['name']:<36} {r['bytes']:>9}  {r['outcome']:<18} {r['mb']:>8.1f} {r['seconds']:>8.3f}")
    worst_mb = max(np.nan_to_num([r["mb"] for r in rows], nan=1e9))
    worst_s = max(np.nan_to_num([r["seconds"] for r in rows], nan=1e9))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"worst: {worst_mb:.1f} MB above baseline, {worst_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
