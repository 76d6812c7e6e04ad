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
from vehicle_core.errors import InvalidInputError, VehiclePipelineError
from vehicle_core.results import ImageResult, SourceRef


def _read(target: str, store, max_bytes: int) -> tuple[bytes, SourceRef]:
    from vehicle_core.storage import is_s3, parse_s3_uri

    data, info = store.get(target, max_bytes=max_bytes)
    if is_s3(target):
        bucket, key = parse_s3_uri(target)
        return data, SourceRef(bucket=bucket, key=key, etag=info.etag, version_id=info.version_id, size=info.size)
    return data, SourceRef(bucket="file", key=str(Path(target).resolve()), size=len(data))


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
        from vehicle_core.storage import ObjectStore

        pipeline = VehiclePipeline.from_settings(settings)
        store = ObjectStore(settings.storage)
    except VehiclePipelineError as exc:
        print(f"vehicle-classify: {exc.message}", file=sys.stderr)
        return 2
    for target in args.inputs:
        try:
            data, source = _read(target, store, settings.images.max_bytes)
            result = pipeline.process(data, source)
        except InvalidInputError as exc:
            result = ImageResult.from_error(SourceRef(bucket="file", key=target), exc)
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
