"""`ServerConfig`: one frozen value built from flags > `SENTINEL_*` environment > TOML file > defaults.

Every option is declared once in `OPTIONS` (its flag, type and default); the CLI builds its flags
from the same table, so the three sources cannot drift apart. Invalid input raises `ConfigError`
whose message names the option and the source, on one line (the CLI maps it to exit 78).
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sentinel.errors import ConfigError
from sentinel.loopback import loopback_address
from sentinel.profiles import (
    PROFILE_FIELDS,
    ProfileSettings,
    ServedProfile,
    check_extra_name,
    resolve_profiles,
)

_DURATION_PART = re.compile(r"(\d+)(h|m|s)")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.@=+-]{1,64}")
_INSTANCE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.@=+-]")
_INSTANCE_ID_MAX = 64
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_SSM_NAME = re.compile(r"/?[A-Za-z0-9_.\-/]{1,2048}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_PROFILE = re.compile(r"[\w+=,.@:/-]{1,128}")
# A uid, or a user name as useradd accepts it (a trailing $ for Samba machine accounts).
_USER = re.compile(r"\d{1,10}|[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?")
# One year: far above any interval or lifetime Sentinel accepts, far below timedelta's limit.
_MAX_DURATION_SECONDS = 365 * 24 * 3600.0


def parse_duration(text: str | int | float) -> timedelta:
    """`900`, `900s`, `15m`, `1h`, `1h30m` -> timedelta. Raises ValueError with a short reason."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text!r} is not a duration (use e.g. 900, 15m, 1h, 1h30m)")
        return _bounded(text)
    if not isinstance(text, str):
        # TOML can hand us a bool, list or table here; say so instead of failing on .strip().
        raise ValueError(f"expected a duration such as 15m or 1h, not {type(text).__name__}")
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return _bounded(float(value))
    total = 0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        amount, unit = int(match.group(1)), match.group(2)
        total += amount * {"h": 3600, "m": 60, "s": 1}[unit]
        position = match.end()
    if position != len(value) or not value:
        raise ValueError(f"{text!r} is not a duration (use e.g. 900, 15m, 1h, 1h30m)")
    return _bounded(total)


def _bounded(seconds: float) -> timedelta:
    # timedelta overflows (OverflowError, not ValueError) far beyond any sensible setting.
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"{seconds:g} seconds is too long (at most {_MAX_DURATION_SECONDS:g})")
    return timedelta(seconds=seconds)


def _seconds(text: Any) -> float:
    return parse_duration(text).total_seconds()


def _duration(text: Any) -> timedelta:
    return parse_duration(text)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range {low}..{high}")
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"expected a {what}, not {type(value).__name__}")
        text = str(value)
        if regex.fullmatch(text) is None:
            raise ValueError(f"{text[:80]!r} is not a valid {what}")
        return text

    return parse


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value) or "\x00" in str(value):
        raise ValueError("expected a file path")
    return Path(value).expanduser()


def _log_format(value: Any) -> str:
    text = value.lower() if isinstance(value, str) else repr(value)
    if text not in {"text", "json"}:
        raise ValueError(f"{value!r} must be text or json")
    return text


