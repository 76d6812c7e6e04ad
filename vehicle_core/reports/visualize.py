"""Draw what the pipeline found: an image plus its result document in, an annotated image out.

    annotated = draw_result(pixels, document)              # RGB uint8, boxes + "label 0.93" tags
    annotated = draw_result(pixels, document, masks=...)   # + mask outlines, straight from the pipeline
    card = error_card(document)                            # an error result, readable as a picture

Result documents carry boxes, not masks, so a document read back from S3 is drawn with boxes only;
the pipeline's own detections (``Detection.mask``) can add the outlines. Each label keeps its colour
everywhere (a hash of the name picks it), so a sedan is the same colour in every picture.
"""

from __future__ import annotations

import textwrap
import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

# Tableau-like colours (RGB), distinct on dark roads and bright skies alike.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 187, 120),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX
CARD_SIZE = (320, 240)
_KNOWN = ("sedan", "suv", "pickup", "truck", "bus", "motorcycle")  # width, height of a card drawn without an image


def label_colour(label: str | None) -> tuple[int, int, int]:
    """The RGB colour of ``label``: stable across runs and processes (crc32, not Python's salted hash)."""
    if not label:
        return (128, 128, 128)
    if label in _KNOWN:  # the synthetic classes: distinct by construction (their hashes collide)
        return PALETTE[_KNOWN.index(label)]
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def draw_result(image: np.ndarray, document: dict[str, Any],
                masks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """A copy of ``image`` (upright RGB uint8, as the pipeline decoded it) with its vehicles drawn.

    Each vehicle of ``document["vehicles"]`` gets its box and a "label confidence" tag in the label's
    colour; ``masks`` (one bool HxW array or None per vehicle, in the document's order) adds outlines.
    A ``no_vehicle`` result gets a banner saying so; an ``error`` result becomes :func:`error_card`.
    """
    if document.get("status") == "error":
        return error_card(document, size=(image.shape[1], image.shape[0]))
    out = np.ascontiguousarray(image[..., :3], dtype=np.uint8).copy()
    scale = _scale(out)
    vehicles = document.get("vehicles") or []
    for i, vehicle in enumerate(vehicles):
        colour = label_colour(vehicle.get("label"))
        mask = masks[i] if masks is not None and i < len(masks) else None
        if mask is not None:
            _outline(out, mask, colour, scale)
        x1, y1, x2, y2 = (int(round(v)) for v in vehicle["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, max(2, round(2 * scale)), cv2.LINE_8)
    # Tags after every box, so that no box is drawn over another vehicle's text.
    for vehicle in vehicles:
        x1, y1, _, _ = (int(round(v)) for v in vehicle["box"])
        text = f"{vehicle.get('label', '?')} {float(vehicle.get('confidence') or 0):.2f}"
        _tag(out, text, (x1, y1), label_colour(vehicle.get("label")), scale)
    if not vehicles:
        _tag(out, "no vehicle found", (0, 0), (90, 90, 90), scale, below=True)
    return out


def error_card(document: dict[str, Any], size: tuple[int, int] | None = None,
               title: str = "ERROR") -> np.ndarray:
    """A dark card (RGB uint8, ``size`` = width, height) with the error code, message and source key."""
    width, height = size or CARD_SIZE
    width, height = max(width, 160), max(height, 120)
    card = np.full((height, width, 3), (48, 40, 40), np.uint8)
    scale = _scale(card)
    error = document.get("error") or {}
    source = document.get("source") or {}
    lines = [(f"{title}: {error.get('code', 'unknown')}", (255, 120, 110), 0.7)]
    chars = max(16, int(width / (9 * scale)))
    lines += [(line, (235, 235, 235), 0.5) for line in textwrap.wrap(str(error.get("message", "")), chars)[:6]]
    lines += [("", (0, 0, 0), 0.5)]
    lines += [(line, (170, 170, 170), 0.45) for line in textwrap.wrap(str(source.get("key", "")), chars)[:2]]
    y = int(12 * scale)
    for text, colour, size_factor in lines:
        font_scale = size_factor * scale
        (_, th), _ = cv2.getTextSize(text or " ", FONT, font_scale, 1)
        y += th + int(8 * scale)
        cv2.putText(card, text, (int(10 * scale), y), FONT, font_scale, colour, 1, cv2.LINE_AA)
    return card


def missing_source_card(document: dict[str, Any]) -> np.ndarray:
    """A card for a result whose source image is no longer in S3 (deleted after it was processed)."""
    source = document.get("source") or {}
    doc = {"source": source, "error": {"code": document.get("status", "?"),
                                        "message": f"source image s3://{source.get('bucket')}/{source.get('key')} "
                                                   "is gone; only the result is left"}}
    return error_card(doc, title="NO SOURCE")


def draw_document(document: dict[str, Any], source: bytes | None, images=None) -> np.ndarray:
    """Annotate a result document read back from S3 with the bytes of its source image (None: gone).

    The source is decoded as the pipeline decoded it (EXIF orientation applied), so that the
    document's boxes land where they were found. ``images``: the ImageSettings limits (default: the
    settings in force).
    """
    from vehicle_core.errors import InvalidInputError
    from vehicle_core.images import decode_image

    if document.get("status") == "error":
        return error_card(document)
    if source is None:
        return missing_source_card(document)
    if images is None:
        from vehicle_core.config import load_settings

        images = load_settings().images
    try:
        pixels = decode_image(source, images)
    except InvalidInputError as exc:  # replaced by something unreadable since it was processed
        return error_card({"source": document.get("source"), "error": exc.to_dict()}, title="SOURCE UNREADABLE")
    return draw_result(pixels, document)


def encode_image(image: np.ndarray, fmt: str = ".jpg", max_side: int | None = None, quality: int = 85) -> bytes:
    """Encode an RGB image (``.jpg`` or ``.png``), first shrunk so its longer side is ``max_side`` at most."""
    if max_side and max(image.shape[:2]) > max_side:
        factor = max_side / max(image.shape[:2])
        image = cv2.resize(image, (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor))),
                           interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:  # only for an unknown ``fmt``: a programming error
        raise ValueError(f"cannot encode as {fmt}")
    return buf.tobytes()


def _scale(image: np.ndarray) -> float:
    # Line widths and text grow with the picture: 1.0 at 480 px on the longer side.
    return max(0.6, max(image.shape[:2]) / 480)


def _outline(out: np.ndarray, mask: np.ndarray, colour, scale: float) -> None:
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if binary.shape != out.shape[:2]:
        return  # a mask of another image: drawing it would mislead
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, max(1, round(1.5 * scale)), cv2.LINE_8)


def _tag(out: np.ndarray, text: str, corner: tuple[int, int], colour, scale: float, below: bool = False) -> None:
    """A filled label box at ``corner`` (above it when there is room), text black or white for contrast."""
    font_scale = 0.45 * scale
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, 1)
    pad = max(2, round(3 * scale))
    x = min(max(0, corner[0]), max(0, out.shape[1] - tw - 2 * pad))
    top = corner[1] - th - base - 2 * pad
    if below or top < 0:
        top = max(0, corner[1])
    cv2.rectangle(out, (x, top), (x + tw + 2 * pad, top + th + base + 2 * pad), colour, -1)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(out, text, (x + pad, top + pad + th), FONT, font_scale, ink, 1, cv2.LINE_AA)
