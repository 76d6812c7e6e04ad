"""crop_vehicles / encode_crop / decode_crop: margins, borders, square padding, mask blanking."""

import numpy as np
import pytest

from vehicle_core.config import CropSettings
from vehicle_core.crop import crop_vehicles, decode_crop, encode_crop
from vehicle_core.errors import UndecodableImageError
from vehicle_core.results.contract import Detection


def settings(**kw):
    base = dict(margin=0.0, square=False, mask_background=False, fill_value=0, size=1000, jpeg_quality=95)
    base.update(kw)
    return CropSettings(**base)


def ramp(h=100, w=200):
    # Every pixel distinct in (R, G), so a crop's origin can be read off its first pixel.
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None, :] % 256
    img[..., 1] = np.arange(h)[:, None] % 256
    return img


def det(box, mask=None):
    return Detection(box=box, score=0.9, label="car", mask=mask)


def test_margin_grows_the_box_on_every_side():
    (c,) = crop_vehicles(ramp(), [det((50, 20, 150, 60))], settings(margin=0.1))
    assert c.shape == (48, 120, 3)  # 40 + 2*4 rows, 100 + 2*10 columns
    assert tuple(c[0, 0, :2]) == (40, 16)


def test_margin_is_clipped_at_the_image_border():
    (c,) = crop_vehicles(ramp(), [det((0, 0, 190, 95))], settings(margin=0.2))
    assert c.shape == (100, 200, 3)
    assert tuple(c[0, 0, :2]) == (0, 0)


def test_square_pads_with_fill_value_and_centres_the_crop():
    (c,) = crop_vehicles(ramp(), [det((10, 10, 110, 50))], settings(square=True, fill_value=7))
    assert c.shape == (100, 100, 3)
    assert (c[:30] == 7).all() and (c[70:] == 7).all()
    assert tuple(c[30, 0, :2]) == (10, 10)


def test_mask_blanks_background_only_when_asked():
    img = ramp()
    mask = np.zeros(img.shape[:2], bool)
    mask[20:40, 60:80] = True
    d = det((50, 10, 90, 50), mask)
    (blank,) = crop_vehicles(img, [d], settings(mask_background=True, fill_value=3))
    (plain,) = crop_vehicles(img, [d], settings(mask_background=False))
    assert (blank[:10] == 3).all()
    assert (blank[10:30, 10:30] == img[20:40, 60:80]).all()
    assert (plain == img[10:50, 50:90]).all()


def test_longer_side_is_shrunk_to_size():
    (c,) = crop_vehicles(ramp(), [det((0, 0, 200, 50))], settings(size=64))
    assert max(c.shape[:2]) == 64 and c.shape[1] == 64 and c.shape[0] == 16


@pytest.mark.parametrize("box", [(30, 30, 30, 30), (199.6, 99.6, 200, 100), (-5, -5, 0.2, 0.2)])
def test_tiny_and_degenerate_boxes_still_give_a_pixel(box):
    (c,) = crop_vehicles(ramp(), [det(box)], settings(square=True))
    assert c.ndim == 3 and c.shape[0] >= 1 and c.shape[1] >= 1


def test_encode_decode_round_trip_is_close():
    (c,) = crop_vehicles(ramp(), [det((20, 20, 120, 80))], settings(square=True))
    back = decode_crop(encode_crop(c, settings(jpeg_quality=95)))
    assert back.shape == c.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - c.astype(int)).mean() < 4


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0" + b"\0" * 10])
def test_undecodable_crop_raises_typed_error(data):
    with pytest.raises(UndecodableImageError) as err:
        decode_crop(data)
    assert err.value.code == "undecodable"


def test_a_mask_window_blanks_like_the_full_image_mask():
    import numpy as np

    from vehicle_core.config import load_settings
    from vehicle_core.crop import crop_one
    from vehicle_core.results.contract import Detection

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    full = np.zeros((60, 80), dtype=bool)
    full[22:40, 25:55] = True
    box = (24.0, 20.0, 56.0, 42.0)
    window = full[18:44, 21:60]  # the window a box-resolution paste covers, origin (21, 18)
    settings = load_settings(env={}).crop
    a = crop_one(image, Detection(box=box, score=1.0, label="car", mask=full), settings)
    b = crop_one(image, Detection(box=box, score=1.0, label="car", mask=window, mask_origin=(21, 18)), settings)
    np.testing.assert_array_equal(a, b)
    assert (a == settings.fill_value).any()  # the background was blanked
    det = Detection(box=box, score=1.0, label="car", mask=window, mask_origin=(21, 18))
    np.testing.assert_array_equal(det.full_mask(60, 80), full)
