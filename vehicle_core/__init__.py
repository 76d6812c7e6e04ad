"""vehicle_core: find vehicles in an image, cut each out of its background, and label it.

A plain library: it imports nothing of Celery, SQS or Flower. Heavy frameworks (PyTorch,
TensorFlow) are imported only by the modules that need them, when first used.

    from vehicle_core import load_settings, VehiclePipeline
    pipeline = VehiclePipeline.from_settings(load_settings())
    result = pipeline.process(open("street.jpg", "rb").read())
    print(result.to_json())
"""

from vehicle_core.config import Settings, load_settings
from vehicle_core.errors import InvalidInputError, TransientError, VehiclePipelineError
from vehicle_core.results.contract import Detection, ImageResult, SourceRef

__version__ = "0.1.0"

__all__ = [
    "Detection",
    "ImageResult",
    "InvalidInputError",
    "Settings",
    "SourceRef",
    "TransientError",
    "VehiclePipeline",
    "VehiclePipelineError",
    "load_settings",
]


def __getattr__(name: str):
    # The pipeline pulls in OpenCV and, on first build, the model frameworks: import it on demand.
    if name == "VehiclePipeline":
        from vehicle_core.pipeline import VehiclePipeline

        return VehiclePipeline
    raise AttributeError(name)
