"""Bearer-token gate of the HTTP API, secrets that never print, Faust's own views off.

The gate is tested over real HTTP (an aiohttp server on loopback); the Faust views through
the worker app's real web server. No broker is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams.auth import (
    add_api_auth_flags,
    api_auth_from_args,
    require_token,
    sql_auth,
    token_required,
)
from streams.brokers.ports import free_port
from streams.httpclient import http_get
from streams.secret import Secret, read_secret_file
from streams.settings import Settings
from twin.errors import ConfigError

TOKEN = "s3cr3t-token-for-the-twin-0123456789"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_api_auth_flags(p)
    return p.parse_args(argv)


# --- secrets never print ---------------------------------------------------------------------


def test_secret_is_masked_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret(TOKEN)
    settings = Settings(api_token=s)
    ns = parse(["--api-token", TOKEN])
    shown = [repr(s), str(s), f"{s}", f"{s:>40}", repr(settings), repr(ns), str(vars(ns))]
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("settings %s %r", settings, settings)
    shown.append(caplog.text)
    for text in shown:
        assert TOKEN not in text
    assert "***" in repr(settings)
    assert s.reveal() == TOKEN


def test_secret_compares_by_value_and_refuses_pickling() -> None:
    import pickle

    assert Secret(TOKEN).matches(TOKEN) and Secret(TOKEN).matches(TOKEN.encode())
    assert not Secret(TOKEN).matches(TOKEN[:-1]) and not Secret(TOKEN).matches(TOKEN + "x")
    assert not Secret(TOKEN).matches("")
    assert Secret(TOKEN) == Secret(TOKEN) and Secret(TOKEN) != Secret("other")
    with pytest.raises(TypeError):
        pickle.dumps(Secret(TOKEN))
    settings = Settings(api_token=Secret(TOKEN))
    assert copy.deepcopy(settings).api_token == settings.api_token


def test_secret_file_first_line_and_errors_never_show_content(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\nsecond line ignored\n")
    assert read_secret_file(f, "API token").reveal() == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret_file(tmp_path / "empty", "API token")
    with pytest.raises(ConfigError, match="cannot read API token") as info:
        read_secret_file(tmp_path / "missing", "API token")
    assert TOKEN not in str(info.value)


# --- flags -----------------------------------------------------------------------------------


def test_token_flag_file_and_validation(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    fields = api_auth_from_args(parse(["--api-token-file", str(f), "--sql-token-required"]))
    assert fields["api_token"].reveal() == TOKEN and fields["sql_token_required"] is True
    assert fields["expose_faust_views"] is False
    assert api_auth_from_args(parse([]))["api_token"] is None
    assert api_auth_from_args(parse(["--expose-faust-views"]))["expose_faust_views"] is True
    with pytest.raises(ConfigError, match="at least 16") as short:
        api_auth_from_args(parse(["--api-token", "short"]))
    assert "short" not in str(short.value).replace("at least", "")
    with pytest.raises(ConfigError, match="only letters"):
        api_auth_from_args(parse(["--api-token", "has spaces in it, quite long enough"]))
    with pytest.raises(ConfigError, match="--sql-token-required needs"):
        api_auth_from_args(parse(["--sql-token-required"]))


def test_token_from_environment() -> None:
    from streams.config import parse as resolve

    p = argparse.ArgumentParser()
    add_api_auth_flags(p)
    env = {"TWIN_API_TOKEN": TOKEN, "TWIN_SQL_TOKEN_REQUIRED": "1"}
    fields = api_auth_from_args(resolve(p, [], env))
    assert fields["api_token"].reveal() == TOKEN and fields["sql_token_required"] is True
    # the old name of TWIN_SQL_TOKEN_REQUIRED still works (deprecated)
    fields = api_auth_from_args(resolve(p, [], {"TWIN_API_TOKEN": TOKEN, "TWIN_SQL_AUTH": "1"}))
    assert fields["sql_token_required"] is True


# --- the gate over HTTP ----------------------------------------------------------------------


def serve(settings: Settings, check: Callable[[Any], Any]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        refused = check(request)
        if refused is not None:
            return refused  # type: ignore[no-any-return]
        return web.json_response({"done": True})

    class Acks:
        @token_required(settings)
        async def post(self, request: web.Request) -> Any:
            return web.json_response({"acked": True})

    async def decorated(request: web.Request) -> web.StreamResponse:
        return await Acks().post(request)  # type: ignore[no-any-return]

    app = web.Application()
    app.router.add_post("/x", handler)
    app.router.add_post("/ack", decorated)
    return app


Answer = tuple[int, Any, Any]


async def _post_all(
    app: web.Application, requests: list[tuple[str, dict[str, str]]]
) -> list[Answer]:
    out = []
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path, headers in requests:
            resp = await client.post(path, headers=headers, data=b"{}")
            out.append((resp.status, await resp.json(), resp.headers.get("WWW-Authenticate")))
    return out


def post_all(app: web.Application, *headers: dict[str, str], path: str = "/x") -> list[Answer]:
    """POST to ``path`` once per headers dict, over real HTTP on loopback."""
    return asyncio.run(_post_all(app, [(path, h) for h in headers]))


@pytest.mark.parametrize("path", ["/x", "/ack"])
def test_state_changing_endpoint_needs_the_token(path: str) -> None:
    settings = Settings(api_token=Secret(TOKEN))
    app = serve(settings, lambda r: require_token(r, settings))
    missing, wrong, basic, right, spaced = post_all(
        app,
        {},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer   {TOKEN}  "},
        path=path,
    )
    status, doc, challenge = missing
    assert status == 401 and challenge is not None and challenge.startswith("Bearer ")
    assert "authentication required" in doc["error"]
    status, doc, challenge = wrong
    assert status == 403 and doc["error"] == "invalid token" and "invalid_token" in challenge
    assert basic[0] == 401
    assert right[0] == 200 and right[1] in ({"done": True}, {"acked": True})
    assert spaced[0] == 200


def test_without_a_configured_token_state_changes_are_refused() -> None:
    settings = Settings(api_token=None)
    app = serve(settings, lambda r: require_token(r, settings))
    answers = post_all(app, {}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer "})
    for status, doc, _ in answers:
        assert status == 403 and "no token configured on this worker" in doc["error"]


def test_sql_is_open_unless_required() -> None:
    open_settings = Settings(api_token=Secret(TOKEN))
    assert post_all(serve(open_settings, lambda r: sql_auth(r, open_settings)), {})[0][0] == 200
    closed = Settings(api_token=Secret(TOKEN), sql_token_required=True)
    app = serve(closed, lambda r: sql_auth(r, closed))
    statuses = [
        a[0]
        for a in post_all(
            app,
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": f"Bearer {TOKEN}"},
        )
    ]
    assert statuses == [401, 403, 200]


# --- Faust's own views -----------------------------------------------------------------------


async def _faust_views(expose: bool) -> dict[str, int]:
    from streams.app import _faust_app

    port = free_port()
    app = _faust_app(Settings(web_port=port, expose_faust_views=expose))
    app.Table("rack-model", partitions=1, key_type=str, value_type=bytes)
    await app.web.start()
    try:
        out = {}
        # A key lookup on an app that is not running fails inside Faust (500) when exposed.
        keyed = () if expose else ("/table/rack-model/R0001/",)
        for path in ("/router/", "/table/", *keyed):
            status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}{path}")
            out[path] = status
        return out
    finally:
        await app.web.stop()


def test_faust_router_and_table_views_are_off_by_default() -> None:
    assert asyncio.run(_faust_views(False)) == {
        "/router/": 404,
        "/table/": 404,
        "/table/rack-model/R0001/": 404,
    }


def test_faust_views_served_when_asked_for() -> None:
    statuses = asyncio.run(_faust_views(True))
    assert statuses["/router/"] == 200 and statuses["/table/"] == 200
