"""Image bytes → upright RGB uint8 array, refusing bad input with typed errors before it costs memory.

Checks run cheapest first: empty, byte size, format by magic bytes, the container's structure (every
PNG/WebP chunk, TIFF strip and BMP pixel array must fit in the bytes present: a 105-byte PNG whose
chunk claims 4 GB never reaches the decoder), pixel count and aspect ratio from the header (PIL's
lazy ``Image.open`` reads only the header), then the bytes decoding will take against ``images.max_decode_bytes``. That estimate follows the
decoder path the image will take (OpenCV: its raw array, channels x bytes per sample, plus the 8-bit
copies; PIL, for TIFF and what OpenCV refuses: PIL's own storage per mode, 4 bytes a pixel for RGB,
plus the reduced 8-bit image), and the budget is *process-wide*: a decode holds its estimate from
:data:`DECODE_BUDGET` while it runs, so the decodes of a batch running at once (the worker decodes
while it fetches) sum to at most ``images.max_decode_bytes``; one that does not fit now waits for the
others, one that could never fit is refused (``ImageTooLargeError``). Only then does a decoder run. A JPEG larger than the detector needs is decoded at 1/2, 1/4 or 1/8 scale directly
(libjpeg's DCT scaling), so a 40-megapixel photo never exists at full size in a detect process; the
PIL path reduces right after loading (``Image.reduce``) and converts 16-bit and 32-bit samples to 8
bits with integer shifts, a band of rows at a time: no float64 or full-size 16-bit copy.

Alpha is composited on white (a transparent background reads as blank paper, not as black pixels a
detector might see as shapes). EXIF orientation is applied by OpenCV's IMREAD_COLOR path; the
16-bit/alpha path (IMREAD_UNCHANGED) does not apply it, so we do it ourselves.
"""

from __future__ import annotations

import collections
import contextlib
import io
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from vehicle_core.config import ImageSettings
from vehicle_core.errors import (
    AspectRatioError,
    EmptyImageError,
    ImageTooLargeError,
    UndecodableImageError,
    UnsupportedFormatError,
)

SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "tiff")


def sniff_format(data: bytes) -> str | None:
    """The format named by the magic bytes: jpeg, png, webp, bmp, tiff, or None when not supported."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def image_size_from_header(data: bytes) -> tuple[int, int]:
    """``(width, height)`` read from the header alone; UndecodableImageError when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:  # PIL refuses before we can ask: report as too large
        raise ImageTooLargeError(f"image header declares too many pixels ({exc})") from exc
    except Exception as exc:  # PIL raises many types for bad headers; all mean the same here
        raise UndecodableImageError(f"cannot read the image header: {exc}") from exc


@dataclass(frozen=True)
class Decoded:
    """Pixels ready for a model, and the size of the upright image they were decoded from."""

    pixels: np.ndarray  # upright RGB uint8, H x W x 3; smaller than the original when downscaled
    original_size: tuple[int, int]  # (width, height) of the upright image

    @property
    def scale(self) -> float:
        """Original pixels per decoded pixel (1.0 unless downscaled): boxes found on ``pixels`` times
        this are boxes in the original image."""
        return self.original_size[0] / self.pixels.shape[1]


def decode_image(data: bytes, settings: ImageSettings) -> np.ndarray:
    """Decode ``data`` into an upright RGB uint8 array (H x W x 3) at full resolution.

    EmptyImageError, ImageTooLargeError (bytes, header pixels or decoding bytes above the limits),
    AspectRatioError, UnsupportedFormatError (not JPEG/PNG/WebP/BMP/TIFF), UndecodableImageError
    (truncated, corrupt, or a container whose parts claim more bytes than it has).
    """
    return decode(data, settings).pixels


