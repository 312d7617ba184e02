"""An S3 server (moto) that every test host reaches, which records who wrote what and can hold
requests: the multi-host tests' way to see on which host a part or checkpoint was written (the
writer's address) and to make faults happen at a known point, not by lucky timing.

`hold(match)` holds every request that `match`es, unanswered, until the hold ends: a host is then
known to be inside that request (e.g. uploading a part) when the test kills it, and a held write
in the middle of a checkpoint is an S3 stall that starts exactly there.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Request:
    t: float  # time.monotonic() when it arrived
    method: str
    path: str  # /bucket/key (path-style, as s3fs and pyarrow send it to an endpoint URL)
    ip: str  # the client's address: which host sent it


class Hold:
    """Requests held by `S3Server.hold`, in arrival order."""

    def __init__(self, match: Callable[[Request], bool]):
        self.match, self.released = match, threading.Event()
        self.held: list[Request] = []

    def wait(self, timeout: float, ips: int = 1) -> list[Request]:
        """Until requests from `ips` distinct clients are held (AssertionError after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while len({r.ip for r in self.held}) < ips:
            if time.monotonic() > deadline:
                raise AssertionError(f"requests from {ips} client(s) not held within {timeout:.0f} s: {self.held}")
            time.sleep(0.1)
        return list(self.held)


class S3Server:
    def __init__(self, ip: str, port: int):
        self.ip, self.port = ip, port
        self.log: list[Request] = []
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)

        def recorded(environ, start_response):
            req = Request(time.monotonic(), environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                          environ.get("REMOTE_ADDR", ""))
            with self._lock:
                self.log.append(req)
                holds = [h for h in self._holds if not h.released.is_set() and h.match(req)]
                for h in holds:
                    h.held.append(req)
            for h in holds:
                h.released.wait()  # answered only when the hold ends (the client may be dead by then)
            return app(environ, start_response)

        self._server = make_server(self.ip, self.port, recorded, threaded=True, request_handler=MotoRequestHandler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            for h in self._holds:
                h.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def start_hold(self, match: Callable[[Request], bool]) -> Hold:
        """Hold matching requests (those arriving from now on) until `release`."""
        h = Hold(match)
        with self._lock:
            self._holds.append(h)
        return h

    def release(self, h: Hold) -> None:
        with self._lock:
            h.released.set()
            if h in self._holds:
                self._holds.remove(h)

    @contextlib.contextmanager
    def hold(self, match: Callable[[Request], bool]) -> Iterator[Hold]:
        """Hold matching requests while the block runs; they are answered when it ends."""
        h = self.start_hold(match)
        try:
            yield h
        finally:
            self.release(h)

    def writes(self, contains: str = "", since: float = 0.0) -> list[Request]:
        """PUT/POST requests (uploads, multipart parts) whose path contains `contains`."""
        with self._lock:
            return [r for r in self.log if r.method in ("PUT", "POST") and contains in r.path and r.t >= since]
