"""Image bytes → upright RGB uint8 array, refusing bad input with typed errors before decoding pixels.

Checks run cheapest first: empty, byte size, format by magic bytes, pixel count from the header
(PIL's lazy ``Image.open`` reads only the header, so a decompression bomb is never decoded), then
OpenCV decodes. Alpha is composited on white (a transparent background reads as blank paper, not
as black pixels a detector might see as shapes). EXIF orientation is applied by OpenCV's
IMREAD_COLOR path; the 16-bit/alpha path (IMREAD_UNCHANGED) does not apply it, so we do it ourselves.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

from vehicle_core.config import ImageSettings
from vehicle_core.errors import (
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


def decode_image(data: bytes, settings: ImageSettings) -> np.ndarray:
    """Decode ``data`` into an upright RGB uint8 array (H x W x 3).

    EmptyImageError, ImageTooLargeError (bytes or header pixels above the limits),
    UnsupportedFormatError (not JPEG/PNG/WebP/BMP/TIFF), UndecodableImageError (truncated, corrupt).
    """
    if not data:
        raise EmptyImageError("the image has no bytes")
    if len(data) > settings.max_bytes:
        raise ImageTooLargeError(f"the image is {len(data)} bytes, above the limit of {settings.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(f"not a supported image format (accepted: {', '.join(SUPPORTED_FORMATS)})")
    width, height = image_size_from_header(bytes(data))
    if width * height > settings.max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} pixels, above the limit of {settings.max_pixels}")
    if width <= 0 or height <= 0:
        raise UndecodableImageError(f"the header declares an empty {width}x{height} image")
    # OpenCV pads a truncated JPEG with grey and returns it; PIL refuses it. A JPEG missing its
    # end-of-image marker therefore goes straight to PIL.
    truncated_jpeg = fmt == "jpeg" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    rgb = _decode_cv(data) if fmt != "tiff" and not truncated_jpeg else None
    if rgb is None:  # OpenCV refused (CMYK variants, odd TIFFs): PIL as a second, full decoder
        rgb = _decode_pil(data)
    return np.ascontiguousarray(rgb)


def _decode_cv(data: bytes) -> np.ndarray | None:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if raw is None:
        return None
    if raw.ndim == 3 and raw.shape[2] == 4 or raw.dtype != np.uint8:
        # Alpha or 16-bit: IMREAD_UNCHANGED keeps them but ignores EXIF orientation.
        bgr = _to_bgr8(raw)
        return _apply_exif(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), data)
    try:
        # IMREAD_COLOR applies EXIF orientation itself (and expands gray/palette to 3 channels).
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _to_bgr8(raw: np.ndarray) -> np.ndarray:
    img = raw
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        over_white = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(over_white + 0.5, 0, 255).astype(np.uint8)
    return img[:, :, :3]


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


def _decode_pil(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(white, rgba)
                elif img.mode.startswith("I;16") or img.mode == "I":
                    img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # truncated/corrupt data raises many PIL/OS error types
        raise UndecodableImageError(f"cannot decode the image: {exc}") from exc
