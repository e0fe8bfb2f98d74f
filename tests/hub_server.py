"""A real HTTP server on 127.0.0.1 implementing docs/hub-api.md, with faults on demand (for tests)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RUN = re.compile(r"^/api/v1/models/([0-9a-f-]{36})/runs/([A-Za-z0-9._-]+)/(status|metrics)$")
_MODEL = re.compile(r"^/api/v1/models/([0-9a-f-]{36})/(status|metrics|initial-model)$")


class HubServer:
    """The hub: records what it is sent; ``fail``, ``drop``, ``slow``, ``late``, ``redirect`` and ``reject_status``
    inject faults. Like a real hub, it answers 409 to a status the run already has (a repeated report)."""

    def __init__(self, api_key: str = "test-hub-key"):
        self.api_key = api_key
        self.bodies: list[bytes] = []  # every request body, for hygiene checks
        self.paths: list[str] = []
        self.records: dict[tuple[str, str], list[dict]] = defaultdict(list)  # (model_id, kind) -> records
        self.initial_models: dict[str, bytes] = {}
        self.fail = 0  # answer 500 to the next N requests
        self.drop = 0  # close the next N connections without answering
        self.slow = 0.0  # seconds to wait before answering
        self.reject_status: set[str] = set()  # statuses always answered with 500
        self.late = 0  # handle (and record) the next N requests, then wait late_delay seconds before answering
        self.late_delay = 1.0
        self.redirect: tuple[int, str] | None = None  # (3xx code, Location): answer every request so
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            late = False  # this request is one of the ``late`` ones

            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: bytes = b"", content_type: str = "application/json",
                       headers: dict[str, str] | None = None):
                if self.late:
                    time.sleep(hub.late_delay)
                try:
                    self.send_response(code)
                    for name, value in {"Content-Type": content_type, **(headers or {})}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (``late``)
                    self.close_connection = True

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with hub.lock:
                    hub.bodies.append(body)
                    hub.paths.append(f"{method} {self.path}")
                    hub.authorizations.append(self.headers.get("Authorization"))
                    drop = hub.drop > 0
                    hub.drop -= drop
                    fail = hub.fail > 0
                    hub.fail -= fail
                    self.late = hub.late > 0
                    hub.late -= self.late
                if hub.slow:
                    time.sleep(hub.slow)
                if drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if hub.redirect:
                    code, location = hub.redirect
                    return self._reply(code, b"", headers={"Location": location})
                if self.headers.get("Authorization") != f"Bearer {hub.api_key}":
                    return self._reply(401, b'{"error": "bad key"}')
                if fail:
                    return self._reply(500, b'{"error": "try again"}')
                run = _RUN.match(self.path)
                model = _MODEL.match(self.path)
                if method == "POST" and run:
                    record = json.loads(body)
                    if record.get("status") in hub.reject_status:
                        return self._reply(500, b'{"error": "unavailable"}')
                    with hub.lock:
                        records = hub.records[(run.group(1), run.group(3))]
                        repeated = run.group(3) == "status" and any(
                            r["run_id"] == run.group(2) and r.get("status") == record.get("status") for r in records)
                        if not repeated:
                            records.append({**record, "run_id": run.group(2)})
                    if repeated:
                        return self._reply(409, b'{"error": "the run already has this status"}')
                    return self._reply(204)
                if method == "GET" and model and model.group(2) in ("status", "metrics"):
                    return self._reply(200, json.dumps(hub.records[(model.group(1), model.group(2))]).encode())
                if method == "GET" and model:
                    data = hub.initial_models.get(model.group(1))
                    return self._reply(200, data, "application/octet-stream") if data else self._reply(404)
                return self._reply(404)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # a short poll interval: shutdown() waits for the loop to notice, up to one interval per teardown
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def statuses(self, model_id: str) -> list[dict]:
        return list(self.records[(model_id, "status")])

    def metrics(self, model_id: str) -> list[dict]:
        return list(self.records[(model_id, "metrics")])

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class CatchAllServer:
    """Another host: answers 200 ``[]`` to every GET, POST and PUT and records each request's method, path and
    Authorization header (a redirect's target, to show what a client that follows redirects would send it)."""

    def __init__(self):
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((method, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def __enter__(self) -> "CatchAllServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
