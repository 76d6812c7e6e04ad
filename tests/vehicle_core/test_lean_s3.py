"""The lean GET/PUT path (vehicle_core/storage/lean.py) against moto's real HTTP server.

A moto server of this module's own checks every request's SigV4 signature and IAM policy (moto's
``INITIAL_NO_AUTH_ACTION_COUNT``), so a lean request that S3 would refuse is refused here too; the
session's server (no checks) serves the tests of conditions, failures and faults.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import boto3
import pytest

from devstack.s3_proxy import s3_proxy
from devstack.servers import moto_server as start_moto
from vehicle_core.config import load_settings
from vehicle_core.errors import (
    AccessDeniedError,
    ImageTooLargeError,
    SourceNotFoundError,
    StorageUnavailableError,
)
from vehicle_core.storage import ObjectStore, PreconditionFailed

#: Keys the signature must survive: reserved and non-ASCII characters, repeated and trailing slashes,
#: dot segments (sent verbatim: S3 keys are not paths), and a key of S3's full 1,024 bytes.
ODD_KEYS = [
    "cam1/0001.jpg",
    "a b/ü+%~=&?#:@;,$!'()*[]{}^`|\"<>\\.jpg",
    "double//slash/trailing/",
    "dots/../up/./here.jpg",
    "日本/カメラ/画像 1.jpg",
    "k/" + "x" * 1022,
]


class _Boto3Calls:
    """GetObject/PutObject calls that went through boto3 (its event hooks fire for every call)."""

    def __init__(self, store: ObjectStore) -> None:
        self.calls: list[str] = []
        store.client.meta.events.register("before-call.s3", lambda model, **_: self.calls.append(model.name))


@pytest.fixture(scope="module")
def signing_s3(module_tmp_path):
    """A moto server that checks signatures, an IAM user allowed s3:* there, and a role it may assume, and a bucket: the
    environment a store needs, as a dict."""
    with start_moto(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as server:
        admin = dict(endpoint_url=server.endpoint_url, region_name="us-east-1", aws_access_key_id="admin",
                     aws_secret_access_key="admin")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="worker")
        iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}]}))
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))
        iam.put_role_policy(RoleName="writer", PolicyName="s3", PolicyDocument=json.dumps({  # the last unchecked
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        env = {"AWS_ENDPOINT_URL": server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                     aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket="signed")
        yield env


@pytest.fixture
def storage():
    return replace(load_settings().storage, max_attempts=3, connect_timeout_s=1.0, read_timeout_s=5.0)


def _use(monkeypatch, env: dict[str, str]) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_lean_requests_carry_signatures_s3_accepts_for_odd_keys(signing_s3, monkeypatch, storage):
    _use(monkeypatch, signing_s3)
    store, plain = ObjectStore(storage), ObjectStore(replace(storage, lean_requests=False))
    boto3_calls = _Boto3Calls(store)
    store.put_json("s3://signed/first.json", {"n": 0})  # boto3's call shows the bucket's endpoint
    assert boto3_calls.calls == ["PutObject"]
    for n, key in enumerate(ODD_KEYS, start=1):
        uri = f"s3://signed/{key}"
        store.put_json(uri, {"n": n}, metadata={"etag": f"e{n}", "stage": "classify"})
        data, info = store.get(uri, max_bytes=10_000)
        assert json.loads(data) == {"n": n}, key
        assert info == plain.get(uri)[1], key  # the same ObjectInfo as boto3 reads: ETag, size, time, metadata
        assert info.metadata == {"etag": f"e{n}", "stage": "classify"}
        with pytest.raises(PreconditionFailed):  # the object exists: S3 refuses, boto3 confirms
            store.put_json(uri, {"n": -1}, if_none_match=True)
        store.put_json(uri, {"n": n + 100}, if_match=info.etag)
        assert json.loads(plain.get(uri)[0]) == {"n": n + 100}, key
    store.put("s3://signed/empty", b"")
    assert store.get("s3://signed/empty")[0] == b""
    # one boto3 call to learn, then boto3 only for the refused conditional PUTs (412: not a success)
    assert boto3_calls.calls == ["PutObject"] * (1 + len(ODD_KEYS))
    assert store.requests["GetObject"] == len(ODD_KEYS) + 1


def test_a_wrong_secret_is_refused_on_the_lean_path_too(signing_s3, monkeypatch, storage):
    _use(monkeypatch, signing_s3)
    ObjectStore(storage).put_json("s3://signed/secret.json", {"ok": True})
    store = ObjectStore(storage)
    store.get("s3://signed/secret.json")  # learnt with the right secret
    store._lean()._credentials = boto3.session.Session(  # noqa: SLF001 - the credentials the lean path signs with
        aws_access_key_id=signing_s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong").get_credentials()
    boto3_calls = _Boto3Calls(store)
    store.get("s3://signed/secret.json")  # refused on the lean path: boto3 makes the call, and succeeds
    assert boto3_calls.calls == ["GetObject"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(AccessDeniedError, match="SignatureDoesNotMatch"):
        ObjectStore(storage).get("s3://signed/secret.json")


def test_temporary_credentials_sign_with_their_session_token(signing_s3, monkeypatch, storage):
    _use(monkeypatch, signing_s3)
    # A session of its own: boto3.client() would use boto3's default session, whose credentials are those
    # it first found (an earlier test's), not this environment's.
    sts = boto3.session.Session().client("sts", endpoint_url=signing_s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    temporary = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/writer",
                                RoleSessionName="lean")["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", temporary["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", temporary["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", temporary["SessionToken"])
    store = ObjectStore(storage)
    store.put_json("s3://signed/temporary/0.json", {"n": 0})
    boto3_calls = _Boto3Calls(store)
    store.put_json("s3://signed/temporary/1.json", {"n": 1})
    assert json.loads(store.get("s3://signed/temporary/1.json")[0]) == {"n": 1}
    assert boto3_calls.calls == []


@pytest.fixture
def learnt(aws_env, bucket, storage):
    """A store that has learnt ``bucket``'s endpoint (one boto3 PUT), and its boto3 call recorder."""
    store = ObjectStore(storage)
    store.put(f"s3://{bucket}/learn", b"x")
    return store, _Boto3Calls(store)


