"""Security finding 6: a compressed reply may not decode past web_fetch's size cap.

A local server answers with 128 MB of text compressed to about 130 KB, although web_fetch asks for
`Accept-Encoding: identity`. The fetch must stop decoding at the cap (BEAMCLAW_WEB_FETCH_MAX_BYTES, the
production 2 MB here), whatever the coding and however it is nested. Memory is measured with tracemalloc,
which sees every buffer zlib hands back.
"""

import gzip
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import http_server
from tools.builtins.web_fetch import run_web_fetch

EXPANDED = 128 * 1024 * 1024
CAP = 2_000_000


def _bomb(wbits: int) -> bytes:
    """128 MB of "a", compressed, without ever holding the 128 MB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b"a" * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(EXPANDED // len(block))]
    return b"".join(parts) + compressor.flush()


def _bodies() -> dict[str, tuple[str, bytes]]:
    """Path -> (Content-Encoding, body)."""
    gzipped, zlibbed = _bomb(16 + zlib.MAX_WBITS), _bomb(zlib.MAX_WBITS)
    return {
        "/gzip": ("gzip", gzipped),
        "/x-gzip": ("x-gzip", gzipped),
        "/deflate": ("deflate", zlibbed),
        "/raw-deflate": ("deflate", _bomb(-zlib.MAX_WBITS)),
        "/gzip-twice": ("gzip, gzip", gzip.compress(gzipped)),
        "/deflate-then-gzip": ("deflate, gzip", gzip.compress(zlibbed)),
        "/small": ("gzip", gzip.compress(b"<html><title>Small</title><h1>Hi</h1></html>")),
        "/brotli": ("br", b"\x0b\x02\x80hello\x03"),
        "/corrupt": ("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip"),
    }


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        encoding, body = self.server.bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if self.path == "/small" else "text/plain")
        self.send_header("Content-Encoding", encoding)  # sent although the client asked for identity
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client stopped reading at its cap

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bomb_server():
    with http_server(_Handler) as server:
        server.bodies = _bodies()
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield server


@pytest.fixture
def fetch_settings(settings):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["127.0.0.1/32"]}
    settings.BEAMCLAW_TOOLS = {**settings.BEAMCLAW_TOOLS, "WEB_FETCH_MAX_BYTES": CAP, "WEB_FETCH_TIMEOUT_SECONDS": 30.0}
    return settings


def _fetch_measured(url: str) -> tuple[dict, int]:
    tracemalloc.start()
    try:
        result = run_web_fetch(None, {"url": url, "max_chars": 200_000})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("path", ["/gzip", "/x-gzip", "/deflate", "/raw-deflate", "/gzip-twice", "/deflate-then-gzip"])
def test_a_compression_bomb_is_decoded_only_up_to_the_cap(fetch_settings, bomb_server, path):
    assert len(bomb_server.bodies[path][1]) < 200_000 < CAP < EXPANDED
    result, peak = _fetch_measured(f"{bomb_server.url}{path}")
    assert result["ok"] and result["truncated"], result.get("error")
    assert result["output"] == "a" * 200_000, "the start of the decoded text is returned"
    # The body (2 MB), its bytes copy and its text, plus one decoding chunk per stage: under 16 MB, where
    # decoding a network chunk at once peaked at the full 128 MB.
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while fetching {path}"


def test_an_ordinary_compressed_page_is_still_read(fetch_settings, bomb_server):
    result = run_web_fetch(None, {"url": f"{bomb_server.url}/small"})
    assert result["ok"] and not result["truncated"] and result["title"] == "Small" and "# Hi" in result["output"]


def test_encodings_that_cannot_be_decoded_safely_are_errors(fetch_settings, bomb_server):
    brotli = run_web_fetch(None, {"url": f"{bomb_server.url}/brotli"})
    assert brotli["ok"] is False and "'br'" in brotli["error"] and "only gzip and deflate" in brotli["error"]
    corrupt = run_web_fetch(None, {"url": f"{bomb_server.url}/corrupt"})
    assert corrupt["ok"] is False and "invalid compressed data" in corrupt["error"]
