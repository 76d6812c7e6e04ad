"""``make quickstart``: ``vehicle-train quickstart`` against a moto S3 server started on loopback for the run.

    python -m devstack.quickstart --bucket quickstart --out quickstart-out [--per-class 200]

No AWS account needed: the server, its test credentials and the bucket exist only while this runs;
the process environment is put back afterwards. Prints the run's summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default="quickstart")
    parser.add_argument("--out", default="quickstart-out", help="local folder for the run and the report")
    parser.add_argument("--per-class", type=int, default=200, help="synthetic crops per class")
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from devstack.servers import aws_env, environment, moto_server
    from training.quickstart import run_quickstart
    from vehicle_core.config import load_settings
    from vehicle_core.storage import s3_client

    settings = load_settings(args.config)
    # stdout carries only the JSON summary: Keras's progress lines go to stderr with the logs.
    with contextlib.redirect_stdout(sys.stderr), moto_server() as moto, environment(aws_env(moto.endpoint_url)):
        print(f"moto S3 server on {moto.endpoint_url} (gone when this command ends)", file=sys.stderr)
        local = settings.replace(storage={"endpoint_url": moto.endpoint_url})
        s3_client(local.storage).create_bucket(Bucket=args.bucket)
        summary = run_quickstart(local, args.bucket, out_dir=Path(args.out), per_class=args.per_class)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
