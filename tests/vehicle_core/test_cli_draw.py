"""vehicle-classify --draw: every input written with what was found drawn on it."""

import json

import cv2
import numpy as np

from training.synthetic.scenes import encode, make_scene


def test_draw_writes_each_input_annotated_and_a_card_for_a_bad_one(classifier_artifact, monkeypatch, tmp_path,
                                                                    capsys):
    from vehicle_core.cli.classify import main

    monkeypatch.setenv("VP_CLASSIFIER__MODEL", str(classifier_artifact))
    scene = make_scene(np.random.default_rng(7), size=(320, 240), n_vehicles=(1, 1), scale=(0.5, 0.6))
    photo = tmp_path / "street.jpg"
    photo.write_bytes(encode(scene.image, ".jpg"))
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"not an image")
    out = tmp_path / "drawn"

    assert main([str(photo), str(bad), "--draw", str(out)]) == 0

    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["status"] for d in docs] == ["ok", "error"]
    drawn = cv2.imread(str(out / "street.jpg"))
    original = cv2.imread(str(photo))
    assert drawn.shape == original.shape
    x1, y1, x2, y2 = (int(v) for v in docs[0]["vehicles"][0]["box"])
    box_edge = np.abs(drawn[y1 + 20:y2 - 5, x1].astype(int) - original[y1 + 20:y2 - 5, x1].astype(int))
    assert box_edge.mean() > 20  # the box's left side is drawn over the photo
    card = cv2.imread(str(out / "notes.jpg"))
    assert card.shape[:2] == (240, 320) and card.mean() < 70  # the dark error card
