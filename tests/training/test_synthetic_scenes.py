"""The synthetic scene generator: deterministic, boxes/masks agree with the pixels, labels as asked."""

import cv2
import numpy as np
import pytest

from training.synthetic.scenes import CLASSES, encode, make_scene, make_vehicle_image, scene_dataset


def test_classes_map_six_labels_to_coco_vehicle_classes():
    assert len(CLASSES) == 6
    assert set(CLASSES.values()) == {"car", "truck", "bus", "motorcycle"}


def test_same_seed_gives_identical_scenes_and_another_seed_differs():
    a = list(scene_dataset(3, seed=5, size=(160, 120)))
    b = list(scene_dataset(3, seed=5, size=(160, 120)))
    c = list(scene_dataset(3, seed=6, size=(160, 120)))
    assert all((x.image == y.image).all() for x, y in zip(a, b, strict=True))
    assert [[o.box for o in s.objects] for s in a] == [[o.box for o in s.objects] for s in b]
    assert any((x.image != y.image).any() for x, y in zip(a, c, strict=True))


def test_boxes_are_the_bounds_of_nonoverlapping_masks_inside_the_image():
    for scene in scene_dataset(20, seed=1, size=(200, 150), n_vehicles=(1, 3)):
        assert scene.image.shape == (150, 200, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 3
        union = np.zeros((150, 200), int)
        for o in scene.objects:
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert o.detector_class == CLASSES[o.label]
            union += o.mask
        assert union.max() <= 1  # a pixel belongs to at most one (the front) vehicle


def test_primary_is_the_largest_vehicle():
    scene = make_scene(np.random.default_rng(3), n_vehicles=(3, 3))
    areas = [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in scene.objects]
    assert areas == sorted(areas, reverse=True)
    assert scene.label == scene.primary.label == scene.objects[0].label


@pytest.mark.parametrize("label", sorted(CLASSES))
def test_labels_restricts_the_drawn_vehicles(label):
    scene = make_scene(np.random.default_rng(0), size=(160, 120), n_vehicles=(2, 2), labels=[label])
    assert {o.label for o in scene.objects} == {label}


def test_scale_sets_the_vehicle_length():
    rng = np.random.default_rng(2)
    small = [make_scene(rng, n_vehicles=(1, 1), scale=(0.1, 0.12)).primary.box for _ in range(5)]
    big = [make_scene(rng, n_vehicles=(1, 1), scale=(0.55, 0.6)).primary.box for _ in range(5)]
    assert max(b[2] - b[0] for b in small) < min(b[2] - b[0] for b in big)


def test_a_large_vehicle_mask_covers_much_of_its_box():
    scene = make_scene(np.random.default_rng(4), size=(160, 120), n_vehicles=(1, 1), scale=(0.6, 0.7))
    x1, y1, x2, y2 = scene.primary.box
    assert x2 - x1 >= 0.55 * 160
    assert scene.primary.mask.sum() > 0.4 * (x2 - x1) * (y2 - y1)


def test_vehicle_image_and_encode_round_trip():
    img = make_vehicle_image(np.random.default_rng(0), "bus", (96, 64))
    assert img.shape == (64, 96, 3)
    back = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(encode(img, ".png"), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    assert (back == img).all()
    with pytest.raises(ValueError):
        make_vehicle_image(np.random.default_rng(0), "tractor", 64)
