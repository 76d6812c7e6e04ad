"""storage against moto's real HTTP server: endpoints, retries, typed errors, the artifact resolver."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace

import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import (
    ImageTooLargeError,
    ModelLoadError,
    SourceNotFoundError,
    StorageUnavailableError,
)
from vehicle_core.storage import get_object, parse_s3_uri, put_json, resolve_local, s3_client


@pytest.fixture
def storage(tmp_path):
    return replace(load_settings().storage, cache_dir=str(tmp_path / "cache"), max_attempts=2,
                   connect_timeout_s=1.0, read_timeout_s=5.0)


class _GetCounter:
    """Counts GetObject calls a client makes (botocore's event hooks, not timing)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, **_):
        self.calls += 1


def test_client_takes_endpoint_from_aws_endpoint_url(aws_env, storage, bucket):
    client = s3_client(storage)
    assert client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_client_takes_endpoint_from_aws_endpoint_url_s3(aws_env, monkeypatch, storage, bucket):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # wrong; the S3-specific one wins
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env["AWS_ENDPOINT_URL"])
    client = s3_client(storage)
    assert client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    assert client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_settings_endpoint_overrides_env_and_retries_are_adaptive(aws_env, monkeypatch, storage):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    client = s3_client(replace(storage, endpoint_url=aws_env["AWS_ENDPOINT_URL"], max_attempts=5))
    assert client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 5}


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bkt/a/b.jpg") == ("bkt", "a/b.jpg")
    with pytest.raises(ValueError):
        parse_s3_uri("http://bkt/a")


def test_get_object_returns_bytes_and_metadata(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="img.jpg", Body=b"12345")
    data, meta = get_object(s3_client(storage), bucket, "img.jpg")
    assert data == b"12345"
    assert meta["size"] == 5 and meta["etag"] == s3.head_object(Bucket=bucket, Key="img.jpg")["ETag"].strip('"')


def test_get_object_of_missing_key_raises_not_found(aws_env, storage, bucket):
    with pytest.raises(SourceNotFoundError) as exc:
        get_object(s3_client(storage), bucket, "missing.jpg")
    assert exc.value.code == "not_found"


def test_get_object_refuses_large_object_before_reading(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 1000)
    with pytest.raises(ImageTooLargeError):
        get_object(s3_client(storage), bucket, "big.jpg", max_bytes=999)


def test_put_json_round_trips(aws_env, storage, s3, bucket):
    put_json(s3_client(storage), bucket, "results/a.json", {"a": [1, "é"]})
    obj = s3.get_object(Bucket=bucket, Key="results/a.json")
    assert json.loads(obj["Body"].read()) == {"a": [1, "é"]}
    assert obj["ContentType"] == "application/json"


def test_unreachable_endpoint_raises_storage_unavailable(storage, monkeypatch):
    from devstack.servers import free_port

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    dead = replace(storage, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout_s=0.5)
    with pytest.raises(StorageUnavailableError):
        get_object(s3_client(dead), "bkt", "k.jpg")
    with pytest.raises(ModelLoadError, match="s3://bkt/model.keras"):
        resolve_local("s3://bkt/model.keras", dead)


def test_resolve_local_path_and_missing_path(tmp_path, storage):
    f = tmp_path / "m.bin"
    f.write_bytes(b"w")
    assert resolve_local(str(f), storage) == f
    with pytest.raises(ModelLoadError, match="no such file"):
        resolve_local(str(tmp_path / "nope"), storage)


def test_resolve_s3_file_downloads_once_and_reuses_cache(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="models/m.bin", Body=b"weights-v1")
    counter = _GetCounter()
    import boto3

    original = boto3.session.Session.client

    def counting_client(self, *a, **kw):
        client = original(self, *a, **kw)
        client.meta.events.register("before-call.s3.GetObject", counter)
        return client

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(boto3.session.Session, "client", counting_client)
        first = resolve_local(f"s3://{bucket}/models/m.bin", storage)
        assert first.read_bytes() == b"weights-v1" and counter.calls == 1
        second = resolve_local(f"s3://{bucket}/models/m.bin", storage)
        assert second == first and counter.calls == 1  # same ETag: no download
        s3.put_object(Bucket=bucket, Key="models/m.bin", Body=b"weights-v2")
        third = resolve_local(f"s3://{bucket}/models/m.bin", storage)
        assert third.read_bytes() == b"weights-v2" and counter.calls == 2  # new ETag: fresh copy


def test_resolve_s3_directory_prefix(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="art/v1/config.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="art/v1/sub/w.bin", Body=b"w")
    s3.put_object(Bucket=bucket, Key="art/v10/other.bin", Body=b"no")  # shares the string prefix only
    path = resolve_local(f"s3://{bucket}/art/v1", storage)
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == \
        ["config.json", "sub/w.bin"]


def test_resolve_s3_tar_gz_is_extracted(aws_env, storage, s3, bucket):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("model/weights.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    s3.put_object(Bucket=bucket, Key="m.tar.gz", Body=buf.getvalue())
    path = resolve_local(f"s3://{bucket}/m.tar.gz", storage)
    assert (path / "model" / "weights.bin").read_bytes() == b"abc"


def test_resolve_tar_gz_with_path_traversal_is_refused(aws_env, storage, s3, bucket):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    s3.put_object(Bucket=bucket, Key="evil.tgz", Body=buf.getvalue())
    with pytest.raises(ModelLoadError, match="unsafe"):
        resolve_local(f"s3://{bucket}/evil.tgz", storage)


def test_resolve_missing_s3_object_and_zoo(aws_env, storage, bucket):
    with pytest.raises(ModelLoadError, match="no such object"):
        resolve_local(f"s3://{bucket}/nothing-here", storage)
    with pytest.raises(ModelLoadError, match="zoo://no-such-model"):
        resolve_local("zoo://no-such-model", storage)


def test_resolve_local_tar_gz_extracts_into_cache(tmp_path, storage):
    archive = tmp_path / "m.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("w.bin")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    path = resolve_local(str(archive), storage)
    assert (path / "w.bin").read_bytes() == b"ok"
    assert str(path).startswith(storage.cache_dir)