def decode(data: bytes, settings: ImageSettings, *, max_side: int | None = None) -> Decoded:
    """Like :func:`decode_image`; with ``max_side``, images whose longer side exceeds it come back
    downscaled to it (JPEGs decoded at reduced scale), with the original size to map boxes back."""
    if not data:
        raise EmptyImageError("the image has no bytes")
    if len(data) > settings.max_bytes:
        raise ImageTooLargeError(f"the image is {len(data)} bytes, above the limit of {settings.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(f"not a supported image format (accepted: {', '.join(SUPPORTED_FORMATS)})")
    data = bytes(data)
    check_container(data, fmt)
    width, height = image_size_from_header(data)
    if width <= 0 or height <= 0:
        raise UndecodableImageError(f"the header declares an empty {width}x{height} image")
    if width * height > settings.max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} pixels, above the limit of {settings.max_pixels}")
    if max(width, height) > settings.max_aspect_ratio * min(width, height):
        raise AspectRatioError(f"the image is {width}x{height}: more than {settings.max_aspect_ratio:g} times "
                               "longer than wide")
    reduce = _jpeg_reduction(fmt, width, height, max_side)
    # OpenCV pads a truncated JPEG with grey and returns it; PIL refuses it. A JPEG missing its
    # end-of-image marker therefore goes straight to PIL.
    truncated_jpeg = fmt == "jpeg" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    rgb = None
    if fmt != "tiff" and not truncated_jpeg:
        with DECODE_BUDGET.hold(_check_budget(_cv_decode_bytes(data, fmt, width, height, reduce, max_side),
                                              width, height, settings), settings.max_decode_bytes):
            rgb = _decode_cv(data, reduce, jpeg=fmt == "jpeg")
    if rgb is None:  # TIFF, or OpenCV refused (CMYK variants, truncated JPEGs): PIL decodes
        with DECODE_BUDGET.hold(_check_budget(_pil_decode_bytes(data, fmt, width, height, reduce, max_side),
                                              width, height, settings), settings.max_decode_bytes):
            rgb = _decode_pil(data, reduce, max_side)
    upright = (width, height) if (rgb.shape[1] >= rgb.shape[0]) == (width >= height) else (height, width)
    if max_side and max(rgb.shape[:2]) > max_side:
        factor = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return Decoded(np.ascontiguousarray(rgb), upright)


def _check_budget(needed: int, width: int, height: int, settings: ImageSettings) -> int:
    if needed > settings.max_decode_bytes:
        raise ImageTooLargeError(f"decoding this {width}x{height} image takes about {needed >> 20} MiB, above "
                                 f"images.max_decode_bytes ({settings.max_decode_bytes >> 20} MiB)")
    return needed


