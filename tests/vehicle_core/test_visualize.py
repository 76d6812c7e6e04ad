"""Drawing results: boxes and tags in the label's colour, mask outlines, cards for errors."""

import numpy as np

from vehicle_core.reports.visualize import (
    CARD_SIZE,
    draw_document,
    draw_result,
    encode_image,
    error_card,
    label_colour,
)


def grey(width=320, height=240):
    return np.full((height, width, 3), 128, np.uint8)


def ok_doc(*vehicles):
    return {"status": "ok", "source": {"bucket": "b", "key": "k.jpg"},
            "vehicles": [{"box": list(box), "label": label, "confidence": conf} for box, label, conf in vehicles]}


def test_box_is_drawn_in_its_label_colour_and_the_rest_is_untouched():
    image = grey()
    out = draw_result(image, ok_doc(((60, 100, 200, 180), "bus", 0.9)))
    assert tuple(out[140, 60]) == label_colour("bus")  # left edge of the box, below the tag
    assert tuple(out[230, 300]) == (128, 128, 128)  # far from the box
    assert (image == 128).all()  # the input is not drawn on


def test_tag_text_is_drawn_above_the_box():
    out = draw_result(grey(), ok_doc(((60, 100, 200, 180), "sedan", 0.87)))
    tag = out[80:100, 60:140]
    assert (tag == label_colour("sedan")).all(axis=-1).mean() > 0.15  # the filled tag
    assert (tag != label_colour("sedan")).any(axis=-1).mean() > 0.05  # and text in it


def test_mask_outline_is_drawn_only_when_masks_are_given():
    doc = ok_doc(((60, 60, 260, 200), "truck", 0.7))
    mask = np.zeros((240, 320), bool)
    mask[100:160, 120:200] = True
    with_mask = draw_result(grey(), doc, masks=[mask])
    without = draw_result(grey(), doc)
    edge = with_mask[130, 118:123]
    assert any(tuple(px) == label_colour("truck") for px in edge)
    assert (without[130, 118:123] == 128).all()


def test_labels_keep_their_colour_and_the_synthetic_classes_differ():
    classes = ["sedan", "suv", "pickup", "truck", "bus", "motorcycle"]
    assert len({label_colour(c) for c in classes}) == len(classes)
    assert label_colour("tractor") == label_colour("tractor")


def test_error_result_draws_a_card_with_its_code():
    doc = {"status": "error", "source": {"bucket": "b", "key": "incoming/bad.jpg"},
           "error": {"code": "undecodable", "message": "cannot decode the image"}}
    card = error_card(doc)
    assert card.shape == (CARD_SIZE[1], CARD_SIZE[0], 3)
    assert (card[..., 0] > 200).sum() > 50  # the red title line
    other = error_card({**doc, "error": {"code": "empty", "message": "cannot decode the image"}})
    assert (card[:40] != other[:40]).any()  # the title says the code
    assert (draw_result(grey(), doc) == error_card(doc, size=(320, 240))).all()


def test_no_vehicle_result_says_so_on_the_image():
    out = draw_result(grey(), {"status": "no_vehicle", "vehicles": []})
    assert (out[:20] != 128).any()
    assert (out[100:] == 128).all()


def test_document_whose_source_is_gone_draws_a_card():
    doc = ok_doc(((10, 10, 50, 50), "bus", 0.9))
    card = draw_document(doc, None)
    assert card.shape == (CARD_SIZE[1], CARD_SIZE[0], 3)
    assert tuple(card[-1, -1]) == (48, 40, 40)


def test_document_is_drawn_on_its_decoded_source():
    doc = ok_doc(((60, 100, 200, 180), "bus", 0.9))
    png = encode_image(grey(), ".png")
    out = draw_document(doc, png)
    assert out.shape == (240, 320, 3)
    assert tuple(out[140, 60]) == label_colour("bus")


def test_encode_image_shrinks_to_max_side():
    import cv2

    data = encode_image(grey(800, 400), ".jpg", max_side=200)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (100, 200, 3)
