"""vehicle-results: look at result documents already in S3.

    vehicle-results summary s3://bucket/results/              counts by status, label, error code; models
    vehicle-results summary s3://bucket/results/ --format json       the same as one JSON object
    vehicle-results export s3://bucket/results/ --format csv --out results.csv      one row per vehicle
    vehicle-results gallery s3://bucket/results/ --limit 50 --out gallery.html      annotated thumbnails

S3 access uses the storage settings (storage.endpoint_url, AWS_ENDPOINT_URL) and boto3's credential
chain. Exit status 0 on success, 2 for a usage problem, 1 when S3 cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vehicle_core.cli.errors import OneLineParser, configure_logging, log_format, log_level, report, s3_uri

PROG = "vehicle-results"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        from vehicle_core.config import load_settings
        from vehicle_core.storage import ObjectStore

        settings = load_settings(args.config)
        return args.func(args, ObjectStore(settings.storage), settings)
    except Exception as exc:  # known failures become one line; report() re-raises the rest
        return report(PROG, exc)


def _summary(args, store, settings) -> int:
    from vehicle_core.results.reading import iter_result_documents
    from vehicle_core.results.tables import Summary

    bucket, prefix = args.uri
    summary = Summary()
    for _, document in iter_result_documents(store, bucket, prefix, args.limit):
        summary.add(document)
    if args.format == "json":
        print(json.dumps({"uri": f"s3://{bucket}/{prefix}", **summary.to_dict()}, indent=2))
        return 0
    print(f"s3://{bucket}/{prefix}")
    print(summary.format())
    return 0


def _export(args, store, settings) -> int:
    from vehicle_core.results.reading import iter_result_documents
    from vehicle_core.results.tables import export_csv, export_parquet

    bucket, prefix = args.uri
    out = Path(args.out or f"results.{args.format}")
    documents = iter_result_documents(store, bucket, prefix, args.limit)
    count = (export_csv if args.format == "csv" else export_parquet)(documents, out)
    print(f"{count} rows -> {out}")
    return 0


def _gallery(args, store, settings) -> int:
    from vehicle_core.reports.gallery import gallery_item, write_gallery
    from vehicle_core.results.reading import iter_result_documents, read_source

    bucket, prefix = args.uri
    items = []
    for _, document in iter_result_documents(store, bucket, prefix, args.limit):
        source = document.get("source") or {}
        data = None
        if document.get("status") != "error" and source.get("bucket") and source.get("key"):
            data = read_source(store, source["bucket"], source["key"])
        items.append(gallery_item(document, data, settings.images))
    out = write_gallery(items, Path(args.out), title=args.title, origin=f"s3://{bucket}/{prefix}")
    print(out.resolve())
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    parser.add_argument("--log-level", type=log_level, default="WARNING", help="debug, info, warning (default), error")
    parser.add_argument("--log-format", type=log_format, default="text", help="text (default) or json")
    sub = parser.add_subparsers(required=True, metavar="{summary,export,gallery}")

    def command(name: str, func, help_text: str):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("uri", type=s3_uri, help="s3://bucket/prefix of the result documents, e.g. s3://photos/results/")
        p.add_argument("--limit", type=_positive, help="read at most this many documents (in key order)")
        p.set_defaults(func=func)
        return p

    summary = command("summary", _summary, "counts by status, label and error code, a confidence histogram, the models")
    summary.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")
    export = command("export", _export, "one row per vehicle (and per result without one) as CSV or Parquet")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv")
    export.add_argument("--out", help="file to write (default: results.csv / results.parquet)")
    gallery = command("gallery", _gallery, "a self-contained HTML page of annotated thumbnails")
    gallery.add_argument("--out", default="gallery.html", help="HTML file to write (default: gallery.html)")
    gallery.add_argument("--title", default="vehicle-pipeline results")
    gallery.set_defaults(limit=100)
    return parser


if __name__ == "__main__":
    sys.exit(main())
