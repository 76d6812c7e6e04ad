"""A corpus of hostile images, and what decoding each costs: ``python -m devstack.hostile_images``.

Each image is decoded as the detect stage does it (``vehicle_core.images.decode`` with
``images.max_side``), in a fresh process: the table gives the outcome (an error code, or the decoded
size), the peak memory above the process's baseline (its ``VmHWM`` after decoding minus before) and
the seconds spent decoding. The bar (issue 9): under 300 MB and 2 s for every input up to 50 MB.
The last rows decode several hostile inputs *at once*, ``detector.batch_size`` threads as a detect
worker does while it fetches: the process-wide decode budget keeps their sum under the same bar.
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


def _tiff16(width: int, height: int, channels: int = 1) -> bytes:
    """A real 16-bit deflate TIFF whose pixels compress to almost nothing (a bomb of the PIL path):
    gray (PIL's ``I;16``) or, via OpenCV, RGB/RGBA with 16 bits a sample."""
    import cv2

    pixels = np.zeros((height, width) if channels == 1 else (height, width, channels), np.uint16)
    pixels[::7] = 40000
    if channels == 1:
        return _encode(Image.fromarray(pixels), "TIFF", compression="tiff_adobe_deflate")
    ok, encoded = cv2.imencode(".tiff", pixels, [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    assert ok
    return encoded.tobytes()


def _tiff8(mode: str, width: int, height: int) -> bytes:
    """A real 8-bit deflate TIFF (RGB, RGBA, CMYK) of flat colour."""
    return _encode(Image.new(mode, (width, height)), "TIFF", compression="tiff_adobe_deflate")


def _float_tiff(width: int, height: int) -> bytes:
    return _encode(Image.new("F", (width, height), 128.0), "TIFF", compression="tiff_adobe_deflate")


#: Inputs decoded together, one thread each (``detector.batch_size`` of them in the defaults).
BATCHES = {
    "batch: 4 x tiff 16-bit gray 6000x6000": ["tiff 16-bit gray 6000x6000 (deflate)"] * 4,
    "batch: 4 x png 16-bit RGBA 6320x6320": ["png 16-bit RGBA 6320x6320 (bomb)"] * 4,
    "batch: 4 mixed (tiff, png, jpeg)": ["tiff 16-bit gray 6320x6320 (deflate)", "png 8-bit RGB 6000x6000 (bomb)",
                                          "tiff 8-bit RGB 6000x6000 (deflate)", "jpeg 7000x5000 (35 Mpx)"],
}


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
        "tiff 16-bit gray 6320x6320 (deflate)": _tiff16(6320, 6320),
        "tiff 16-bit gray 6000x6000 (deflate)": _tiff16(6000, 6000),
        "tiff 16-bit RGB 6320x6320 (deflate)": _tiff16(6320, 6320, 3),
        "tiff 16-bit RGB 6000x6000 (deflate)": _tiff16(6000, 6000, 3),
        "tiff 16-bit RGBA 4000x4000 (deflate)": _tiff16(4000, 4000, 4),
        "tiff 8-bit RGB 6000x6000 (deflate)": _tiff8("RGB", 6000, 6000),
        "tiff 8-bit CMYK 6000x6000 (deflate)": _tiff8("CMYK", 6000, 6000),
        "tiff 8-bit RGBA 5000x5000 (deflate)": _tiff8("RGBA", 5000, 5000),
        "tiff float 5000x5000 (deflate)": _float_tiff(5000, 5000),
        "jpeg truncated": big_jpeg[: len(big_jpeg) // 2],
        "zero bytes": b"",
        "html named .png": b"<!doctype html><html><body>not an image</body></html>",
    }


_MEASURE = """
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from vehicle_core.config import load_settings
from vehicle_core.images import decode
settings = load_settings(env={}).images

def peak_kib():
    # VmHWM: this process's own peak. ru_maxrss would start from the parent's RSS at fork (kept
    # across exec), and the parent holds the whole corpus.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

decode(open(sys.argv[1], "rb").read(), settings, max_side=settings.max_side)  # warm the decoders
inputs = [open(path, "rb").read() for path in sys.argv[2:]]

def one(data):
    try:
        return "x".join(map(str, decode(data, settings, max_side=settings.max_side).pixels.shape[:2]))
    except Exception as exc:
        return getattr(exc, "code", type(exc).__name__)

before = peak_kib()
t0 = time.perf_counter()
with ThreadPoolExecutor(len(inputs)) as pool:  # one input: one thread; a batch: all at once
    outcomes = list(pool.map(one, inputs))
seconds = time.perf_counter() - t0
after = peak_kib()
out = outcomes[0] if len(set(outcomes)) == 1 else ",".join(outcomes)
print(json.dumps({"outcome": out, "mb": (after - before) / 1024, "seconds": seconds}))
"""


def measure(name: str, data: bytes | list[bytes], workdir) -> dict:
    """Decode ``data`` (or each of a list, at once, in threads) in a fresh interpreter; the outcome,
    peak MB above baseline and seconds."""
    inputs = data if isinstance(data, list) else [data]
    warm = workdir / "warm.jpg"
    warm.write_bytes(_encode(Image.new("RGB", (32, 32)), "JPEG"))
    paths = []
    for i, blob in enumerate(inputs):
        paths.append(workdir / f"input-{i}.bin")
        paths[-1].write_bytes(blob)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(warm), *map(str, paths)], capture_output=True,
                         text=True, timeout=300)
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
    corpus = hostile_images()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in corpus.items():
            rows.append({**measure(name, data, Path(tmp)), "bytes": len(data)})
        for name, members in BATCHES.items():
            batch = [corpus[member] for member in members]
            rows.append({**measure(name, batch, Path(tmp)), "bytes": sum(map(len, batch))})
    print(f"{'input':<40} {'bytes':>9}  {'outcome':<24} {'peak MB':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['name']:<40} {r['bytes']:>9}  {r['outcome']:<24} {r['mb']:>8.1f} {r['seconds']:>8.3f}")
    worst_mb = max(np.nan_to_num([r["mb"] for r in rows], nan=1e9))
    worst_s = max(np.nan_to_num([r["seconds"] for r in rows], nan=1e9))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"worst: {worst_mb:.1f} MB above baseline, {worst_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