def test_missing_and_too_large_objects_fail_as_with_boto3(learnt, bucket):
    store, boto3_calls = learnt
    store.put(f"s3://{bucket}/big.bin", b"b" * 5000)
    with pytest.raises(ImageTooLargeError, match="5000 bytes"):
        store.get(f"s3://{bucket}/big.bin", max_bytes=4999)
    assert boto3_calls.calls == []  # judged by the lean GET's Content-Length, its body never read
    assert store.get(f"s3://{bucket}/big.bin", max_bytes=5000)[0] == b"b" * 5000  # the pool recovered
    with pytest.raises(SourceNotFoundError):
        store.get(f"s3://{bucket}/no-such-key.jpg")
    assert boto3_calls.calls == ["GetObject"]  # a 404 is boto3's to read and translate
    with pytest.raises(PreconditionFailed):
        store.put(f"s3://{bucket}/gone.json", b"{}", if_match="0123456789abcdef0123456789abcdef")


def test_a_failed_call_does_not_teach_the_next_one_its_url(aws_env, bucket, storage):
    """The endpoint is learnt from the request of the call that succeeded, never an earlier one's."""
    store = ObjectStore(storage)
    store.put(f"s3://{bucket}/b.jpg", b"B")
    fresh = ObjectStore(storage)
    with pytest.raises(SourceNotFoundError):
        fresh.get(f"s3://{bucket}/a/b.jpg")  # sent, failed: its URL ends in "/b.jpg" too
    fresh.get(f"s3://{bucket}/b.jpg")
    store.put(f"s3://{bucket}/x/y.jpg", b"Y")
    assert fresh.get(f"s3://{bucket}/x/y.jpg")[0] == b"Y"


