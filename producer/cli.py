"""``vehicle-producer``: ``listen`` (SQS -> detect queue), ``backfill s3://bucket/prefix``, ``reconcile``,
``setup-bucket s3://bucket[/prefix] --queue NAME`` (uploads -> SQS, with a dead-letter queue) and
``redrive`` (dead-lettered messages back to the queue; a dry run unless ``--apply``)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from vehicle_core.cli.errors import OneLineParser, configure_logging, log_format, log_level, report, s3_uri
from vehicle_core.config import load_settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format or "text")
    try:
        settings = load_settings(args.config)
        if args.log_format is None and settings.logs.format != "text":
            configure_logging(args.log_level, settings.logs.format)
        return args.func(args, settings)
    except Exception as exc:  # known failures become one line; report() re-raises the rest (bugs)
        broker = _broker_unreachable(exc)
        if broker:
            print(f"vehicle-producer: {broker}", file=sys.stderr)
            return 1
        return report("vehicle-producer", exc)


def _broker_unreachable(exc: BaseException) -> str | None:
    """A message when ``exc`` says the broker (Redis) could not be reached, else None."""
    from kombu.exceptions import OperationalError

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError:  # another broker transport
        RedisConnectionError = OperationalError  # noqa: N806
    if isinstance(exc, OperationalError | RedisConnectionError):
        from vehicle_core.config import mask_urls

        return (f"cannot reach the broker ({mask_urls(str(exc))}): is Redis up? check broker.url (VP_BROKER__URL), "
                "or pass --dry-run to only list")
    return None


def _listen(args, settings) -> int:
    from vehicle_core.errors import ConfigError

    queue_url = args.queue_url or settings.producer.queue_url
    if not queue_url:
        raise ConfigError("no SQS queue: pass --queue-url or set producer.queue_url (VP_PRODUCER__QUEUE_URL)")
    from producer.events import KeyFilter
    from producer.listen import Listener, stop_on_signals
    from producer.queue_depth import depth_probe
    from vehicle_core.storage import sqs_client
    from workers.messages import sender_app

    app = sender_app(settings.broker)
    listener = Listener(
        sqs=sqs_client(settings.storage),
        queue_url=queue_url,
        app=app,
        keys=KeyFilter.from_settings(settings.producer, settings.results),
        wait_time_s=settings.producer.wait_time_s,
        depth=depth_probe(app, settings.broker.detect_queue),
        max_queue_depth=settings.producer.max_queue_depth,
        pause_poll_s=settings.producer.pause_poll_s,
        outage_visibility_s=settings.producer.outage_visibility_s,
        outage_backoff_max_s=settings.producer.outage_backoff_max_s,
    )
    stop_on_signals(listener)
    from producer.metrics import serve

    serve(settings.producer.metrics_port, lambda: listener.stats)
    listener.run()
    return 0


def _backfill(args, settings) -> int:
    from producer.backfill import BackfillOptions, run_backfill
    from producer.checkpoint import Checkpoint
    from producer.progress import Progress
    from producer.queue_depth import depth_probe
    from vehicle_core.storage import ObjectStore
    from workers.messages import sender_app

    store = ObjectStore(settings.storage)
    source, bucket, prefix, shards = _shards(args, settings, store)
    overrides = {"modified_since": args.modified_since, "skip_done": args.skip_done, "dry_run": args.dry_run,
                 "limit": args.limit, "keys": _keys(args, settings)}
    if args.concurrency:
        overrides["list_concurrency"] = args.concurrency
    opts = BackfillOptions.from_settings(settings, bucket, prefix, **overrides)
    # A dry run reads the checkpoint's positions (to show what a resume would send) but never writes it.
    checkpoint = Checkpoint(args.checkpoint, store, source=source, every=settings.producer.checkpoint_every,
                            read_only=args.dry_run)
    if checkpoint.resumed:
        print(f"resuming from {args.checkpoint}")
    app = sender_app(settings.broker)
    depth = None if args.dry_run else depth_probe(app, settings.broker.detect_queue)
    total = None
    if args.count_first:
        from producer.shards import count_keys

        total = count_keys(shards)
    progress = Progress(total, enabled=not args.no_progress)
    t0 = time.monotonic()
    try:
        stats = run_backfill(store, app, opts, shards, checkpoint=checkpoint, depth=depth, progress=progress)
    finally:
        progress.close()
    seconds = time.monotonic() - t0
    print(f"listed {stats.listed}, enqueued {stats.enqueued}, already done {stats.already_done}, "
          f"filtered {stats.filtered}, pauses {stats.pauses}" + (" (dry run)" if args.dry_run else ""))
    print(f"{seconds:.1f} s, {stats.listed / max(seconds, 1e-9):.0f} keys/s listed, peak RSS {peak_rss_mib():.1f} MiB; "
          + _requests_line(store, stats.listed))
    return 0


def _shards(args, settings, store):
    """(checkpoint source name, bucket, prefix, shards) from the URI or the inventory manifest."""
    from producer.shards import listing_shards
    from vehicle_core.errors import ConfigError
    from vehicle_core.storage import parse_s3_uri

    if args.inventory:
        from producer.inventory import Manifest

        if args.skip_done:
            raise ConfigError("--skip-done needs a key-ordered listing; with --inventory the workers' own "
                              "check (one HEAD per image) skips what is done")
        manifest = Manifest.read(store, args.inventory)
        prefix = parse_s3_uri(args.uri)[1] if args.uri else ""
        return args.inventory, manifest.source_bucket, prefix, manifest.shards(store, prefix)
    if not args.uri:
        raise ConfigError("name s3://bucket/prefix, or --inventory s3://…/manifest.json")
    bucket, prefix = parse_s3_uri(args.uri)
    concurrency = args.concurrency or settings.producer.list_concurrency
    results_in_source = settings.results.bucket in (None, bucket)
    shards = listing_shards(store, bucket, prefix, concurrency,
                            exclude=settings.results.prefix if results_in_source else None)
    return f"{args.uri} concurrency={concurrency}", bucket, prefix, shards


def _keys(args, settings):
    from producer.events import KeyFilter

    keys = KeyFilter.from_settings(settings.producer, settings.results)
    if args.suffix:
        keys = KeyFilter(tuple(s.lower() for s in args.suffix), keys.results_prefix, keys.input_prefixes)
    return keys


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM of /proc/self/status (getrusage's maxrss also counts
    the parent's RSS at fork, kept across exec); getrusage where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _requests_line(store, keys: int) -> str:
    total = sum(store.requests.values())
    detail = ", ".join(f"{name} {count}" for name, count in sorted(store.requests.items()))
    return f"S3 requests {total} ({detail or 'none'}), {1000 * total / max(keys, 1):.2f} per 1,000 keys"


def _reconcile(args, settings) -> int:
    from producer.reconcile import reconcile
    from vehicle_core.storage import ObjectStore, parse_s3_uri
    from workers.messages import sender_app

    store = ObjectStore(settings.storage)
    bucket, prefix = parse_s3_uri(args.uri)
    app = sender_app(settings.broker) if args.enqueue else None
    report = reconcile(store, bucket, prefix, _keys(args, settings), results_bucket=settings.results.bucket,
                       verify=args.verify, app=app, enqueue_batch=settings.producer.enqueue_batch,
                       found=None if args.quiet else lambda reason, info: print(f"{reason}\t{info.uri}"))
    reasons = ", ".join(f"{r} {report.reasons[r]}" for r in ("missing", "stale", "retriable"))
    print(f"images {report.images}, without a current result {report.not_done} ({reasons}), "
          f"enqueued {report.enqueued}; peak RSS {peak_rss_mib():.1f} MiB; {_requests_line(store, report.images)}",
          file=sys.stderr)
    return 1 if report.not_done else 0


def _checked_uri(text: str) -> str:
    """argparse ``type=``: an ``s3://bucket/prefix`` checked (one-line usage error otherwise), kept as text."""
    s3_uri(text)
    return text