def _decision_log(value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError("expected a file path or -")
    return value


def _users(value: Any) -> tuple[str, ...]:
    """`--allow-user` (repeatable), a TOML list, or `SENTINEL_ALLOW_USER=a,b`: names or uids,
    checked for shape here; resolved to uids at startup, where an unknown name is an error."""
    items = value if isinstance(value, list | tuple) else [value]
    users: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError(f"expected user names or uids, not {type(item).__name__}")
        for part in str(item).split(","):
            text = part.strip()
            if _USER.fullmatch(text) is None:
                raise ValueError(f"{text[:80]!r} is not a user name or uid")
            users.append(text)
    if not users:
        raise ValueError("expected at least one user name or uid")
    return tuple(users)


def check_loopback_host(value: Any) -> str:
    """`--host`: a loopback literal (IPv6 may be bracketed) or localhost."""
    if not isinstance(value, str):
        raise ValueError(f"expected a loopback address, not {type(value).__name__}")
    return loopback_address(value.strip("[]"))


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration option: its field, flag, parser and default."""

    field: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    # "list": a repeatable flag; comma-separated in the environment, a list in TOML.
    # "repeat": a repeatable flag whose first value is the option's (`--profile`, issue 14).
    flag_kind: Literal["value", "switch", "list", "repeat"] = "value"
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "SENTINEL_" + self.field.upper()


# The command-line surface of DESIGN.md §6. Names are fixed: users, scripts and the unit use them.
OPTIONS: tuple[Option, ...] = (
    Option(
        "profile",
        _pattern(_PROFILE, "profile name"),
        None,
        "AWS profile with the base credentials (repeat to serve several: the first is the default)",
        flag_kind="repeat",
    ),
    Option("role_arn", _pattern(_ROLE_ARN, "role ARN"), None, "role to assume (else the profile's role_arn)"),
    Option("region", _pattern(_REGION, "AWS region"), None, "AWS region for STS, SSM and DynamoDB"),
    Option("policy_file", _path, None, "policy YAML file", metavar="PATH"),
    Option("policy_parameter", _pattern(_SSM_NAME, "SSM parameter name"), None, "policy in SSM"),
    Option("policy_refresh", _seconds, 30.0, "how often the policy is re-read (e.g. 30s)"),
    Option("host", check_loopback_host, "127.0.0.1", "loopback address to bind"),
    Option("port", _int_range(0, 65535), 0, "port to bind (0 = ephemeral)"),
    Option(
        "allow_user",
        _users,
        (),
        "only this local user's connections get credentials (repeatable; Linux)",
        flag_kind="list",
        metavar="NAME|UID",
    ),
    Option("token_file", _path, None, "where serve writes the token (mode 0600)", metavar="PATH"),
    Option("server_duration", _duration, timedelta(minutes=15), "lifetime of served credentials"),
    Option(
        "server_instance_id",
        _pattern(_INSTANCE_ID, "server instance id"),
        None,
        "stable instance id (default: <hostname>-<profile>)",
    ),
    Option("decision_log", _decision_log, None, "decision log file, or - for stderr", metavar="PATH|-"),
    Option("flush_interval", _seconds, 1.0, "session touch flush interval"),
    Option("queue_size", _int_range(1, 10_000_000), 10_000, "touch queue size"),
    Option("revocation_poll", _seconds, 2.0, "idle revocation poll interval"),
    Option("shutdown_timeout", _seconds, 5.0, "deadline for graceful shutdown"),
    Option(
        "revocation_staleness_limit",
        _seconds,
        None,
        "refuse credentials (503) after this long without an answer from the session store (off)",
    ),
    Option("lazy", _bool, False, "do not prefetch credentials at startup", flag_kind="switch"),
    Option("env_file", _path, None, "write an EnvironmentFile= for workloads", metavar="PATH"),
    Option("log_format", _log_format, "text", "log format: text or json", metavar="text|json"),
    Option("session_table", _pattern(_TABLE_NAME, "DynamoDB table name"), None, "DynamoDB session table"),
    Option("session_db", _path, None, "SQLite session database", metavar="PATH"),
    Option("no_session_tracking", _bool, False, "do not track the session", flag_kind="switch"),
)
OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}


# `ServerConfig` reads its defaults from here: each default is written once, in `OPTIONS`.
_DEFAULTS: dict[str, Any] = {option.field: option.default for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `serve` and `exec --server` need, validated."""

    profile: str | None = _DEFAULTS["profile"]
    role_arn: str | None = _DEFAULTS["role_arn"]
    region: str | None = _DEFAULTS["region"]
    policy_file: Path | None = _DEFAULTS["policy_file"]
    policy_parameter: str | None = _DEFAULTS["policy_parameter"]
    policy_refresh: float = _DEFAULTS["policy_refresh"]
    host: str = _DEFAULTS["host"]
    port: int = _DEFAULTS["port"]
    allow_user: tuple[str, ...] = _DEFAULTS["allow_user"]
    token_file: Path | None = _DEFAULTS["token_file"]
    server_duration: timedelta = _DEFAULTS["server_duration"]
    server_instance_id: str | None = _DEFAULTS["server_instance_id"]
    decision_log: str | None = _DEFAULTS["decision_log"]
    flush_interval: float = _DEFAULTS["flush_interval"]
    queue_size: int = _DEFAULTS["queue_size"]
    revocation_poll: float = _DEFAULTS["revocation_poll"]
    shutdown_timeout: float = _DEFAULTS["shutdown_timeout"]
    revocation_staleness_limit: float | None = _DEFAULTS["revocation_staleness_limit"]
    lazy: bool = _DEFAULTS["lazy"]
    env_file: Path | None = _DEFAULTS["env_file"]
    log_format: str = _DEFAULTS["log_format"]
    session_table: str | None = _DEFAULTS["session_table"]
    session_db: Path | None = _DEFAULTS["session_db"]
    no_session_tracking: bool = _DEFAULTS["no_session_tracking"]
    # The profiles served beside the default one (issue 14): a repeated --profile, or
    # `[profiles.NAME]` tables in the file. The top-level options above are the default's.
    profiles: tuple[ProfileSettings, ...] = ()


def served_profiles(
    config: ServerConfig, environ: Mapping[str, str] = os.environ
) -> tuple[ServedProfile, ...]:
    """Every profile `config` serves, the default first, each option resolved (`profiles.py`)."""
    return resolve_profiles(
        default_name=config.profile,
        role_arn=config.role_arn,
        region=config.region,
        server_duration=config.server_duration,
        token_file=config.token_file or default_token_file(environ),
        env_file=config.env_file,
        server_instance_id=config.server_instance_id,
        extras=config.profiles,
    )


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$STATE_DIRECTORY` under systemd, else `~/.local/state/sentinel`."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sentinel"


def default_session_db(environ: Mapping[str, str] = os.environ) -> Path:
    return default_state_dir(environ) / "sessions.db"


def default_server_instance_id(profile: str, hostname: str | None = None) -> str:
    """`<hostname>-<profile>`, made to fit `--server-instance-id`: the same on every start.

    Stable so that the next start on this host sweeps the session a killed predecessor left
    active (issue 10 item 4); the lease (DESIGN.md §4) keeps two live servers sharing it apart.
    Host and profile rather than /etc/machine-id: readable in `server-sessions`, present in every
    container, and what the shipped unit already uses (`%H-sentinel`). Characters the id does not
    allow become `_`; a longer id keeps its start and a hash of the whole, so it stays distinct."""
    text = f"{hostname or socket.gethostname()}-{profile}"
    safe = _INSTANCE_ID_UNSAFE.sub("_", text)
    if len(safe) <= _INSTANCE_ID_MAX:
        return safe
    import hashlib  # here: only an over-long default needs it, and `exec --attach` none (issue 14)

    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{safe[: _INSTANCE_ID_MAX - 9]}-{digest}"


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "token"
    return default_state_dir(environ) / "token"


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse the `--config` TOML file: top-level keys are option names (`session_table` or
    `session-table`), and `[profiles.NAME]` tables hold per-profile options (issue 14); unknown
    keys are errors so a typo cannot silently do nothing. Returns (options, tables by name)."""
    import tomllib  # here: most runs have no --config, and every start-up millisecond shows (issue 12)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: invalid TOML ({exc})") from None
    values: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "profiles" and isinstance(value, dict):
            tables = _profile_tables(path, value)
        elif name not in OPTIONS_BY_FIELD:
            raise ConfigError(f"--config {path}: unknown option {key!r}")
        else:
            values[name] = value
    return values, tables


def _profile_tables(path: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for profile, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"--config {path}: profiles.{profile} must be a table")
        options: dict[str, Any] = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in PROFILE_FIELDS:
                raise ConfigError(
                    f"--config {path}: {key!r} in [profiles.{profile}] is not a per-profile option "
                    f"(those are {', '.join(PROFILE_FIELDS)})"
                )
            options[name] = value
        tables[profile] = options
    return tables


def build_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
    config_file: Path | None = None,
) -> ServerConfig:
    """Merge the sources (flags > env > file > defaults), parse and validate every value.

    `flags` holds only the options given on the command line (absent or None = not given);
    `profile` may be a list (a repeated `--profile`: the first is the default, issue 14)."""
    file_values, tables = read_config_file(config_file) if config_file else ({}, {})
    flags = dict(flags)
    flag_profiles = flags.get("profile")
    if isinstance(flag_profiles, list | tuple):
        flags["profile"] = flag_profiles[0] if flag_profiles else None
    values: dict[str, Any] = {}
    from_file: set[str] = set()  # options a default profile's table may still override
    for option in OPTIONS:
        raw: Any
        if flags.get(option.field) is not None:
            raw, source = flags[option.field], option.flag
        elif environ.get(option.env) not in (None, ""):
            raw, source = environ[option.env], option.env
        elif option.field in file_values:
            raw, source = file_values[option.field], f"{option.field} in {config_file}"
            from_file.add(option.field)
        else:
            from_file.add(option.field)
            continue
        values[option.field] = _parse(option, raw, source)
    # Which profiles: the --profile list if given (tables then only supply options), else the
    # file's tables, the default one first (`profile`, else the first table).
    default = values.get("profile")
    if isinstance(flag_profiles, list | tuple) and len(flag_profiles) > 1:
        names = [
            default,
            *(_parse(OPTIONS_BY_FIELD["profile"], n, "--profile") for n in flag_profiles[1:]),
        ]
    else:
        if default is None and tables:
            default = values["profile"] = _parse(
                OPTIONS_BY_FIELD["profile"], next(iter(tables)), f"{config_file}"
            )
        names = [default, *(name for name in tables if name != default)]
    for field_name, raw in tables.get(default, {}).items() if default is not None else ():
        if field_name in from_file:
            values[field_name] = _parse(
                OPTIONS_BY_FIELD[field_name], raw, f"{field_name} in [profiles.{default}]"
            )
    extras = tuple(_settings(name, tables.get(name), config_file) for name in names[1:])
    config = ServerConfig(**values, profiles=extras)
    _validate(config)
    served_profiles(config, environ)  # a clash (one name twice, one token file for two) fails here
    return config


def _parse(option: Option, raw: Any, source: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _settings(name: str, table: dict[str, Any] | None, config_file: Path | None) -> ProfileSettings:
    """An extra profile from a repeated --profile (`table` None) or its `[profiles.NAME]` table."""
    check_extra_name(name, "--profile" if table is None else f"[profiles.{name}] in {config_file}")
    table = table or {}
    parsed = {
        field_name: _parse(
            OPTIONS_BY_FIELD[field_name], raw, f"{field_name} in [profiles.{name}] of {config_file}"
        )
        for field_name, raw in table.items()
    }
    return ProfileSettings(name=name, **parsed)


def _validate(config: ServerConfig) -> None:
    if config.policy_file and config.policy_parameter:
        raise ConfigError("--policy-file and --policy-parameter are mutually exclusive")
    if config.session_table and config.session_db:
        raise ConfigError("--session-table and --session-db are mutually exclusive")
    for duration in (
        config.server_duration,
        *(p.server_duration for p in config.profiles if p.server_duration),
    ):
        if duration < timedelta(minutes=15) or duration > timedelta(hours=12):
            raise ConfigError("--server-duration: must be between 15m (the STS minimum) and 12h")
    positive = ("flush_interval", "revocation_poll", "shutdown_timeout", "policy_refresh")
    for name in (*positive, "revocation_staleness_limit"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{OPTIONS_BY_FIELD[name].flag}: must be greater than zero")
