"""vehicle-classify: run the pipeline on local files or s3:// objects, no queue involved.

    vehicle-classify photo.jpg                               one JSON result per line on stdout
    vehicle-classify photo.jpg s3://bucket/cars/a.png --draw out/    and out/photo.jpg, out/a.jpg drawn
    vehicle-classify --settings                              the settings in force, with their sources

Exit status 0 when every input was processed (an error result is still a processed input), 2 on a
usage, configuration or model problem, 1 when S3 cannot be read (unreachable, no credentials).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vehicle_core.cli.errors import OneLineParser, configure_logging, log_format, log_level, report, s3_uri
from vehicle_core.config import load_settings, settings_lines
from vehicle_core.errors import InvalidInputError
from vehicle_core.results.contract import ImageResult, SourceRef


def _read(target: str, store, max_bytes: int) -> tuple[bytes, SourceRef]:
    from vehicle_core.storage import is_s3, parse_s3_uri

    data, info = store.get(target, max_bytes=max_bytes)
    if is_s3(target):
        bucket, key = parse_s3_uri(target)
        return data, SourceRef(bucket=bucket, key=key, etag=info.etag, version_id=info.version_id, size=info.size)
    return data, SourceRef(bucket="file", key=str(Path(target).resolve()), size=len(data))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # Fewer of TensorFlow's C++ INFO lines around the results and errors (absl's start-up lines remain).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if args.log_level != "DEBUG" else "0")
    try:
        settings = load_settings(args.config)
        if args.settings:
            print("\n".join(settings_lines(settings)))
            return 0
        from vehicle_core.pipeline import VehiclePipeline
        from vehicle_core.storage import ObjectStore

        pipeline = VehiclePipeline.from_settings(settings)
        store = ObjectStore(settings.storage)
        drawer = _Drawer(Path(args.draw), settings) if args.draw else None
        for target in args.inputs:
            try:
                data, source = _read(target, store, settings.images.max_bytes)
                result, detections = pipeline.process_with_detections([(data, source)])[0]
            except InvalidInputError as exc:
                data, detections = None, []
                result = ImageResult.from_error(SourceRef(bucket="file", key=target), exc)
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
            if drawer:
                drawer.draw(target, data, result.to_dict(), detections)
    except Exception as exc:  # known failures become one line; report() re-raises the rest (bugs)
        return report("vehicle-classify", exc)
    return 0


class _Drawer:
    """Writes ``DIR/<input name>.jpg``: the input with its vehicles drawn (masks where the detector has them)."""

    def __init__(self, out: Path, settings) -> None:
        self.out = out
        self.images = settings.images
        self.names: set[str] = set()
        out.mkdir(parents=True, exist_ok=True)

    def draw(self, target: str, data: bytes | None, document: dict, detections) -> Path:
        from vehicle_core.images import decode_image
        from vehicle_core.reports.visualize import draw_result, encode_image, error_card

        if document["status"] == "error" or data is None:
            picture = error_card(document)
        else:
            pixels = decode_image(data, self.images)
            h, w = pixels.shape[:2]
            picture = draw_result(pixels, document, [d.full_mask(h, w) for d in detections])
        stem = Path(target.rstrip("/")).stem or "image"
        if stem in self.names:  # two inputs of the same name: keep both
            stem = f"{stem}-{len(self.names)}"
        self.names.add(stem)
        path = self.out / f"{stem}.jpg"
        if not target.startswith("s3://") and path.resolve() == Path(target).resolve():
            path = self.out / f"{stem}.annotated.jpg"  # never overwrite the input itself
        path.write_bytes(encode_image(picture, ".jpg", quality=90))
        print(f"drew {path}", file=sys.stderr)
        return path


def _s3_or_path(text: str) -> str:
    if text.startswith("s3://"):
        s3_uri(text)  # raises argparse's error for a URI without a bucket
    return text


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vehicle-classify", description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=_s3_or_path, help="image files or s3://bucket/key URIs")
    parser.add_argument("--draw", metavar="DIR", help="also write each input with its vehicles drawn into DIR")
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    parser.add_argument("--settings", action="store_true", help="print the settings in force and exit")
    parser.add_argument("--log-level", type=log_level, default="WARNING", help="debug, info, warning (default), error")
    parser.add_argument("--log-format", type=log_format, default="text", help="text (default) or json")
    return parser


if __name__ == "__main__":
    sys.exit(main())
