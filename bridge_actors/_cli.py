"""``bridge-actors``: the command line.

``bridge-actors serve`` runs the server. Every setting is also a flag, named
after its field (``--max-connections-per-session 5``); flags override the
environment, which overrides ``--config FILE``, which overrides ``--profile``.
``bridge-actors demo`` hands its arguments to the demo. The benchmarks are not
part of the package: run them from a source checkout with ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import typing
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from . import __version__
from ._errors import BridgeError, InvalidSettings
from ._logconfig import announce, configure_logging
from ._open import open_bridge
from ._server.serve import open_listening_socket, serve
from ._server.views import resource_manager
from ._settings import ENV_NAMES, Settings, load_settings

log = logging.getLogger("bridge_actors.cli")

__all__ = ["build_parser", "main", "settings_from_args"]

PROG = "bridge-actors"

# Flags whose name is not simply the field's.
_FLAG_NAMES = {"backends": "--backend", "media_sources": "--media"}

_METAVARS = {
    "host": "HOST",
    "port": "PORT",
    "state_dir": "DIR",
    "profile": "NAME",
    "log_level": "LEVEL",
    "log_format": "FORMAT",
}
_TYPE_METAVARS = {int: "N", float: "SECONDS"}  # every float setting is a duration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Watch and drive remote devices from a browser, at scale.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP and WebSocket server",
        description="Run the server. Every setting can also come from the environment"
        " (its name in parentheses) or a config file.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="a .toml or .json file of settings (env BRIDGE_CONFIG)"
    )
    for field, info in Settings.model_fields.items():
        _add_setting_flag(serve, field, info.annotation)
    commands.add_parser("demo", help="the library on its own: viewers in one process, no server")
    _add_token_command(commands)
    return parser


def _add_token_command(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="mint a token: the token on stderr, its token-file entry on stdout",
        description="Mint a random token. The token is printed once, on stderr; the entry for"
        " the token file (BRIDGE_TOKEN_FILE), which holds only its hash, on stdout:"
        " bridge-actors token --name ci --role operator >> tokens.toml",
    )
    token.add_argument("--name", required=True, help="who holds it, as the audit log shows")
    token.add_argument(
        "--role", choices=("admin", "operator", "spectator"), default="operator", help="its role"
    )
    token.add_argument(
        "--session", action="append", dest="sessions", metavar="ID", help="only this session"
    )
    token.add_argument("--expires-in", type=float, metavar="SECONDS", help="expire after this")
    token.add_argument("--no-logs", action="store_true", help="a spectator may not read logs")


def _mint(args: argparse.Namespace) -> int:
    import datetime

    from ._server.authz import Role
    from ._server.tokens import mint_token

    expires = None
    if args.expires_in is not None:
        if not args.expires_in > 0:
            print(f"{PROG} token: --expires-in must be positive", file=sys.stderr)
            return 2
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        expires = now + datetime.timedelta(seconds=args.expires_in)
    token, entry = mint_token(
        args.name, Role(args.role), sessions=args.sessions, logs=not args.no_logs, expires=expires
    )
    print(f"token for {args.name!r} (shown once, keep it secret): {token}", file=sys.stderr)
    sys.stdout.write(entry.to_toml())
    return 0


def _add_setting_flag(parser: argparse.ArgumentParser, field: str, annotation: Any) -> None:
    flag = _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))
    info = Settings.model_fields[field]
    help_text = info.description or field.replace("_", " ")
    if typing.get_origin(annotation) is typing.Literal:
        help_text += f": {', '.join(typing.get_args(annotation))}"
    default = info.get_default(call_default_factory=True)
    if default not in (None, (), {}) and field != "state_dir":
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text += f" (default {shown})"
    help_text = help_text.replace("%", "%%") + f" [{ENV_NAMES[field]}]"
    if field in ("backends", "media_sources"):
        metavar = "NAME" if field == "backends" else "NAME=SOURCE"
        parser.add_argument(flag, dest=field, action="append", metavar=metavar, help=help_text)
    elif annotation is bool:
        parser.add_argument(
            flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    else:
        # Values stay strings here: the settings validate them and name the flag when wrong.
        metavar = _METAVARS.get(field, _TYPE_METAVARS.get(annotation, "VALUE"))
        parser.add_argument(flag, dest=field, metavar=metavar, help=help_text)


def settings_from_args(args: argparse.Namespace, *, env: dict[str, str] | None = None) -> Settings:
    """The settings the flags ask for, over the config file and the environment.

    Raises InvalidSettings naming every bad value.
    """
    overrides: dict[str, Any] = {}
    for field in Settings.model_fields:
        value = getattr(args, field, None)
        if value is None:
            continue
        if field == "backends":
            value = ",".join(value)
        elif field == "media_sources":
            value = _media_pairs(value)
        overrides[field] = value
    return load_settings(env=env, config_file=args.config, overrides=overrides)


def _media_pairs(items: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise InvalidSettings(f"--media: {item!r} is not of the form NAME=SOURCE")
        if name.strip() in pairs:
            raise InvalidSettings(f"--media: {name.strip()!r} is given twice")
        pairs[name.strip()] = source.strip()
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        from ._demo import main as demo_main

        return demo_main(args_list[1:])

    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "token":
        return _mint(args)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except InvalidSettings as problem:
        print(f"{PROG}: invalid settings:", file=sys.stderr)
        for line in str(problem).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 2

    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    if settings.media_sources and "media" not in settings.backends:
        log.warning("media sources given, but the media backend is not enabled (--backend media)")
    try:
        trio.run(run_server, settings)
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        reason = error.strerror or error
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, reason)
        return 1
    except BridgeError as error:
        log.error("%s", error)
        return 1
    return 0


async def run_server(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down within ``settings.shutdown_grace``."""
    log.debug("settings: %s", settings.describe())
    watchdog = _Watchdog(settings.shutdown_grace * 2)
    # Bound before the bridge opens: a port in use is reported before any session is
    # restored or created, and the sessions file is never touched by a server that
    # could not have served them.
    listener = await open_listening_socket(
        settings.host, settings.port, tcp_user_timeout=settings.tcp_user_timeout
    )
    try:
        with listener, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_bridge(settings) as bridge, trio.open_nursery() as nursery:
                stop = trio.Event()
                host, port = await nursery.start(
                    partial(serve, bridge, shutdown_trigger=stop.wait, listener=listener)
                )
                shown = f"[{host}]" if ":" in host else host
                announce(f"bridge_actors listening on http://{shown}:{port}")
                tune_garbage_collector()
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                watchdog.start()
                stop.set()
            # The last word on what this run did, whatever the log level.
            final = bridge.final_statistics
            shown = resource_manager(final) if final is not None else None
            announce(f"final statistics: {json.dumps(shown)}")
    finally:
        watchdog.cancel()
    log.info("stopped")


GC_GENERATION0_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from stalling the event loop under load.

    Every frame sent to every viewer allocates short-lived containers, so with
    the default thresholds a full collection (tens of milliseconds, walking every
    object of the server) ran several times a second at 200 viewers: the largest
    source of latency. What exists once the server is up lives as long as the
    process, so it is frozen out of collections, and the youngest generation is
    allowed to grow before it is scanned. Process-wide, hence here in the
    server's entry point and not in the library.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GENERATION0_THRESHOLD, second, third)


class _Watchdog:
    """Ends the process if a shutdown overruns its bound by far: a hang must not outlive us.

    A thread, because whatever hangs might be the event loop itself.
    """

    def __init__(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self.seconds = seconds

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        log.critical("shutdown took longer than %.1fs; exiting now", self.seconds)
        logging.shutdown()
        os._exit(1)
