"""Issue 19, the registry side (moto's S3 server on loopback, a small real classifier artifact):
versions are immutable, archives carry their SHA-256 (in S3 metadata and in the pointer), a worker
refuses a malformed pointer, a truncated archive or a digest that differs, and a watcher serving a
version keeps it through every bad publish and swaps once a good version is current."""

from __future__ import annotations

import hashlib
import json
import shutil
import string
import uuid

import boto3
import pytest

from training.publish import publish, set_current
from vehicle_core.classifier import MANIFEST_FILE, load_classifier
from vehicle_core.config import load_settings
from vehicle_core.errors import ModelLoadError
from vehicle_core.registry import (
    ARCHIVE,
    SHA256_META,
    RegistryWatcher,
    archive_uri,
    current_version,
    pointer_uri,
)
from vehicle_core.storage import ObjectStore, parse_s3_uri, sha256_of

V1, V2, V3 = "20260101-000000", "20260102-000000", "20260103-000000"


@pytest.fixture(scope="module")
def published(moto_server, classifier_artifact, module_tmp_path):
    """V1 (current) and V2 published once per module under a base registry; tests copy them into a
    registry of their own (publishing loads the Keras model: the slow part)."""
    from devstack.servers import aws_env

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in aws_env(moto_server.endpoint_url).items():
            mp.setenv(name, value)
        bucket = f"reg-{uuid.uuid4().hex[:12]}"
        root = module_tmp_path
        settings = load_settings(env={}).replace(
            storage={"cache_dir": str(root / "cache"), "endpoint_url": moto_server.endpoint_url},
            classifier={"registry": f"s3://{bucket}/models/base", "top_k": 2, "poll_interval_s": 10},
        )
        store = ObjectStore(settings.storage)
        boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1").create_bucket(Bucket=bucket)
        base = settings.classifier.registry
        for version, current in ((V1, True), (V2, False)):
            publish(_versioned(classifier_artifact, version, root / version), base, settings.storage,
                    make_current=current)
        yield {"settings": settings, "bucket": bucket, "base": base, "store": store, "root": root, "archives": {}}


def _versioned(artifact, version, out):
    """A copy of an artifact directory whose manifest names ``version`` (no Keras round trip)."""
    shutil.copytree(artifact, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**manifest, "version": version}))
    return out


def _registry(published) -> dict:
    registry = f"s3://{published['bucket']}/models/t-{uuid.uuid4().hex[:8]}"
    classifier = published["settings"].replace(classifier={"registry": registry}).classifier
    return {**published, "registry": registry, "classifier": classifier}


@pytest.fixture
def reg(published, moto_server):
    """A registry of this test's own holding V1 and V2 (server-side copies of the archives, metadata
    and so recorded digests included), V1 current."""
    reg = _registry(published)
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    for version in (V1, V2):
        _, base_key = parse_s3_uri(archive_uri(published["base"], version))
        _, key = parse_s3_uri(archive_uri(reg["registry"], version))
        s3.copy_object(Bucket=published["bucket"], Key=key, CopySource={"Bucket": published["bucket"], "Key": base_key},
                       MetadataDirective="COPY")
    set_current(reg["registry"], V1, published["settings"].storage)
    return reg


@pytest.fixture
def empty_reg(published):
    """A registry of this test's own with nothing published (only pointers are written)."""
    return _registry(published)


def _archive_bytes(reg, version) -> bytes:
    """The published archive's bytes, read once from the base registry (moto's server-side copies carry
    a checksum of their own that a full GET of the copy does not match: a moto quirk)."""
    cache = reg["archives"]
    if version not in cache:
        cache[version] = reg["store"].get(archive_uri(reg["base"], version))[0]
    return cache[version]


def _write_pointer(reg, body: bytes | str | dict | list) -> None:
    data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    reg["store"].put(pointer_uri(reg["registry"]), data)


def _etag(reg, uri) -> str:
    return reg["store"].head(uri).etag


# --------------------------------------------------------------------------------------------
# Write side: digests recorded, versions immutable


