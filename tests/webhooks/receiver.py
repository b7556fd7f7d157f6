"""A real webhook receiver for tests: http.server on 127.0.0.1 that verifies signatures and
can be down (500s, refused connections) or hang, then come back."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from provider.services import clock, webhooks


@dataclass
class Received:
    """One request that the receiver accepted (answered 2xx) with a valid signature."""

    event_id: str
    type: str
    data: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    """Modes: "ok" (204), "error" (500), "hang" (blocks until `release` is set), "redirect"
    (302 to `redirect_to`), "big" (200 with a 10 MB body), "nul" (500 with NUL in the body),
    "trickle" (an answer that never ends, a byte every 50 ms)."""

    secret: str = ""
    mode: str = "ok"
    redirect_to: str = "http://127.0.0.1:9/elsewhere"
    accepted: list[Received] = field(default_factory=list)
    requests: int = 0
    bad_signatures: int = 0
    hanging: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests += 1
                    mode = receiver.mode
                if mode == "hang":
                    receiver.hanging.set()
                    receiver.release.wait(30)
                    mode = "ok"
                if mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                if mode == "trickle":  # a status line, then a header a byte at a time
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    try:
                        while not receiver.release.wait(0.05):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                    except OSError:
                        pass  # the sender gave up, as it should
                    return
                if mode == "nul":  # an answer PostgreSQL could not store as it is
                    self.send_response(500)
                    self.send_header("Content-Length", "10")
                    self.end_headers()
                    self.wfile.write(b"bad\x00body\x01!")
                    return
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                    self.end_headers()
                    return
                header = self.headers.get(webhooks.SIGNATURE_HEADER, "")
                # Time as the service's clock has it (tests move it), tolerance 5 minutes.
                at = clock.now().timestamp()
                if not webhooks.verify_signature(receiver.secret, header, body, at=at):
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                payload = json.loads(body)
                with receiver.lock:
                    receiver.accepted.append(
                        Received(
                            payload["id"], payload["type"], payload["data"], dict(self.headers)
                        )
                    )
                if mode == "big":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10 * 1024 * 1024))
                    self.end_headers()
                    try:
                        chunk = b"x" * 65536
                        for _ in range(160):
                            self.wfile.write(chunk)
                    except OSError:
                        pass  # the sender stopped reading, as it should
                    return
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until `start(self.port)` again."""
        if self.server is not None:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None
