"""decode_image: every error code from a real malformed file, and the formats/orientations we accept."""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from vehicle_core.config import load_settings
from vehicle_core.errors import (
    EmptyImageError,
    ImageTooLargeError,
    InvalidInputError,
    UndecodableImageError,
    UnsupportedFormatError,
)
from vehicle_core.images import decode, decode_image, image_size_from_header, sniff_format

SETTINGS = load_settings().images
W, H = 64, 48


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _marked(w: int = W, h: int = H) -> Image.Image:
    """Blue image with a red square in the top-left corner: tells which way is up."""
    img = Image.new("RGB", (w, h), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 16))
    return img


def _assert_red_top_left(rgb: np.ndarray, w: int = W, h: int = H) -> None:
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    tl, br = rgb[4, 4].astype(int), rgb[-5, -5].astype(int)
    assert tl[0] > 200 and tl[2] < 60, f"top-left not red: {tl}"
    assert br[2] > 200 and br[0] < 60, f"bottom-right not blue: {br}"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_empty_bytes_raise_empty():
    with pytest.raises(EmptyImageError) as exc:
        decode_image(b"", SETTINGS)
    assert exc.value.code == "empty"


@pytest.mark.parametrize("data", [
    _encode(Image.new("P", (8, 8)), "GIF"),
    b"%PDF-1.4\n1 0 obj << >> endobj\n",
    b"hello, this is plain text\n",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
], ids=["gif", "pdf", "text", "heic"])
def test_unsupported_formats_raise_unsupported(data):
    with pytest.raises(UnsupportedFormatError) as exc:
        decode_image(data, SETTINGS)
    assert exc.value.code == "unsupported_format"


