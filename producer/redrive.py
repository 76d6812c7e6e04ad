"""``vehicle-producer redrive``: move dead-lettered SQS messages back to the queue the listener reads.

The dead-letter queue is the one the source queue's ``RedrivePolicy`` names (``setup-bucket`` makes
it ``<queue>-dlq``), or ``--dlq-url``. A dry run (the default) only looks: it counts the messages and
shows the keys of a sample; it receives that sample with a visibility timeout of 0, so every message
stays visible where it was. ``--apply`` moves them: receive up to 10, send them to the source queue
(``SendMessageBatch``, body and message attributes as they were), then delete from the dead-letter
queue only those whose send succeeded (``DeleteMessageBatch``). A crash between send and delete
leaves a message in both queues: at-least-once, and the workers' ETag check makes the repeat a no-op.
Running it again after a partial run moves what is left (idempotent in that sense).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from producer.events import KeyFilter, MalformedEventError, parse_event_body
from vehicle_core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class RedriveReport:
    dlq_url: str
    waiting: int = 0  # ApproximateNumberOfMessages of the DLQ before
    sample: list[str] = field(default_factory=list)  # s3://bucket/key of sampled messages (or why not)
    moved: int = 0
    failed: int = 0


def dead_letter_queue_url(sqs, queue_url: str) -> str:
    """The URL of the dead-letter queue named by ``queue_url``'s RedrivePolicy; ConfigError without one."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    if "RedrivePolicy" not in attrs:
        raise ConfigError(f"{queue_url} has no redrive policy: name the dead-letter queue with --dlq-url")
    arn = json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"]
    _, _, _, _, account, name = arn.split(":", 5)
    return sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]


def waiting(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def describe(body: str, keys: KeyFilter) -> list[str]:
    """What a message names, for the dry run: its images' URIs, or why it is no event we read."""
    try:
        parsed = parse_event_body(body, keys)
    except MalformedEventError as exc:
        return [f"(malformed: {exc.message})"]
    return [f"s3://{i.bucket}/{i.key}" for i in parsed.images] or ["(no image: " + "; ".join(
        f"{key} {reason}" for key, reason in parsed.skipped[:3]) + ")"]


def redrive(sqs, queue_url: str, keys: KeyFilter, *, dlq_url: str | None = None, apply: bool = False,
            sample: int = 10, limit: int | None = None) -> RedriveReport:
    """Count (and with ``apply``, move back to ``queue_url``) the dead-lettered messages."""
    dlq_url = dlq_url or dead_letter_queue_url(sqs, queue_url)
    report = RedriveReport(dlq_url=dlq_url, waiting=waiting(sqs, dlq_url))
    if not apply:
        got = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=min(max(sample, 1), 10),
                                  VisibilityTimeout=0, WaitTimeSeconds=1).get("Messages", [])
        report.sample = [line for m in got for line in describe(m.get("Body", ""), keys)][:sample]
        return report
    while limit is None or report.moved < limit:
        want = 10 if limit is None else min(10, limit - report.moved)
        got = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=want, VisibilityTimeout=60,
                                  WaitTimeSeconds=1, MessageAttributeNames=["All"]).get("Messages", [])
        if not got:
            return report
        entries = []
        for i, m in enumerate(got):
            entry = {"Id": str(i), "MessageBody": m["Body"]}
            if m.get("MessageAttributes"):
                entry["MessageAttributes"] = m["MessageAttributes"]
            entries.append(entry)
        sent = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        for failure in sent.get("Failed", []):
            report.failed += 1
            log.error("send of dead-lettered message %s failed (left in the DLQ): %s",
                      got[int(failure["Id"])].get("MessageId"), failure.get("Message") or failure.get("Code"))
        ok = [got[int(s["Id"])] for s in sent.get("Successful", [])]
        if ok:
            deleted = sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ok)])
            for failure in deleted.get("Failed", []):  # moved but still in the DLQ: a later run moves a copy
                log.error("delete of redriven message %s from the DLQ failed: %s",
                          ok[int(failure["Id"])].get("MessageId"), failure.get("Message") or failure.get("Code"))
        report.moved += len(ok)
        if report.failed and not ok:  # the source queue refuses everything: stop rather than spin
            return report
    return report
