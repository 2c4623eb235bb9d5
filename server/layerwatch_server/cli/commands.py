"""The ``layerwatch`` command: run the server, manage its database, run the demo,
send the batches runs left in their spool.

Subcommands import what they need when they run, so ``layerwatch --help``
is instant and a training box without the server extras can still use the
client-side commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerwatch_server.config import Settings


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (env LAYERWATCH_DATABASE_URL); default: SQLite in --data-dir",
    )
    parser.add_argument(
        "--data-dir", help="folder of the embedded SQLite database (env LAYERWATCH_DATA_DIR)"
    )


def _settings(args: argparse.Namespace) -> Settings:
    from layerwatch_server.config import Settings

    overrides: dict[str, str] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return Settings(**overrides)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    from layerwatch_server.auth.hosts import LOOPBACK_HOSTS, is_loopback
    from layerwatch_server.cli.serving import run_server

    settings = _settings(args)
    loopback = is_loopback(args.host)
    updates: dict[str, object] = {"allow_open": loopback or args.insecure}
    if args.allowed_hosts:
        updates["allowed_hosts"] = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    elif loopback and "LAYERWATCH_ALLOWED_HOSTS" not in os.environ:
        updates["allowed_hosts"] = list(LOOPBACK_HOSTS)
    settings = settings.model_copy(update=updates)
    return run_server(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        migrate=not args.no_migrate,
        log_level=args.log_level,
        safe_url=_safe_url(settings),
    )


def _token(args: argparse.Namespace) -> int:
    from layerwatch_server.cli.tokens import run_token_command

    return run_token_command(args, _settings(args))


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def _db_upgrade(args: argparse.Namespace) -> int:
    from layerwatch_server.db import make_engine
    from layerwatch_server.migrate import upgrade_database

    settings = _settings(args)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine, args.revision)
    finally:
        engine.dispose()
    print(f"database {_safe_url(settings)} is at {args.revision}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from layerwatch_server.cli.demo import run_demo

    return run_demo(
        out=args.out, epochs=args.epochs, port=args.port, serve=args.serve, broken=args.broken
    )


def _sync(args: argparse.Namespace) -> int:
    import logging

    from layerwatch.delivery.sync import sync_spools

    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    return sync_spools(args.spool_dir, server=args.server, run_id=args.run, timeout=args.timeout)


def _check(args: argparse.Namespace) -> int:
    from layerwatch_server.cli.check import run_check

    return run_check(args.run_id, server=args.server, fail_on=args.fail_on)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwatch", description="Look inside PyTorch networks while they train."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the layerwatch server")
    server.add_argument("--host", default=os.environ.get("LAYERWATCH_HOST", "127.0.0.1"))
    server.add_argument("--port", type=int, default=int(os.environ.get("LAYERWATCH_PORT", "8000")))
    server.add_argument("--no-migrate", action="store_true", help="skip the schema upgrade")
    server.add_argument("--log-level", default="info")
    server.add_argument(
        "--workers", type=int, default=int(os.environ.get("LAYERWATCH_WORKERS", "1")),
        help="server processes (uvicorn workers) on one port; use PostgreSQL for more than one",
    )  # fmt: skip
    server.add_argument(
        "--allowed-hosts", metavar="HOSTS",
        help="Host headers to answer, comma-separated (env LAYERWATCH_ALLOWED_HOSTS); "
        "default: the loopback names on a loopback bind, any host otherwise",
    )  # fmt: skip
    server.add_argument(
        "--insecure", action="store_true",
        help="serve without authentication on a non-loopback address while no token exists",
    )  # fmt: skip
    _add_database_options(server)
    server.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="manage the server's database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="upgrade the schema (default: newest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    _add_database_options(upgrade)
    upgrade.set_defaults(handler=_db_upgrade)

    token = commands.add_parser(
        "token", help="manage API tokens in the server's database (run on the server host)"
    )
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token; its secret is shown once")
    create.add_argument("name", help="a unique name: letters, digits, . _ -")
    create.add_argument(
        "--scope", required=True, choices=("read", "write", "admin"),
        help="read; write: read plus ingest and run updates; admin: everything",
    )  # fmt: skip
    create.add_argument(
        "--project", action="append", metavar="P",
        help="a project it covers (repeat); default: every project",
    )  # fmt: skip
    create.add_argument("--expires", metavar="DURATION", help="30d, 12h, 90m, 2w; default: never")
    create.add_argument(
        "--secret-env", metavar="VAR",
        help="take the secret from this environment variable (lw_ and 43 URL-safe characters) "
        "instead of making one, e.g. to bootstrap a deployment",
    )  # fmt: skip
    create.add_argument(
        "--if-missing", action="store_true", help="do nothing when a token of this name exists"
    )
    listing = token_commands.add_parser("list", help="list tokens, never their secrets")
    revoke = token_commands.add_parser("revoke", help="revoke a token, at once, for every server")
    revoke.add_argument("name")
    for sub in (create, listing, revoke):
        _add_database_options(sub)
        sub.set_defaults(handler=_token)

    demo = commands.add_parser(
        "demo", help="train a small network against a local server and write its plots"
    )
    demo.add_argument("--out", default="layerwatch-demo", help="folder for data and plots")
    demo.add_argument(
        "--epochs", type=int, default=None, help="epochs to train (default 8; 40 with --serve)"
    )
    demo.add_argument("--port", type=int, default=0, help="server port (default: any free)")
    demo.add_argument(
        "--serve", action="store_true",
        help="train slowly while the dashboard shows it live, then keep serving",
    )  # fmt: skip
    demo.add_argument(
        "--broken", action="store_true",
        help="train a deliberately broken network (a layer left out of the optimizer, a "
        "learning rate far too high) and print what the diagnosis finds",
    )  # fmt: skip
    demo.set_defaults(handler=_demo)

    sync = commands.add_parser(
        "sync", help="send the batches that runs left on disk (killed, or the server was away)"
    )
    sync.add_argument(
        "--spool-dir", metavar="DIR",
        help="spool folder (default: $LAYERWATCH_SPOOL_DIR or ~/.cache/layerwatch/spool)",
    )  # fmt: skip
    sync.add_argument(
        "--server", metavar="URL", help="server URL (default: the one each run was sending to)"
    )
    sync.add_argument("--run", metavar="ID", help="only the run with this id")
    sync.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS",
        help="give a run up after this many seconds without progress (default: 30)",
    )  # fmt: skip
    sync.set_defaults(handler=_sync)

    check = commands.add_parser(
        "check", help="print what the server's diagnosis finds wrong with a run"
    )
    check.add_argument("run_id", metavar="RUN_ID")
    check.add_argument(
        "--server", metavar="URL",
        help="server URL (default: $LAYERWATCH_SERVER or http://127.0.0.1:8000); "
        "$LAYERWATCH_TOKEN is sent as the token",
    )  # fmt: skip
    check.add_argument(
        "--fail-on", choices=("warning", "error"), default="error",
        help="exit 1 when a finding is this severe or worse (default: error); "
        "2 when the run or the server cannot be reached",
    )  # fmt: skip
    check.set_defaults(handler=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ImportError as error:
        print(
            f"layerwatch {args.command}: missing dependency ({error.name}); "
            "install the matching extra, e.g. pip install 'layerwatch[server]'",
            file=sys.stderr,
        )
        return 1
