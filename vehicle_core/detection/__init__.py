"""Vehicle detectors: one batched interface, backends chosen by name from a registry.

    detector = build_detector(settings.detector, settings.storage)
    detections = detector.detect([image_a, image_b])   # list[list[Detection]]

Backends register themselves with ``@DETECTOR_REGISTRY.register("name")``; ``detector.backend`` in
the settings picks one. Each returns only the vehicle classes named in ``detector.vehicle_classes``,
filtered by score threshold, minimum box size and maximum count, largest-score first.
"""

from vehicle_core.detection.base import DETECTOR_REGISTRY, Detector, build_detector, filter_detections

__all__ = ["DETECTOR_REGISTRY", "Detector", "build_detector", "filter_detections"]
