"""filter_detections: the rules every backend's raw output goes through."""

from __future__ import annotations

import numpy as np

from vehicle_core.detection.base import box_iou, filter_detections

VEHICLES = ["car", "motorcycle", "bus", "truck"]


def _filter(boxes, scores, labels, **kw):
    args = dict(vehicle_classes=VEHICLES, score_threshold=0.5, min_box_size=10, max_vehicles=20,
                image_size=(200, 300), same_vehicle_iou=0.6)
    args.update(kw)
    return filter_detections(np.array(boxes, float), np.array(scores), labels, None, **args)


def test_one_vehicle_reported_as_two_classes_is_kept_once_with_the_better_score():
    # A pickup seen as "truck" (0.9) and, almost the same box, as "car" (0.7); a second car elsewhere
    boxes = [[10, 10, 110, 60], [12, 11, 108, 62], [150, 100, 250, 150]]
    kept = _filter(boxes, [0.7, 0.9, 0.8], ["car", "truck", "car"])
    assert [(d.label, d.score) for d in kept] == [("truck", 0.9), ("car", 0.8)]


def test_overlapping_but_distinct_vehicles_are_both_kept():
    # Two cars side by side in traffic overlap a little (IoU ~0.2): two vehicles
    boxes = [[10, 10, 110, 60], [80, 10, 180, 60]]
    assert box_iou(boxes[0], boxes[1]) < 0.3
    assert len(_filter(boxes, [0.9, 0.8], ["car", "car"])) == 2


def test_iou_one_keeps_every_box_and_other_rules_still_apply():
    boxes = [[10, 10, 110, 60], [12, 11, 108, 62], [0, 0, 5, 5], [20, 20, 90, 90]]
    kept = _filter(boxes, [0.9, 0.7, 0.9, 0.95], ["truck", "car", "car", "person"], same_vehicle_iou=1.0)
    # the duplicate stays; the 5-px box (min size) and the person (not a vehicle) go; boxes clipped
    assert [d.label for d in kept] == ["truck", "car"]


def test_boxes_are_clipped_to_the_image():
    (d,) = _filter([[-20, -5, 320, 250]], [0.9], ["bus"])
    assert d.box == (0.0, 0.0, 300.0, 200.0)
