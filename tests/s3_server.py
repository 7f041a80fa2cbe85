"""A real S3-compatible server for tests: moto's server mode in a child process on a free loopback
port, and a small HTTP proxy in front of it that answers 503 (Service Unavailable, as S3 does under
load) to a share of the requests and forwards the others unchanged.

moto cannot fail requests by itself; the proxy is the fault: TensorStore talks HTTP to it exactly as
to S3, and sees real 503 responses.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``moto_server`` on 127.0.0.1; ``env`` lets its settings (e.g. authentication) be changed."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket=name)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> bytes (to compare what two runs stored)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        out: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix) :]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _LoopbackServer:
    """An HTTP/1.1 server on a free loopback port, in a daemon thread, that hands every request (GET, PUT,
    POST, DELETE, HEAD) and its body to :meth:`handle`."""

    def _start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.handle(self, self.rfile.read(length) if length else b"")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _reply(request: BaseHTTPRequestHandler, status: int, content_type: str, msg: bytes) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(msg)))
    request.end_headers()
    if request.command != "HEAD":  # a HEAD answer has no body, or the connection is garbled
        request.wfile.write(msg)


class FaultyProxy(_LoopbackServer):
    """Forwards HTTP requests to ``target_port``; answers 503 to every ``every``-th request that
    ``which(method, path)`` selects (all by default). ``failed`` counts the 503s, ``forwarded`` the rest."""

    def __init__(self, target_port: int, every: int = 5, which: Callable[[str, str], bool] | None = None) -> None:
        self.target_port = target_port
        self.every = every
        self.which = which or (lambda method, path: True)
        self.seen = 0
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.decide(request.command, request.path):
            msg = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate.</Message></Error>"
            _reply(request, 503, "application/xml", msg)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=30)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("connection", "keep-alive", "proxy-connection")}
        conn.request(request.command, request.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        request.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"):
                request.send_header(k, v)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
        conn.close()

    def decide(self, method: str, path: str) -> bool:
        """Whether this request gets a 503 (and count it)."""
        with self._lock:
            if self.which(method, path):
                self.seen += 1
                if self.seen % self.every == 0:
                    self.failed += 1
                    return True
            self.forwarded += 1
            return False


class DeniedGcs(_LoopbackServer):
    """A stand-in for Google Cloud Storage's JSON API (``TENSORSTORE_GCS_HTTP_URL``) whose buckets are all
    private: every request without an ``Authorization`` header gets the 401 that GCS gives an anonymous
    caller. ``requests`` lists (method, path, authorized) of what it was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bool]] = []
        self._start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        self.requests.append((request.command, request.path, "Authorization" in request.headers))
        msg = b'{"error": {"code": 401, "message": "Anonymous caller does not have storage.objects.get access to the Google Cloud Storage object."}}'
        _reply(request, 401, "application/json; charset=UTF-8", msg)
