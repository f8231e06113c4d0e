"""A JWKS document served over real HTTP on 127.0.0.1, recording the path of every request.

Voxgate fetches key sets with its own HTTP client, so tests give it a real server rather than a
mocked fetch: the server runs in a thread on a free port for as long as the `with` block lasts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DOCUMENT_PATH = "/.well-known/jwks.json"


def public_jwk(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, kid: str, alg: str) -> dict[str, Any]:
    """`key` as a signing JWK with its `kid` and `alg`, as an identity provider publishes it."""
    jwk = (
        RSAAlgorithm.to_jwk(key, as_dict=True)
        if isinstance(key, rsa.RSAPublicKey)
        else ECAlgorithm.to_jwk(key, as_dict=True)
    )
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class _Server(ThreadingHTTPServer):
    body: bytes
    redirects: Mapping[str, str]
    hits: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        location = self.server.redirects.get(self.path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args: Any) -> None:
        pass


class JwksServer:
    """Serves `document` at every path on 127.0.0.1, except each path in `redirects`, answered
    with a 302 to its target. `hits` lists the path of every request, in order."""

    def __init__(self, document: Mapping[str, Any], redirects: Mapping[str, str] | None = None) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.body = json.dumps(document).encode()
        self._server.redirects = dict(redirects or {})
        self.hits: list[str] = []
        self._server.hits = self.hits
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The document's URL, as a tenant would configure it."""
        return self.url_for()

    def url_for(self, host: str = "127.0.0.1", path: str = DOCUMENT_PATH, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
