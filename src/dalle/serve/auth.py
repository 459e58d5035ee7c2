"""The API key of `dalle serve --api-key` (or DALLE_API_KEY): every request without it gets 401.

The key travels as `Authorization: Bearer KEY`, or as the password of HTTP Basic auth, which is
what a browser sends after asking for it: the 401 carries a Basic challenge, so opening the page
brings up the browser's own login prompt (any user name) and its requests then carry the key. Over
plain HTTP the key crosses the network readable; put a TLS proxy in front for anything but a
trusted network.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from dalle.serve.errors import error_response

LOOPBACK = ("127.", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host.startswith(LOOPBACK)


def presented_key(authorization: bytes) -> bytes | None:
    """The key an Authorization header carries (Bearer token or Basic password), else None."""
    scheme, _, value = authorization.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip()
    if scheme.lower() == b"basic":
        try:
            return base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return None
    return None


class RequireKey:
    """Answer 401 to any request that does not present `key`."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = presented_key(dict(scope["headers"]).get(b"authorization", b""))
        if given is not None and secrets.compare_digest(given, self.key):
            return await self.app(scope, receive, send)
        refused = error_response(401, "this server needs its API key: send the header "
                                      "`Authorization: Bearer KEY` (a browser asks for it as a password)",
                                 headers={"WWW-Authenticate": 'Basic realm="dalle", charset="UTF-8"'})
        await refused(scope, receive, send)