class DecodeBudget:
    """Bytes that decodes running at once in this process may take together (``images.max_decode_bytes``).

    :meth:`hold` blocks until ``n`` bytes fit beside what the running decodes hold, first come first
    served (a large decode is not starved by a stream of small ones), and gives them back when the
    block ends. Callers refuse what could never fit before asking (:func:`_check_budget`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self.used = 0
        self.peak = 0  # the most held at once (tests, devstack.hostile_images)

    @contextlib.contextmanager
    def hold(self, n: int, limit: int) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (self.used and self.used + n > limit):
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


#: The one budget of this process: every :func:`decode` holds its estimate here while it runs.
DECODE_BUDGET = DecodeBudget()


def _jpeg_reduction(fmt: str, width: int, height: int, max_side: int | None) -> int:
    """1, 2, 4 or 8: the largest DCT scale-down that keeps the longer side at least ``max_side``."""
    if fmt != "jpeg" or not max_side:
        return 1
    reduce = 1
    while reduce < 8 and max(width, height) // (reduce * 2) >= max_side:
        reduce *= 2
    return reduce


# -- container structure and decoding cost, read before any pixel is decoded ------------------------


def check_container(data: bytes, fmt: str) -> None:
    """UndecodableImageError when a part of the file claims bytes the file does not have."""
    checks = {"png": _check_png, "webp": _check_riff, "tiff": _check_tiff, "bmp": _check_bmp}
    if fmt in checks:
        checks[fmt](data)


def _check_png(data: bytes) -> None:
    pos, first = 8, True
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if first and kind != b"IHDR":
            raise UndecodableImageError("PNG does not start with its IHDR chunk")
        if pos + 12 + length > len(data):
            raise UndecodableImageError(f"PNG chunk {kind.decode('latin-1')!r} declares {length} bytes; "
                                        f"only {len(data) - pos - 12} remain")
        if kind == b"IEND":
            return
        pos, first = pos + 12 + length, False
    if first:
        raise UndecodableImageError("PNG has no chunks")


def _check_riff(data: bytes) -> None:
    size = struct.unpack("<I", data[4:8])[0]
    if size + 8 > len(data) + 1:  # RIFF pads odd sizes with one byte
        raise UndecodableImageError(f"WebP (RIFF) declares {size + 8} bytes; the file has {len(data)}")
    pos = 12
    while pos + 8 <= min(len(data), size + 8):
        length = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + length > len(data):
            raise UndecodableImageError(f"WebP chunk {data[pos:pos + 4]!r} declares {length} bytes; "
                                        f"only {len(data) - pos - 8} remain")
        pos += 8 + length + (length & 1)


def _check_tiff(data: bytes) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                tags = dict(img.tag_v2)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad headers
        raise UndecodableImageError(f"cannot read the TIFF header: {exc}") from exc
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets, counts = _as_tuple(tags.get(offsets_tag)), _as_tuple(tags.get(counts_tag))
        for offset, count in zip(offsets, counts, strict=False):
            if offset + count > len(data):
                raise UndecodableImageError(f"TIFF data at {offset} + {count} bytes lies past the file's "
                                            f"{len(data)} bytes")


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _check_bmp(data: bytes) -> None:
    if len(data) < 34:
        raise UndecodableImageError("BMP header is truncated")
    offset = struct.unpack("<I", data[10:14])[0]
    width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    if compression == 0 and bits:  # uncompressed: rows padded to 4 bytes
        need = ((abs(width) * bits + 31) // 32) * 4 * abs(height)
        if offset + need > len(data):
            raise UndecodableImageError(f"BMP pixel array needs {need} bytes at {offset}; the file has {len(data)}")


#: Bytes a pixel takes in PIL's own storage, per mode (PIL keeps RGB, YCbCr, LA... in 4 bytes).
_PIL_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
#: Modes the PIL path turns into 8-bit L a band of rows at a time (one byte a pixel more, no float copy).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
#: Bytes a pixel of the final, reduced image takes on the PIL path: RGBA over white (4 + 4), the RGB
#: conversion (4) and its numpy copy (3), with a margin.
_PIL_SMALL = 16


def _pil_mode(data: bytes) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.mode
    except Exception:  # noqa: BLE001 - the header was read once already; assume the widest
        return "F"


def _cv_decode_bytes(data: bytes, fmt: str, width: int, height: int, reduce: int, max_side: int | None) -> int:
    """The peak bytes of the OpenCV path (an estimate from the header): its raw array (channels x bytes
    per sample, IMREAD_UNCHANGED), the 8-bit copy of a 16-bit or alpha image, the RGB array, and the
    resized output."""
    pixels = width * height // (reduce * reduce)
    if fmt == "jpeg":
        per_pixel = 3
    else:
        if fmt == "png":
            depth, color = data[24], data[25]
            channels, wide = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(color, 4), depth == 16
        else:  # webp, bmp: 8-bit, with or without alpha
            channels, wide = (4 if _pil_mode(data) in ("RGBA", "LA", "PA", "P") else 3), False
        raw = channels * (2 if wide else 1)
        per_pixel = raw + (channels if wide else 0) + 3
    return pixels * per_pixel + _output_bytes(width, height, max_side)


def _pil_decode_bytes(data: bytes, fmt: str, width: int, height: int, reduce: int, max_side: int | None) -> int:
    """The peak bytes of the PIL path: the image as PIL stores it, its 8-bit L copy for 16/32-bit
    modes (or the RGB(A) expansion of a palette), and the reduced image's conversions to RGB."""
    mode = _pil_mode(data)
    pixels = width * height // (reduce * reduce if fmt == "jpeg" else 1)
    per_pixel = _PIL_STORAGE.get(mode, 4)
    if mode in _WIDE_MODES:
        per_pixel += 1
    elif mode in ("1", "P"):
        per_pixel += 4
    side = max(width, height) // (reduce if fmt == "jpeg" else 1)
    factor = max(1, side // max_side) if max_side else 1
    return pixels * per_pixel + (pixels // (factor * factor)) * 4 + _output_bytes(width, height, max_side) * _PIL_SMALL // 3


def _output_bytes(width: int, height: int, max_side: int | None) -> int:
    """The upright RGB the decode returns (downscaled to ``max_side``)."""
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        return int(width * scale + 1) * int(height * scale + 1) * 3
    return width * height * 3


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_cv(data: bytes, reduce: int = 1, *, jpeg: bool = False) -> np.ndarray | None:
    buf = np.frombuffer(data, dtype=np.uint8)
    if jpeg:  # 8-bit, no alpha: one colour decode (EXIF orientation applied), at 1/reduce scale if asked
        try:
            bgr = cv2.imdecode(buf, _REDUCED[reduce] if reduce > 1 else cv2.IMREAD_COLOR)
        except cv2.error:
            return None
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if raw is None:
        return None
    if raw.ndim == 3 and raw.shape[2] == 4 or raw.dtype != np.uint8:
        # Alpha or 16-bit: IMREAD_UNCHANGED keeps them but ignores EXIF orientation.
        bgr = _to_bgr8(raw)
        del raw
        return _apply_exif(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr), data)
    try:
        # IMREAD_COLOR applies EXIF orientation itself (and expands gray/palette to 3 channels).
        del raw  # the colour decode below must not double the peak
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)


