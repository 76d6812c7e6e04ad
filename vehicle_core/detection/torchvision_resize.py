"""Resize before converting to float: a CPU detector's input transform that does not touch every pixel
of a large image in float.

torchvision's ``GeneralizedRCNNTransform`` takes float images, normalizes them at full size and then
resizes them to the model's input size. On a CPU, with a 1280×960 image and a 320 px model, that is a
uint8→float copy, a division and a normalization over 1.2 M pixels × 3 for an input 16 times smaller:
a quarter of the detect process's CPU time (py-spy, `bench pipeline`). :class:`HostResizeTransform`
takes the uint8 image instead, resizes it in uint8 with OpenCV (the same bilinear sampling as
torchvision's ``interpolate``, half-pixel centres, no antialiasing, to the same output size), and
converts and normalizes only the resized pixels. Boxes and masks still come back in the original
image's coordinates: the model sees the original sizes, only its transform changed.

Float images, training, and ``fixed_size`` models go through torchvision's own path unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class HostResizeTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes uint8 CHW images in uint8 before normalizing them."""

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> HostResizeTransform:
        """The same sizes, mean, std, padding and mode (train or eval) as ``transform``."""
        new = cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                  size_divisible=transform.size_divisible, fixed_size=transform.fixed_size)
        return new.train(transform.training)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) torchvision's eval-mode resize gives an image of this size."""
        scale = min(self.min_size[-1] / min(height, width), self.max_size / max(height, width))
        return math.floor(height * scale), math.floor(width * scale)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if self.training or targets is not None or self.fixed_size is not None \
                or any(img.is_floating_point() or img.device.type != "cpu" for img in images):
            return super().forward(images, targets)
        mean = torch.as_tensor(self.image_mean, dtype=torch.float32)[:, None, None] * 255.0
        std = torch.as_tensor(self.image_std, dtype=torch.float32)[:, None, None] * 255.0
        resized = []
        for image in images:
            if image.dim() != 3:
                raise ValueError(f"images is expected to be a list of 3d tensors of shape [C, H, W], got {image.shape}")
            hwc = image.permute(1, 2, 0).numpy()  # a view of the caller's array when it was one
            height, width = self.output_size(*hwc.shape[:2])
            small = cv2.resize(np.ascontiguousarray(hwc), (width, height), interpolation=cv2.INTER_LINEAR)
            small = small.reshape(height, width, -1)  # cv2 drops a channel axis of 1
            resized.append((torch.from_numpy(small).permute(2, 0, 1).float() - mean) / std)
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        return ImageList(self.batch_images(resized, size_divisible=self.size_divisible), sizes), None
