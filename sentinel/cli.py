"""Command-line interface: argument parsing, output formatting and exit codes.

The only module that prints or exits. Every error reaches the user as one line on stderr with a
non-zero exit code (see `exit_code_for`), never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sentinel import __version__
from sentinel.child import CommandNotExecutable, CommandNotFound
from sentinel.config import OPTIONS, ServerConfig, build_config
from sentinel.errors import ConfigError, CredentialError, PolicyError, SentinelError
from sentinel.sessions.errors import InvalidTransition, SessionNotFound, StoreUnavailable
from sentinel.sessions.model import (
    InvalidSessionId,
    ServerSession,
    SessionStatus,
    format_timestamp,
    utc_now,
    validate_session_id,
)

if TYPE_CHECKING:
    from sentinel.admin import EnforcementState, Revoked

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_NOT_ENFORCED = 5  # server-revoke: revoked in the store, but AWS refused (or was not reached)
EXIT_POLICY_FULL = 6  # server-revoke: revoked in the store, the role's revocation policy is full
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_CONFIG = 78  # EX_CONFIG: systemd's Restart=on-failure logs it as a configuration problem
EXIT_NOT_EXECUTABLE = 126  # exec: what shells and env(1) return for a command that cannot run
EXIT_COMMAND_NOT_FOUND = 127

STORE_FIELDS = ("session_table", "session_db", "region")
SERVER_FIELDS = tuple(option.field for option in OPTIONS)


def exit_code_for(error: SentinelError) -> int:
    """The one place errors become exit codes."""
    if isinstance(error, ConfigError | PolicyError):
        return EXIT_CONFIG
    if isinstance(error, InvalidSessionId):
        return EXIT_USAGE
    if isinstance(error, SessionNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, InvalidTransition):
        return EXIT_CONFLICT
    if isinstance(error, StoreUnavailable | CredentialError):
        return EXIT_UNAVAILABLE
    if isinstance(error, CommandNotFound):
        return EXIT_COMMAND_NOT_FOUND
    if isinstance(error, CommandNotExecutable):
        return EXIT_NOT_EXECUTABLE
    from sentinel.attach import DaemonUnavailable

    if isinstance(error, DaemonUnavailable):
        return EXIT_UNAVAILABLE
    from sentinel.admin import NoActiveSessions, UsageError

    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, NoActiveSessions):
        return EXIT_NOT_FOUND
    from sentinel.revocation.errors import EnforcementError, PolicyFull

    if isinstance(error, PolicyFull):
        return EXIT_POLICY_FULL
    if isinstance(error, EnforcementError):
        return EXIT_NOT_ENFORCED
    return EXIT_FAILURE


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not usage text plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for option in OPTIONS:
        if option.field not in names:
            continue
        if option.flag_kind == "switch":
            parser.add_argument(
                option.flag, dest=option.field, action="store_const", const=True, help=option.help
            )
        elif option.flag_kind in ("list", "repeat"):
            parser.add_argument(
                option.flag, dest=option.field, action="append", metavar=option.metavar, help=option.help
            )
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, help=option.help)
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file with option defaults")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sentinel", description="Policy-gated AWS credential server.")
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the credential server (systemd Type=notify)")
    _add_options(serve, SERVER_FIELDS)
    serve.set_defaults(handler=_cmd_serve)

    run = commands.add_parser("exec", help="run a command with credentials from Sentinel")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--server", action="store_true", help="serve credentials to the child over loopback")
    where.add_argument(
        "--attach",
        action="store_true",
        help="use the running `sentinel serve` whose --env-file is given (no server of its own)",
    )
    _add_options(run, SERVER_FIELDS)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    run.set_defaults(handler=_cmd_exec)

    sessions = commands.add_parser("server-sessions", help="list server sessions")
    _add_options(sessions, STORE_FIELDS)
    sessions.add_argument("--status", choices=[s.value for s in SessionStatus])
    sessions.add_argument("--user")
    sessions.add_argument("--profile")
    sessions.add_argument("--limit", type=int, default=None, help="at most this many (default 100, max 1000)")
    sessions.add_argument("--json", action="store_true", help="print a JSON list")
    sessions.set_defaults(handler=_cmd_sessions)

    show = commands.add_parser("server-session", help="show one server session")
    _add_options(show, STORE_FIELDS)
    show.add_argument("session_id", metavar="ID")
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--no-enforce", action="store_true", help="do not ask IAM whether a revocation is enforced"
    )
    show.set_defaults(handler=_cmd_session)

    revoke = commands.add_parser(
        "server-revoke", help="revoke server sessions and deny their credentials on AWS"
    )
    _add_options(revoke, STORE_FIELDS)
    revoke.add_argument("session_id", metavar="ID", nargs="?")
    revoke.add_argument("--user", metavar="NAME", help="revoke every active session of this user")
    revoke.add_argument("--reason", required=True)
    revoke.add_argument(
        "--no-enforce", action="store_true", help="revoke in the store only; leave the role's policy alone"
    )
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(handler=_cmd_revoke)

    sweep = commands.add_parser(
        "server-expire-stale", help="expire active sessions whose lease lapsed (their server is gone)"
    )
    _add_options(sweep, STORE_FIELDS)
    sweep.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    sweep.add_argument("--json", action="store_true", help="print a JSON list")
    sweep.set_defaults(handler=_cmd_expire_stale)

    table = commands.add_parser("create-session-table", help="create the DynamoDB session table")
    _add_options(table, ("session_table", "region"))
    table.set_defaults(handler=_cmd_create_table)
    return parser


def _config(args: argparse.Namespace, names: Sequence[str]) -> ServerConfig:
    flags = {name: getattr(args, name, None) for name in names}
    return build_config(flags, os.environ, args.config)


def _run(function: Callable[[], Awaitable[T]]) -> T:
    import anyio  # here: `exec --attach` runs no event loop and must not pay for one (issue 14)

    return anyio.run(function, backend_options={"use_uvloop": True})


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _json(value: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _session_record(session: ServerSession, now: datetime | None = None) -> dict[str, Any]:
    """The stored record; for an active session whose lease lapsed (issue 10), `status` reads
    `active (stale)` as in the table, and `stale` is true."""
    from sentinel.admin import shown_status

    record: dict[str, Any] = dict(session.to_record())
    status = shown_status(session, now or utc_now())
    if status != session.status.value:
        record.update(status=status, stale=True)
    return record


def _short_time(value: Any) -> str:
    return format_timestamp(value)[:19].replace("T", " ")


def format_table(sessions: Sequence[ServerSession], now: datetime | None = None) -> str:
    """Aligned columns: id, status (`active (stale)` once the lease lapsed), user, profile,
    started, last access, requests."""
    from sentinel.admin import shown_status

    now = now or utc_now()
    header = ("ID", "STATUS", "USER", "PROFILE", "STARTED (UTC)", "LAST ACCESS (UTC)", "REQUESTS")
    rows = [
        (
            s.id,
            shown_status(s, now),
            s.user,
            s.profile,
            _short_time(s.started_at),
            _short_time(s.last_access_at),
            str(s.request_count),
        )
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1].rjust(widths[-1])]))
    return "\n".join(lines)


def format_detail(session: ServerSession, enforcement: EnforcementState | None = None) -> str:
    record: dict[str, Any] = dict(session.to_record())
    if enforcement is not None:
        record["enforcement"] = _describe_state(enforcement)
    width = max(len(key) for key in record)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in record.items())


def _cmd_sessions(args: argparse.Namespace) -> int:
    from sentinel import admin

    config = _config(args, STORE_FIELDS)
    if args.limit is not None and not 1 <= args.limit <= 1000:
        raise ConfigError("--limit: must be between 1 and 1000")
    query = admin.ListFilter(
        status=SessionStatus(args.status) if args.status else None,
        user=args.user,
        profile=args.profile,
        limit=args.limit,
    )

    async def work() -> list[ServerSession]:
        async with admin.store_for(config) as store:
            return await admin.list_sessions(store, query)

    sessions = _run(work)
    if args.json:
        _json([_session_record(s) for s in sessions])
    elif sessions:
        _out(format_table(sessions))
    else:
        _out("no sessions")
    return 0


def _cmd_session(args: argparse.Namespace) -> int:
    from sentinel import admin

    config = _config(args, STORE_FIELDS)
    validate_session_id(args.session_id)  # before the store: a typo creates no database file

    async def work() -> tuple[ServerSession, admin.EnforcementState | None]:
        async with admin.store_for(config) as store:
            session = await admin.get_session(store, args.session_id)
        state = None if args.no_enforce else await admin.enforcement_state(config, session)
        return session, state

    session, state = _run(work)
    if args.json:
        record = _session_record(session)
        if state is not None:
            record["enforcement"] = _state_record(state)
        _json(record)
    else:
        _out(format_detail(session, state))
    return 0


def _state_record(state: EnforcementState) -> dict[str, Any]:
    return {
        "state": state.state,
        "role_arn": state.role_arn,
        "until": format_timestamp(state.until) if state.until else None,
        "detail": state.detail,
    }


def _describe_state(state: EnforcementState) -> str:
    if state.state == "enforced":
        return f"enforced on AWS until {_short_time(state.until)} UTC (role {state.role_arn})"
    return f"{state.state.replace('-', ' ')} (role {state.role_arn}): {state.detail}"


def _cmd_revoke(args: argparse.Namespace) -> int:
    from sentinel import admin

    config = _config(args, STORE_FIELDS)
    session_id, reason = admin.revocation_arguments(args.session_id, args.reason, args.user)

    async def work() -> list[admin.Revoked]:
        async with admin.store_for(config) as store:
            ids = [session_id] if session_id else await admin.active_session_ids(store, args.user)
            by = await admin.revoker_identity(config)
            async with admin.enforcer_for(config, enforce=not args.no_enforce) as enforcer:
                return await admin.revoke_sessions(store, enforcer, ids, reason, by)

    results = _run(work)
    if args.json:
        records = [_revoked_record(result) for result in results]
        _json(records[0] if session_id else records)
    else:
        for result in results:
            _out(_revoked_lines(result))
    failures = [result for result in results if result.error is not None]
    for failure in failures:
        line = f"session {failure.session.id} revoked in the store but not enforced on AWS: {failure.error}"
        sys.stderr.write(_error_line(line, "text") + "\n")
    return max((exit_code_for(failure.error) for failure in failures if failure.error), default=0)


def _revoked_record(result: Revoked) -> dict[str, Any]:
    record = _session_record(result.session)
    if result.session.role_arn is None:
        return record  # nothing to enforce on: the record alone, as before issue 13
    record["enforcement"] = {
        "role_arn": result.session.role_arn,
        "enforced_until": format_timestamp(result.enforced_until) if result.enforced_until else None,
        "skipped": result.skipped,
        "error": str(result.error) if result.error else None,
    }
    return record


def _revoked_lines(result: Revoked) -> str:
    session = result.session
    verb = "session {} was already revoked" if result.already_revoked else "revoked session {}"
    lines = [f"{verb.format(session.id)} (user {session.user}, profile {session.profile})"]
    if result.enforced_until is not None:
        lines.append(
            f"  enforced on AWS: role {session.role_arn} denies SourceIdentity {session.source_identity}"
            f" until {_short_time(result.enforced_until)} UTC"
        )
    elif result.skipped == "--no-enforce":
        lines.append("  not enforced on AWS (--no-enforce)")
    return "\n".join(lines)


def _cmd_expire_stale(args: argparse.Namespace) -> int:
    from sentinel import admin

    config = _config(args, STORE_FIELDS)

    async def work() -> list[ServerSession]:
        async with admin.store_for(config) as store:
            return await admin.expire_stale_sessions(store, dry_run=args.dry_run)

    sessions = _run(work)
    if args.json:
        _json([_session_record(s) for s in sessions])
        return 0
    verb = "would expire" if args.dry_run else "expired"
    for s in sessions:
        lapsed = f"lapsed {_short_time(s.lease_until)}" if s.lease_until else "never renewed"
        _out(f"{verb} stale session {s.id} (user {s.user}, profile {s.profile}, lease {lapsed})")
    _out(f"{len(sessions)} stale session{'' if len(sessions) == 1 else 's'} {verb}")
    return 0


def _cmd_create_table(args: argparse.Namespace) -> int:
    config = _config(args, ("session_table", "region"))
    if not config.session_table:
        raise ConfigError("create-session-table: --session-table is required")
    table = config.session_table

    async def work() -> None:
        from sentinel.sessions.dynamodb import create_session_table

        await create_session_table(table, region=config.region)

    _run(work)
    _out(f"table {table} is active")
    return 0


@contextmanager
def _importing_for_good() -> Iterator[None]:
    """Import the daemon (the AWS SDK and every part of the server) with the collector paused.

    Importing allocates long-lived objects and hardly any garbage, yet each burst of allocations
    starts a collection that walks everything loaded so far: ~40 ms of a 0.26 s quick exec (issue
    12). What was loaded is then frozen: later collections, on the hot path too, skip it for good.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
    gc.freeze()


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args, SERVER_FIELDS)
    args.error_format = config.log_format
    # Imported after the configuration is valid: a typo is reported without loading the AWS SDK.
    with _importing_for_good():
        from sentinel import daemon
    return daemon.serve(config)