def test_server_errors_on_the_lean_path_are_retried_by_boto3_which_paces_the_next_calls(moto_server, monkeypatch, bucket, storage):
    with s3_proxy(moto_server.endpoint_url) as proxy:
        _use(monkeypatch, {"AWS_ENDPOINT_URL": proxy.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
        store = ObjectStore(storage)
        store.put(f"s3://{bucket}/learn", b"x")
        boto3_calls = _Boto3Calls(store)
        key = f"flaky-{uuid.uuid4().hex}.jpg"
        store.put(f"s3://{bucket}/{key}", b"image")
        proxy.fail_next[key] = 2  # the lean GET's answer, then boto3's first attempt
        assert store.get(f"s3://{bucket}/{key}")[0] == b"image"
        assert proxy.faults["SlowDown"] == 2
        assert boto3_calls.calls == ["GetObject"]  # one call, retried inside boto3
        # S3 asked for less: the next calls are boto3's (its adaptive rate limiter paces them), no lean try
        seen = sum(proxy.counts.values())
        store.put(f"s3://{bucket}/{key}.json", b"{}")
        assert store.get(f"s3://{bucket}/{key}.json")[0] == b"{}"
        assert boto3_calls.calls == ["GetObject", "PutObject", "GetObject"]
        assert sum(proxy.counts.values()) - seen == 2
        store._lean()._paused_until = 0.0  # noqa: SLF001 - the pause over (30 s), without waiting for it
        assert store.get(f"s3://{bucket}/{key}.json")[0] == b"{}"
        assert boto3_calls.calls == ["GetObject", "PutObject", "GetObject"]  # lean again


def test_the_lean_path_is_off_behind_a_proxy_and_by_setting(aws_env, monkeypatch, bucket, storage):
    assert ObjectStore(storage)._lean() is not None  # noqa: SLF001
    assert ObjectStore(replace(storage, lean_requests=False))._lean() is None  # noqa: SLF001
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert ObjectStore(storage)._lean() is None  # noqa: SLF001


def test_an_object_stored_compressed_is_read_as_stored(learnt, bucket, s3):
    import gzip

    packed = gzip.compress(b"\xff\xd8 an image " * 100)
    s3.put_object(Bucket=bucket, Key="packed.jpg", Body=packed, ContentEncoding="gzip")
    store, boto3_calls = learnt
    assert store.get(f"s3://{bucket}/packed.jpg", max_bytes=len(packed))[0] == packed  # not inflated
    assert boto3_calls.calls == []


def test_a_body_without_a_length_is_bounded_and_a_short_one_is_transient(monkeypatch, storage):
    """An S3-compatible server answering a GET in chunks (no Content-Length): max_bytes still holds; one
    that hangs up before the length it announced: a transient storage fault on both paths."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Chunked(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            if self.path.endswith("short.jpg"):  # announces 10,240 bytes, sends 5,000, hangs up
                self.send_response(200)
                self.send_header("Content-Length", "10240")
                self.end_headers()
                self.wfile.write(b"s" * 5000)
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"400\r\n" + b"c" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _use(monkeypatch, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
                           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        store = ObjectStore(storage)
        store.put("s3://chunky/learn", b"x")
        boto3_calls = _Boto3Calls(store)
        with pytest.raises(ImageTooLargeError):
            store.get("s3://chunky/big.jpg", max_bytes=5000)
        assert store.get("s3://chunky/big.jpg", max_bytes=10240)[0] == b"c" * 10240
        assert boto3_calls.calls == []
        plain = ObjectStore(replace(storage, lean_requests=False))
        with pytest.raises(ImageTooLargeError):  # and through boto3
            plain.get("s3://chunky/big.jpg", max_bytes=5000)
        for reader in (store, plain):  # a body cut short is the connection's fault, never a short image
            for limit in (None, 20_000):
                with pytest.raises(StorageUnavailableError):
                    reader.get("s3://chunky/short.jpg", max_bytes=limit)
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_that_fail_to_refresh_leave_the_call_to_boto3(learnt, bucket):
    from botocore.exceptions import CredentialRetrievalError

    class Expired:
        def get_frozen_credentials(self):
            raise CredentialRetrievalError(provider="container-role", error_msg="metadata endpoint timed out")

    store, boto3_calls = learnt
    store._lean()._credentials = Expired()  # noqa: SLF001
    store.put(f"s3://{bucket}/refresh.json", b"{}")
    assert store.get(f"s3://{bucket}/refresh.json")[0] == b"{}"
    assert boto3_calls.calls == ["PutObject", "GetObject"]