def test_truncated_jpeg_raises_undecodable():
    data = _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    with pytest.raises(UndecodableImageError) as exc:
        decode_image(data[: len(data) * 2 // 3], SETTINGS)
    assert exc.value.code == "undecodable"


def test_png_with_corrupt_crc_raises_undecodable():
    data = bytearray(_encode(Image.effect_noise((64, 64), 64), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 8] ^= 0xFF  # flip a byte of compressed data: the chunk's CRC no longer matches
    with pytest.raises(UndecodableImageError):
        decode_image(bytes(data), SETTINGS)


def _lying_png(w: int, h: int) -> bytes:
    """A real tiny PNG whose IHDR declares w x h (its pixel data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) \
        + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [7000, 30000])
def test_png_whose_header_declares_huge_size_is_refused_before_decoding(side):
    data = _lying_png(side, side)
    assert len(data) < 100
    with pytest.raises(ImageTooLargeError) as exc:
        decode_image(data, SETTINGS)
    assert exc.value.code == "too_large"


def test_header_size_is_read_without_decoding():
    assert image_size_from_header(_lying_png(7000, 6000)) == (7000, 6000)


def test_bytes_above_max_bytes_raise_too_large():
    data = _encode(_marked(), "PNG")
    small = type(SETTINGS)(max_pixels=SETTINGS.max_pixels, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, small)


@pytest.mark.parametrize("fmt,kw", [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"quality": 95}),
                                    ("BMP", {}), ("TIFF", {})])
def test_rgb_formats_decode_upright_rgb(fmt, kw):
    data = _encode(_marked(), fmt, **kw)
    assert sniff_format(data) == fmt.lower()
    _assert_red_top_left(decode_image(data, SETTINGS))


def test_cmyk_jpeg_decodes_to_rgb():
    _assert_red_top_left(decode_image(_encode(_marked().convert("CMYK"), "JPEG", quality=95), SETTINGS))


def test_palette_png_decodes_to_rgb():
    _assert_red_top_left(decode_image(_encode(_marked().convert("P"), "PNG"), SETTINGS))


def test_rgba_png_is_composited_on_white():
    img = _marked().convert("RGBA")
    img.paste((0, 0, 0, 0), (W - 16, H - 16, W, H))  # fully transparent corner
    rgb = decode_image(_encode(img, "PNG"), SETTINGS)
    assert tuple(rgb[-2, -2]) == (255, 255, 255)
    assert tuple(rgb[2, 2]) == (255, 0, 0)


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    arr = np.zeros((H, W), dtype=np.uint16)
    arr[:, W // 2:] = 65535
    rgb = decode_image(_encode(Image.fromarray(arr), "PNG"), SETTINGS)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, -1]) == (255, 255, 255)


def test_grayscale_jpeg_decodes_to_three_equal_channels():
    img = Image.new("L", (W, H), 30)
    img.paste(220, (0, 0, 16, 16))
    rgb = decode_image(_encode(img, "JPEG", quality=95), SETTINGS)
    assert rgb.shape == (H, W, 3)
    assert rgb[4, 4].min() > 200 and rgb[-5, -5].max() < 60


# Which transpose turns the upright image into the stored one for each EXIF orientation.
_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(_STORED))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG-RGBA"])
def test_exif_orientation_is_applied(orientation, fmt):
    stored = _marked().transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "JPEG":
        data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    else:  # the IMREAD_UNCHANGED path, where OpenCV does not rotate
        data = _encode(stored.convert("RGBA"), "PNG", exif=exif.tobytes())
    _assert_red_top_left(decode_image(data, SETTINGS))


def test_random_and_truncated_bytes_only_raise_typed_errors():
    rng = random.Random(1234)
    seeds = [_encode(_marked(), f) for f in ("JPEG", "PNG", "WEBP", "BMP", "TIFF")]
    cases = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(40)]
    for seed in seeds:
        cases += [seed[:n] for n in (1, 4, 12, 40, len(seed) // 2, len(seed) - 3)]
        for _ in range(6):
            mutated = bytearray(seed)
            for _ in range(8):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            cases.append(bytes(mutated))
    outcomes = {"ok": 0, "error": 0}
    for data in cases:
        try:
            rgb = decode_image(data, SETTINGS)
        except InvalidInputError:
            outcomes["error"] += 1
        else:
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
            outcomes["ok"] += 1
    assert outcomes["error"] > 0


EXPECTED_HOSTILE = {
    "png IDAT claims 0xFFFFFFFF bytes": "undecodable", "png IDAT claims 0x7FFFFFFF bytes": "undecodable",
    "png header 50000x50000": "too_large", "png 16-bit RGBA 6320x6320 (bomb)": "too_large",
    "png strip 4000000x10": "aspect_ratio", "webp RIFF claims 1 GB": "undecodable", "webp truncated": "undecodable",
    "tiff strip past the end": "undecodable", "bmp pixel array past the end": "undecodable",
    "jpeg truncated": "undecodable", "zero bytes": "empty", "html named .png": "unsupported_format",
}


@pytest.fixture(scope="module")
def hostile():
    from devstack.hostile_images import hostile_images

    return hostile_images()


@pytest.mark.parametrize("name", sorted(EXPECTED_HOSTILE))
def test_hostile_inputs_are_refused_with_their_code_before_decoding(hostile, name):
    with pytest.raises(InvalidInputError) as exc:
        decode(hostile[name], SETTINGS, max_side=SETTINGS.max_side)
    assert exc.value.code == EXPECTED_HOSTILE[name]


def test_a_35_megapixel_jpeg_is_decoded_at_reduced_scale_for_the_detector(hostile):
    image = decode(hostile["jpeg 7000x5000 (35 Mpx)"], SETTINGS, max_side=2048)
    assert image.original_size == (7000, 5000) and max(image.pixels.shape[:2]) == 2048
    assert image.scale == pytest.approx(7000 / 2048, rel=1e-3)


def test_decoding_budget_counts_channels_and_bit_depth():
    from devstack.hostile_images import _zero_rows_png

    rgba16 = _zero_rows_png(600, 600, 16, 6)  # 600 x 600 x (4 x 2 + 3) bytes = 3.96 MB to decode
    tight = replace(SETTINGS, max_decode_bytes=3_000_000)
    with pytest.raises(ImageTooLargeError, match="max_decode_bytes"):
        decode(rgba16, tight)
    assert decode(_zero_rows_png(600, 600, 8, 0), tight).pixels.shape == (600, 600, 3)  # 600 x 600 x (1 + 3)


# -- the decode budget: every decoder path, and the sum of concurrent decodes --------------------------


def _tiff16(width: int, height: int, value: int) -> bytes:
    return _encode(Image.fromarray(np.full((height, width), value, np.uint16)), "TIFF", compression="tiff_adobe_deflate")


def test_a_16_bit_tiff_becomes_8_bit_by_shifting_and_is_reduced_to_max_side():
    # Given: a 16-bit gray deflate TIFF of 4100x300 pixels, all 40000 (= 156 in 8 bits)
    data = _tiff16(4100, 300, 40000)
    # When: decoded for the detector (max_side 2048)
    out = decode(data, SETTINGS, max_side=2048)
    # Then: 2048 wide, the right grey, and the original size kept for the boxes
    assert out.pixels.shape == (150, 2048, 3) and out.pixels.dtype == np.uint8
    assert np.all(out.pixels == 40000 >> 8) and out.original_size == (4100, 300)


@pytest.mark.parametrize("mode, value, expected", [("I", 65535, 255), ("I", -5, 0), ("F", 300.0, 255), ("F", 77.0, 77)])
def test_32_bit_tiffs_are_clipped_to_8_bits(mode, value, expected):
    data = _encode(Image.new(mode, (40, 30), value), "TIFF")
    assert np.all(decode_image(data, SETTINGS) == expected)


def test_the_pil_path_estimate_refuses_a_16_bit_tiff_the_old_one_let_through():
    from vehicle_core.images import _pil_decode_bytes

    # A 16-bit gray TIFF of 6000x6000: PIL keeps 2 bytes a pixel, plus the 8-bit copy, plus the reduced image
    data = _tiff16(64, 64, 1)
    assert _pil_decode_bytes(data, "tiff", 6000, 6000, 1, 2048) >= 6000 * 6000 * 3
    # ... and an 8-bit RGB TIFF costs PIL 4 bytes a pixel, not 3
    rgb = _encode(Image.new("RGB", (64, 64)), "TIFF")
    assert _pil_decode_bytes(rgb, "tiff", 6000, 6000, 1, 2048) >= 6000 * 6000 * 4


def test_concurrent_decodes_share_one_budget_and_one_that_can_never_fit_is_refused():
    from concurrent.futures import ThreadPoolExecutor

    from vehicle_core.images import DECODE_BUDGET, _pil_decode_bytes

    # Given: a budget that fits one 16-bit 3000x3000 TIFF decode, not two
    data = _tiff16(3000, 3000, 512)
    one = _pil_decode_bytes(data, "tiff", 3000, 3000, 1, 2048)
    settings = replace(SETTINGS, max_decode_bytes=one + one // 2)
    DECODE_BUDGET.peak = 0
    # When: four decode at once
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: decode(data, settings, max_side=2048), range(4)))
    # Then: all four are decoded, and at no time did the running ones hold more than the budget
    assert all(o.pixels.shape == (2048, 2048, 3) for o in outs)
    assert one <= DECODE_BUDGET.peak <= settings.max_decode_bytes and DECODE_BUDGET.used == 0
    # ... while a budget below one decode refuses it at once, without waiting
    with pytest.raises(ImageTooLargeError, match="images.max_decode_bytes"):
        decode(data, replace(SETTINGS, max_decode_bytes=one - 1), max_side=2048)


def test_a_decode_that_could_fit_waits_for_the_running_ones():
    import threading

    from vehicle_core.images import DECODE_BUDGET

    # Given: the budget held by another decode (a 1,000-byte stand-in)
    order = []
    release = threading.Event()

    def running():
        with DECODE_BUDGET.hold(1000, 1000):
            order.append("held")
            release.wait(30)
        order.append("released")

    holder = threading.Thread(target=running)
    holder.start()
    wait = threading.Event()
    while not order:  # the holder has the budget
        wait.wait(0.01)
    # When: a second decode asks for 600 of the 1,000
    waiter = threading.Thread(target=lambda: (DECODE_BUDGET.hold(600, 1000).__enter__(), order.append("second")))
    waiter.start()
    waiter.join(0.3)
    # Then: it waits while the first holds the budget, and proceeds once released
    assert waiter.is_alive() and order == ["held"]
    release.set()
    holder.join(30)
    waiter.join(30)
    assert order == ["held", "released", "second"]
    DECODE_BUDGET.used -= 600  # the stand-in never left its block
