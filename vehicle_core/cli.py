"""``vehicle-classify``: run the pipeline on local files or s3:// objects, no queue involved.

    vehicle-classify street.jpg s3://bucket/cars/a.png        # one JSON result per line
    vehicle-classify --settings                                # print the settings in force, with sources

Exit status 0 when every input was processed (an ``error`` result is still a processed input), 2 on a
configuration or model problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vehicle_core.config import load_settings
from vehicle_core.errors import InvalidInputError, SourceNotFoundError, VehiclePipelineError
from vehicle_core.results import ImageResult, SourceRef


def _read(target: str, settings) -> tuple[bytes, SourceRef]:
    if target.startswith("s3://"):
        from vehicle_core import storage

        bucket, key = storage.parse_s3_uri(target)
        data, meta = storage.get_object(storage.s3_client(settings.storage), bucket, key)
        return data, SourceRef(bucket=bucket, key=key, **meta)
    path = Path(target)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceNotFoundError(f"cannot read {target}: {exc.strerror}") from exc
    return data, SourceRef(bucket="file", key=str(path.resolve()), size=len(data))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vehicle-classify", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="image files or s3://bucket/key URIs")
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    parser.add_argument("--settings", action="store_true", help="print the settings in force and exit")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.settings:
            flat = {f"{s}.{k}": v for s, values in settings.to_dict().items() for k, v in values.items()}
            for key, value in flat.items():
                print(f"{key} = {value!r}  ({settings.sources.get(key, 'default')})")
            return 0
        from vehicle_core.pipeline import VehiclePipeline

        pipeline = VehiclePipeline.from_settings(settings)
    except VehiclePipelineError as exc:
        print(f"vehicle-classify: {exc.message}", file=sys.stderr)
        return 2
    for target in args.inputs:
        try:
            data, source = _read(target, settings)
            result = pipeline.process(data, source)
        except InvalidInputError as exc:
            result = ImageResult.from_error(SourceRef(bucket="file", key=target), exc)
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
