"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto on loopback), for chaos tests and benchmarks.

    with s3_proxy(moto.endpoint_url, fault_rate=0.2, latency_ms=5, seed=1) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint_url      # clients talk to the proxy
        ...
        proxy.fault_rate = 0.0                            # faults can be switched at run time
        proxy.fail_next["cam1/0001.jpg"] = 3              # the next 3 requests naming this key fail
        print(proxy.counts)                               # requests seen per HTTP method
        print(proxy.sqs_actions)                          # SQS requests per (action, queue), if sent through it

A share ``fault_rate`` of requests is answered by the proxy itself with a 500 InternalError, a 503
SlowDown or a 503 ServiceUnavailable (S3's own XML error bodies, so botocore retries them like the
real thing); the rest are forwarded unchanged after ``latency_ms``. Loopback only: it binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAULTS = ((500, "InternalError", "We encountered an internal error. Please try again."),
          (503, "SlowDown", "Please reduce your request rate."),
          (503, "ServiceUnavailable", "Service is unable to handle request."))
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


@dataclass
class S3Proxy:
    """A running proxy: where to point clients, and its knobs and counters (safe to change while it runs)."""

    port: int
    upstream: str
    fault_rate: float = 0.0
    latency_ms: float = 0.0
    seed: int | None = None
    counts: Counter = field(default_factory=Counter)  # method -> requests seen
    # (action, queue name) -> requests seen, for SQS requests passing through (AWS's JSON or query protocol)
    sqs_actions: Counter = field(default_factory=Counter)
    fail_next: dict[str, int] = field(default_factory=dict)  # path fragment -> requests to fail (503) first
    faults: Counter = field(default_factory=Counter)  # S3 error code -> requests answered with it
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _draw_fault(self, method: str, path: str) -> tuple[int, str, str] | None:
        with self._lock:
            self.counts[method] += 1
            for fragment, left in self.fail_next.items():
                if left > 0 and fragment in path:
                    self.fail_next[fragment] = left - 1
                    self.faults["SlowDown"] += 1
                    return FAULTS[1]
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                fault = self._rng.choice(FAULTS)
                self.faults[fault[1]] += 1
                return fault
        return None


def _handler(proxy: S3Proxy):
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

        def log_message(self, *_args) -> None:  # quiet: tests read counters, not logs
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            action = _sqs_action(self.headers.get("X-Amz-Target"), body)
            if action is not None:
                with proxy._lock:
                    proxy.sqs_actions[action] += 1
            fault = proxy._draw_fault(self.command, unquote(self.path))
            if proxy.latency_ms > 0:
                time.sleep(proxy.latency_ms / 1000.0)  # the latency being simulated, not synchronisation
            if fault is not None:
                self._reply_error(*fault)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                reply = conn.getresponse()
                payload = reply.read()
            finally:
                conn.close()
            self.send_response(reply.status, reply.reason)
            for key, value in reply.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            # A HEAD reply has no body but the object's length, which the client must see.
            length = reply.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _reply_error(self, status: int, code: str, message: str) -> None:
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}'
                    f"</Message><RequestId>proxy</RequestId></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler


def _sqs_action(target: str | None, body: bytes) -> tuple[str, str] | None:
    """(action, queue name) of an SQS request: ``X-Amz-Target: AmazonSQS.<Action>`` with a JSON body
    (boto3), or a form body ``Action=...&QueueUrl=...`` (the query protocol); None for anything else."""
    import json
    from urllib.parse import parse_qs

    if target and target.startswith("AmazonSQS."):
        try:
            queue_url = json.loads(body or b"{}").get("QueueUrl") or ""
        except ValueError:
            queue_url = ""
        return target.split(".", 1)[1], queue_url.rsplit("/", 1)[-1]
    if body.startswith(b"Action="):
        form = parse_qs(body.decode(errors="replace"))
        return form["Action"][0], (form.get("QueueUrl") or [""])[0].rsplit("/", 1)[-1]
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that went away (a killed worker): nothing to report
        super().handle_error(request, client_address)


@contextlib.contextmanager
def s3_proxy(upstream: str, *, fault_rate: float = 0.0, latency_ms: float = 0.0,
             seed: int | None = None) -> Iterator[S3Proxy]:
    """Run a proxy to ``upstream`` on a free loopback port for the duration of the block."""
    proxy = S3Proxy(port=0, upstream=upstream, fault_rate=fault_rate, latency_ms=latency_ms, seed=seed)
    server = _Server(("127.0.0.1", 0), _handler(proxy))
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="s3-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
