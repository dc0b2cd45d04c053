"""``greekfire api-key create|list|revoke``: the trading API server's keys.

:data:`api_key_app` is registered on the main app by :mod:`greekfire.cli`; its commands reach the main
module's settings and consoles through :func:`_cli`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated

import typer
from rich.table import Table

from greekfire.cli_errors import fail, say_error, venues_option
from greekfire.core.errors import ConfigError, ConfigErrors, DataError, UnavailableError

api_key_app = typer.Typer(help="API keys of the trading API server: create, list, revoke.", no_args_is_help=True)


def _cli() -> ModuleType:
    """The main command module. Imported when a command runs: greekfire.cli imports this module to register
    :data:`api_key_app`, so importing it back at the top would be circular."""
    import greekfire.cli

    return greekfire.cli


@api_key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option("--name", help="who or what uses the key (shown by `list`)")],
    scope: Annotated[list[str], typer.Option("--scope", help="read, trade or admin (repeat for several; admin implies trade implies read)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the key as JSON")] = False,
) -> None:
    """Create an API key. The key is printed once: only its hash is stored."""
    from greekfire.api.keys import create_key

    cli = _cli()
    try:
        out = create_key(cli.settings(), name, scope)
    except (ConfigError, ConfigErrors, DataError) as exc:
        raise fail("api-key create", exc) from None
    if as_json:
        cli.print_json(out)
        return
    cli.console.print(f"key id {out['key_id']} ({out['name']}, scopes {', '.join(out['scopes'])})")
    cli.console.print("API key (shown once, store it now):", highlight=False)
    typer.echo(out["api_key"])


@api_key_app.command("list")
def api_key_list(as_json: Annotated[bool, typer.Option("--json", help="print the keys as JSON")] = False) -> None:
    """Every API key: id, name, scopes, when it was created, last used and revoked (never the key)."""
    from greekfire.api.keys import list_keys

    cli = _cli()
    try:
        rows = list_keys(cli.settings())
    except (ConfigError, ConfigErrors) as exc:
        raise fail("api-key list", exc) from None
    if as_json:
        cli.print_json(rows)
        return
    table = Table(title="API keys")
    for c in ("key id", "name", "scopes", "created (UTC)", "last used (UTC)", "revoked (UTC)"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["key_id"], r["name"], ", ".join(r["scopes"]), *(
            "" if r[k] is None else f"{r[k]:%Y-%m-%d %H:%M:%S}" for k in ("created_at", "last_used_at", "revoked_at")))
    cli.console.print(table)


@api_key_app.command("revoke")
def api_key_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (12 characters) from `greekfire api-key list`; an id that begins with `-` (made by an earlier version) goes after `--`: `greekfire api-key revoke -- -AbC...`")],
) -> None:
    """Revoke a key: this server process refuses it at once, another one within a minute."""
    from greekfire.api.keys import revoke_key

    cli = _cli()
    try:
        done = revoke_key(cli.settings(), key_id)
    except (ConfigError, ConfigErrors, DataError) as exc:
        raise fail("api-key revoke", exc) from None
    cli.console.print(f"revoked {key_id}" if done else f"{key_id}: no such active key (unknown or already revoked)")
    if not done:
        raise typer.Exit(1)


def serve_trading_cmd(
    host: Annotated[str | None, typer.Option("--host", help="default: api.host")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="default: api.trading_port")] = None,
    venues: Annotated[str | None, typer.Option("--venues", help="simulated venues (1-16), or `fix`: the engine trades over FIX with a `greekfire fix exchange` at fix.host:fix.port")] = None,
    wheel_db: Annotated[str | None, typer.Option("--wheel-db", help="also serve the wheel dashboard (/wheel) over this wheel position database URL")] = None,
) -> None:
    """Serve the trading API over a running engine: REST /v1 (orders, positions, P&L, Greeks, risk, the kill
    switch, strategies), WebSocket /v1/stream, POST /token, /health, /metrics, /docs. Needs API keys
    (`greekfire api-key create`)."""
    from greekfire.api.trading import serve_trading

    where = venues_option(venues)
    cli = _cli()
    try:
        serve_trading(cli.settings(), host=host, port=port, venues=where, wheel_db_url=wheel_db)
    except (ConfigError, ConfigErrors) as exc:  # a service that does not answer: exit 1 (the group)
        raise fail("serve trading", exc) from None


def serve_wheel_cmd(
    db: Annotated[str | None, typer.Option("--db", help="URL of the wheel's position database (default: database.url)")] = None,
    host: Annotated[str | None, typer.Option("--host", help="default: api.host")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="default: api.wheel_port")] = None,
    poll_s: Annotated[float, typer.Option("--poll", min=0.05, max=3600, help="seconds between reads of the database")] = 1.0,
) -> None:
    """Serve the wheel dashboard: the page /wheel (positions, states, P&L and equity, performance, transitions,
    live over WebSocket), JSON /v1/wheel/*, POST /token, /health, /metrics. Reads the database a wheel run
    writes; needs API keys with the read scope (`greekfire api-key create --scope read`)."""
    from greekfire.core.extras import require_extra

    require_extra("serve", "greekfire serve wheel")  # one line naming the extra, not a bare ModuleNotFoundError
    from greekfire.api.wheel import serve_wheel

    cli = _cli()
    try:
        serve_wheel(cli.settings(), db_url=db, host=host, port=port, poll_s=poll_s)
    except (ConfigError, ConfigErrors) as exc:
        raise fail("serve wheel", exc) from None
    except UnavailableError as exc:  # the database does not answer: exit 1
        say_error("serve wheel", str(exc))
        raise typer.Exit(1) from None
