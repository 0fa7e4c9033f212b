"""Bearer-token authentication of the worker's HTTP API.

Every endpoint that changes state calls :func:`require_token` first; ``POST /api/sql``
calls :func:`sql_auth`, which asks for the token only with ``--sql-token-required``. The
token is a :class:`streams.secret.Secret` (never printed) compared in constant time. With no
token configured, state-changing endpoints refuse every request (403) instead of being open.

Answers follow RFC 6750: no credentials -> 401 with ``WWW-Authenticate: Bearer``; a wrong
token -> 403 (the brief asks for 403 so that a client can tell "not sent" from "refused").
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from aiohttp import web
from faust.web import Response

from streams.secret import Secret, read_secret_file
from streams.settings import Settings
from twin.errors import ConfigError

REALM = "dc-twin"
#: RFC 6750 b64token characters; also keeps tokens free of spaces and control characters.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS = 16

V = TypeVar("V")


class HasHeaders(Protocol):
    """What the check needs of a request (Faust's and aiohttp's requests both qualify)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


def _answer(status: int, error: str, challenge: str | None) -> Response:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    resp = web.json_response({"error": error}, status=status, headers=headers)
    return cast(Response, resp)


def bearer_token(request: HasHeaders) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None if there is none."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_token(request: HasHeaders, token: Secret | None) -> Response | None:
    """None when ``request`` carries ``token``; else the 401/403 answer to return.

    ``token=None`` (none configured) refuses everything with 403.
    """
    if token is None or not token:
        return _answer(403, "no token configured on this worker (--api-token-file)", None)
    given = bearer_token(request)
    if given is None:
        return _answer(
            401, "authentication required: Authorization: Bearer <token>", f'Bearer realm="{REALM}"'
        )
    if not token.matches(given):
        return _answer(403, "invalid token", f'Bearer realm="{REALM}", error="invalid_token"')
    return None


def require_token(request: HasHeaders, settings: Settings) -> Response | None:
    """Gate of a state-changing endpoint: None to go on, else the response to return."""
    return check_token(request, settings.api_token)


def sql_auth(request: HasHeaders, settings: Settings) -> Response | None:
    """Gate of POST /api/sql: open unless ``settings.sql_token_required``."""
    if not settings.sql_token_required:
        return None
    return check_token(request, settings.api_token)


Handler = Callable[..., Awaitable[Response]]


def token_required(settings: Settings) -> Callable[[Handler], Handler]:
    """Decorator of a Faust ``View`` method: the method runs only with the right token.

    ``@token_required(settings)`` above ``async def post(self, request, ...)``.
    """

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        async def guarded(self: Any, request: Any, *args: Any, **kwargs: Any) -> Response:
            refused = require_token(request, settings)
            if refused is not None:
                return refused
            return await method(self, request, *args, **kwargs)

        return guarded

    return wrap


def validate_token(token: Secret) -> Secret:
    """The token if it is a usable bearer token, else ConfigError (never showing it)."""
    value = token.reveal()
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the API token must have at least {MIN_TOKEN_CHARS} characters")
    if not _TOKEN_RE.fullmatch(value):
        raise ConfigError("the API token may contain only letters, digits and -._~+/=")
    return token


def _secret_arg(text: str) -> Secret:
    return Secret(text)


def add_api_auth_flags(p: argparse.ArgumentParser) -> None:
    """--api-token, --api-token-file, --sql-token-required, --expose-faust-views."""
    g = p.add_argument_group("HTTP API security")
    g.add_argument(
        "--api-token",
        type=_secret_arg,
        default=None,
        help="bearer token of state-changing endpoints (default: none; a flag is visible in "
        "ps, prefer --api-token-file or TWIN_API_TOKEN)",
    )
    g.add_argument(
        "--api-token-file",
        type=Path,
        default=None,
        help="file whose first line is the bearer token (default: none)",
    )
    g.add_argument(
        "--sql-token-required",
        action="store_true",
        help="POST /api/sql needs the bearer token too",
    )
    g.add_argument(
        "--expose-faust-views",
        action="store_true",
        help="serve Faust's /router/ and /table/ views (off: they expose topology and raw "
        "table data)",
    )


def api_auth_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields of parsed API-security flags; ConfigError for an unusable token."""
    token: Secret | None = getattr(args, "api_token", None)
    path = getattr(args, "api_token_file", None)
    if path is not None:
        token = read_secret_file(Path(path), "API token")
    if token is not None:
        validate_token(token)
    sql_required = bool(getattr(args, "sql_token_required", False))
    if sql_required and token is None:
        raise ConfigError("--sql-token-required needs --api-token-file (or TWIN_API_TOKEN)")
    return {
        "api_token": token,
        "sql_token_required": sql_required,
        "expose_faust_views": bool(getattr(args, "expose_faust_views", False)),
    }