def _account_id(text: str) -> str:
    """argparse ``type=``: a 12-digit AWS account id."""
    value = text.strip()
    if not (len(value) == 12 and value.isdigit()):
        raise argparse.ArgumentTypeError(f"not a 12-digit AWS account id: {text!r}")
    return value


def _setup_bucket(args, settings) -> int:
    import json

    from producer.bucket_setup import BucketWiring, apply, caller_account, plan
    from vehicle_core.storage import events_client, s3_client, sqs_client, sts_client

    bucket, prefix = args.uri
    s3, sqs = s3_client(settings.storage), sqs_client(settings.storage)
    wiring = BucketWiring(bucket=bucket, prefix=prefix, queue=args.queue, max_receive_count=args.max_receive_count,
                          eventbridge=args.eventbridge, region=sqs.meta.region_name)
    # aws:SourceAccount of the queue policy: the bucket owner's account, by default the caller's.
    account = caller_account(sts_client(settings.storage))
    source_account = args.source_account or account
    if args.dry_run:
        print(json.dumps(plan(s3, sqs, wiring, account=account, source_account=source_account), indent=2))
        return 0
    events = events_client(settings.storage) if args.eventbridge else None
    done = apply(s3, sqs, wiring, events=events, source_account=source_account)
    print(f"s3://{bucket}/{prefix} -> {done['queue_url']} "
          f"({'EventBridge rule ' + wiring.rule_name if args.eventbridge else 'S3 notification'}; "
          f"dead letters after {args.max_receive_count} receives: {wiring.dlq})")
    print(f"listen with: VP_PRODUCER__QUEUE_URL={done['queue_url']} vehicle-producer listen")
    return 0


