"""Cut detected vehicles out of an image the way the classifier wants them, and (de)code crops.

Each box is grown by ``margin`` (so the classifier sees the vehicle's outline), clipped to the
image, optionally background-blanked with the detector's mask, padded to a square (the classifier's
aspect; padding rather than stretching keeps body proportions, which tell an SUV from a sedan) and
shrunk so its longer side is at most ``size`` (crops travel through the queue).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vehicle_core.config import CropSettings
from vehicle_core.errors import UndecodableImageError
from vehicle_core.results.contract import Detection


def _grown_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    ix1, iy1 = max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy)))
    ix2, iy2 = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    # A degenerate box still yields one pixel, so every detection has a crop.
    ix1, iy1 = min(ix1, width - 1), min(iy1, height - 1)
    return ix1, iy1, max(ix2, ix1 + 1), max(iy2, iy1 + 1)


def _fits(detection: Detection, height: int, width: int) -> bool:
    """Whether the detection's mask lies inside this image (a mask of another image says nothing)."""
    if detection.mask is None:
        return False
    ox, oy = detection.mask_origin
    mh, mw = detection.mask.shape[:2]
    return ox >= 0 and oy >= 0 and ox + mw <= width and oy + mh <= height


def crop_one(image: np.ndarray, detection: Detection, settings: CropSettings) -> np.ndarray:
    """One detection's crop (RGB uint8), see the module docstring for the steps."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = _grown_box(detection.box, settings.margin, width, height)
    crop = image[y1:y2, x1:x2].copy()
    keep = detection.mask_window(x1, y1, x2, y2) if settings.mask_background and _fits(detection, height, width) else None
    if keep is not None:
        if keep.any():  # an empty mask inside the box says nothing; keep the pixels
            crop[~keep] = settings.fill_value
    h, w = crop.shape[:2]
    if settings.square and h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        crop = cv2.copyMakeBorder(
            crop,
            top,
            side - h - top,
            left,
            side - w - left,
            cv2.BORDER_CONSTANT,
            value=(settings.fill_value,) * 3,
        )
    longer = max(crop.shape[:2])
    if longer > settings.size:
        f = settings.size / longer
        new = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
        crop = cv2.resize(crop, new, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def crop_vehicles(
    image: np.ndarray, detections: Sequence[Detection], settings: CropSettings
) -> list[np.ndarray]:
    """Crops (RGB uint8) of ``detections`` in ``image`` (RGB uint8 H x W x 3), in the same order."""
    return [crop_one(image, d, settings) for d in detections]


def encode_crop(pixels: np.ndarray, settings: CropSettings) -> bytes:
    """RGB uint8 crop -> JPEG bytes at ``settings.jpeg_quality``."""
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, int(settings.jpeg_quality)],
    )
    if not ok:
        raise ValueError("OpenCV could not JPEG-encode the crop")
    return buf.tobytes()


def reencode_crop(data: bytes, quality: int) -> bytes:
    """Crop bytes JPEG-encoded again at ``quality`` (smaller; for a message size limit)."""
    return encode_crop(decode_crop(data), CropSettings(jpeg_quality=quality))


def decode_crop(data: bytes) -> np.ndarray:
    """Crop bytes (JPEG/PNG) -> RGB uint8; undecodable bytes raise UndecodableImageError."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if pixels is None:
        raise UndecodableImageError("crop bytes are not a decodable image")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
