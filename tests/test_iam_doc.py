"""docs/iam.md: every JSON block is a policy document IAM would parse (and names only real actions
of the services the code calls)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "iam.md"
SERVICES = {"s3", "sqs", "events"}


def _policies() -> list[dict]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)]


def test_every_role_has_a_well_formed_least_privilege_policy():
    policies = _policies()
    assert len(policies) == 4  # bring-up, producer, workers, trainer
    for policy in policies:
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Resource"] != "*"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                service, _, name = action.partition(":")
                assert service in SERVICES and name and "*" not in name, action


def test_workers_cannot_write_outside_results_nor_move_the_registry_pointer():
    workers = _policies()[2]
    writes = [s for s in workers["Statement"] if "s3:PutObject" in json.dumps(s["Action"])]
    assert [s["Resource"] for s in writes] == ["arn:aws:s3:::RESULTS_BUCKET/results/*"]


def test_workers_can_read_the_results_they_check_before_writing():
    # The worker HEADs a result its conditional PUT found, or before a redelivery (HeadObject needs s3:GetObject):
    # with results.bucket set, BUCKET/* does not cover RESULTS_BUCKET.
    workers = _policies()[2]
    reads = [s for s in workers["Statement"] if "s3:GetObject" in json.dumps(s["Action"])]
    assert any("arn:aws:s3:::RESULTS_BUCKET/results/*" in json.dumps(s["Resource"]) for s in reads)
