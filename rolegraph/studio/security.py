"""Who may talk to the studio: loopback by default; any other address needs an access token on every request.

Every response forbids inline scripts and framing (CSP); forking is a POST that must carry the page's CSRF
token and come from the studio's own origin. The Host header is checked on loopback, so a web page elsewhere
cannot reach the studio by rebinding its DNS name to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "rolegraph_studio"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


@dataclass
class Access:
    """The studio's secrets: an access token (None on loopback) and the CSRF token its forms carry."""

    host: str
    port: int
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @classmethod
    def for_host(cls, host: str, port: int) -> Access:
        return cls(host, port, None if is_loopback(host) else secrets.token_urlsafe(24))

    def host_allowed(self, header: str) -> bool:
        if self.token is not None:
            return True  # the token guards a non-loopback studio; its Host may be any name for it
        name = urlsplit(f"//{header}").hostname or ""
        return is_loopback(name)

    def token_ok(self, request: Request) -> bool:
        token = self.token
        if token is None:
            return True
        offered = (
            request.cookies.get(COOKIE)
            or request.query_params.get("token")
            or request.headers.get("authorization", "").removeprefix("Bearer ")
            or ""
        )
        return bool(offered) and hmac.compare_digest(offered, token)

    def csrf_ok(self, request: Request, offered: str) -> bool:
        """A POST from the studio's own page: its form token, and its Origin (when sent) is this server."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return False
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        return bool(offered) and hmac.compare_digest(offered, self.csrf)


class Guard(BaseHTTPMiddleware):
    """Checks the Host and the access token, and adds the security headers to every response."""

    def __init__(self, app: object, access: Access) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.access = access

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self.access.host_allowed(request.headers.get("host", "")):
            response: Response = PlainTextResponse(
                "error: this studio answers on 127.0.0.1 only (fix: open http://127.0.0.1:PORT/)", 403
            )
        elif not self.access.token_ok(request):
            response = PlainTextResponse(
                "error: this studio needs its access token (fix: open the URL with ?token=… that"
                " `rolegraph studio` printed)",
                403,
            )
        elif self.access.token is not None and request.query_params.get("token"):
            # move the token from the URL into a cookie, so it does not stay in links and history
            response = RedirectResponse(request.url.remove_query_params("token"), 303)
            response.set_cookie(COOKIE, self.access.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = (
            "same-origin"  # "no-referrer" makes Chromium send `Origin: null`
        )
        return response
