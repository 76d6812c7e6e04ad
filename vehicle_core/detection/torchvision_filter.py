"""The vehicle filter inside a torchvision R-CNN: fewer boxes through NMS and the mask head, small masks.

torchvision's detectors finish in two steps the pipeline mostly throws away:

* ``RoIHeads.postprocess_detections`` scores every proposal for every class (91 on COCO), keeps
  scores above 0.05, runs ``batched_nms`` over all of them and keeps 100; the mask head then runs on
  all 100; the pipeline keeps vehicles (4 classes) above ``detector.score_threshold`` (0.5).
* ``GeneralizedRCNNTransform.postprocess`` pastes every mask into an image-sized float array
  (100 x H x W: 490 MB for a 1280x960 image), copied to the host, where all but a few are dropped.

:func:`restrict_to_vehicles` moves the class and score filter before the NMS (so the mask head runs on
vehicles only) and replaces the paste: the model returns its M x M soft masks, and :class:`BoxMasks`
pastes one kept detection's mask into the window of the image it covers, with torchvision's own
arithmetic (``paste_mask_in_image``), so each mask pixel is what the full paste would have given.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from vehicle_core.config import DetectorSettings


def restrict_to_vehicles(model: torch.nn.Module, categories: Sequence[str], settings: DetectorSettings) -> None:
    """Patch ``model`` (a torchvision Mask/Faster R-CNN, in place) to keep only vehicle classes scoring at
    least ``settings.score_threshold`` before its NMS, and to return unpasted masks (see the module doc).

    The model's own score threshold still applies when higher, and it keeps at most
    ``max_vehicles x len(vehicle_classes)`` boxes (or its own cap, when lower): the pipeline keeps
    ``max_vehicles`` after dropping one vehicle's boxes of other classes, so that leaves room for each.
    """
    heads = model.roi_heads
    wanted = set(settings.vehicle_classes)
    heads.vehicle_columns = torch.tensor([i for i, name in enumerate(categories) if name in wanted and i > 0],
                                         dtype=torch.int64)
    heads.score_thresh = max(float(heads.score_thresh), float(settings.score_threshold))
    heads.detections_per_img = min(int(heads.detections_per_img),
                                   settings.max_vehicles * max(1, len(settings.vehicle_classes)))
    heads.postprocess_detections = types.MethodType(_postprocess_vehicles, heads)
    model.transform.postprocess = types.MethodType(_postprocess_unpasted, model.transform)


def _postprocess_vehicles(self, class_logits, box_regression, proposals, image_shapes):
    """torchvision's ``RoIHeads.postprocess_detections`` with the non-vehicle columns dropped first and
    ``>=`` for the threshold (the pipeline's rule: a score equal to the threshold is kept)."""
    boxes_per_image = [len(p) for p in proposals]
    pred_boxes = self.box_coder.decode(box_regression, proposals)
    # Softmax over every class first: a vehicle's probability is what the unfiltered model gives it.
    pred_scores = F.softmax(class_logits, -1)
    columns = self.vehicle_columns.to(class_logits.device)
    out_boxes, out_scores, out_labels = [], [], []
    for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0), pred_scores.split(boxes_per_image, 0),
                                          image_shapes, strict=True):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, columns].reshape(-1, 4)
        labels = columns.view(1, -1).expand(scores.shape[0], -1).reshape(-1)
        scores = scores[:, columns].reshape(-1)
        keep = torch.where(scores >= self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        out_boxes.append(boxes[keep])
        out_scores.append(scores[keep])
        out_labels.append(labels[keep])
    return out_boxes, out_scores, out_labels


def _postprocess_unpasted(self, result, image_shapes, original_image_sizes):
    """``GeneralizedRCNNTransform.postprocess`` without the mask paste: boxes back in original pixels,
    ``masks`` left as the mask head's N x 1 x M x M probabilities (:class:`BoxMasks` pastes them)."""
    if self.training:
        return result
    for pred, size, original in zip(result, image_shapes, original_image_sizes, strict=True):
        pred["boxes"] = resize_boxes(pred["boxes"], size, original)
    return result


class BoxMasks:
    """The unpasted masks of one image; :meth:`window` pastes one of them where it lies in the image.

    ``filter_detections`` calls :meth:`window` for the detections it keeps, so only those are pasted
    and copied to the host, each as large as its (slightly grown) box rather than the image.
    """

    def __init__(self, masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], padding: int = 1):
        # The same one-pixel border and box growth as torchvision's paste_masks_in_image.
        self.masks, scale = expand_masks(masks, padding=padding)
        self.boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
        self.height, self.width = image_size

    def __len__(self) -> int:
        return len(self.boxes)

    def window(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(bool mask of the window it covers, (x, y) of the window's top-left pixel) of detection ``i``."""
        x0, y0, x1, y1 = self.boxes[i]
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)  # torchvision's TO_REMOVE = 1
        soft = F.interpolate(self.masks[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1 + 1, self.width), min(y1 + 1, self.height)
        if cx1 <= cx0 or cy1 <= cy0:  # entirely outside the image
            return np.zeros((0, 0), dtype=bool), (0, 0)
        region = soft[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] > 0.5
        return region.cpu().numpy(), (cx0, cy0)
