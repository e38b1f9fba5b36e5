"""A tiny HTTP server answering every GET with the host name: the "application" of lab scenarios.

Run on a lab node by a module's ``start_prim`` script (``python -m hakit.testing.hostname_server
PORT``): a client that reaches it through the virtual IP learns which node served it.
"""

from __future__ import annotations

import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (socket.gethostname() + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging (a probe makes 50 requests a second)."""


def main(argv: list[str] | None = None) -> None:
    """``hostname_server PORT [PIDFILE]``: serve on every address until killed."""
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 8080
    server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    server.daemon_threads = True
    if len(args) > 1:
        with open(args[1], "w") as f:
            f.write(f"{os.getpid()}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
