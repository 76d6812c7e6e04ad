"""The hot path's two S3 requests — the GET of an image, the PUT of a result — without botocore's
per-call machinery, and without giving up anything boto3 decides.

What one boto3 call costs its caller in CPU is mostly not the HTTP request: event hooks, endpoint
rules, parameter validation and serialisation, header and response parsing (docs/scale.md: 1.1–1.5 ms
of CPU per 2 KB PUT, 2.3–2.5 ms per 60 KB GET on this project's 2-core machine; the same request signed
with botocore's own signer and sent through urllib3: 0.45 and 1.1 ms).

How it stays correct:

* **Where to send, and with which region, is boto3's answer.** A bucket's endpoint (path or virtual
  host style, the region after a redirect, FIPS/dual-stack, a custom ``endpoint_url``) is learnt from a
  GetObject or PutObject that boto3 itself signed and sent successfully: the URL it sent minus the key,
  the region from its signature's scope. Until then, and wherever the signature is not plain SigV4
  for ``s3`` (unsigned requests, SigV4A multi-region access points, S3 Express, Object Lambda), every
  call is boto3's.
* **Credentials are the session's** (the same chain and refreshing object the boto3 client uses), signed
  with botocore's :class:`~botocore.auth.S3SigV4Auth`, the signer boto3 uses for S3.
* **Only success is handled here.** Any answer but a 2xx, and any transport failure, returns ``None``:
  the caller makes the same call through boto3, which retries (adaptive mode, ``storage.max_attempts``),
  follows redirects and translates the failure as every other call's. A GET is safe to repeat; so is a
  PUT (a conditional one that did land answers 412 the second time, which the result writer already
  reads as "look at what is there"; an unconditional one writes the same bytes again). After S3 asks
  for fewer requests (503, 429), every call is boto3's for ``THROTTLE_PAUSE_S``: its adaptive mode's
  rate limiter then paces them, which this path could not.
* Not used behind an HTTP(S) proxy (boto3 honours the environment's; this path does not), for bodies
  over 1 MiB (boto3 sends those with ``Expect: 100-continue``) or non-ASCII metadata, or with
  ``storage.lean_requests: false``.

A PUT carries ``x-amz-checksum-crc32``, as boto3's default (``when_supported``) does, so S3 checks the
body it stored. A GET does not ask for S3's checksum (TLS and the length check guard the transfer; the
image is decoded and checked next).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.request
import zlib
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError
from botocore.httpsession import get_cert_path
from botocore.utils import percent_encode

from vehicle_core.config import StorageSettings
from vehicle_core.storage.s3 import read_bounded

#: Bodies above this go through boto3 (which sends ``Expect: 100-continue`` for them).
MAX_LEAN_BODY = 1 << 20
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")
_METADATA = "x-amz-meta-"
#: Answers by which S3 asks for fewer requests (503 SlowDown, 429); after one, the lean path stands aside
#: for THROTTLE_PAUSE_S so that every request goes through boto3's adaptive retry mode, whose client-side
#: rate limiter slows down (the lean path has none: it would keep sending at full rate).
THROTTLED = frozenset({429, 503})
THROTTLE_PAUSE_S = 30.0


class LeanS3:
    """Signed GET and PUT for buckets whose endpoint a successful boto3 call has shown (one per client).

    ``session`` is the boto3 session the ``client`` was built from (its credentials are the client's).
    """

    def __init__(self, session: Any, client: Any, storage: StorageSettings) -> None:
        self._credentials = session.get_credentials()
        self._buckets: dict[str, tuple[str, str]] = {}  # bucket -> (URL before the key, signing region)
        self._sent: AWSRequest | None = None
        self._paused_until = 0.0  # time.monotonic() before which every call is boto3's (after a throttle)
        self._pool = urllib3.PoolManager(
            num_pools=8, maxsize=storage.max_pool_connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=storage.connect_timeout_s, read=storage.read_timeout_s),
            cert_reqs="CERT_REQUIRED", ca_certs=_ca_bundle(session))
        for operation in ("GetObject", "PutObject"):
            client.meta.events.register(f"before-call.s3.{operation}", self._calling)
            client.meta.events.register(f"before-send.s3.{operation}", self._saw)

    @staticmethod
    def usable(storage: StorageSettings) -> bool:
        """Whether this process may use the lean path at all: the setting, and no HTTP(S) proxy."""
        proxies = urllib.request.getproxies()
        return storage.lean_requests and not (proxies.get("http") or proxies.get("https") or proxies.get("all"))

    # -- learning a bucket's endpoint from boto3 ---------------------------------------------------

    def _calling(self, **_kwargs) -> None:
        self._sent = None  # a call begins: what an earlier (failed) call sent is not this one's

    def _saw(self, request, **_kwargs) -> None:
        self._sent = request  # the client is this thread's: the last request this call sent

    def learn(self, bucket: str, key: str) -> None:
        """After a successful boto3 GetObject/PutObject of ``bucket``/``key``: remember where it went."""
        request, self._sent = self._sent, None
        if request is None or bucket in self._buckets or self._credentials is None:
            return
        parts, encoded = urlsplit(request.url), percent_encode(key, safe="/~")
        authorization = request.headers.get("Authorization") or b""
        if isinstance(authorization, bytes):  # botocore's prepared headers may hold bytes
            authorization = authorization.decode("latin-1")
        scope = _SCOPE.search(authorization)
        if parts.query or not parts.path.endswith(encoded) or scope is None:
            return  # not a plain signed request for this key: leave the bucket to boto3
        self._buckets[bucket] = (request.url[:len(request.url) - len(encoded)], scope.group(1))

    def knows(self, bucket: str) -> bool:
        return bucket in self._buckets

    # -- the two requests ----------------------------------------------------------------------------

    def get(self, bucket: str, key: str, max_bytes: int | None, uri: str) -> tuple[bytes, dict[str, Any]] | None:
        """``(body, fields)`` with ``fields`` as :func:`vehicle_core.storage.objects._info` reads a boto3
        answer; None when boto3 should make the call. Larger than ``max_bytes`` -> ImageTooLargeError."""
        response = self._send("GET", bucket, key, b"", {})
        if response is None:
            return None
        length = response.headers.get("Content-Length")
        try:  # the bytes as stored: no Content-Encoding undone (boto3 undoes none either)
            data = read_bounded(lambda amt: response.read(amt, decode_content=False), response.close,
                                int(length) if length else None, max_bytes, uri)
        except (urllib3.exceptions.HTTPError, OSError):  # urllib3: fewer bytes than it announced, or a reset
            response.close()
            return None
        response.release_conn()
        return data, _fields(response.headers, len(data))

    def put(self, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> bool:
        """True when S3 stored ``data`` (``headers``: Content-Type, conditions, ``x-amz-meta-*``); False
        when boto3 should make the call (any other answer, a failure, a body or metadata it cannot send)."""
        if len(data) > MAX_LEAN_BODY or not all(name.isascii() and value.isascii() for name, value in headers.items()):
            return False
        crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
        response = self._send("PUT", bucket, key, data, {**headers, "x-amz-checksum-crc32": crc})
        if response is None:
            return False
        response.drain_conn()
        response.release_conn()
        return True

    def _send(self, method: str, bucket: str, key: str, body: bytes, headers: dict[str, str]):
        """The 2xx response (body unread), or None: not learnt, another answer, or a transport failure."""
        base, region = self._buckets.get(bucket, (None, None))
        if base is None or time.monotonic() < self._paused_until:
            return None
        request = AWSRequest(method=method, url=base + percent_encode(key, safe="/~"), data=body, headers=headers)
        try:
            S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", region).add_auth(request)
            prepared = request.prepare()
            # To the origin's pool with the path as the request target, verbatim: a PoolManager would
            # parse the URL and drop "./" and "../" segments, which are part of S3 keys (as boto3 does).
            parts = urlsplit(prepared.url)
            response = self._pool.connection_from_url(prepared.url).urlopen(
                method, parts.path, body=prepared.body or None, headers=dict(prepared.headers.items()),
                preload_content=False, redirect=False, retries=False, assert_same_host=False)
        except (urllib3.exceptions.HTTPError, OSError, BotoCoreError):  # a refresh of credentials included
            return None
        if 200 <= response.status < 300:
            return response
        if response.status in THROTTLED:  # S3 asks for less: boto3's adaptive rate limiter sends for a while
            self._paused_until = time.monotonic() + THROTTLE_PAUSE_S
        response.drain_conn()
        response.release_conn()
        return None


def _ca_bundle(session: Any) -> str:
    """The certificates boto3 verifies S3 with: ``AWS_CA_BUNDLE`` / the profile's ``ca_bundle``, else
    botocore's default bundle (certifi's)."""
    botocore_session = getattr(session, "_session", None)  # boto3 exposes its botocore session only so
    configured = botocore_session.get_config_variable("ca_bundle") if botocore_session is not None else None
    return configured or get_cert_path(True)


def _fields(headers, size: int) -> dict[str, Any]:
    """A GET's response headers in the shape of boto3's GetObject answer (the fields ObjectInfo reads)."""
    modified = headers.get("Last-Modified")
    return {
        "ETag": headers.get("ETag"),
        "ContentLength": size,
        "LastModified": parsedate_to_datetime(modified) if modified else None,
        "VersionId": headers.get("x-amz-version-id"),
        "Metadata": {name[len(_METADATA):].lower(): value for name, value in headers.items()
                     if name.lower().startswith(_METADATA)},
    }
