"""`vehicle-producer setup-bucket` against moto over HTTP: queues, policy, merged notifications, and an
upload that reaches the queue (and nothing else does)."""

from __future__ import annotations

import json

import pytest

from producer.bucket_setup import SID_EVENTS, SID_S3, BucketWiring, apply
from producer.cli import main
from producer.events import KeyFilter, parse_event_body

KEYS = KeyFilter(image_suffixes=(".jpg",), results_prefix="results/")
MOTO_ACCOUNT = "123456789012"


def _attrs(sqs, name: str) -> dict:
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def _receive_all(sqs, url: str) -> list[dict]:
    """Every message now in the queue: receive until an empty long poll (1 s) says none is left."""
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not got:
            return out
        out += got
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_dry_run_prints_the_documents_and_changes_nothing(aws_env, s3, sqs, bucket, capsys):
    assert main(["setup-bucket", f"s3://{bucket}/cams/", "--queue", f"{bucket}-q", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    (statement,) = plan["queue"]["Attributes"]["Policy"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    # moto's STS answers GetCallerIdentity with its default account: the policy names it
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                                      "StringEquals": {"aws:SourceAccount": MOTO_ACCOUNT}}
    (config,) = plan["bucket_notification"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "cams/"}]
    assert plan["queue"]["Attributes"]["RedrivePolicy"]["maxReceiveCount"] == 3
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=f"{bucket}-q")
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket=bucket)


def test_setup_is_idempotent_and_keeps_other_notifications(aws_env, s3, sqs, bucket):
    # Given a bucket already notifying another queue for another prefix
    other = sqs.create_queue(QueueName=f"{bucket}-other")["QueueUrl"]
    other_arn = sqs.get_queue_attributes(QueueUrl=other, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    theirs = {"Id": "someone-else", "QueueArn": other_arn, "Events": ["s3:ObjectCreated:*"],
              "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "other/"}]}}}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [theirs]})
    # When setup-bucket runs twice
    for _ in range(2):
        assert main(["setup-bucket", f"s3://{bucket}/cams/", "--queue", f"{bucket}-q"]) == 0
    # Then both configurations are there, ours once; the queue has its DLQ and its policy
    configs = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert sorted(c["Id"] for c in configs) == ["someone-else", f"vehicle-pipeline-{bucket}-q"]
    attrs = _attrs(sqs, f"{bucket}-q")
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == _attrs(sqs, f"{bucket}-q-dlq")["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 3
    assert [s["Sid"] for s in json.loads(attrs["Policy"])["Statement"]] == [SID_S3]


def test_an_upload_under_the_prefix_reaches_the_queue_and_nothing_else_does(aws_env, s3, sqs, bucket):
    url = apply(s3, sqs, BucketWiring(bucket=bucket, prefix="cams/", queue=f"{bucket}-up"))["queue_url"]
    _receive_all(sqs, url)  # moto, like S3, may send an s3:TestEvent when notifications are set
    s3.put_object(Bucket=bucket, Key="cams/a b+c.jpg", Body=b"x")
    s3.put_object(Bucket=bucket, Key="elsewhere/b.jpg", Body=b"x")
    images = [img for m in _receive_all(sqs, url) for img in parse_event_body(m["Body"], KEYS).images]
    assert [(i.bucket, i.key) for i in images] == [(bucket, "cams/a b+c.jpg")]
    assert images[0].etag and images[0].event_time


def test_eventbridge_form_enables_the_bucket_switch_and_routes_object_created(aws_env, s3, sqs, bucket):
    from vehicle_core.config import load_settings
    from vehicle_core.storage import events_client as make_events

    events = make_events(load_settings(env={}).storage)
    wiring = BucketWiring(bucket=bucket, prefix="cams/", queue=f"{bucket}-eb", eventbridge=True)
    url = apply(s3, sqs, wiring, events=events)["queue_url"]
    rule = events.describe_rule(Name=wiring.rule_name)
    assert json.loads(rule["EventPattern"])["detail"]["bucket"]["name"] == [bucket]
    assert [t["Arn"] for t in events.list_targets_by_rule(Rule=wiring.rule_name)["Targets"]] == [
        _attrs(sqs, f"{bucket}-eb")["QueueArn"]]
    (statement,) = json.loads(_attrs(sqs, f"{bucket}-eb")["Policy"])["Statement"]
    assert statement["Sid"] == SID_EVENTS and statement["Principal"] == {"Service": "events.amazonaws.com"}
    # Uploads: the bucket's EventBridge switch sends them to the bus, the rule keeps those under the
    # prefix, and the listener's parser reads the event (its key is not URL-encoded)
    # (moto's event omits detail.object.etag, which AWS sends: test_eventbridge_events.py covers it)
    s3.put_object(Bucket=bucket, Key="cams/x+y z.jpg", Body=b"x")
    s3.put_object(Bucket=bucket, Key="elsewhere/b.jpg", Body=b"x")
    images = [img for m in _receive_all(sqs, url) for img in parse_event_body(m["Body"], KEYS).images]
    assert [(i.bucket, i.key) for i in images] == [(bucket, "cams/x+y z.jpg")]
    assert images[0].event_time



def test_the_queue_policy_names_the_source_account(aws_env, s3, sqs, bucket):
    # Given: the caller's account from STS (moto's), then an explicit bucket owner's account
    assert main(["setup-bucket", f"s3://{bucket}/cams/", "--queue", f"{bucket}-acct"]) == 0
    (statement,) = json.loads(_attrs(sqs, f"{bucket}-acct")["Policy"])["Statement"]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": MOTO_ACCOUNT}
    assert statement["Condition"]["ArnEquals"] == {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}
    # When: run again with --source-account, the one statement is replaced (not added)
    assert main(["setup-bucket", f"s3://{bucket}/cams/", "--queue", f"{bucket}-acct",
                 "--source-account", "210987654321"]) == 0
    (statement,) = json.loads(_attrs(sqs, f"{bucket}-acct")["Policy"])["Statement"]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": "210987654321"}


def test_a_bad_source_account_is_a_one_line_usage_error(aws_env, bucket, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["setup-bucket", f"s3://{bucket}/", "--queue", "q", "--source-account", "12ab"])
    assert exit_.value.code == 2
    assert "not a 12-digit AWS account id: '12ab'" in capsys.readouterr().err
