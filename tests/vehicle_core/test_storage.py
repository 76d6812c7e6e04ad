"""storage against moto's real HTTP server: endpoints, retries, typed errors, the artifact resolver."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace

import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import (
    AccessDeniedError,
    ImageTooLargeError,
    ModelLoadError,
    SourceNotFoundError,
    StorageRejectedError,
    StorageUnavailableError,
)
from vehicle_core.storage import ObjectStore, parse_s3_uri, resolve_local, s3_client, storage_error


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


def test_get_returns_bytes_and_what_s3_said(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="img.jpg", Body=b"12345", Metadata={"who": "test"})
    data, info = ObjectStore(storage).get(f"s3://{bucket}/img.jpg")
    assert data == b"12345"
    assert info.size == 5 and info.etag == s3.head_object(Bucket=bucket, Key="img.jpg")["ETag"].strip('"')
    assert info.metadata == {"who": "test"} and info.key == "img.jpg"


def test_get_of_missing_key_raises_not_found_and_head_says_none(aws_env, storage, bucket):
    store = ObjectStore(storage)
    with pytest.raises(SourceNotFoundError) as exc:
        store.get(f"s3://{bucket}/missing.jpg")
    assert exc.value.code == "not_found"
    assert store.head(f"s3://{bucket}/missing.jpg") is None
    assert store.get_json(f"s3://{bucket}/missing.json") is None


def test_get_refuses_large_object_before_reading(aws_env, storage, s3, bucket):
    s3.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 1000)
    with pytest.raises(ImageTooLargeError):
        ObjectStore(storage).get(f"s3://{bucket}/big.jpg", max_bytes=999)


def test_put_json_round_trips_with_metadata(aws_env, storage, s3, bucket):
    store = ObjectStore(storage)
    store.put_json(f"s3://{bucket}/results/a.json", {"a": [1, "é"]}, metadata={"vp-status": "ok"})
    obj = s3.get_object(Bucket=bucket, Key="results/a.json")
    assert json.loads(obj["Body"].read()) == {"a": [1, "é"]}
    assert obj["ContentType"] == "application/json"
    assert store.head(f"s3://{bucket}/results/a.json").metadata == {"vp-status": "ok"}
    assert store.get_json(f"s3://{bucket}/results/a.json") == {"a": [1, "é"]}


def test_list_is_by_prefix_in_key_order_and_resumes_after_a_key(aws_env, storage, s3, bucket):
    for key in ("cam/b.jpg", "cam/a.jpg", "cam2/c.jpg", "other/d.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = ObjectStore(storage)
    assert [i.key for i in store.list(f"s3://{bucket}/cam")] == ["cam/a.jpg", "cam/b.jpg", "cam2/c.jpg"]
    assert [i.key for i in store.list(f"s3://{bucket}/cam/")] == ["cam/a.jpg", "cam/b.jpg"]
    assert [i.key for i in store.list(f"s3://{bucket}/", start_after="cam/b.jpg")] == ["cam2/c.jpg", "other/d.jpg"]
    assert store.list_prefixes(f"s3://{bucket}/") == [f"s3://{bucket}/cam/", f"s3://{bucket}/cam2/", f"s3://{bucket}/other/"]
    store.delete(f"s3://{bucket}/cam/a.jpg")
    assert store.head(f"s3://{bucket}/cam/a.jpg") is None


def test_local_paths_have_the_same_verbs(tmp_path, storage):
    store = ObjectStore(storage)
    store.put(str(tmp_path / "d" / "x.bin"), b"abc")
    data, info = store.get(str(tmp_path / "d" / "x.bin"))
    assert data == b"abc" and info.size == 3
    assert [i.uri for i in store.list(str(tmp_path))] == [str(tmp_path / "d") + "/", str(tmp_path / "d" / "x.bin")]
    with pytest.raises(SourceNotFoundError):
        store.get(str(tmp_path / "nope.bin"))


@pytest.mark.parametrize("where", ["s3", "local"])
def test_conditional_puts_write_only_where_the_condition_holds(aws_env, storage, bucket, tmp_path, where):
    from vehicle_core.storage import PreconditionFailed

    store = ObjectStore(storage)
    uri = f"s3://{bucket}/c/x.json" if where == "s3" else str(tmp_path / "c" / "x.json")
    store.put(uri, b"one", if_none_match=True)  # nothing there: written
    with pytest.raises(PreconditionFailed):
        store.put(uri, b"two", if_none_match=True)
    first = store.head(uri).etag
    store.put(uri, b"three", if_match=first)  # compare-and-swap on the ETag just read
    with pytest.raises(PreconditionFailed):
        store.put(uri, b"four", if_match=first)  # that ETag is gone
    assert store.get(uri)[0] == b"three"
    store.delete(uri)
    with pytest.raises(PreconditionFailed):
        store.put(uri, b"five", if_match=first)  # no object to match
    assert store.head(uri) is None


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(404, "NoSuchKey", SourceNotFoundError), (404, "NoSuchBucket", SourceNotFoundError),
     (403, "AccessDenied", AccessDeniedError), (400, "KeyTooLongError", StorageRejectedError),
     (400, "InvalidRequest", StorageRejectedError), (409, "OperationAborted", StorageUnavailableError),
     (429, "TooManyRequests", StorageUnavailableError), (503, "SlowDown", StorageUnavailableError),
     (500, "InternalError", StorageUnavailableError), (400, "RequestTimeout", StorageUnavailableError)],
)
def test_one_translation_of_s3_errors(status, code, expected):
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    error = storage_error(exc, "GET", "s3://b/k")
    assert type(error) is expected and "s3://b/k" in error.message


def test_a_refused_head_is_not_a_deletion(aws_env, storage, s3, bucket):
    from botocore.exceptions import ClientError

    store = ObjectStore(storage)
    s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"x")

    def deny(**_):
        raise ClientError({"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")

    store.client.meta.events.register("before-call.s3.HeadObject", deny)
    with pytest.raises(AccessDeniedError):
        store.head(f"s3://{bucket}/k.jpg")


def test_unreachable_endpoint_raises_storage_unavailable(storage, monkeypatch):
    from devstack.servers import free_port

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    dead = replace(storage, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout_s=0.5)
    with pytest.raises(StorageUnavailableError):
        ObjectStore(dead).get("s3://bkt/k.jpg")
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


def test_every_op_refuses_a_key_over_1024_utf8_bytes_without_a_request(aws_env, storage, bucket, tmp_path):
    from vehicle_core.errors import StorageRejectedError

    store = ObjectStore(storage)
    # 1,024 bytes of UTF-8 are fine (moto stores it, as S3 would) ...
    fits = "k/" + "é" * 511  # 2 + 1,022 bytes
    store.put(f"s3://{bucket}/{fits}", b"x")
    assert store.head(f"s3://{bucket}/{fits}").size == 1
    before = sum(store.requests.values())
    # ... 1,025 are refused by every verb before any request reaches S3 (moto would accept it, AWS not)
    long = "k/" + "é" * 511 + "x"
    uri = f"s3://{bucket}/{long}"
    (tmp_path / "f").write_bytes(b"x")
    for call in (lambda: store.head(uri), lambda: store.get(uri), lambda: store.put(uri, b"x"),
                 lambda: store.put_json(uri, {}), lambda: store.delete(uri), lambda: list(store.list(uri)),
                 lambda: store.upload_file(tmp_path / "f", uri), lambda: store.download_file(uri, tmp_path / "g")):
        with pytest.raises(StorageRejectedError, match="1025 bytes; S3 keys are at most 1024 bytes"):
            call()
    assert sum(store.requests.values()) == before