def _cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("exec: give the command to run after --")
    if args.profile and len(args.profile) > 1:
        raise ConfigError("exec: one --profile only (several profiles are served by `sentinel serve`)")
    # A --config shared with `serve` may list more profiles: exec serves the default one.
    config = dataclasses.replace(_config(args, SERVER_FIELDS), profiles=())
    args.error_format = config.log_format
    if args.attach:
        # No SDK and no event loop: this process becomes the command (issue 14).
        from sentinel.attach import attach

        # With `--profile NAME` and the serve's --config, NAME is this command's default profile,
        # so its `[profiles.NAME]` table's env_file is `config.env_file`; without one, attach
        # looks for `NAME.env` beside the default's, where serve writes it.
        attach(argv, env_file=config.env_file, profile=config.profile, region=config.region)
    with _importing_for_good():
        from sentinel import daemon
    code = daemon.exec_command(config, argv, server=args.server)
    # Only exiting is left. The interpreter's final garbage collection would walk every object
    # the SDK loaded (service models, endpoint rules): 40-60 ms, a fifth of a quick exec (issue
    # 12). Frozen objects are skipped by it; everything that needs closing is closed by now.
    gc.freeze()
    return code


def _error_line(message: str, log_format: str) -> str:
    # Imported on the way out only: logging and orjson are most of what a successful
    # `exec --attach` would otherwise import (issue 14).
    from sentinel import logs

    return logs.error_line(message, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except SentinelError as error:
        sys.stderr.write(_error_line(str(error), getattr(args, "error_format", "text")) + "\n")
        return exit_code_for(error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sentinel server-sessions | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["build_parser", "exit_code_for", "format_detail", "format_table", "main"]