def _redrive(args, settings) -> int:
    from producer.redrive import redrive
    from vehicle_core.errors import ConfigError
    from vehicle_core.storage import sqs_client

    queue_url = args.queue_url or settings.producer.queue_url
    if not queue_url:
        raise ConfigError("no SQS queue: pass --queue-url or set producer.queue_url (VP_PRODUCER__QUEUE_URL)")
    report = redrive(sqs_client(settings.storage), queue_url, _keys(args, settings), dlq_url=args.dlq_url,
                     apply=args.apply, sample=args.sample, limit=args.limit)
    if not args.apply:
        print(f"{report.waiting} messages in {report.dlq_url} (dry run: nothing moved; --apply moves them "
              f"back to {queue_url})")
        for line in report.sample:
            print(f"  {line}")
        return 0
    print(f"moved {report.moved} messages from {report.dlq_url} back to {queue_url}"
          + (f"; {report.failed} could not be sent and stay in the dead-letter queue" if report.failed else ""))
    return 1 if report.failed else 0


def _since(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}; e.g. 2026-01-01 or 2026-01-01T08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vehicle-producer", description=__doc__)
    parser.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the defaults)")
    parser.add_argument("--log-level", type=log_level, default="INFO", help="debug, info (default), warning, error")
    parser.add_argument("--log-format", type=log_format, help="text or json (default: logs.format)")
    sub = parser.add_subparsers(required=True)
    listen = sub.add_parser("listen", help="long-poll SQS for S3 events and enqueue their images")
    listen.add_argument("--queue-url", help="SQS queue URL (default: producer.queue_url)")
    listen.set_defaults(func=_listen)
    back = sub.add_parser("backfill", help="enqueue images already in s3://bucket/prefix")
    back.add_argument("uri", nargs="?", type=_checked_uri,
                      help="s3://bucket/prefix (with --inventory: only keys under this prefix)")
    _suffix(back)
    back.add_argument("--checkpoint", help="file or s3:// URI recording progress; rerun with it to resume")
    back.add_argument("--concurrency", type=int, help="sub-prefixes listed in parallel (default: producer.list_concurrency)")
    back.add_argument("--inventory", help="s3://…/manifest.json of an S3 Inventory report to read instead of listing")
    back.add_argument("--count-first", action="store_true", help="count the keys first, for a total and an ETA")
    back.add_argument("--modified-since", type=_since, help="only objects modified at or after this ISO time (UTC)")
    back.add_argument("--skip-done", action="store_true", help="skip keys whose result describes the current ETag")
    back.add_argument("--dry-run", action="store_true", help="list what would be enqueued, enqueue nothing")
    back.add_argument("--limit", type=int, help="enqueue at most this many images")
    back.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    back.set_defaults(func=_backfill)
    rec = sub.add_parser("reconcile", help="list images without a current result; exit 1 when there is any")
    rec.add_argument("uri", type=_checked_uri, help="s3://bucket/prefix")
    _suffix(rec)
    rec.add_argument("--enqueue", action="store_true", help="also send them down the chain")
    rec.add_argument("--verify", action="store_true", help="HEAD every result instead of trusting LastModified")
    rec.add_argument("--quiet", action="store_true", help="counts only, no line per image")
    rec.set_defaults(func=_reconcile)

    red = sub.add_parser("redrive", help="move dead-lettered messages back to the queue (dry run unless --apply)")
    red.add_argument("--queue-url", help="the queue the listener reads (default: producer.queue_url)")
    red.add_argument("--dlq-url", help="the dead-letter queue (default: the one the queue's RedrivePolicy names)")
    red.add_argument("--apply", action="store_true", help="move them (default: count and show a sample only)")
    red.add_argument("--sample", type=int, default=10, help="keys shown by a dry run (default 10, at most 10)")
    red.add_argument("--limit", type=int, help="move at most this many messages")
    red.set_defaults(func=_redrive, suffix=None)

    setup = sub.add_parser("setup-bucket", help="create the SQS queue (+ DLQ, policy) and the bucket's notification")
    setup.add_argument("uri", type=s3_uri, help="s3://bucket[/prefix]: uploads under prefix are announced")
    setup.add_argument("--queue", required=True, help="SQS queue name (its dead-letter queue: NAME-dlq)")
    setup.add_argument("--max-receive-count", type=int, default=3, help="receives before a message goes to the DLQ")
    setup.add_argument("--eventbridge", action="store_true",
                       help="announce through EventBridge (bucket switch + 'Object Created' rule), not S3 notifications")
    setup.add_argument("--source-account", type=_account_id,
                       help="12-digit account owning the bucket, the policy's aws:SourceAccount (default: the caller's, from STS)")
    setup.add_argument("--dry-run", action="store_true", help="print the JSON that would be applied; change nothing")
    setup.set_defaults(func=_setup_bucket)
    return parser


def _suffix(parser) -> None:
    parser.add_argument("--suffix", action="append", help="only keys ending with this (repeatable); default: image suffixes")


if __name__ == "__main__":
    sys.exit(main())
