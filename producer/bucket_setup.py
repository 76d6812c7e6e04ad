"""``vehicle-producer setup-bucket``: make a bucket's uploads reach the listener's SQS queue.

What it creates or updates, each step idempotent (run it again and nothing changes):

* the dead-letter queue ``<queue>-dlq`` and the queue ``<queue>`` with a redrive policy
  (``maxReceiveCount``): a message the listener cannot handle ends there for a human;
* the queue policy letting this bucket (``s3.amazonaws.com``, or with ``--eventbridge`` the rule,
  ``events.amazonaws.com``) send to the queue, on two conditions: ``aws:SourceArn`` (that bucket or
  rule) and ``aws:SourceAccount`` (the account owning it: ``--source-account``, else the caller's
  account from STS ``GetCallerIdentity``, else the queue's), so a bucket of the same name in another
  account cannot send (the confused-deputy guard AWS documents). AWS drops events a queue policy does
  not allow, silently; moto does not check it, so the tests check the document itself;
* direct form: the bucket's ``s3:ObjectCreated:*`` notification for the prefix, *merged* into the
  bucket's existing notification configuration (other queues, topics, Lambdas are kept);
* EventBridge form: the bucket's EventBridge switch (also merged) and a rule matching its
  ``Object Created`` events under the prefix, targeting the queue.

:func:`plan` computes every document from what exists (reads only); :func:`apply` writes them.
``--dry-run`` prints the plan as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Statement ids and configuration ids this module owns: replaced on re-runs, everything else kept.
SID_S3 = "vehicle-pipeline-s3-notifications"
SID_EVENTS = "vehicle-pipeline-eventbridge"
ACCOUNT_PLACEHOLDER = "ACCOUNT_ID"


@dataclass(frozen=True)
class BucketWiring:
    """What to wire: bucket and key prefix, queue name, redrive limit, and which delivery form."""

    bucket: str
    prefix: str
    queue: str
    max_receive_count: int = 3
    eventbridge: bool = False
    region: str = "us-east-1"

    @property
    def dlq(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def config_id(self) -> str:
        # Notification configurations and rules are named after the queue, so re-runs find their own.
        return f"vehicle-pipeline-{self.queue}"

    @property
    def rule_name(self) -> str:
        return self.config_id[:64]


def queue_arn(name: str, region: str, account: str) -> str:
    return f"arn:aws:sqs:{region}:{account}:{name}"


def queue_policy(queue: str, *, source_arn: str, service: str, sid: str, source_account: str,
                 existing: str | None = None) -> dict:
    """The queue's policy with our one statement (``service`` may send, from ``source_arn`` in
    ``source_account`` only) replacing an earlier one of the same Sid; statements others wrote are kept."""
    doc = json.loads(existing) if existing else {"Version": "2012-10-17", "Statement": []}
    statements = [s for s in doc.get("Statement", []) if s.get("Sid") != sid]
    statements.append({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sqs:SendMessage",
        "Resource": queue,
        "Condition": {"ArnEquals": {"aws:SourceArn": source_arn},
                      "StringEquals": {"aws:SourceAccount": source_account}},
    })
    return {**doc, "Statement": statements}


def merged_notifications(existing: dict, wiring: BucketWiring, arn: str) -> dict:
    """The bucket's notification configuration with ours added (or replaced): other entries stay."""
    config = {k: v for k, v in existing.items() if k != "ResponseMetadata"}
    # Ours is found by Id, or by target: an earlier wiring of this queue without our Id (AWS refuses
    # two configurations whose prefixes overlap for the same events).
    queues = [q for q in config.get("QueueConfigurations", [])
              if q.get("Id") != wiring.config_id and q.get("QueueArn") != arn]
    if wiring.eventbridge:
        config["EventBridgeConfiguration"] = {}
    else:
        entry: dict[str, Any] = {"Id": wiring.config_id, "QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
        if wiring.prefix:
            entry["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": wiring.prefix}]}}
        queues.append(entry)
    if queues:
        config["QueueConfigurations"] = queues
    else:
        config.pop("QueueConfigurations", None)
    return config