def test_publish_records_the_archives_sha256_in_metadata_and_pointer(published, tmp_path):
    settings, store, base = published["settings"], published["store"], published["base"]
    pointer = current_version(base, settings.storage)
    assert pointer["version"] == V1 and pointer["artifact"] == archive_uri(base, V1)
    digest = pointer["sha256"]
    assert len(digest) == 64 and set(digest) <= set(string.hexdigits.lower())
    local = tmp_path / ARCHIVE
    store.download_file(archive_uri(base, V1), local)
    assert sha256_of(local) == digest == hashlib.sha256(local.read_bytes()).hexdigest()
    assert store.head(archive_uri(base, V1)).metadata[SHA256_META] == digest
    # V2, published without moving the pointer, has its own digest recorded too
    v2 = store.head(archive_uri(base, V2)).metadata[SHA256_META]
    assert v2 == hashlib.sha256(store.get(archive_uri(base, V2))[0]).hexdigest()


def test_publishing_an_existing_version_is_refused_and_leaves_it_unchanged(published, classifier_artifact, tmp_path):
    settings, store, base = published["settings"], published["store"], published["base"]
    uri = archive_uri(base, V1)
    before = store.head(uri)
    pointer_before = store.get(pointer_uri(base))[0]
    # Different bytes under the same version name (another manifest): still refused
    again = _versioned(classifier_artifact, V1, tmp_path / "again")
    (again / MANIFEST_FILE).write_text(json.dumps({**json.loads((again / MANIFEST_FILE).read_text()),
                                                   "notes": "retrained"}))
    with pytest.raises(ModelLoadError, match="immutable"):
        publish(again, base, settings.storage)
    after = store.head(uri)
    assert after.etag == before.etag and after.metadata == before.metadata
    assert store.get(pointer_uri(base))[0] == pointer_before  # the pointer did not move either


# --------------------------------------------------------------------------------------------
# Read side: load_classifier via the registry refuses what it must not serve


