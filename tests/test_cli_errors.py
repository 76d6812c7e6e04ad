"""Every command line turns a bad argument, an unreachable endpoint or missing credentials into one line.

Exit status 2 for usage, 1 for runtime. The CLIs run in this process (their ``main``), each with an
environment that points S3 at a closed loopback port or hides every credential.
"""

import pytest

from devstack.servers import free_port

CLOSED = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused at once


@pytest.fixture
def unreachable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", CLOSED)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("VP_STORAGE__MAX_ATTEMPTS", "1")  # one refused connection is enough to tell


@pytest.fixture
def no_credentials(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", CLOSED)
    monkeypatch.setenv("VP_STORAGE__MAX_ATTEMPTS", "1")


def run(main, argv, capsys):
    """(exit status, the one stderr line) of ``main(argv)``; argparse's exits count as statuses."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback, no usage dump
    return status, err[0]


def results_main(argv):
    from vehicle_core.cli.results import main

    return main(argv)


def producer_main(argv):
    from producer.cli import main

    return main(argv)


def demo_main(argv):
    from devstack.demo import main

    return main(argv)


@pytest.mark.parametrize("main", [results_main, producer_main], ids=["vehicle-results", "vehicle-producer"])
def test_unreachable_endpoint_is_one_line_with_status_1(main, unreachable, capsys):
    argv = ["summary", "s3://b/results/"] if main is results_main else ["backfill", "s3://b/p/", "--dry-run"]
    status, line = run(main, argv, capsys)
    assert status == 1
    assert f"cannot reach {CLOSED}" in line and "AWS_ENDPOINT_URL" in line


@pytest.mark.parametrize("main", [results_main, producer_main], ids=["vehicle-results", "vehicle-producer"])
def test_missing_credentials_is_one_line_with_status_1(main, no_credentials, capsys):
    argv = ["summary", "s3://b/results/"] if main is results_main else ["backfill", "s3://b/p/", "--dry-run"]
    status, line = run(main, argv, capsys)
    assert status == 1
    assert "no AWS credentials found" in line and "AWS_ACCESS_KEY_ID" in line


@pytest.mark.parametrize("main,argv", [
    (results_main, ["summary", "x/"]),
    (producer_main, ["backfill", "x/"]),
    (results_main, ["gallery", "s3://b/results/", "--limit", "0"]),
    (producer_main, ["backfill", "s3://b/p/", "--modified-since", "yesterday"]),
    (demo_main, ["--images", "many"]),
    (demo_main, ["--classifier", "/no/such/artifact"]),
], ids=["results-uri", "producer-uri", "results-limit", "producer-since", "demo-images", "demo-classifier"])
def test_bad_argument_is_one_line_with_status_2(main, argv, capsys):
    status, line = run(main, argv, capsys)
    assert status == 2
    assert "--help" in line


@pytest.mark.parametrize("main", [results_main, producer_main, demo_main])
def test_log_level_takes_any_case_and_refuses_unknown_names(main, capsys):
    from vehicle_core.cli.errors import log_level

    assert log_level("info") == log_level("Info") == "INFO"
    status, line = run(main, ["--log-level", "loud", "summary", "s3://b/"], capsys)
    assert status == 2 and "unknown log level 'loud'" in line


def test_log_level_in_lower_case_runs_the_command(aws_env, s3, bucket, capsys):
    assert results_main(["--log-level", "info", "summary", f"s3://{bucket}/results/"]) == 0
    assert "results: 0" in capsys.readouterr().out


def test_missing_bucket_is_a_usage_error(aws_env, capsys):
    status, line = run(results_main, ["summary", "s3://no-such-bucket-here/results/"], capsys)
    assert status == 2 and "no such bucket" in line


def test_demo_server_that_will_not_start_is_one_line_with_status_1(monkeypatch, tmp_path, capsys):
    import devstack.servers

    def missing():
        raise RuntimeError("no redis-server on PATH: apt-get install redis-server")

    monkeypatch.setattr(devstack.servers, "redis_server_binary", missing)
    status, line = run(demo_main, ["--classifier", str(tmp_path)], capsys)
    assert status == 1 and line == "vehicle-demo: no redis-server on PATH: apt-get install redis-server"


@pytest.fixture
def classify(classifier_artifact, monkeypatch):
    from vehicle_core.cli.classify import main

    monkeypatch.setenv("VP_CLASSIFIER__MODEL", str(classifier_artifact))
    return main


def test_classify_unreachable_endpoint_is_one_line_with_status_1(classify, unreachable, capsys):
    status, line = run(classify, ["s3://b/photo.jpg"], capsys)
    assert status == 1 and f"cannot reach {CLOSED}" in line


def test_classify_missing_credentials_is_one_line_with_status_1(classify, no_credentials, capsys):
    status, line = run(classify, ["s3://b/photo.jpg"], capsys)
    assert status == 1 and "no AWS credentials found" in line


def test_classify_bad_uri_is_a_usage_error(capsys):
    from vehicle_core.cli.classify import main

    status, line = run(main, ["s3://"], capsys)
    assert status == 2 and "s3 URI without a bucket" in line


def test_producer_unreachable_broker_is_one_line_with_status_1(aws_env, s3, bucket, monkeypatch, capsys):
    s3.put_object(Bucket=bucket, Key="p/a.jpg", Body=b"x")
    monkeypatch.setenv("VP_BROKER__URL", f"redis://127.0.0.1:{free_port()}/0")
    status, line = run(producer_main, ["backfill", f"s3://{bucket}/p/", "--no-progress"], capsys)
    assert status == 1 and "cannot reach the broker" in line and "VP_BROKER__URL" in line


def test_demo_process_that_died_is_one_line_with_the_reason():
    from devstack.demo import _one_line

    message = "flower exited with 1:\nTraceback (most recent call last):\n  File x\nOSError: [Errno 98] Address already in use\n[I] shutting down"
    line = _one_line(message, "/tmp/logs")
    assert line == ("flower exited with 1: OSError: [Errno 98] Address already in use; another program holds the "
                    "port: pass --flower-port (logs: /tmp/logs)")
