from http.server import BaseHTTPRequestHandler


class PeerHandler(BaseHTTPRequestHandler):
    """The request handler of a local peer (an internal service, a redirector, a TLS host) that the
    outbound tests aim at; it stays out of the test output."""

    def answer(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