def test_a_pointer_whose_sha256_differs_from_the_archive_is_refused(reg):
    pointer = current_version(reg["registry"], reg["settings"].storage)
    _write_pointer(reg, {**pointer, "sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_classifier(reg["classifier"], reg["settings"].storage)


def test_an_archive_replaced_after_publishing_is_refused(reg):
    # V1's archive overwritten in place (V2's bytes plus a byte): the pointer's digest no longer matches
    store = reg["store"]
    store.put(archive_uri(reg["registry"], V1), _archive_bytes(reg, V2) + b"\0")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_classifier(reg["classifier"], reg["settings"].storage)


def _promote_truncated(reg, version=V3, *, with_digest=True) -> str:
    data = _archive_bytes(reg, V1)
    truncated = data[: len(data) // 2]
    reg["store"].put(archive_uri(reg["registry"], version), truncated)
    pointer = {"version": version, "artifact": archive_uri(reg["registry"], version)}
    if with_digest:
        pointer["sha256"] = hashlib.sha256(truncated).hexdigest()
    _write_pointer(reg, pointer)
    return pointer.get("sha256")


@pytest.mark.parametrize("with_digest", [True, False], ids=["digest-of-truncated-bytes", "no-digest"])
def test_a_truncated_archive_is_a_model_load_error(reg, with_digest):
    _promote_truncated(reg, with_digest=with_digest)
    with pytest.raises(ModelLoadError) as caught:  # not EOFError / tarfile.ReadError / zlib.error
        load_classifier(reg["classifier"], reg["settings"].storage)
    assert "truncated" in caught.value.message or "corrupt" in caught.value.message


def test_set_current_of_a_version_without_recorded_digest_records_it_and_truncation_still_fails(reg):
    # A version uploaded by hand (no vp-sha256): set_current records the archive's digest as it is
    data = _archive_bytes(reg, V1)
    reg["store"].put(archive_uri(reg["registry"], V3), data[: len(data) // 3])
    pointer = set_current(reg["registry"], V3, reg["settings"].storage)
    assert pointer["sha256"] == hashlib.sha256(data[: len(data) // 3]).hexdigest()
    assert pointer["history"] == [V1]
    with pytest.raises(ModelLoadError):
        load_classifier(reg["classifier"], reg["settings"].storage)


MALFORMED_JSON_POINTERS = {
    "no-artifact": {"version": V2},
    "no-version": {"artifact": f"s3://x/models/{V2}/model.tar.gz"},
    "empty": "",
    "blank": "  \n",
    "version-not-a-string": {"version": 5, "artifact": "s3://x/y/model.tar.gz"},
    "bad-sha256": {"version": V2, "artifact": "s3://x/y/model.tar.gz", "sha256": "abc"},
    "upper-case-sha256": {"version": V2, "artifact": "s3://x/y/model.tar.gz", "sha256": "A" * 64},
    "broken-json": '{"version": "v2", ',
    "not-utf8": b"\xff\xfe{",
}


@pytest.mark.parametrize("body", MALFORMED_JSON_POINTERS.values(), ids=MALFORMED_JSON_POINTERS.keys())
def test_a_malformed_pointer_is_a_model_load_error(empty_reg, body):
    reg = empty_reg
    _write_pointer(reg, body)
    with pytest.raises(ModelLoadError, match="malformed|not JSON|SHA"):
        current_version(reg["registry"], reg["settings"].storage)
    with pytest.raises(ModelLoadError):
        load_classifier(reg["classifier"], reg["settings"].storage)


@pytest.mark.parametrize("body", ["not json {", [], "null", "[1, 2]"], ids=["text", "list", "null", "array"])
def test_a_pointer_that_is_not_a_json_object_never_loads(empty_reg, body):
    reg = empty_reg
    # Not a version name either: refused as malformed, and loading ends in a ModelLoadError.
    _write_pointer(reg, body)
    with pytest.raises(ModelLoadError, match="malformed"):
        current_version(reg["registry"], reg["settings"].storage)
    with pytest.raises(ModelLoadError):
        load_classifier(reg["classifier"], reg["settings"].storage)


# --------------------------------------------------------------------------------------------
# The watcher: a bad publish never stops classification, a good one is picked up


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watcher_keeps_its_version_through_bad_publishes_and_swaps_to_a_good_one(reg):
    registry, storage = reg["registry"], reg["settings"].storage
    clock = FakeClock()
    watcher = RegistryWatcher(registry, storage, 10, classifier=reg["classifier"], version=V1, clock=clock)
    refused: list[str] = []
    watcher.on_refused = lambda: refused.append(watcher.version)

    def poll():
        clock.now += 11
        return watcher.maybe_reload()

    # Nothing changed: the pointer names the served version
    assert poll() is None and refused == []
    good_v2 = current_version(registry, storage)  # V1's pointer, to build V2's from
    bad_pointers = {
        "malformed": lambda: _write_pointer(reg, {"version": V2}),
        "not-json": lambda: _write_pointer(reg, '{"version": '),
        "truncated": lambda: _promote_truncated(reg),
        "digest-mismatch": lambda: _write_pointer(reg, {**good_v2, "version": V2,
                                                         "artifact": archive_uri(registry, V2), "sha256": "1" * 64}),
        "missing-archive": lambda: _write_pointer(reg, {"version": "gone", "artifact": archive_uri(registry, "gone")}),
    }
    for name, make_bad in bad_pointers.items():
        make_bad()
        assert poll() is None, name
        assert watcher.version == V1, name
        assert len(refused) == list(bad_pointers).index(name) + 1, name
    # Within the interval the pointer is not read again (no refusal counted)
    clock.now += 1
    assert watcher.maybe_reload() is None and len(refused) == len(bad_pointers)
    # Once the pointer names a good version, the watcher loads it, once
    set_current(registry, V2, storage)
    fresh = poll()
    assert fresh is not None and fresh.info.version == V2 and watcher.version == V2
    assert len(refused) == len(bad_pointers)
    assert poll() is None and watcher.version == V2


def test_the_watcher_retries_a_refused_version_once_it_is_fixed(reg):
    registry, storage = reg["registry"], reg["settings"].storage
    clock = FakeClock()
    watcher = RegistryWatcher(registry, storage, 0, classifier=reg["classifier"], version=V1, clock=clock)
    refusals = []
    watcher.on_refused = lambda: refusals.append(1)
    # V2's pointer with a wrong digest: refused at every read (interval 0), never half-swapped
    pointer = set_current(registry, V2, storage)
    _write_pointer(reg, {**pointer, "sha256": "2" * 64})
    assert watcher.maybe_reload() is None and watcher.maybe_reload() is None
    assert watcher.version == V1 and len(refusals) == 2
    # The operator fixes the pointer: the same version now loads
    _write_pointer(reg, pointer)
    fresh = watcher.maybe_reload()
    assert fresh is not None and fresh.info.version == V2 and watcher.version == V2 and len(refusals) == 2