def _to_bgr8(raw: np.ndarray) -> np.ndarray:
    img = raw
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)  # straight to uint8: no wide temporary
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return _over_white(img)
    return np.ascontiguousarray(img[:, :, :3])


def _over_white(bgra: np.ndarray, rows: int = 256) -> np.ndarray:
    """Alpha-composite on white, a band of rows at a time: float temporaries stay a few MB."""
    out = np.empty(bgra.shape[:2] + (3,), np.uint8)
    for top in range(0, bgra.shape[0], rows):
        band = bgra[top : top + rows]
        alpha = band[:, :, 3:4].astype(np.float32) / 255.0
        blended = band[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        out[top : top + rows] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _apply_exif(rgb: np.ndarray, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # no readable EXIF: leave as stored
        return rgb
    ops = {2: [np.fliplr], 3: [lambda a: np.rot90(a, 2)], 4: [np.flipud],
           5: [lambda a: np.rot90(a, 1), np.flipud], 6: [lambda a: np.rot90(a, -1)],
           7: [lambda a: np.rot90(a, -1), np.flipud], 8: [lambda a: np.rot90(a, 1)]}
    for op in ops.get(orientation, []):
        rgb = op(rgb)
    return rgb


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _decode_pil(data: bytes, reduce: int = 1, max_side: int | None = None) -> np.ndarray:
    """PIL as the decoder: load, bring to 8 bits without wide copies, reduce to about ``max_side``
    before any conversion, then orient, composite alpha on white and convert to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if reduce > 1 and img.format == "JPEG":  # the same DCT scaling as OpenCV's reduced modes
                    img.draft("RGB", (img.width // reduce, img.height // reduce))
                orientation = img.getexif().get(0x0112, 1)
                transparent = "transparency" in img.info
                img.load()
                small = _small_8bit(img, max_side, transparent)
                if small is not img:
                    img.close()  # frees the full-size image now: only the reduced one is left
                if orientation in _TRANSPOSE:
                    small = small.transpose(_TRANSPOSE[orientation])
                if small.mode in ("RGBA", "LA", "PA"):
                    rgba = small.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    small = Image.alpha_composite(white, rgba)
                return np.asarray(small if small.mode == "RGB" else small.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # truncated/corrupt data raises many PIL/OS error types
        raise UndecodableImageError(f"cannot decode the image: {exc}") from exc


def _small_8bit(img: Image.Image, max_side: int | None, transparent: bool) -> Image.Image:
    """``img`` in an 8-bit mode and, with ``max_side``, reduced so its longer side is at most
    ``max_side`` (``Image.reduce`` to the nearest integer factor keeping it at least ``max_side``,
    then a box resize): ``img`` itself when nothing needed changing, else a new image."""
    if img.mode in _WIDE_MODES:
        img = _to_l(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if transparent else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if max_side and max(img.size) > max_side:
        factor = max(img.size) // max_side
        if factor > 1:
            img = img.reduce(factor)
        if max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    return img


def _to_l(img: Image.Image, rows: int = 256) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``, read as 16-bit) or float (``F``, 0-255) image as
    8-bit L, a band of ``rows`` rows at a time: integer shifts, temporaries of one band."""
    out = np.empty((img.height, img.width), np.uint8)
    for top in range(0, img.height, rows):
        band = np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))
        if img.mode == "F":
            out[top : top + rows] = np.clip(band, 0, 255)
        elif img.mode == "I":
            out[top : top + rows] = np.right_shift(np.clip(band, 0, 65535), 8)
        else:
            out[top : top + rows] = np.right_shift(band, 8)
    return Image.fromarray(out, "L")