def event_pattern(wiring: BucketWiring) -> dict:
    """EventBridge pattern of this bucket's ``Object Created`` events under the prefix."""
    detail: dict[str, Any] = {"bucket": {"name": [wiring.bucket]}}
    if wiring.prefix:
        detail["object"] = {"key": [{"prefix": wiring.prefix}]}
    return {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": detail}


def _existing_queue(sqs, name: str) -> tuple[str | None, dict[str, str]]:
    """(URL, attributes) of queue ``name``, or (None, {}) when it does not exist yet."""
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return None, {}
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
    return url, attrs


def _account_of(attrs: dict[str, str]) -> str | None:
    arn = attrs.get("QueueArn", "")
    return arn.split(":")[4] if arn.count(":") >= 5 else None


def caller_account(sts) -> str | None:
    """The account id of the credentials in use (STS ``GetCallerIdentity``), None when STS cannot say."""
    try:
        return sts.get_caller_identity()["Account"]
    except Exception:  # noqa: BLE001 - no STS endpoint or no permission: the queue's ARN names it instead
        return None


def plan(s3, sqs, wiring: BucketWiring, *, account: str | None = None,
         source_account: str | None = None) -> dict[str, Any]:
    """Every document :func:`apply` would write, computed from what exists now (reads only).

    The account comes from an existing queue's ARN, else ``account``, else a placeholder; the
    policy's ``aws:SourceAccount`` is ``source_account`` (the bucket owner's), else that account.
    """
    _, dlq_attrs = _existing_queue(sqs, wiring.dlq)
    _, q_attrs = _existing_queue(sqs, wiring.queue)
    account = _account_of(q_attrs) or _account_of(dlq_attrs) or account or ACCOUNT_PLACEHOLDER
    arn = q_attrs.get("QueueArn") or queue_arn(wiring.queue, wiring.region, account)
    dlq = dlq_attrs.get("QueueArn") or queue_arn(wiring.dlq, wiring.region, account)
    rule_arn = f"arn:aws:events:{wiring.region}:{account}:rule/{wiring.rule_name}"
    bucket_arn = f"arn:aws:s3:::{wiring.bucket}"
    source_account = source_account or account
    if wiring.eventbridge:
        policy = queue_policy(arn, source_arn=rule_arn, service="events.amazonaws.com", sid=SID_EVENTS,
                              source_account=source_account, existing=q_attrs.get("Policy"))
    else:
        policy = queue_policy(arn, source_arn=bucket_arn, service="s3.amazonaws.com", sid=SID_S3,
                              source_account=source_account, existing=q_attrs.get("Policy"))
    existing = s3.get_bucket_notification_configuration(Bucket=wiring.bucket)
    out: dict[str, Any] = {
        "dead_letter_queue": {"QueueName": wiring.dlq, "QueueArn": dlq},
        "queue": {
            "QueueName": wiring.queue,
            "QueueArn": arn,
            "Attributes": {
                "RedrivePolicy": {"deadLetterTargetArn": dlq, "maxReceiveCount": wiring.max_receive_count},
                "Policy": policy,
            },
        },
        "bucket_notification": {"Bucket": wiring.bucket,
                                "NotificationConfiguration": merged_notifications(existing, wiring, arn)},
    }
    if wiring.eventbridge:
        out["eventbridge_rule"] = {"Name": wiring.rule_name, "EventPattern": event_pattern(wiring),
                                   "Targets": [{"Id": "vehicle-pipeline-queue", "Arn": arn}]}
    return out


def apply(s3, sqs, wiring: BucketWiring, *, events=None, source_account: str | None = None) -> dict[str, Any]:
    """Create or update the queues, the queue policy, the notification (and the EventBridge rule,
    with ``events``, a boto3 EventBridge client); return the plan applied plus ``queue_url``."""
    # The queues first: the plan's ARNs then name the real account.
    sqs.create_queue(QueueName=wiring.dlq)
    url = sqs.create_queue(QueueName=wiring.queue)["QueueUrl"]
    doc = plan(s3, sqs, wiring, source_account=source_account)
    attrs = doc["queue"]["Attributes"]
    # create_queue refuses different attributes for an existing queue; set_queue_attributes does not.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={
        "RedrivePolicy": json.dumps({**attrs["RedrivePolicy"],
                                     "maxReceiveCount": str(attrs["RedrivePolicy"]["maxReceiveCount"])}),
        "Policy": json.dumps(attrs["Policy"]),
    })
    if wiring.eventbridge:
        if events is None:
            raise ValueError("the EventBridge form needs an EventBridge client")
        rule = doc["eventbridge_rule"]
        events.put_rule(Name=rule["Name"], EventPattern=json.dumps(rule["EventPattern"]), State="ENABLED",
                        Description=f"{wiring.bucket} uploads to SQS {wiring.queue} (vehicle-pipeline)")
        events.put_targets(Rule=rule["Name"], Targets=rule["Targets"])
    s3.put_bucket_notification_configuration(**doc["bucket_notification"])
    return {**doc, "queue_url": url}
